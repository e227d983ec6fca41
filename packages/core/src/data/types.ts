/**
 * The item and dataset types shared by every dataset in this folder: the synthetic shapes, image
 * folders, Pascal VOC and COCO. Images are raw RGB (HWC uint8) at their stored size; resizing and
 * normalisation belong to the augmentation or evaluation transform that consumes them.
 */

/** An axis-aligned box `[x0, y0, x1, y1]` in pixels: x0/y0 inclusive, x1/y1 exclusive edges. */
export type Box = [number, number, number, number];

export interface DatasetItem {
  /** RGB, HWC, uint8: `width * height * 3` bytes. */
  image: Uint8Array;
  width: number;
  height: number;
  /** Class index in `[0, numClasses)`, or -1 for an image without a labelled object. */
  label: number;
  /** Ground-truth boxes in pixels of `image` (synthetic: the main object first; VOC / COCO: file order). */
  boxes: Box[];
  /** A stable identifier (file stem, COCO image id, or `synthetic-<split>-<index>`). */
  id: string;
}

export interface Dataset {
  readonly length: number;
  readonly numClasses: number;
  readonly classNames: string[];
  /** Loads (or generates) item `index`; rejects with an error naming the file for unreadable data. */
  get(index: number): Promise<DatasetItem>;
}

/** Throws a RangeError unless `index` is an integer in `[0, length)`. */
export function checkIndex(name: string, index: number, length: number): void {
  if (!Number.isInteger(index) || index < 0 || index >= length) {
    throw new RangeError(`${name}: index ${index} is out of range (expected an integer in [0, ${length}))`);
  }
}
