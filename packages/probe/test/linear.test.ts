import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  choleskySolve,
  classificationProbe,
  fitRidge,
  fitSoftmax,
  positionMetrics,
  regressionProbe,
  ridgePredict,
  regressionErrors,
  argmaxRows,
  softmaxLogits,
  accuracy,
} from '../src/linear.js';
import { splitIndices } from '../src/features.js';
import { initBackend, Rng } from '@vitreg/core';

await initBackend('wasm', { log: () => {} });

/** n rows around one random centre per class (centres 4 apart, unit noise): linearly separable. */
function clusters(rng: Rng, n: number, dim: number, classes: number, centres: number[][]) {
  const x = new Float32Array(n * dim);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % classes;
    for (let d = 0; d < dim; d++) x[i * dim + d] = centres[y[i]][d] + 0.5 * rng.normal();
  }
  return { x, y, n, dim };
}

test('softmax probe separates linearly separable classes', () => {
  const rng = new Rng(1);
  const dim = 8,
    classes = 4;
  const centres = Array.from({ length: classes }, () => Array.from({ length: dim }, () => 2 * rng.normal()));
  const train = clusters(rng, 160, dim, classes, centres);
  const test = clusters(rng, 80, dim, classes, centres);
  const r = classificationProbe(train, test, { numClasses: classes, steps: 150, weightDecays: [0, 1e-2] });
  assert.ok(r.accuracy >= 0.97, `accuracy ${r.accuracy}`);
  assert.equal(r.sweep.length, 2);
  assert.ok([0, 1e-2].includes(r.weightDecay));
  assert.equal(r.predictions.length, 80);
});

test('softmax probe on labels unrelated to the features stays near chance', () => {
  const rng = new Rng(2);
  const n = 200,
    dim = 6;
  const x = Float32Array.from({ length: n * dim }, () => rng.normal());
  const y = Int32Array.from({ length: n }, () => rng.int(4));
  const m = fitSoftmax({ x: x.slice(0, 100 * dim), y: y.slice(0, 100), n: 100, dim }, { numClasses: 4, steps: 100 });
  const acc = accuracy(argmaxRows(softmaxLogits(m, { x: x.slice(100 * dim), n: 100, dim }), 4), y.slice(100));
  assert.ok(acc < 0.45, `accuracy ${acc}`);
});

test('weight decay shrinks the weights', () => {
  const rng = new Rng(3);
  const dim = 4;
  const centres = [
    [2, 0, 0, 0],
    [-2, 0, 0, 0],
  ];
  const train = clusters(rng, 60, dim, 2, centres);
  const norm = (w: Float32Array) => Math.sqrt(w.reduce((s, v) => s + v * v, 0));
  const free = fitSoftmax(train, { numClasses: 2, steps: 100 });
  const decayed = fitSoftmax(train, { numClasses: 2, steps: 100, weightDecay: 0.5 });
  assert.ok(norm(decayed.weight) < 0.5 * norm(free.weight), `${norm(decayed.weight)} vs ${norm(free.weight)}`);
});

test('mini-batch training reaches the same separation', () => {
  const rng = new Rng(4);
  const dim = 5,
    classes = 3;
  const centres = Array.from({ length: classes }, () => Array.from({ length: dim }, () => 2 * rng.normal()));
  const train = clusters(rng, 120, dim, classes, centres);
  const test = clusters(rng, 60, dim, classes, centres);
  const m = fitSoftmax(train, { numClasses: classes, steps: 120, batchSize: 32 });
  assert.ok(accuracy(argmaxRows(softmaxLogits(m, test), classes), test.y) >= 0.95);
  assert.throws(() => fitSoftmax({ ...train, y: Int32Array.from(train.y, () => 7) }, { numClasses: 3 }), /label 7/);
});

