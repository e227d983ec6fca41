/**
 * NYU Depth v2 for monocular depth, in the layout of the BTS / Monocular-Depth-Estimation-Toolbox
 * release that DINOv2's depth evaluation reads (depth/datasets/nyu.py): RGB images and 16-bit PNG
 * depth maps in millimetres (`depth_scale` 1000; 0 = no measurement), 640x480. Two ways to list them:
 *
 * 1. A split file `<root>/nyu_<split>.txt` (or `splitFile`): one pair per line,
 *    `<rgb path> <depth path> [focal]`, paths relative to the root (a leading '/' is dropped); a line
 *    whose depth is `None` is skipped, as the toolbox does.
 *        /kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579
 * 2. Without a split file, a folder `<root>/<split>/`, searched recursively: every `rgb_<id>.jpg`
 *    (or .png) paired with `sync_depth_<id>.png` in the same folder (the BTS "sync" folders).
 *
 * Pairs are sorted by image path (as the toolbox). Evaluation, as the toolbox's NYU config: depth in
 * (0.001, 10) m counts (`depthRange`), inside the Eigen crop rows 45..470, columns 41..600
 * (`eigen_crop=True`), applied to 480x640 maps (`eigenCrop: 'auto'`; true forces it, false drops it).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { decodeImage } from '../image.js';
import { readUint16Png, type DenseDataset, type DenseItem, type DenseTarget, type DenseTask } from './dense.js';
import { checkIndex } from './types.js';

/** The Eigen crop of 480x640 NYU maps: rows [45, 471), columns [41, 601). */
export const NYU_EIGEN_CROP: [number, number, number, number] = [45, 471, 41, 601];

export interface NyuOptions {
  /** 'train' or 'test' (default 'test'). */
  split?: 'train' | 'test';
  /** Split file (absolute, or relative to the root); default `nyu_<split>.txt` when it exists. */
  splitFile?: string;
  /** Stored value per metre (default 1000: millimetres). */
  depthScale?: number;
  /** Depths that count, exclusive (default [0.001, 10] m). */
  depthRange?: [number, number];
  /** Eigen crop: 'auto' (default) for 480x640 maps only, true always, false never. */
  eigenCrop?: 'auto' | boolean;
}

export interface NyuPair {
  image: string;
  depth: string;
}

const RGB_RE = /^rgb_(.+)\.(jpg|jpeg|png)$/i;

function listPairs(dir: string, root: string, out: NyuPair[]): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) listPairs(path, root, out);
    else {
      const m = RGB_RE.exec(e.name);
      if (!m) continue;
      const depth = join(dir, `sync_depth_${m[1]}.png`);
      if (!existsSync(depth)) throw new Error(`NYU dataset ${root}: ${path} has no depth map ${depth}`);
      out.push({ image: path, depth });
    }
  }
}

export class NyuDepthDataset implements DenseDataset {
  readonly root: string;
  readonly split: 'train' | 'test';
  readonly pairs: NyuPair[];
  readonly depthScale: number;
  readonly depthRange: [number, number];
  readonly eigenCrop: 'auto' | boolean;
  readonly tasks: readonly DenseTask[] = ['depth'];
  readonly numClasses = 0;
  readonly classNames: string[] = [];
  /** Where the pairs came from: the split file, or the folder searched. */
  readonly source: string;

  constructor(root: string, opts: NyuOptions = {}) {
    this.root = root;
    this.split = opts.split ?? 'test';
    if (this.split !== 'train' && this.split !== 'test')
      throw new Error(`NYU dataset ${root}: split must be train or test, got '${this.split}'`);
    this.depthScale = opts.depthScale ?? 1000;
    this.depthRange = opts.depthRange ?? [1e-3, 10];
    this.eigenCrop = opts.eigenCrop ?? 'auto';
    if (!(this.depthScale > 0)) throw new Error(`NYU dataset ${root}: depthScale must be > 0, got ${this.depthScale}`);
    if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`NYU dataset: ${root} is not a folder`);
    const splitFile = resolve(root, opts.splitFile ?? `nyu_${this.split}.txt`);
    const folder = join(root, this.split);
    if (opts.splitFile !== undefined || existsSync(splitFile)) {
      let text: string;
      try {
        text = readFileSync(splitFile, 'utf8');
      } catch (err) {
        throw new Error(`NYU dataset ${root}: cannot read split file ${splitFile}: ${(err as Error).message}`, { cause: err });
      }
      this.pairs = [];
      text.split(/\r?\n/).forEach((line, k) => {
        const parts = line.trim().split(/\s+/);
        if (parts[0] === '') return;
        if (parts.length < 2) throw new Error(`${splitFile}:${k + 1}: expected '<rgb path> <depth path> [focal]', got '${line.trim()}'`);
        if (parts[1] === 'None') return;
        const rel = (p: string) => join(root, p.replace(/^[/\\]+/, ''));
        this.pairs.push({ image: rel(parts[0]), depth: rel(parts[1]) });
      });
      this.source = splitFile;
    } else if (existsSync(folder) && statSync(folder).isDirectory()) {
      this.pairs = [];
      listPairs(folder, root, this.pairs);
      this.source = folder;
    } else {
      throw new Error(
        `NYU dataset ${root}: found neither the split file ${splitFile} nor the folder ${folder}; expected ` +
          `nyu_${this.split}.txt ('<rgb> <depth> [focal]' per line) or ${this.split}/**/rgb_<id>.jpg + sync_depth_<id>.png`,
      );
    }
    if (this.pairs.length === 0) throw new Error(`NYU dataset ${root}: ${this.source} lists no image / depth pair`);
    const missing = this.pairs.flatMap((p) => [p.image, p.depth]).filter((f) => !existsSync(f));
    if (missing.length > 0)
      throw new Error(`NYU dataset ${root}: ${missing.length} file(s) listed in ${this.source} do not exist, e.g. ${missing[0]}`);
    this.pairs.sort((a, b) => (a.image < b.image ? -1 : a.image > b.image ? 1 : 0));
  }

  get length(): number {
    return this.pairs.length;
  }

  /** The depth map of item `index` in metres, and its evaluation crop (no image decoding). */
  async target(index: number): Promise<DenseTarget> {
    checkIndex(`NYU dataset ${this.root}`, index, this.length);
    const { data, width, height } = await readUint16Png(this.pairs[index].depth);
    const depth = Float32Array.from(data, (v) => v / this.depthScale);
    const crop = this.eigenCrop === true || (this.eigenCrop === 'auto' && width === 640 && height === 480);
    return { width, height, depth, ...(crop ? { evalCrop: [...NYU_EIGEN_CROP] as DenseTarget['evalCrop'] } : {}) };
  }

  async get(index: number): Promise<DenseItem> {
    checkIndex(`NYU dataset ${this.root}`, index, this.length);
    const pair = this.pairs[index];
    const [img, target] = await Promise.all([decodeImage(pair.image), this.target(index)]);
    if (img.width !== target.width || img.height !== target.height) {
      throw new Error(
        `NYU dataset: ${pair.image} is ${img.width}x${img.height} but its depth map ${pair.depth} is ${target.width}x${target.height}`,
      );
    }
    return { image: img.data, width: img.width, height: img.height, label: -1, boxes: [], id: relative(this.root, pair.image), target };
  }
}
