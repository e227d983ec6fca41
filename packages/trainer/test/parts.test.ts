import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { DinoHead } from '../src/heads.js';
import { collateMasks, MaskingGenerator } from '../src/masking.js';
import { LocalGradientSync } from '../src/sync.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

test('DINO head: MLP with exact GELU, L2 normalisation, last layer with unit-norm columns (weight_g starts at 1)', () => {
  const head = new DinoHead({ inDim: 3, outDim: 4, hiddenDim: 5, bottleneckDim: 2, nlayers: 3 }, new Rng(1));
  assert.deepEqual(Object.keys(head.params), [
    'mlp.0.weight',
    'mlp.0.bias',
    'mlp.2.weight',
    'mlp.2.bias',
    'mlp.4.weight',
    'mlp.4.bias',
    'last_layer.weight_g',
    'last_layer.weight_v',
  ]);
  assert.deepEqual(head.params['last_layer.weight_v']!.shape, [2, 4]);
  const x = [[0.5, -1, 2]];
  const get = (n: string) => head.params[n]!.arraySync() as number[][];
  const getb = (n: string) => Array.from(head.params[n]!.dataSync());
  const lin = (v: number[], w: number[][], b: number[]) => b.map((bj, j) => bj + v.reduce((a, vi, i) => a + vi * w[i]![j]!, 0));
  const erf = (z: number) => {
    // Abramowitz-Stegun 7.1.26, |error| < 1.5e-7
    const t = 1 / (1 + 0.3275911 * Math.abs(z));
    const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-z * z);
    return z >= 0 ? y : -y;
  };
  const gelu = (v: number[]) => v.map((z) => 0.5 * z * (1 + erf(z / Math.SQRT2)));
  let h = gelu(lin(x[0]!, get('mlp.0.weight'), getb('mlp.0.bias')));
  h = gelu(lin(h, get('mlp.2.weight'), getb('mlp.2.bias')));
  h = lin(h, get('mlp.4.weight'), getb('mlp.4.bias'));
  const n = Math.hypot(...h);
  h = h.map((v) => v / n);
  const v = get('last_layer.weight_v');
  const expected = [0, 1, 2, 3].map((j) => (h[0]! * v[0]![j]! + h[1]! * v[1]![j]!) / Math.hypot(v[0]![j]!, v[1]![j]!));
  const got = head.forward(tf.tensor2d(x)).dataSync();
  expected.forEach((e, j) => assertClose(got[j]!, e, 1e-5, `logit ${j}`));
  // Scaling weight_v does not change the output: only its direction counts.
  head.params['last_layer.weight_v']!.assign(tf.mul(head.params['last_layer.weight_v']!, 3));
  const scaled = head.forward(tf.tensor2d(x)).dataSync();
  expected.forEach((e, j) => assertClose(scaled[j]!, e, 1e-5, `scaled logit ${j}`));
});

test('iBOT masks: block masks, ratios within range for the masked fraction, weights 1 / count', () => {
  const gen = new MaskingGenerator(8, 8, { maxNumPatches: 32 });
  const rng = new Rng(3);
  const batch = collateMasks(10, gen, [0.1, 0.5], 0.5, rng);
  const counts = Array.from({ length: 10 }, (_, b) => batch.masks.slice(b * 64, b * 64 + 64).reduce((a, v) => a + v, 0));
  assert.equal(counts.filter((c) => c > 0).length, 5);
  for (const c of counts) assert.ok(c === 0 || (c >= 4 && c <= 0.5 * 64 + 8), `count ${c}`);
  assert.equal(
    batch.indices.length,
    counts.reduce((a, b) => a + b, 0),
  );
  batch.indices.forEach((idx, i) => {
    assert.equal(batch.masks[idx], 1);
    assertClose(batch.weights[i]!, 1 / counts[Math.floor(idx / 64)]!);
  });
  // Seeded: the same state gives the same masks.
  assert.deepEqual(collateMasks(10, gen, [0.1, 0.5], 0.5, new Rng(3)).masks, batch.masks);
});

