import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, Rng, SyntheticDataset } from '@vitreg/core';
import { getConfig, VisionTransformer } from '@vitreg/registers';
import {
  affinityHost,
  discoverBatch,
  discoveryRecord,
  lostFeatures,
  lostFromAffinity,
  prepareInput,
  runProbe,
  corloc,
} from '../src/index.js';
import { imageTokens, patchPixels, pickOutlier, selectToken, batchTensor } from '../src/extract.js';

await initBackend('wasm', { log: () => {} });

const model = new VisionTransformer(getConfig('vit_micro_patch8_reg4'), { seed: 1 });
const data = new SyntheticDataset({ seed: 3, count: 6, size: 36 });

test('native geometry pads to a multiple of the patch and scales nothing', async () => {
  const item = await data.get(0);
  const inp = prepareInput(item, { kind: 'native' }, 8);
  assert.equal(inp.width, 36);
  assert.equal(inp.paddedWidth, 40);
  assert.deepEqual(inp.boxes, item.boxes);
  // the padding is zero (the mean colour after normalisation), the image itself is not
  assert.equal(inp.data[(0 * 40 + 38) * 3], 0);
  assert.equal(inp.data[(39 * 40 + 0) * 3 + 1], 0);
  const sq = prepareInput(item, { kind: 'square', size: 24 }, 8);
  assert.deepEqual(sq.scale, [24 / 36, 24 / 36]);
  sq.boxes[0].forEach((v, k) => assert.ok(Math.abs(v - (item.boxes[0][k] * 24) / 36) < 1e-9));
  assert.throws(() => prepareInput(item, { kind: 'square', size: 20 }, 8), /multiple of the patch size/);
  const half = prepareInput(item, { kind: 'native', maxSide: 18 }, 8);
  assert.equal(half.width, 18);
  assert.equal(half.paddedWidth, 24);
});

test('discoverBatch equals LOST on the keys taken by hand, and records score ground truth', async () => {
  const items = await Promise.all([0, 1, 2].map((i) => data.get(i)));
  const inputs = items.map((it) => prepareInput(it, { kind: 'native' }, 8));
  const before = tf.memory().numTensors;
  const results = discoverBatch(model, inputs);
  assert.equal(tf.memory().numTensors, before, 'discoverBatch leaks no tensors');
  // by hand: keys [B, H, N, hd] -> patch rows of image 1, heads concatenated
  const images = batchTensor(inputs);
  const out = model.forward(images, { keys: true });
  const keys = (await out.keys!.array()) as number[][][][];
  const [H, N, hd] = [keys[1].length, keys[1][0].length, keys[1][0][0].length];
  const P = 25;
  const feats = new Float32Array(P * H * hd);
  for (let p = 0; p < P; p++)
    for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) feats[p * H * hd + h * hd + d] = keys[1][h][N - P + p][d];
  const byHand = lostFromAffinity(affinityHost(feats, P, H * hd), [5, 5], 8, { imageSize: { width: 36, height: 36 } });
  assert.deepEqual(results[1].seed, byHand.seed);
  assert.deepEqual(results[1].box, byHand.box);
  assert.deepEqual(Array.from(results[1].component), Array.from(byHand.component));
  const viaHelper = lostFeatures(out, 'keys');
  assert.deepEqual(viaHelper.shape, [3, P, H * hd]);
  tf.dispose([images, viaHelper, ...Object.values(out).filter((v): v is tf.Tensor => v instanceof tf.Tensor)]);
  for (const [i, r] of results.entries()) {
    assert.ok(r.box[2] <= 36 && r.box[3] <= 36 && r.box[0] < r.box[2] && r.box[1] < r.box[3]);
    const rec = discoveryRecord(items[i].id, inputs[i], r, [5, 5]);
    assert.equal(typeof rec.iou, 'number');
    assert.equal(rec.hit, rec.iou! >= 0.5);
  }
  assert.throws(() => lostFeatures({ ...out, keys: undefined }, 'keys'), /did not return keys/);
  assert.equal(discoverBatch(model, inputs.slice(0, 1), { features: 'values' }).length, 1);
  assert.equal(corloc([true, false]).corloc, 0.5);
});