test('position probe: features that encode the grid cell give top-1 ~1 and distance ~0', () => {
  const rng = new Rng(5);
  const rows = 4,
    cols = 4,
    dim = 24;
  const embed = Array.from({ length: rows * cols }, () => Array.from({ length: dim }, () => rng.normal()));
  const make = (n: number, informative: boolean) => {
    const x = new Float32Array(n * dim),
      y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      y[i] = rng.int(rows * cols);
      for (let d = 0; d < dim; d++) x[i * dim + d] = (informative ? embed[y[i]][d] : 0) + 0.3 * rng.normal();
    }
    return { x, y, n, dim };
  };
  const test = make(160, true);
  const r = classificationProbe(make(320, true), test, { numClasses: 16, steps: 150, weightDecays: [0] });
  const m = positionMetrics(r.predictions, test.y, cols);
  assert.ok(m.top1 >= 0.95 && m.meanDistance < 0.1, JSON.stringify(m));
  const noiseTest = make(160, false);
  const noise = classificationProbe(make(320, false), noiseTest, { numClasses: 16, steps: 150, weightDecays: [0] });
  const mn = positionMetrics(noise.predictions, noiseTest.y, cols);
  assert.ok(mn.top1 < 0.2 && mn.meanDistance > 1, JSON.stringify(mn));
});

test('positionMetrics measures Euclidean distance in patches', () => {
  // 3 columns: cell 0 = (0,0), cell 5 = (1,2), cell 4 = (1,1)
  assert.deepEqual(positionMetrics([0, 5], [0, 4], 3), { top1: 0.5, meanDistance: 0.5 });
  assert.deepEqual(positionMetrics([8], [0], 3), { top1: 0, meanDistance: Math.sqrt(8) });
});

test('choleskySolve solves a small SPD system', () => {
  const g = Float64Array.from([4, 2, 0, 2, 5, 1, 0, 1, 3]);
  const xTrue = [1, -2, 3, 0.5, 2, -1]; // [3, 2]
  const b = new Float64Array(6);
  for (let i = 0; i < 3; i++) for (let t = 0; t < 2; t++) for (let k = 0; k < 3; k++) b[i * 2 + t] += g[i * 3 + k] * xTrue[k * 2 + t];
  const x = choleskySolve(g, 3, b, 2);
  x.forEach((v, i) => assert.ok(Math.abs(v - xTrue[i]) < 1e-9));
  assert.throws(() => choleskySolve(Float64Array.from([1, 2, 2, 1]), 2, new Float64Array(2), 1), /positive definite/);
});

test('ridge probe recovers a linear map (pixels-style regression)', () => {
  const rng = new Rng(6);
  const n = 300,
    dim = 10,
    out = 12;
  const map = Array.from({ length: dim * out }, () => rng.normal());
  const x = Float32Array.from({ length: n * dim }, () => rng.normal());
  const targets = new Float32Array(n * out);
  for (let i = 0; i < n; i++)
    for (let t = 0; t < out; t++) {
      let s = 0.5;
      for (let d = 0; d < dim; d++) s += x[i * dim + d] * map[d * out + t];
      targets[i * out + t] = s + 0.05 * rng.normal();
    }
  const { train, heldOut } = splitIndices(n, 0.3, 1);
  const pick = (idx: Int32Array) => ({
    x: Float32Array.from(Array.from(idx).flatMap((i) => Array.from(x.subarray(i * dim, (i + 1) * dim)))),
    targets: Float32Array.from(Array.from(idx).flatMap((i) => Array.from(targets.subarray(i * out, (i + 1) * out)))),
    n: idx.length,
    dim,
    targetDim: out,
  });
  const r = regressionProbe(pick(train), pick(heldOut));
  assert.ok(r.mse < 0.01, `mse ${r.mse}`);
  assert.equal(r.sweep.length, 5);
  // a huge ridge predicts the mean: error close to the target variance (~dim)
  const flat = fitRidge(pick(train), 1e6);
  const e = regressionErrors(ridgePredict(flat, pick(heldOut)), pick(heldOut).targets, out);
  assert.ok(e.mse > 5, `mse ${e.mse}`);
});
