/**
 * The data of a dense probe from one spec: the synthetic dense set, an ADE20k folder (segmentation) or an
 * NYU Depth v2 folder (depth), as training and test parts, the folder's kind recognised by its layout.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Ade20kDataset, NyuDepthDataset, Rng, SyntheticDenseDataset, type DenseDataset, type DenseTask } from '@vitreg/core';
import type { DensePart } from './dense-run.js';

export interface DenseSourceOptions {
  /** Synthetic: training images (default 200). ADE20k / NYU: a seeded random subset of this many (default all). */
  count?: number;
  /** Synthetic: test images (default count / 4). ADE20k / NYU: a seeded random subset (default all). */
  testCount?: number;
  /** Side of the synthetic images (default 224). */
  syntheticSize?: number;
  seed?: number;
}

export type DenseSourceKind = 'synthetic' | 'ade20k' | 'nyu';

/** Which dense dataset a folder holds, from its layout (null: neither). */
export function detectDenseLayout(dir: string): 'ade20k' | 'nyu' | null {
  const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();
  if (isDir(join(dir, 'images', 'training')) || isDir(join(dir, 'images', 'validation'))) return 'ade20k';
  const nyuLists = existsSync(join(dir, 'nyu_train.txt')) || existsSync(join(dir, 'nyu_test.txt'));
  if (nyuLists || (isDir(join(dir, 'train')) && isDir(join(dir, 'test')))) return 'nyu';
  return null;
}

function subset(n: number, k: number | undefined, seed: number): number[] | undefined {
  if (k === undefined || k >= n) return undefined;
  return new Rng(seed)
    .shuffle(Array.from({ length: n }, (_, i) => i))
    .slice(0, k)
    .sort((a, b) => a - b);
}

/**
 * Training and test parts of a dense task from a spec: 'synthetic' (SyntheticDenseDataset, train and
 * val streams); 'ade20k:DIR' (training / validation); 'nyu:DIR' (train / test); or a DIR recognised by
 * its layout (detectDenseLayout). Errors name the spec and what was expected.
 */
export function openDenseSource(
  spec: string,
  task: DenseTask,
  o: DenseSourceOptions = {},
): { train: DensePart; test: DensePart; kind: DenseSourceKind } {
  const seed = o.seed ?? 0;
  if (spec === 'synthetic') {
    const count = o.count ?? 200;
    const testCount = o.testCount ?? Math.max(1, Math.ceil(count / 4));
    const size = o.syntheticSize ?? 224;
    return {
      kind: 'synthetic',
      train: { dataset: new SyntheticDenseDataset({ seed, count, size, split: 'train' }) },
      test: { dataset: new SyntheticDenseDataset({ seed, count: testCount, size, split: 'val' }) },
    };
  }
  const m = /^(ade20k|nyu):(.+)$/.exec(spec);
  const dir = m ? m[2] : spec;
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    const expected = "expected 'synthetic', ade20k:DIR, nyu:DIR or a folder with the ADE20k or NYU layout";
    throw new Error(`dense data ${spec}: ${expected}; ${dir} is not a folder`);
  }
  const kind = (m?.[1] as 'ade20k' | 'nyu' | undefined) ?? detectDenseLayout(dir);
  if (kind === null) {
    throw new Error(
      `dense data ${dir}: neither the ADE20k layout (images/training, annotations/training) nor the NYU one ` +
        '(nyu_train.txt / nyu_test.txt, or train/ and test/ folders); prefix ade20k: or nyu: to say which',
    );
  }
  const wants = kind === 'ade20k' ? 'segmentation' : 'depth';
  if (task !== wants) {
    throw new Error(`dense data ${spec}: ${kind === 'ade20k' ? 'ADE20k' : 'NYU Depth v2'} has ${wants} targets, not ${task}`);
  }
  const [train, test]: DenseDataset[] =
    kind === 'ade20k'
      ? [new Ade20kDataset(dir, { split: 'training' }), new Ade20kDataset(dir, { split: 'validation' })]
      : [new NyuDepthDataset(dir, { split: 'train' }), new NyuDepthDataset(dir, { split: 'test' })];
  return {
    kind,
    train: { dataset: train, indices: subset(train.length, o.count, seed) },
    test: { dataset: test, indices: subset(test.length, o.testCount, seed + 1) },
  };
}
