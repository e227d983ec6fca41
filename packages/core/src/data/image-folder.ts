/**
 * A folder of images with one sub-folder per class (torchvision's `ImageFolder` layout):
 * `root/<class>/<image>`. Class names are the sub-folder names sorted by code point; labels are
 * their positions. Files are decoded with sharp (any of `extensions`), returned as RGB at their
 * stored size.
 */
import { readdirSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { decodeImage, IMAGE_EXTENSIONS } from '../image.js';
import { checkIndex, type Dataset, type DatasetItem } from './types.js';

export interface ImageFolderOptions {
  /** File extensions to include, case-insensitive, with or without the dot (default: IMAGE_EXTENSIONS). */
  extensions?: string[];
}

export class ImageFolderDataset implements Dataset {
  readonly root: string;
  readonly classNames: string[];
  /** `[path, label]` of every image, by class then file name. */
  readonly samples: ReadonlyArray<readonly [string, number]>;
  private readonly ids: string[] = [];

  constructor(root: string, opts: ImageFolderOptions = {}) {
    this.root = root;
    const extensions = new Set(
      (opts.extensions ?? IMAGE_EXTENSIONS).map((e) => (e.startsWith('.') ? e : `.${e}`).toLowerCase()),
    );
    let entries;
    try {
      entries = readdirSync(root, { withFileTypes: true });
    } catch (err) {
      throw new Error(`image folder ${root}: cannot read it (${(err as Error).message})`);
    }
    this.classNames = entries
      .filter((e) => e.isDirectory() || (e.isSymbolicLink() && statSync(join(root, e.name)).isDirectory()))
      .map((e) => e.name)
      .sort();
    if (this.classNames.length === 0) {
      throw new Error(`image folder ${root}: expected one sub-folder per class, found none`);
    }
    const samples: [string, number][] = [];
    this.classNames.forEach((name, label) => {
      const dir = join(root, name);
      const files = readdirSync(dir)
        .filter((f) => extensions.has(extname(f).toLowerCase()))
        .sort();
      if (files.length === 0) {
        throw new Error(
          `image folder ${root}: class folder ${dir} holds no images (extensions ${[...extensions].join(', ')})`,
        );
      }
      for (const f of files) {
        samples.push([join(dir, f), label]);
        this.ids.push(`${name}/${f}`);
      }
    });
    this.samples = samples;
  }

  get length(): number {
    return this.samples.length;
  }

  get numClasses(): number {
    return this.classNames.length;
  }

  async get(index: number): Promise<DatasetItem> {
    checkIndex(`image folder ${this.root}`, index, this.length);
    const [path, label] = this.samples[index];
    const { data, width, height } = await decodeImage(path);
    return { image: data, width, height, label, boxes: [], id: this.ids[index] };
  }
}
