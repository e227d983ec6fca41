/**
 * ADE20k semantic segmentation in the official SceneParsing release layout (ADEChallengeData2016.zip),
 * as mmseg's ADE20KDataset reads it (the data of DINOv2's linear segmentation evaluation):
 *
 *   <root>/images/training/ADE_train_00000001.jpg      <root>/annotations/training/ADE_train_00000001.png
 *   <root>/images/validation/ADE_val_00000001.jpg      <root>/annotations/validation/ADE_val_00000001.png
 *
 * Annotations are 8-bit single-channel PNGs: 0 = "other" (not labelled), 1..150 = the classes of
 * objectInfo150. As mmseg's `reduce_zero_label=True`, 0 becomes the ignored label 255 and v becomes
 * v - 1, so classes are 0..149 (ADE20K_CLASSES order); a stored 255 stays 255. Any other value (151..254)
 * is an error naming the file. Images are every `images/<split>/*.jpg` (also .jpeg / .png), sorted by
 * name; each must have its annotation `<stem>.png` (checked when the dataset is opened).
 */
import { readdirSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { decodeImage } from '../image.js';
import { IGNORE_LABEL, readLabelPng, type DenseDataset, type DenseItem, type DenseTarget, type DenseTask } from './dense.js';
import { checkIndex } from './types.js';

/** The 150 ADE20k SceneParsing classes (objectInfo150 order; mmseg's ADE20KDataset.CLASSES). */
export const ADE20K_CLASSES: readonly string[] = [
  'wall',
  'building',
  'sky',
  'floor',
  'tree',
  'ceiling',
  'road',
  'bed',
  'windowpane',
  'grass',
  'cabinet',
  'sidewalk',
  'person',
  'earth',
  'door',
  'table',
  'mountain',
  'plant',
  'curtain',
  'chair',
  'car',
  'water',
  'painting',
  'sofa',
  'shelf',
  'house',
  'sea',
  'mirror',
  'rug',
  'field',
  'armchair',
  'seat',
  'fence',
  'desk',
  'rock',
  'wardrobe',
  'lamp',
  'bathtub',
  'railing',
  'cushion',
  'base',
  'box',
  'column',
  'signboard',
  'chest of drawers',
  'counter',
  'sand',
  'sink',
  'skyscraper',
  'fireplace',
  'refrigerator',
  'grandstand',
  'path',
  'stairs',
  'runway',
  'case',
  'pool table',
  'pillow',
  'screen door',
  'stairway',
  'river',
  'bridge',
  'bookcase',
  'blind',
  'coffee table',
  'toilet',
  'flower',
  'book',
  'hill',
  'bench',
  'countertop',
  'stove',
  'palm',
  'kitchen island',
  'computer',
  'swivel chair',
  'boat',
  'bar',
  'arcade machine',
  'hovel',
  'bus',
  'towel',
  'light',
  'truck',
  'tower',
  'chandelier',
  'awning',
  'streetlight',
  'booth',
  'television receiver',
  'airplane',
  'dirt track',
  'apparel',
  'pole',
  'land',
  'bannister',
  'escalator',
  'ottoman',
  'bottle',
  'buffet',
  'poster',
  'stage',
  'van',
  'ship',
  'fountain',
  'conveyer belt',
  'canopy',
  'washer',
  'plaything',
  'swimming pool',
  'stool',
  'barrel',
  'basket',
  'waterfall',
  'tent',
  'bag',
  'minibike',
  'cradle',
  'oven',
  'ball',
  'food',
  'step',
  'tank',
  'trade name',
  'microwave',
  'pot',
  'animal',
  'bicycle',
  'lake',
  'dishwasher',
  'screen',
  'blanket',
  'sculpture',
  'hood',
  'sconce',
  'vase',
  'traffic light',
  'tray',
  'ashcan',
  'fan',
  'pier',
  'crt screen',
  'plate',
  'monitor',
  'bulletin board',
  'shower',
  'radiator',
  'glass',
  'clock',
  'flag',
];

export type Ade20kSplit = 'training' | 'validation';

export interface Ade20kOptions {
  /** 'training' or 'validation' (also 'train' / 'val'); default 'validation'. */
  split?: Ade20kSplit | 'train' | 'val';
}

const IMAGE_EXTS = new Set(['.jpg', '.jpeg', '.png']);

/** Maps stored annotation values to classes as mmseg's reduce_zero_label (0 -> 255, v -> v - 1). */
export function reduceZeroLabel(stored: Uint8Array, file: string, width: number, numClasses = ADE20K_CLASSES.length): Uint8Array {
  const out = new Uint8Array(stored.length);
  for (let i = 0; i < stored.length; i++) {
    const v = stored[i];
    if (v === 0 || v === IGNORE_LABEL) out[i] = IGNORE_LABEL;
    else if (v <= numClasses) out[i] = v - 1;
    else {
      const at = `(x ${i % width}, y ${Math.floor(i / width)})`;
      throw new Error(`${file}: pixel ${at} holds ${v}; ADE20k annotations hold 0 (unlabelled), 1..${numClasses} (classes) or 255`);
    }
  }
  return out;
}

function listDir(dir: string, what: string, root: string): string[] {
  try {
    if (!statSync(dir).isDirectory()) throw new Error('not a folder');
    return readdirSync(dir);
  } catch {
    throw new Error(
      `ADE20k dataset ${root}: missing folder ${dir} (${what}); expected the ADEChallengeData2016 layout ` +
        'images/{training,validation}/*.jpg and annotations/{training,validation}/*.png',
    );
  }
}

export class Ade20kDataset implements DenseDataset {
  readonly root: string;
  readonly split: Ade20kSplit;
  readonly classNames = ADE20K_CLASSES.slice();
  readonly numClasses = ADE20K_CLASSES.length;
  readonly tasks: readonly DenseTask[] = ['segmentation'];
  /** Image file names (sorted) and their annotation files, relative to the split folders. */
  readonly images: string[];
  readonly annotations: string[];

  constructor(root: string, opts: Ade20kOptions = {}) {
    const s = opts.split ?? 'validation';
    const split = s === 'train' ? 'training' : s === 'val' ? 'validation' : s;
    if (split !== 'training' && split !== 'validation') {
      throw new Error(`ADE20k dataset ${root}: split must be training or validation (or train / val), got '${s}'`);
    }
    this.root = root;
    this.split = split;
    const imgDir = join(root, 'images', split);
    const annDir = join(root, 'annotations', split);
    const images = listDir(imgDir, 'the images', root)
      .filter((f) => IMAGE_EXTS.has(extname(f).toLowerCase()))
      .sort();
    const anns = new Set(listDir(annDir, 'the annotations', root));
    if (images.length === 0) throw new Error(`ADE20k dataset ${root}: ${imgDir} holds no .jpg image`);
    this.images = images;
    this.annotations = images.map((f) => f.slice(0, f.length - extname(f).length) + '.png');
    const missing = this.annotations.filter((a) => !anns.has(a));
    if (missing.length > 0) {
      throw new Error(
        `ADE20k dataset ${root}: ${missing.length} image(s) of ${imgDir} have no annotation in ${annDir}, ` +
          `e.g. ${join(annDir, missing[0])}`,
      );
    }
  }

  get length(): number {
    return this.images.length;
  }

  /** The annotation of item `index` with reduce_zero_label applied (no image decoding). */
  async target(index: number): Promise<DenseTarget> {
    checkIndex(`ADE20k dataset ${this.root}`, index, this.length);
    const file = join(this.root, 'annotations', this.split, this.annotations[index]);
    const { data, width, height } = await readLabelPng(file);
    return { width, height, segmentation: reduceZeroLabel(data, file, width, this.numClasses) };
  }

  async get(index: number): Promise<DenseItem> {
    checkIndex(`ADE20k dataset ${this.root}`, index, this.length);
    const file = join(this.root, 'images', this.split, this.images[index]);
    const [img, target] = await Promise.all([decodeImage(file), this.target(index)]);
    if (img.width !== target.width || img.height !== target.height) {
      throw new Error(
        `ADE20k dataset: ${file} is ${img.width}x${img.height} but its annotation ` +
          `${join(this.root, 'annotations', this.split, this.annotations[index])} is ${target.width}x${target.height}`,
      );
    }
    const stem = this.images[index].slice(0, this.images[index].length - extname(this.images[index]).length);
    return { image: img.data, width: img.width, height: img.height, label: -1, boxes: [], id: stem, target };
  }
}
