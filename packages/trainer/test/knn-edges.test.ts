/**
 * k-NN at its edges (knn.test.ts checks the votes against DINO's weighted k-NN): every malformed set is
 * refused naming it, labels outside [0, classes) are refused, ties go to the lower class and the lower
 * row, an empty test set scores 0, and no tensor is left behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@vitreg/core';
import { knnClassify, topK, type LabelledRows } from '../src/knn.js';

const rows = (x: number[], y: number[], dim: number): LabelledRows => ({
  x: Float32Array.from(x),
  y: Int32Array.from(y),
  n: y.length,
  dim,
});

test('k-NN refuses malformed sets, naming the training or test set', async () => {
  await initBackend('wasm', { log: () => {} });
  const good = rows([1, 0, 0, 1], [0, 1], 2);
  const opts = { numClasses: 2, k: 1 };
  const cases: [LabelledRows, LabelledRows, RegExp][] = [
    [{ ...good, n: 1.5 }, good, /k-NN training set: expected integer n >= 0 and dim >= 1, got n=1.5, dim=2$/],
    [{ ...good, n: -1 }, good, /k-NN training set: expected integer n >= 0/],
    [good, { ...good, dim: 0 }, /k-NN test set: expected integer n >= 0 and dim >= 1, got n=2, dim=0$/],
    [good, { ...good, dim: 1.5 }, /k-NN test set: expected integer/],
    [{ ...good, x: new Float32Array(3) }, good, /k-NN training set: features hold 3 values, expected n\*dim = 2\*2 = 4$/],
    [good, { ...good, y: new Int32Array(3) }, /k-NN test set: 3 labels for 2 rows$/],
    [rows([], [], 2), good, /k-NN: the training set is empty$/],
    [rows([1, 0, 0, 1], [0, -1], 2), good, /k-NN: training label -1 is outside \[0, 2\)$/],
    [rows([1, 0, 0, 1], [0, 2], 2), good, /k-NN: training label 2 is outside \[0, 2\)$/],
  ];
  for (const [train, testSet, message] of cases) assert.throws(() => knnClassify(train, testSet, opts), message);
  // n = 0 is a valid (empty) test set: accuracy 0, no predictions.
  assert.deepEqual(knnClassify(good, rows([], [], 2), opts), { top1: 0, top5: 0, predictions: new Int32Array(0) });
});

test('k-NN ties: equal votes go to the lower class; topK keeps the lower index first; nothing leaks', async () => {
  await initBackend('wasm', { log: () => {} });
  const before = tf.memory().numTensors;
  // Two identical training rows of classes 2 and 1: equal votes, class 1 wins; the test row is class 2.
  const r = knnClassify(rows([1, 0, 1, 0, 0, 1], [2, 1, 0], 2), rows([1, 0], [2], 2), { numClasses: 3, k: 2 });
  assert.deepEqual(Array.from(r.predictions), [1]);
  assert.deepEqual([r.top1, r.top5], [0, 1]);
  assert.equal(tf.memory().numTensors, before);
  assert.deepEqual(topK([0.5, 1, 1, 0.2, 1], 4), [1, 2, 4, 0]);
  assert.deepEqual(topK([3, 3, 3], 2), [0, 1]);
});

test('k-NN on one-dimensional features: rows normalise to their sign, neighbours share it', async () => {
  await initBackend('wasm', { log: () => {} });
  const r = knnClassify(rows([2, 3, -1, -5], [0, 0, 1, 1], 1), rows([4, -0.5], [0, 1], 1), { numClasses: 2, k: 2, temperature: 0.07 });
  assert.deepEqual(Array.from(r.predictions), [0, 1]);
  assert.equal(r.top1, 1);
});