test('local gradient sync: world size 1, identity all-reduce, broadcast and commit', async () => {
  const s = new LocalGradientSync();
  assert.deepEqual([s.rank, s.worldSize], [0, 1]);
  const g = [new Float32Array([1, 2])];
  await s.allReduce(g);
  assert.deepEqual(g[0], new Float32Array([1, 2]));
  const state = { a: new Float32Array([1]) };
  const got = await s.broadcast(state, { step: 3 });
  assert.equal(got.state, state);
  assert.deepEqual(got.meta, { step: 3 });
  assert.deepEqual(await s.commitStep(1, { loss: 2 }), [{ loss: 2 }]);
});

test('data: synthetic splits, an image folder split by val_fraction, train/ + val/ folders, clear errors', async () => {
  const { mkdtemp, mkdir, rm, writeFile } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { encodePng } = await import('@vitreg/core');
  const { openData } = await import('../src/data.js');
  const { validateTrainConfig } = await import('../src/config-validate.js');
  const syn = openData(validateTrainConfig({ data: { source: 'synthetic', train_size: 10, val_size: 4, num_classes: 6 } }));
  assert.deepEqual([syn.train.length, syn.val.length, syn.numClasses], [10, 4, 6]);
  assert.notDeepEqual((await syn.train.get(0)).image, (await syn.val.get(0)).image);
  const root = await mkdtemp(join(tmpdir(), 'vitreg-data-'));
  try {
    const png = await encodePng(new Uint8Array(8 * 8 * 3).fill(90), 8, 8);
    for (const cls of ['cat', 'dog']) {
      await mkdir(join(root, 'flat', cls), { recursive: true });
      for (let i = 0; i < 5; i++) await writeFile(join(root, 'flat', cls, `${i}.png`), png);
      for (const split of ['train', 'val']) {
        await mkdir(join(root, 'split', split, cls), { recursive: true });
        await writeFile(join(root, 'split', split, cls, 'a.png'), png);
      }
    }
    const flat = openData(validateTrainConfig({ data: { source: join(root, 'flat'), val_fraction: 0.2 } }));
    assert.deepEqual([flat.train.length, flat.val.length, flat.classNames], [8, 2, ['cat', 'dog']]);
    const item = await flat.val.get(1);
    assert.deepEqual([item.width, item.height], [8, 8]);
    const split = openData(validateTrainConfig({ data: { source: join(root, 'split') } }));
    assert.deepEqual([split.train.length, split.val.length, split.numClasses], [2, 2, 2]);
    await rm(join(root, 'split', 'val'), { recursive: true });
    assert.throws(() => openData(validateTrainConfig({ data: { source: join(root, 'split') } })), /has train\/ but no val\/ folder/);
    assert.throws(() => openData(validateTrainConfig({ data: { source: join(root, 'none') } })), /is not a folder/);
    // A file list: val from the sibling val.txt, else a val_fraction split; labels past the class names are errors.
    await writeFile(join(root, 'flat', 'train.txt'), 'cat/0.png 0\ncat/1.png 0\ndog/0.png 3\n');
    const one = openData(validateTrainConfig({ data: { source: join(root, 'flat', 'train.txt'), val_fraction: 0.34 } }));
    assert.deepEqual([one.train.length, one.val.length, one.numClasses], [2, 1, 4]);
    await writeFile(join(root, 'flat', 'val.txt'), 'dog/1.png\t5\n');
    const two = openData(validateTrainConfig({ data: { source: join(root, 'flat', 'train.txt') } }));
    assert.deepEqual([two.train.length, two.val.length, two.numClasses, (await two.val.get(0)).label], [3, 1, 6, 5]);
    await writeFile(join(root, 'flat', 'classes.txt'), 'a\nb\nc\nd\ne\n');
    assert.throws(
      () => openData(validateTrainConfig({ data: { source: join(root, 'flat', 'train.txt') } })),
      /val\.txt:1: label 5 is out of range/,
    );
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
