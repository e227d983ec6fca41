/**
 * Pascal VOC detection data: `ImageSets/Main/<split>.txt` (ids; a missing list is an error, split '*'
 * takes every annotation), `Annotations/<id>.xml`, `JPEGImages/<id>.jpg`. Annotations are parsed lazily in `get` / `annotation`, so opening the
 * dataset only reads the id list.
 *
 * Coordinates follow LOST (valeoai/LOST, datasets.py, `extract_gt_VOC`): VOC boxes are 1-based
 * inclusive pixel indices, so a box covering the whole image is (1, 1, W, H); LOST subtracts 1 from
 * xmin and ymin only and keeps xmax / ymax, giving [xmin - 1, ymin - 1, xmax, ymax] in continuous
 * pixel coordinates where (0, 0, W, H) is the whole image. We do exactly the same.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { decodeImage } from '../image.js';
import { log } from '../log.js';
import { checkIndex, type Box, type Dataset, type DatasetItem } from './types.js';
import { childNamed, childrenNamed, parseXml, type XmlElement } from './xml.js';

/** The 20 Pascal VOC classes (alphabetical, the usual label order). */
export const VOC_CLASSES = [
  'aeroplane',
  'bicycle',
  'bird',
  'boat',
  'bottle',
  'bus',
  'car',
  'cat',
  'chair',
  'cow',
  'diningtable',
  'dog',
  'horse',
  'motorbike',
  'person',
  'pottedplant',
  'sheep',
  'sofa',
  'train',
  'tvmonitor',
];

export interface VocObject {
  name: string;
  label: number;
  box: Box;
  difficult: boolean;
  truncated: boolean;
}

export interface VocAnnotation {
  id: string;
  filename: string;
  width: number;
  height: number;
  /** Objects in file order (difficult ones removed unless `includeDifficult`). */
  objects: VocObject[];
}

export interface VocOptions {
  /** With a VOCdevkit root, selects `root/VOC<year>`; ignored when root is already a year folder. */
  year?: string | number;
  /**
   * Image set: the ids of `ImageSets/Main/<split>.txt` (default 'test'); a missing list file is an error
   * naming it. `'*'` takes every `Annotations/*.xml` instead (sorted), for trees without ImageSets.
   */
  split?: string;
  /** Keep objects marked difficult (default true, as LOST's CorLoc evaluation does). */
  includeDifficult?: boolean;
  /** Class names (default VOC_CLASSES): an object's label is its name's index here. */
  classNames?: string[];
  /**
   * An object whose name is not in `classNames` is an error (`true`), or kept with label -1 and its name
   * logged once (`false`, the default: custom detection sets name their own classes, and LOST uses every
   * box whatever its name).
   */
  strictClasses?: boolean;
}

/** The `split` that takes every `Annotations/*.xml` instead of an `ImageSets/Main` list. */
export const ALL_ANNOTATIONS = '*';

/** Why a split file is missing, and what to pass instead: the .txt lists of its folder, or '*'. */
function missingSplit(listFile: string, annotations: string): string {
  const dir = dirname(listFile);
  let names: string[] | null = null;
  try {
    names = readdirSync(dir)
      .filter((f) => f.endsWith('.txt'))
      .map((f) => basename(f, '.txt'))
      .sort();
  } catch {
    // the folder itself is missing
  }
  const everything = `split '*' to use every annotation in ${annotations}`;
  if (names === null) return `split file ${listFile} not found (${dir} does not exist); pass ${everything}`;
  if (names.length === 0) return `split file ${listFile} not found (${dir} holds no .txt list); pass ${everything}`;
  return `split file ${listFile} not found (available splits: ${names.join(', ')}); pass one of those, or ${everything}`;
}

export class VocDataset implements Dataset {
  readonly root: string;
  readonly split: string;
  readonly ids: string[];
  readonly classNames: string[];
  readonly includeDifficult: boolean;
  readonly strictClasses: boolean;
  /** Names met that are not in classNames (each logged once). */
  readonly otherClasses = new Set<string>();

