/**
 * The datasets of a training config: the built-in synthetic shapes (train / val splits), or an
 * image folder with `train/` and `val/` class folders, or one set of class folders split by a
 * seeded shuffle into train and val.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ImageFolderDataset, Rng, SyntheticDataset, type Dataset, type DatasetItem } from '@vitreg/core';
import type { TrainConfig } from './config.js';

export interface TrainData {
  train: Dataset;
  val: Dataset;
  numClasses: number;
  classNames: string[];
}

/** A view of some items of a dataset. */
export class SubsetDataset implements Dataset {
  readonly numClasses: number;
  readonly classNames: string[];
  readonly length: number;

  constructor(readonly base: Dataset, readonly indices: readonly number[]) {
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

/** Opens the data of `cfg.data`; errors name the folder and what was expected. */
export function openData(cfg: TrainConfig): TrainData {
  const d = cfg.data;
  if (d.source === 'synthetic') {
    const common = { seed: d.synthetic_seed, size: d.synthetic_size, numClasses: d.num_classes };
    const train = new SyntheticDataset({ ...common, count: d.train_size, split: 'train' });
    const val = new SyntheticDataset({ ...common, count: d.val_size, split: 'val' });
    return { train, val, numClasses: train.numClasses, classNames: train.classNames };
  }
  if (!isDir(d.source)) throw new Error(`data: "${d.source}" is not a folder (expected "synthetic" or a folder of class folders)`);
  const trainDir = join(d.source, 'train');
  if (isDir(trainDir)) {
    const valDir = join(d.source, 'val');
    if (!isDir(valDir)) throw new Error(`data: ${d.source} has train/ but no val/ folder`);
    const train = new ImageFolderDataset(trainDir);
    const val = new ImageFolderDataset(valDir);
    if (val.classNames.join('\n') !== train.classNames.join('\n')) {
      throw new Error(`data: ${valDir} has classes [${val.classNames}], expected the classes of ${trainDir} [${train.classNames}]`);
    }
    return { train, val, numClasses: train.numClasses, classNames: train.classNames };
  }
  const all = new ImageFolderDataset(d.source);
  const order = new Rng(d.synthetic_seed).shuffle(Array.from({ length: all.length }, (_, i) => i));
  const nVal = Math.max(1, Math.round(all.length * d.val_fraction));
  if (all.length - nVal < 1) throw new Error(`data: ${d.source} holds ${all.length} images, too few to hold out ${nVal} for validation`);
  return {
    train: new SubsetDataset(all, order.slice(nVal)),
    val: new SubsetDataset(all, order.slice(0, nVal)),
    numClasses: all.numClasses,
    classNames: all.classNames,
  };
}
