import { test } from 'node:test';
import assert from 'node:assert/strict';
import { knnClassify, l2NormalizeRows, topK } from '../src/knn.js';
import { initBackend, Rng } from '@vitreg/core';

await initBackend('wasm', { log: () => {} });

test('k-NN classifies clustered data (directions, since similarity is cosine)', () => {
  const rng = new Rng(11);
  const dim = 6, classes = 5;
  const centres = Array.from({ length: classes }, () => Array.from({ length: dim }, () => rng.normal()));
  const make = (n: number) => {
    const x = new Float32Array(n * dim), y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      y[i] = i % classes;
      const scale = 0.5 + 3 * rng.float(); // the norm must not matter
      for (let d = 0; d < dim; d++) x[i * dim + d] = scale * (centres[y[i]][d] + 0.1 * rng.normal());
    }
    return { x, y, n, dim };
  };
  const r = knnClassify(make(100), make(50), { numClasses: classes, chunk: 16 });
  assert.equal(r.top1, 1);
  assert.equal(r.top5, 1);
});

test('votes are weighted by exp(similarity / T), not counted', () => {
  // train: two class-0 rows at 80 degrees from the query, one class-1 row almost on it
  const a = (deg: number) => [Math.cos((deg * Math.PI) / 180), Math.sin((deg * Math.PI) / 180)];
  const train = { x: Float32Array.from([...a(80), ...a(-80), ...a(5)]), y: Int32Array.from([0, 0, 1]), n: 3, dim: 2 };
  const query = { x: Float32Array.from(a(0)), y: Int32Array.from([1]), n: 1, dim: 2 };
  assert.deepEqual(Array.from(knnClassify(train, query, { numClasses: 2, k: 3 }).predictions), [1]);
  // with a huge temperature every vote weighs ~1 and the majority wins
  assert.deepEqual(Array.from(knnClassify(train, query, { numClasses: 2, k: 3, temperature: 1e6 }).predictions), [0]);
  // k = 2 keeps the 5-degree row and the first 80-degree one (tie goes to the lower index)
  assert.deepEqual(topK([0.1, 0.1, 0.9], 2), [2, 0]);
});

test('l2NormalizeRows leaves zero rows at zero', () => {
  assert.deepEqual(Array.from(l2NormalizeRows(Float32Array.from([3, 4, 0, 0]), 2)), [0.6, 0.8, 0, 0].map(Math.fround));
  assert.throws(() => knnClassify({ x: new Float32Array(4), y: new Int32Array(2), n: 2, dim: 2 }, { x: new Float32Array(3), y: new Int32Array(1), n: 1, dim: 3 }, { numClasses: 2 }), /dim/);
});