  constructor(root: string, opts: VocOptions = {}) {
    const yearDir = opts.year !== undefined ? join(root, `VOC${opts.year}`) : null;
    this.root = yearDir && existsSync(yearDir) ? yearDir : root;
    this.split = opts.split ?? 'test';
    this.includeDifficult = opts.includeDifficult ?? true;
    this.classNames = opts.classNames ?? VOC_CLASSES;
    this.strictClasses = opts.strictClasses ?? false;
    const annotations = join(this.root, 'Annotations');
    if (!existsSync(annotations)) {
      throw new Error(`VOC dataset ${this.root}: missing folder ${annotations}`);
    }
    if (this.split === ALL_ANNOTATIONS) {
      this.ids = readdirSync(annotations)
        .filter((f) => f.endsWith('.xml'))
        .map((f) => basename(f, '.xml'))
        .sort();
      if (this.ids.length === 0) throw new Error(`VOC dataset ${this.root}: split '*' but ${annotations} holds no .xml file`);
      return;
    }
    const listFile = join(this.root, 'ImageSets', 'Main', `${this.split}.txt`);
    let text: string;
    try {
      text = readFileSync(listFile, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR')
        throw new Error(`VOC dataset ${this.root}: cannot read split file ${listFile}: ${(err as Error).message}`, { cause: err });
      throw new Error(`VOC dataset ${this.root}: ${missingSplit(listFile, annotations)}`, { cause: err });
    }
    this.ids = text
      .split(/\r?\n/)
      .map((line) => line.trim().split(/\s+/)[0])
      .filter((id): id is string => id !== undefined && id !== '');
    if (this.ids.length === 0) throw new Error(`VOC dataset ${this.root}: split file ${listFile} lists no image ids`);
  }

  get length(): number {
    return this.ids.length;
  }

  get numClasses(): number {
    return this.classNames.length;
  }

  /** Reads and parses the annotation of item `index` without decoding the image. */
  async annotation(index: number): Promise<VocAnnotation> {
    checkIndex(`VOC dataset ${this.root}`, index, this.length);
    const id = this.ids[index];
    const file = join(this.root, 'Annotations', `${id}.xml`);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new Error(`VOC dataset: cannot read annotation ${file} (${(err as Error).message})`, { cause: err });
    }
    const other = this.strictClasses ? undefined : (name: string) => this.otherClass(name);
    return parseVocAnnotation(text, file, id, this.classNames, this.includeDifficult, other);
  }

  /** Label -1 for a class outside classNames, its name logged the first time it is met. */
  private otherClass(name: string): number {
    if (!this.otherClasses.has(name)) {
      this.otherClasses.add(name);
      log(
        `VOC dataset ${this.root}: class '${name}' is not one of the ${this.classNames.length} classes; its boxes are used with label -1 (as LOST uses every box)`,
      );
    }
    return -1;
  }

  async get(index: number): Promise<DatasetItem> {
    const ann = await this.annotation(index);
    const path = join(this.root, 'JPEGImages', ann.filename);
    const { data, width, height } = await decodeImage(path);
    return {
      image: data,
      width,
      height,
      label: ann.objects.length > 0 ? ann.objects[0].label : -1,
      boxes: ann.objects.map((o) => o.box),
      id: ann.id,
    };
  }
}

/** Parses one VOC annotation XML; errors name `file` and the field. */
export function parseVocAnnotation(
  text: string,
  file: string,
  id: string,
  classNames: readonly string[] = VOC_CLASSES,
  includeDifficult = true,
  /** The label of an object whose name is not in classNames (without it, such an object is an error). */
  otherClass?: (name: string) => number,
): VocAnnotation {
  const root = parseXml(text, file);
  if (root.name !== 'annotation') throw new Error(`${file}: expected root element <annotation>, found <${root.name}>`);
  const need = (el: XmlElement, name: string, path: string): XmlElement => {
    const c = childNamed(el, name);
    if (!c) throw new Error(`${file}: missing field ${path}/${name}`);
    return c;
  };
  const num = (el: XmlElement, name: string, path: string): number => {
    const raw = need(el, name, path).text;
    const v = Number(raw);
    if (raw === '' || !Number.isFinite(v)) throw new Error(`${file}: field ${path}/${name} must be a number, got '${raw}'`);
    return v;
  };
  const filename = childNamed(root, 'filename')?.text || `${id}.jpg`;
  const size = need(root, 'size', 'annotation');
  const width = num(size, 'width', 'annotation/size');
  const height = num(size, 'height', 'annotation/size');
  const objects: VocObject[] = [];
  childrenNamed(root, 'object').forEach((obj, k) => {
    const path = `annotation/object[${k}]`;
    const name = need(obj, 'name', path).text;
    let label = classNames.indexOf(name);
    if (label < 0 && otherClass) label = otherClass(name);
    else if (label < 0) throw new Error(`${file}: field ${path}/name is '${name}', not one of the classes (${classNames.join(', ')})`);
    const difficult = (childNamed(obj, 'difficult')?.text ?? '0') === '1';
    const truncated = (childNamed(obj, 'truncated')?.text ?? '0') === '1';
    const bb = need(obj, 'bndbox', path);
    const bp = `${path}/bndbox`;
    const xmin = num(bb, 'xmin', bp);
    const ymin = num(bb, 'ymin', bp);
    const xmax = num(bb, 'xmax', bp);
    const ymax = num(bb, 'ymax', bp);
    if (xmax < xmin || ymax < ymin) {
      throw new Error(`${file}: field ${bp} has xmax < xmin or ymax < ymin (${xmin}, ${ymin}, ${xmax}, ${ymax})`);
    }
    if (difficult && !includeDifficult) return;
    // LOST's convention (datasets.py, extract_gt_VOC: `x1y1x2y2[0] -= 1; x1y1x2y2[1] -= 1`).
    objects.push({ name, label, box: [xmin - 1, ymin - 1, xmax, ymax], difficult, truncated });
  });
  return { id, filename, width, height, objects };
}
