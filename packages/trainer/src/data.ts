/**
 * The datasets of a training config (`data.source`):
 * - `synthetic`: the built-in synthetic shapes (train / val splits);
 * - a folder with `train/` and `val/` class folders, or one set of class folders split by a seeded
 *   shuffle into train and val (`data.val_fraction`); folders are read through their cached index
 *   (see ImageFolderDataset);
 * - a file list (any file, e.g. `train.txt` or `train.csv`; see FileListDataset for the format):
 *   val is the sibling file named with `train` replaced by `val` (`train.txt` -> `val.txt`,
 *   `in22k_train.csv` -> `in22k_val.csv`) when it exists, else a `data.val_fraction` split of the
 *   list. Class names come from a `classes.txt` next to the list when there is one (line k names
 *   label k - 1), else they are the label numbers (as many as the largest label of both lists + 1).
 */
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import {
  FileListDataset,
  ImageFolderDataset,
  parseFileList,
  Rng,
  SyntheticDataset,
  type Dataset,
  type DatasetItem,
  type ImageFolderOptions,
} from '@vitreg/core';
import type { TrainConfig } from './config.js';

export interface TrainData {
  train: Dataset;
  val: Dataset;
  numClasses: number;
  classNames: string[];
}

/** How image folders are opened: their index (`rebuildIndex` is the CLI's --rebuild-index) and messages. */
export type OpenDataOptions = Pick<ImageFolderOptions, 'rebuildIndex' | 'indexCheck' | 'cacheDir' | 'concurrency' | 'log'>;

/** A view of some items of a dataset. */
export class SubsetDataset implements Dataset {
  readonly numClasses: number;
  readonly classNames: string[];
  readonly length: number;

  constructor(
    readonly base: Dataset,
    readonly indices: readonly number[],
  ) {
    this.numClasses = base.numClasses;
    this.classNames = base.classNames;
    this.length = indices.length;
  }

  get(index: number): Promise<DatasetItem> {
    if (!Number.isInteger(index) || index < 0 || index >= this.length) {
      return Promise.reject(new RangeError(`subset: index ${index} is out of range (expected an integer in [0, ${this.length}))`));
    }
    return this.base.get(this.indices[index]!);
  }
}

function isDir(path: string): boolean {
  return existsSync(path) && statSync(path).isDirectory();
}

function isFile(path: string): boolean {
  return existsSync(path) && statSync(path).isFile();
}

/** The image folders a source reads (none for synthetic data and file lists). */
function folders(cfg: TrainConfig): string[] {
  const src = cfg.data.source;
  if (src === 'synthetic' || !isDir(src)) return [];
  const trainDir = join(src, 'train');
  return isDir(trainDir) ? [trainDir, join(src, 'val')].filter(isDir) : [src];
}

/** The val list next to a train list: its name with the first `train` replaced by `val`, when that file exists. */
export function siblingValList(trainList: string): string | null {
  const name = basename(trainList);
  if (!name.includes('train')) return null;
  const val = join(dirname(trainList), name.replace('train', 'val'));
  return isFile(val) ? val : null;
}

/**
 * Opens the data of `cfg.data`; errors name the folder or the file (and line) and what was
 * expected. Synchronous: a folder without a valid index is listed one class folder at a time, so
 * for a large folder call `openDataAsync` first (it lists in parallel and writes the index).
 */
export function openData(cfg: TrainConfig, opts: OpenDataOptions = {}): TrainData {
  return assemble(cfg, (dir) => new ImageFolderDataset(dir, opts));
}

/**
 * `openData`, with image folders listed `opts.concurrency` class folders at a time (progress lines
 * on long listings) and their index written, so a later `openData` of the same config only reads it.
 */
export async function openDataAsync(cfg: TrainConfig, opts: OpenDataOptions = {}): Promise<TrainData> {
  const opened = new Map<string, ImageFolderDataset>();
  for (const dir of folders(cfg)) opened.set(dir, await ImageFolderDataset.open(dir, opts));
  return assemble(cfg, (dir) => opened.get(dir) ?? new ImageFolderDataset(dir, opts));
}

function splitByFraction(cfg: TrainConfig, all: Dataset, what: string): TrainData {
  const d = cfg.data;
  const order = new Rng(d.synthetic_seed).shuffle(Array.from({ length: all.length }, (_, i) => i));
  const nVal = Math.max(1, Math.round(all.length * d.val_fraction));
  if (all.length - nVal < 1) throw new Error(`data: ${what} holds ${all.length} images, too few to hold out ${nVal} for validation`);
  return {
    train: new SubsetDataset(all, order.slice(nVal)),
    val: new SubsetDataset(all, order.slice(0, nVal)),
    numClasses: all.numClasses,
    classNames: all.classNames,
  };
}

function openLists(cfg: TrainConfig): TrainData {
  const trainFile = cfg.data.source;
  const valFile = siblingValList(trainFile);
  const classesFile = join(dirname(trainFile), 'classes.txt');
  const trainList = parseFileList(trainFile);
  const valList = valFile ? parseFileList(valFile) : null;
  const classes = isFile(classesFile) ? { classesFile } : { numClasses: Math.max(trainList.maxLabel, valList?.maxLabel ?? -1) + 1 };
  const train = new FileListDataset(trainList, classes);
  if (!valList) return splitByFraction(cfg, train, `file list ${trainFile}`);
  const val = new FileListDataset(valList, classes);
  return { train, val, numClasses: train.numClasses, classNames: train.classNames };
}

/** The built-in shapes of a config (`data.synthetic_*`, num_classes, train/val sizes): its train and val splits. */
export function syntheticSplits(cfg: TrainConfig): { train: SyntheticDataset; val: SyntheticDataset } {
  const d = cfg.data;
  const common = {
    seed: d.synthetic_seed,
    size: d.synthetic_size,
    numClasses: d.num_classes,
    background: d.synthetic_background,
    objectSide: d.synthetic_object_side,
  };
  return {
    train: new SyntheticDataset({ ...common, count: d.train_size, split: 'train' }),
    val: new SyntheticDataset({ ...common, count: d.val_size, split: 'val' }),
  };
}

function assemble(cfg: TrainConfig, openFolder: (dir: string) => ImageFolderDataset): TrainData {
  const d = cfg.data;
  if (d.source === 'synthetic') {
    const { train, val } = syntheticSplits(cfg);
    return { train, val, numClasses: train.numClasses, classNames: train.classNames };
  }
  if (d.source === '') {
    throw new Error(
      'data: no data source; give --data FOLDER or a file list (data.source in a config file), or --data synthetic for the built-in shapes',
    );
  }
  if (isFile(d.source)) return openLists(cfg);
  if (!isDir(d.source)) {
    throw new Error(
      `data: "${d.source}" is not a folder or a file (expected "synthetic", a folder of class folders or of train/ and val/, or a file list such as train.txt)`,
    );
  }
  const trainDir = join(d.source, 'train');
  if (isDir(trainDir)) {
    const valDir = join(d.source, 'val');
    if (!isDir(valDir)) throw new Error(`data: ${d.source} has train/ but no val/ folder`);
    const train = openFolder(trainDir);
    const val = openFolder(valDir);
    if (val.classNames.join('\n') !== train.classNames.join('\n')) {
      throw new Error(`data: ${valDir} has classes [${val.classNames}], expected the classes of ${trainDir} [${train.classNames}]`);
    }
    return { train, val, numClasses: train.numClasses, classNames: train.classNames };
  }
  return splitByFraction(cfg, openFolder(d.source), d.source);
}
