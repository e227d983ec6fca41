/**
 * The data of a one-token probe (class, position, pixels) from one spec, as training and test parts: the
 * built-in synthetic shapes (train and val streams), or an image folder of class sub-folders (its train/
 * and val/ when it has both, else a seeded 80/20 split of its images). The dense probes' data is in
 * dense-source.ts.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ImageFolderDataset, SyntheticDataset } from '@vitreg/core';
import { splitIndices } from './features.js';
import type { DataPart } from './run.js';

export interface ProbeSourceOptions {
  /** Synthetic: training images (default 200) and test images (default count / 4). */
  count?: number;
  testCount?: number;
  /** Side of the synthetic images (default 224). */
  syntheticSize?: number;
  /** Seed of the synthetic images and of the 80/20 split (default 0). */
  seed?: number;
}

/**
 * 'synthetic' or an image folder (see the module comment) as training and test parts. A folder that
 * cannot be read as classes of images is an error from ImageFolderDataset naming it.
 */
export function openProbeSource(spec: string, o: ProbeSourceOptions = {}): { train: DataPart; test: DataPart } {
  const seed = o.seed ?? 0;
  if (spec === 'synthetic') {
    const count = o.count ?? 200;
    const testCount = o.testCount ?? Math.max(1, Math.ceil(count / 4));
    const size = o.syntheticSize ?? 224;
    return {
      train: { dataset: new SyntheticDataset({ seed, count, size, split: 'train' }) },
      test: { dataset: new SyntheticDataset({ seed, count: testCount, size, split: 'val' }) },
    };
  }
  if (existsSync(join(spec, 'train')) && existsSync(join(spec, 'val'))) {
    return {
      train: { dataset: new ImageFolderDataset(join(spec, 'train')) },
      test: { dataset: new ImageFolderDataset(join(spec, 'val')) },
    };
  }
  const ds = new ImageFolderDataset(spec);
  const { train, heldOut } = splitIndices(ds.length, 0.2, seed);
  return { train: { dataset: ds, indices: Array.from(train) }, test: { dataset: ds, indices: Array.from(heldOut) } };
}
