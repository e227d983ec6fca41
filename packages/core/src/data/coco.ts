/**
 * COCO detection data: an instances JSON (`images`, `annotations`, `categories`) and a folder of
 * images. Boxes `[x, y, w, h]` become `[x, y, x + w, y + h]` rounded to integers and crowd boxes
 * (`iscrowd: 1`) are dropped, as LOST does (valeoai/LOST, datasets.py, `extract_gt_COCO`).
 * Labels index the categories sorted by id; an item's label is its first box's category.
 *
 * Images left without a box (none annotated, or only crowd boxes) are skipped by default, since
 * object discovery cannot score them; `keepEmpty: true` keeps them with label -1 and no boxes.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeImage } from '../image.js';
import { checkIndex, type Box, type Dataset, type DatasetItem } from './types.js';

export interface CocoOptions {
  /** Keep images that have no non-crowd box (default false: skip them). */
  keepEmpty?: boolean;
}

export interface CocoImage {
  id: number;
  fileName: string;
  width: number;
  height: number;
  boxes: Box[];
  labels: number[];
}

export class CocoDataset implements Dataset {
  readonly jsonPath: string;
  readonly imagesDir: string;
  readonly classNames: string[];
  /** COCO category id of each label. */
  readonly categoryIds: number[];
  readonly images: CocoImage[];

  constructor(jsonPath: string, imagesDir: string, opts: CocoOptions = {}) {
    this.jsonPath = jsonPath;
    this.imagesDir = imagesDir;
    let text: string;
    try {
      text = readFileSync(jsonPath, 'utf8');
    } catch (err) {
      throw new Error(`COCO annotations ${jsonPath}: cannot read (${(err as Error).message})`, { cause: err });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new Error(`COCO annotations ${jsonPath}: invalid JSON (${(err as Error).message})`, { cause: err });
    }
    const fail = (field: string, expected: string): never => {
      throw new Error(`COCO annotations ${jsonPath}: field ${field} must be ${expected}`);
    };
    const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
    const int = (v: unknown, field: string): number => (Number.isInteger(v) ? (v as number) : fail(field, 'an integer'));
    if (!isObj(json)) fail('(root)', 'an object');
    const root = json as Record<string, unknown>;
    for (const key of ['images', 'annotations', 'categories']) {
      if (!Array.isArray(root[key])) fail(key, 'an array');
    }

    const categories = (root.categories as unknown[]).map((c, i) => {
      if (!isObj(c)) fail(`categories[${i}]`, 'an object');
      const cat = c as Record<string, unknown>;
      const id = int(cat.id, `categories[${i}].id`);
      const name = typeof cat.name === 'string' ? cat.name : fail(`categories[${i}].name`, 'a string');
      return { id, name };
    });
    categories.sort((a, b) => a.id - b.id);
    this.categoryIds = categories.map((c) => c.id);
    this.classNames = categories.map((c) => c.name);
    const labelOf = new Map(categories.map((c, i) => [c.id, i]));

    const byId = new Map<number, CocoImage>();
    const all: CocoImage[] = (root.images as unknown[]).map((im, i) => {
      if (!isObj(im)) fail(`images[${i}]`, 'an object');
      const r = im as Record<string, unknown>;
      const image: CocoImage = {
        id: int(r.id, `images[${i}].id`),
        fileName: typeof r.file_name === 'string' ? r.file_name : fail(`images[${i}].file_name`, 'a string'),
        width: int(r.width, `images[${i}].width`),
        height: int(r.height, `images[${i}].height`),
        boxes: [],
        labels: [],
      };
      if (byId.has(image.id)) fail(`images[${i}].id`, `unique (${image.id} is repeated)`);
      byId.set(image.id, image);
      return image;
    });

    (root.annotations as unknown[]).forEach((a, i) => {
      if (!isObj(a)) fail(`annotations[${i}]`, 'an object');
      const ann = a as Record<string, unknown>;
      const imageId = int(ann.image_id, `annotations[${i}].image_id`);
      const image = byId.get(imageId) ?? fail(`annotations[${i}].image_id`, `the id of an entry of images (${imageId} is not)`);
      const label = labelOf.get(int(ann.category_id, `annotations[${i}].category_id`));
      if (label === undefined) fail(`annotations[${i}].category_id`, 'the id of an entry of categories');
      if (ann.iscrowd === 1) return;
      const bbox = ann.bbox;
      if (!Array.isArray(bbox) || bbox.length !== 4 || !bbox.every((v) => typeof v === 'number' && Number.isFinite(v))) {
        fail(`annotations[${i}].bbox`, '4 numbers [x, y, width, height]');
      }
      const [x, y, w, h] = bbox as number[];
      if (w < 0 || h < 0) fail(`annotations[${i}].bbox`, 'a box with non-negative width and height');
      // LOST's convention (datasets.py, extract_gt_COCO): [x, y, x + w, y + h], each rounded to an integer.
      image.boxes.push([Math.round(x), Math.round(y), Math.round(x + w), Math.round(y + h)]);
      image.labels.push(label!);
    });

    this.images = opts.keepEmpty ? all : all.filter((im) => im.boxes.length > 0);
    if (this.images.length === 0) {
      throw new Error(`COCO annotations ${jsonPath}: no images${opts.keepEmpty ? '' : ' with a non-crowd box'}`);
    }
  }

  get length(): number {
    return this.images.length;
  }

  get numClasses(): number {
    return this.classNames.length;
  }

  async get(index: number): Promise<DatasetItem> {
    checkIndex(`COCO dataset ${this.jsonPath}`, index, this.length);
    const im = this.images[index];
    const { data, width, height } = await decodeImage(join(this.imagesDir, im.fileName));
    if (width !== im.width || height !== im.height) {
      throw new Error(
        `COCO dataset ${this.jsonPath}: image ${im.fileName} is ${width}x${height} but images[id=${im.id}] says ${im.width}x${im.height}`,
      );
    }
    return {
      image: data,
      width,
      height,
      label: im.labels.length > 0 ? im.labels[0] : -1,
      boxes: im.boxes.map((b) => [...b] as Box),
      id: String(im.id),
    };
  }
}
