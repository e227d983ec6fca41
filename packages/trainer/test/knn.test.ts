import { test } from 'node:test';
import assert from 'node:assert/strict';
import { knnClassify, l2NormalizeRows, topK } from '../src/knn.js';
import { initBackend, Rng } from '@vitreg/core';

await initBackend('wasm', { log: () => {} });

interface Set {
  x: Float32Array;
  y: Int32Array;
  n: number;
  dim: number;
}

/** `n` rows around `classes` random centres, noisy enough that neighbours often carry another label. */
function clusters(rng: Rng, centres: number[][], n: number, noise: number): Set {
  const dim = centres[0]!.length;
  const x = new Float32Array(n * dim),
    y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = rng.int(centres.length);
    const scale = 0.5 + 3 * rng.float();
    for (let d = 0; d < dim; d++) x[i * dim + d] = scale * (centres[y[i]!]![d]! + noise * rng.normal());
  }
  return { x, y, n, dim };
}

/**
 * DINO's eval_knn.py `knn_classifier`, written out naively in float64: cosine similarity to every
 * training row, the k most similar (ties: lower index) vote exp(sim / T) for their label, classes
 * ranked by summed vote (ties: lower class); top-1 / top-5 = the label among the first 1 / min(5, k)
 * (DINO narrows its top-5 to k classes when k < 5).
 */
function naiveKnn(train: Set, test: Set, numClasses: number, k: number, T: number) {
  const norm = (x: Float32Array, i: number, dim: number) => {
    let s = 0;
    for (let d = 0; d < dim; d++) s += x[i * dim + d]! ** 2;
    return Math.sqrt(s);
  };
  const predictions: number[] = [];
  let top1 = 0,
    top5 = 0;
  for (let i = 0; i < test.n; i++) {
    const sims: number[] = [];
    for (let j = 0; j < train.n; j++) {
      let dot = 0;
      for (let d = 0; d < test.dim; d++) dot += test.x[i * test.dim + d]! * train.x[j * train.dim + d]!;
      sims.push(dot / (norm(test.x, i, test.dim) * norm(train.x, j, train.dim)));
    }
    const order = sims
      .map((_, j) => j)
      .sort((a, b) => sims[b]! - sims[a]! || a - b)
      .slice(0, k);
    const votes = new Array<number>(numClasses).fill(0);
    for (const j of order) votes[train.y[j]!] += Math.exp(sims[j]! / T);
    const ranked = votes.map((_, c) => c).sort((a, b) => votes[b]! - votes[a]! || a - b);
    predictions.push(ranked[0]!);
    if (ranked[0] === test.y[i]) top1++;
    if (ranked.slice(0, Math.min(5, k)).includes(test.y[i]!)) top5++;
  }
  return { predictions, top1: top1 / test.n, top5: top5 / test.n };
}

test('k-NN equals a naive DINO weighted k-NN on 12 overlapping classes (top-1 and top-5 both non-trivial)', () => {
  const rng = new Rng(11);
  const dim = 8,
    classes = 12;
  const centres = Array.from({ length: classes }, () => Array.from({ length: dim }, () => rng.normal()));
  const train = clusters(rng, centres, 240, 1.8);
  const query = clusters(rng, centres, 90, 1.8);
  for (const [k, T, chunk] of [
    [20, 0.07, 256],
    [7, 0.5, 16],
    [50, 0.02, 37],
    [3, 0.07, 64],
  ] as const) {
    const got = knnClassify(train, query, { numClasses: classes, k, temperature: T, chunk });
    const want = naiveKnn(train, query, classes, k, T);
    assert.deepEqual(Array.from(got.predictions), want.predictions, `k ${k}, T ${T}`);
    assert.equal(got.top1, want.top1, `top-1, k ${k}, T ${T}`);
    assert.equal(got.top5, want.top5, `top-5, k ${k}, T ${T}`);
    // the data is hard enough that neither accuracy is trivially 0 or 1, and top-5 adds hits
    assert.ok(want.top1 > 0.2 && want.top1 < 0.9, `top-1 ${want.top1}`);
    assert.ok(want.top5 > want.top1 && want.top5 < 1, `top-5 ${want.top5} (top-1 ${want.top1})`);
  }
  // k = 1: one neighbour votes for one class, so "top-5" is top-1 (DINO's min(5, k)).
  const one = knnClassify(train, query, { numClasses: classes, k: 1 });
  assert.equal(one.top5, one.top1);
  // defaults: k = 20, T = 0.07
  assert.deepEqual(
    Array.from(knnClassify(train, query, { numClasses: classes }).predictions),
    naiveKnn(train, query, classes, 20, 0.07).predictions,
  );
});

test('row norms do not matter: similarity is cosine', () => {
  const rng = new Rng(3);
  const centres = Array.from({ length: 6 }, () => Array.from({ length: 5 }, () => rng.normal()));
  const train = clusters(rng, centres, 60, 0.7),
    query = clusters(rng, centres, 30, 0.7);
  const rescale = (s: Set): Set => {
    const x = s.x.slice();
    for (let i = 0; i < s.n; i++) {
      const f = 0.01 + 100 * rng.float();
      for (let d = 0; d < s.dim; d++) x[i * s.dim + d]! *= f;
    }
    return { ...s, x };
  };
  const a = knnClassify(train, query, { numClasses: 6, k: 10 });
  const b = knnClassify(rescale(train), rescale(query), { numClasses: 6, k: 10 });
  assert.deepEqual(b.predictions, a.predictions);
});

test('votes are weighted by exp(similarity / T), not counted', () => {
  // train: two class-0 rows at 80 degrees from the query, one class-1 row almost on it
  const a = (deg: number) => [Math.cos((deg * Math.PI) / 180), Math.sin((deg * Math.PI) / 180)];
  const train = { x: Float32Array.from([...a(80), ...a(-80), ...a(5)]), y: Int32Array.from([0, 0, 1]), n: 3, dim: 2 };
  const query = { x: Float32Array.from(a(0)), y: Int32Array.from([1]), n: 1, dim: 2 };
  // exp(cos 5° / 0.07) = 8.0e5 against 2 exp(cos 80° / 0.07) = 23.7
  assert.deepEqual(Array.from(knnClassify(train, query, { numClasses: 2, k: 3 }).predictions), [1]);
  // with a huge temperature every vote weighs ~1 and the majority wins
  assert.deepEqual(Array.from(knnClassify(train, query, { numClasses: 2, k: 3, temperature: 1e6 }).predictions), [0]);
  // k = 2 keeps the 5-degree row and the first 80-degree one (tie goes to the lower index)
  assert.deepEqual(topK([0.1, 0.1, 0.9], 2), [2, 0]);
});

test('l2NormalizeRows leaves zero rows at zero; bad inputs are refused', () => {
  assert.deepEqual(Array.from(l2NormalizeRows(Float32Array.from([3, 4, 0, 0]), 2)), [0.6, 0.8, 0, 0].map(Math.fround));
  assert.throws(
    () =>
      knnClassify(
        { x: new Float32Array(4), y: new Int32Array(2), n: 2, dim: 2 },
        { x: new Float32Array(3), y: new Int32Array(1), n: 1, dim: 3 },
        { numClasses: 2 },
      ),
    /dim/,
  );
  const one = { x: Float32Array.from([1, 0]), y: Int32Array.from([2]), n: 1, dim: 2 };
  assert.throws(() => knnClassify(one, { ...one, y: Int32Array.from([0]) }, { numClasses: 2 }), /training label 2 is outside \[0, 2\)/);
});
