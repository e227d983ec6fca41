/**
 * Dense-prediction datasets: each item carries, besides its RGB image, a per-pixel target at the
 * image's own resolution: a class map (semantic segmentation, 255 = ignored) and / or a depth map in
 * metres (0 = no measurement). Used by the dense probes of @vitreg/probe (DINOv2's linear
 * segmentation and depth evaluations). Also: reading single-channel 8-bit label PNGs and 16-bit depth
 * PNGs without any colour conversion.
 */
import sharp from 'sharp';
import type { Dataset, DatasetItem } from './types.js';
import { maxImagePixels } from '../image.js';

/** The label value that segmentation ignores (mmseg's `ignore_index`). */
export const IGNORE_LABEL = 255;

export type DenseTask = 'segmentation' | 'depth';
export const DENSE_TASKS: readonly DenseTask[] = ['segmentation', 'depth'];

/** What a dense probe predicts for one image, at the image's resolution. */
export interface DenseTarget {
  width: number;
  height: number;
  /** Class per pixel in [0, numClasses) or IGNORE_LABEL, row-major [height * width]. */
  segmentation?: Uint8Array;
  /** Depth per pixel in metres, row-major [height * width]; 0 = no measurement. */
  depth?: Float32Array;
  /**
   * Region evaluated, `[y0, y1, x0, x1)` in pixels (NYU's Eigen crop); the whole image when absent.
   * Depth metrics also skip pixels outside the dataset's `depthRange`.
   */
  evalCrop?: [number, number, number, number];
}

export interface DenseItem extends DatasetItem {
  target: DenseTarget;
}

/**
 * A dataset with per-pixel targets. `numClasses` / `classNames` are the segmentation classes (0 and
 * [] for a depth-only dataset). `target` loads only the target (no image decoding).
 */
export interface DenseDataset extends Dataset {
  /** The targets it has. */
  readonly tasks: readonly DenseTask[];
  /** Depth in metres that counts as a measurement, `[min, max]` exclusive (depth datasets). */
  readonly depthRange?: [number, number];
  get(index: number): Promise<DenseItem>;
  target(index: number): Promise<DenseTarget>;
}

/** Whether `d` is a DenseDataset (has `tasks` and `target`). */
export function isDenseDataset(d: Dataset): d is DenseDataset {
  const x = d as Partial<DenseDataset>;
  return Array.isArray(x.tasks) && typeof x.target === 'function';
}

/** Raw single-channel samples of a PNG. */
export interface GrayImage<T extends Uint8Array | Uint16Array> {
  data: T;
  width: number;
  height: number;
}

/** A label or depth PNG over decodeImage's pixel limit is refused from its header, before decoding (issue 21). */
function checkPixels(file: string, meta: { width?: number; height?: number }, what: string): void {
  const limit = maxImagePixels();
  const pixels = (meta.width ?? 0) * (meta.height ?? 0);
  if (pixels > limit) {
    throw new Error(
      `${file}: ${what} is ${meta.width}x${meta.height} (${pixels} pixels), more than the limit of ${limit} pixels ` +
        '(a decompression bomb, or an image to shrink first; VITREG_MAX_IMAGE_PIXELS raises the limit)',
    );
  }
}

/**
 * Reads an 8-bit single-channel PNG's samples as stored (ADE20k's annotations, PIL mode 'L'). A
 * palette ('P') or RGB PNG is an error naming the file: a decoder expands palettes to colours, so the
 * class indices would be lost (convert with `Image.fromarray(np.array(Image.open(f)))` in Python).
 */
export async function readLabelPng(file: string): Promise<GrayImage<Uint8Array>> {
  let meta;
  try {
    meta = await sharp(file, { failOn: 'error' }).metadata();
  } catch (err) {
    throw new Error(`${file}: cannot read label image (missing, truncated or not an image): ${(err as Error).message}`, { cause: err });
  }
  checkPixels(file, meta, 'label image');
  if (meta.isPalette || meta.channels !== 1 || meta.depth !== 'uchar') {
    const what = meta.isPalette ? 'a palette image' : `${meta.channels} channel(s) of ${meta.depth}`;
    throw new Error(
      `${file}: expected an 8-bit single-channel (grayscale) label PNG holding class indices, got ${what}; ` +
        'save the indices as mode L, e.g. Image.fromarray(np.array(Image.open(f)).astype(np.uint8)).save(f)',
    );
  }
  const { data, info } = await sharp(file).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
}

/**
 * Reads a 16-bit single-channel PNG's samples as stored (NYU's `sync_depth_*.png`, PIL mode 'I;16'
 * or 'I'). An 8-bit or multi-channel PNG is an error naming the file.
 */
export async function readUint16Png(file: string): Promise<GrayImage<Uint16Array>> {
  let meta;
  try {
    meta = await sharp(file, { failOn: 'error' }).metadata();
  } catch (err) {
    throw new Error(`${file}: cannot read depth image (missing, truncated or not an image): ${(err as Error).message}`, { cause: err });
  }
  checkPixels(file, meta, 'depth image');
  if (meta.channels !== 1 || meta.depth !== 'ushort') {
    throw new Error(`${file}: expected a 16-bit single-channel depth PNG, got ${meta.channels} channel(s) of ${meta.depth}`);
  }
  const { data, info } = await sharp(file).toColourspace('grey16').raw({ depth: 'ushort' }).toBuffer({ resolveWithObject: true });
  if (info.channels !== 1 || data.byteLength !== info.width * info.height * 2) {
    throw new Error(`${file}: decoded to ${info.channels} channel(s) and ${data.byteLength} bytes, expected one 16-bit channel`);
  }
  // sharp returns native-endian 16-bit samples; copy to an aligned buffer.
  const out = new Uint16Array(info.width * info.height);
  new Uint8Array(out.buffer).set(data);
  return { data: out, width: info.width, height: info.height };
}

/** Encodes 16-bit single-channel samples as a PNG (test data, synthetic depth maps in millimetres). */
export async function encodeUint16Png(data: Uint16Array, width: number, height: number): Promise<Buffer> {
  if (data.length !== width * height) throw new Error(`encodeUint16Png: ${data.length} samples for ${width}x${height}`);
  // sharp takes the sample format from the typed array's type (Uint16Array: ushort).
  return sharp(Uint16Array.from(data), { raw: { width, height, channels: 1 } })
    .toColourspace('grey16')
    .png()
    .toBuffer();
}

/** Encodes 8-bit single-channel samples (class indices) as a grayscale PNG. */
export async function encodeLabelPng(data: Uint8Array, width: number, height: number): Promise<Buffer> {
  if (data.length !== width * height) throw new Error(`encodeLabelPng: ${data.length} samples for ${width}x${height}`);
  return sharp(Buffer.from(data.buffer, data.byteOffset, data.byteLength), { raw: { width, height, channels: 1 } })
    .toColourspace('b-w')
    .png()
    .toBuffer();
}
