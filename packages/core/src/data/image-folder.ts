/**
 * A folder of images with one sub-folder per class (torchvision's `ImageFolder` layout, as
 * torchvision/datasets/folder.py): `root/<class>/<image>`. Class names are the sub-folder names
 * sorted by code point; labels are their positions; the images of a class are its files with one
 * of `extensions`, sorted by name (class folders are not searched recursively). Files are decoded
 * with sharp, returned as RGB at their stored size.
 *
 * Listing ImageNet-22k (~14M files in ~22k class folders) takes minutes on a network file system,
 * so the listing is cached in an index file written on the first open and read on later opens
 * (see `ImageFolderOptions` and the package README for the file and its validity rule).
 *
 * This file is the dataset class; opening the listing (index or folder) is image-folder-listing.ts's
 * job, the index file's format, parsing and writing image-folder-index.ts's.
 */
import { join } from 'node:path';
import { decodeImage } from '../image.js';
import { loadAsync, loadSync, PRELOADED, type ImageFolderIndexInfo, type ImageFolderOptions } from './image-folder-listing.js';
import { checkIndex, type Dataset, type DatasetItem } from './types.js';

/** torchvision's ImageFolder over `root/<class>/<image>`, its listing cached in an index file (see the module comment). */
export class ImageFolderDataset implements Dataset {
  readonly root: string;
  readonly classNames: string[];
  /** Where the listing came from (index file read, or folder listed). */
  readonly index: ImageFolderIndexInfo;
  /** Number of images of each class. */
  readonly classCounts: Uint32Array;
  /** `starts[c]`: position of class `c`'s first image; `starts[numClasses]` = length. */
  private readonly starts: Float64Array;
  /** Per class: its file names joined by '/', and the offset of each name in that string (count + 1 entries). */
  private readonly names: string[];
  private readonly offsets: Uint32Array[];

  /**
   * Opens `root` synchronously: reads a valid index, or lists the folder (one readdir per class
   * folder, in turn) and writes the index. `ImageFolderDataset.open` lists in parallel instead.
   */
  constructor(root: string, opts: ImageFolderOptions = {}) {
    const built = loadSync(root, opts);
    this.root = root;
    this.index = built.info;
    this.classNames = built.classes.map((c) => c.name);
    this.classCounts = Uint32Array.from(built.classes, (c) => c.count);
    this.starts = new Float64Array(built.classes.length + 1);
    built.classes.forEach((c, i) => (this.starts[i + 1] = this.starts[i]! + c.count));
    this.names = built.classes.map((c) => c.files);
    this.offsets = built.classes.map((c) => nameOffsets(c.files, c.count));
  }

  /**
   * Opens `root` like the constructor, but lists class folders `concurrency` at a time with
   * progress lines, and checks an index's mtimes in parallel: the way to open a large folder.
   */
  static async open(root: string, opts: ImageFolderOptions = {}): Promise<ImageFolderDataset> {
    const built = await loadAsync(root, opts);
    // The constructor takes the listing as is: no second read of the index.
    return new ImageFolderDataset(root, { ...opts, [PRELOADED]: built } as ImageFolderOptions);
  }

  get length(): number {
    return this.starts[this.starts.length - 1]!;
  }

  get numClasses(): number {
    return this.classNames.length;
  }

  /** Label of image `index`. */
  label(index: number): number {
    checkIndex(`image folder ${this.root}`, index, this.length);
    return this.classOf(index);
  }

  /** `<class>/<file>` of image `index` (its id). */
  relativePath(index: number): string {
    checkIndex(`image folder ${this.root}`, index, this.length);
    const c = this.classOf(index);
    return `${this.classNames[c]}/${this.fileName(c, index - this.starts[c]!)}`;
  }

  /** Path of image `index`: `root/<class>/<file>`. */
  path(index: number): string {
    return join(this.root, this.relativePath(index));
  }

  async get(index: number): Promise<DatasetItem> {
    checkIndex(`image folder ${this.root}`, index, this.length);
    const label = this.classOf(index);
    const id = `${this.classNames[label]}/${this.fileName(label, index - this.starts[label]!)}`;
    const { data, width, height } = await decodeImage(join(this.root, id));
    return { image: data, width, height, label, boxes: [], id };
  }

  /** The class holding position `index` (binary search over the class starts). */
  private classOf(index: number): number {
    let lo = 0;
    let hi = this.classNames.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= index) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private fileName(c: number, k: number): string {
    const off = this.offsets[c]!;
    return this.names[c]!.slice(off[k], off[k + 1]! - 1);
  }
}

/** Start offset of each of `count` names in `joined` ('/'-separated), plus length + 1 at the end. */
function nameOffsets(joined: string, count: number): Uint32Array {
  const off = new Uint32Array(count + 1);
  let pos = 0;
  for (let k = 1; k < count; k++) {
    pos = joined.indexOf('/', pos) + 1;
    off[k] = pos;
  }
  off[count] = joined.length + 1;
  return off;
}