test('token selection reads the right rows of the output', async () => {
  const items = await Promise.all([0, 1].map((i) => data.get(i)));
  const inputs = items.map((it) => prepareInput(it, { kind: 'square', size: 32 }, 8));
  const images = batchTensor(inputs);
  const out = model.forward(images);
  const [t] = await imageTokens(out);
  const patches = (await out.patches.array()) as number[][][];
  const regs = (await out.registers.array()) as number[][][];
  const rng = new Rng(1);
  const o = pickOutlier(t);
  const norms = patches[0].map((row) => Math.hypot(...row));
  // untrained LayerNorm: every norm is ~8, so compare norms rather than indices
  if (!o.detected) assert.ok(norms[o.patch] >= Math.max(...norms) - 1e-4);
  const sel = selectToken(t, 'outlier', { rng });
  assert.deepEqual(Array.from(sel.feature), patches[0][sel.patch!].map(Math.fround));
  assert.deepEqual(Array.from(selectToken(t, 'register', { rng, register: 2 }).feature), regs[0][2].map(Math.fround));
  const cm = selectToken(t, 'cls+mean', { rng }).feature;
  assert.equal(cm.length, 2 * t.dim);
  const mean0 = patches[0].reduce((s, row) => s + row[0], 0) / patches[0].length;
  assert.ok(Math.abs(cm[t.dim] - mean0) < 1e-5);
  assert.throws(() => selectToken(t, 'register', { rng, register: 4 }), /outside \[0, 4\)/);
  const px = patchPixels(inputs[0].data, 32, [4, 4], 8, 6); // row 1, col 2
  assert.equal(px[0], inputs[0].data[(8 * 32 + 16) * 3]);
  assert.equal(px[8 * 3 * 7 + 5], inputs[0].data[((8 + 7) * 32 + 16 + 1) * 3 + 2]);
  tf.dispose([images, out.cls, out.registers, out.patches, out.prenorm, out.embeddings]);
});

test('runProbe runs every task on a tiny model and reports sane numbers', async () => {
  const train = { dataset: new SyntheticDataset({ seed: 1, count: 12, size: 32 }) };
  const testPart = { dataset: new SyntheticDataset({ seed: 1, count: 6, size: 32, split: 'val' }) };
  const progress: number[] = [];
  const before = tf.memory().numTensors;
  const cls = await runProbe(model, train, testPart, {
    task: 'class',
    token: 'cls',
    size: 32,
    steps: 30,
    weightDecays: [0, 1e-3],
    onProgress: (d) => progress.push(d),
  });
  assert.equal(progress.at(-1), 18);
  assert.equal(tf.memory().numTensors, before, 'runProbe leaks no tensors');
  assert.ok(cls.accuracy! >= 0 && cls.accuracy! <= 1 && cls.knn!.top1 >= 0);
  assert.equal(cls.featureDim, 64);
  const pos = await runProbe(model, train, testPart, { task: 'position', token: 'outlier', size: 32, steps: 30 });
  assert.equal(pos.chance, 1 / 16);
  assert.ok(pos.meanDistance! >= 0 && typeof pos.outlierFallbacks === 'number');
  const px = await runProbe(model, train, testPart, { task: 'pixels', token: 'normal', size: 32 });
  assert.ok(px.mse! > 0 && px.l2! > 0);
  await assert.rejects(runProbe(model, train, testPart, { task: 'position', token: 'cls', size: 32 }), /normal or outlier/);
  const sixClasses = { dataset: new SyntheticDataset({ seed: 1, count: 6, size: 32, numClasses: 6 }) };
  await assert.rejects(runProbe(model, train, sixClasses, { task: 'class', token: 'cls', size: 32 }), /different classes/);
});
