import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import {
  affinity,
  affinityHost,
  componentBox,
  degrees,
  expandSeed,
  lost,
  lostFromAffinity,
  lowestDegreeOrder,
  scoreMask,
  seedComponent,
  seedScores,
} from '../src/lost.js';
import { initBackend, Rng } from '@vitreg/core';

/** Naive LOST, written independently from the module: nested loops, full labelling of components. */
function naiveLost(f: number[][], rows: number, cols: number, patch: number, k: number) {
  const n = f.length;
  const dot = (u: number[], v: number[]) => u.reduce((s, x, i) => s + x * v[i], 0);
  const A = f.map((u) => f.map((v) => dot(u, v)));
  const deg = A.map((row, i) => row.filter((x, j) => i !== j && Math.max(x, 0) > 0).length);
  let seed = 0;
  for (let i = 1; i < n; i++) if (deg[i] < deg[seed]) seed = i;
  // potentials: the k smallest (degree, index) pairs
  const pairs = deg.map((d, i) => [d, i]).sort((p, q) => p[0] - q[0] || p[1] - q[1]);
  const potentials = pairs.slice(0, k).map((p) => p[1]);
  const similars = potentials.filter((j) => A[seed][j] > 0);
  const M = Array.from({ length: n }, (_, j) => similars.reduce((s, i) => s + A[i][j], 0));
  const mask = M.map((v) => v > 0);
  // label all 4-connected components by repeated relaxation of the minimum label
  const label = mask.map((m, i) => (m ? i + 1 : 0));
  let changed = true;
  while (changed) {
    changed = false;
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const p = r * cols + c;
        if (!label[p]) continue;
        for (const [dr, dc] of [
          [1, 0],
          [-1, 0],
          [0, 1],
          [0, -1],
        ]) {
          const rr = r + dr,
            cc = c + dc;
          if (rr < 0 || rr >= rows || cc < 0 || cc >= cols) continue;
          const q = rr * cols + cc;
          if (label[q] && label[q] < label[p]) {
            label[p] = label[q];
            changed = true;
          }
        }
      }
  }
  const comp = label.map((l) => l !== 0 && l === label[seed]);
  const rs = [],
    cs = [];
  for (let p = 0; p < n; p++)
    if (comp[p]) {
      rs.push(Math.floor(p / cols));
      cs.push(p % cols);
    }
  const box = [Math.min(...cs) * patch, Math.min(...rs) * patch, (Math.max(...cs) + 1) * patch, (Math.max(...rs) + 1) * patch];
  return { A, deg, seed, similars, M, mask, comp, box };
}

function randomFeatures(rng: Rng, n: number, d: number, bias: number): number[][] {
  return Array.from({ length: n }, () => Array.from({ length: d }, () => Math.fround(rng.normal() + bias)));
}

test('every LOST step matches the naive implementation on random feature sets', () => {
  const rng = new Rng(7);
  for (let trial = 0; trial < 30; trial++) {
    const rows = 2 + rng.int(6),
      cols = 2 + rng.int(6),
      d = 1 + rng.int(5);
    const f = randomFeatures(rng, rows * cols, d, trial % 2 ? 0.3 : 0);
    const k = 1 + rng.int(rows * cols + 2);
    const ref = naiveLost(f, rows, cols, 14, k);
    const flat = Float32Array.from(f.flat());
    const A = affinityHost(flat, rows * cols, d);
    ref.A.flat().forEach((x, i) => assert.ok(Math.abs(A[i] - x) < 1e-5, `A[${i}]`));
    const deg = degrees(A, rows * cols);
    assert.deepEqual(Array.from(deg), ref.deg);
    const order = lowestDegreeOrder(deg);
    assert.equal(order[0], ref.seed);
    const sim = expandSeed(A, rows * cols, order, k);
    assert.deepEqual(Array.from(sim), ref.similars);
    const mask = scoreMask(seedScores(A, rows * cols, sim));
    assert.deepEqual(Array.from(mask, Boolean), ref.mask);
    const comp = seedComponent(mask, rows, cols, order[0]);
    assert.deepEqual(Array.from(comp, Boolean), ref.comp);
    assert.deepEqual(componentBox(comp, rows, cols, 14), ref.box);
    const all = lost({ data: flat, dim: d }, [rows, cols], 14, { kPatches: k });
    assert.deepEqual(all.box, ref.box);
    assert.deepEqual(all.seed, [Math.floor(ref.seed / cols), ref.seed % cols]);
  }
});

test('degree ties go to the lower patch index', () => {
  // four patches, mutually orthogonal except 0-1: degrees [1,1,0,0] -> seed is 2, not 3
  const feats = [
    [1, 0, 0, 0],
    [1, 0, 0, 0],
    [0, 1, 0, 0],
    [0, 0, 1, 0],
  ];
  const A = affinityHost(Float32Array.from(feats.flat()), 4, 4);
  assert.deepEqual(Array.from(degrees(A, 4)), [1, 1, 0, 0]);
  assert.deepEqual(Array.from(lowestDegreeOrder(degrees(A, 4))), [2, 3, 0, 1]);
  const r = lostFromAffinity(A, [2, 2], 10);
  assert.equal(r.seedIndex, 2);
  assert.deepEqual(r.seed, [1, 0]);
  assert.deepEqual(r.box, [0, 10, 10, 20]);
});

test('expansion keeps only potentials similar to the seed, and the mask spans connected similar patches', () => {
  // 3x3 grid. An "object" feature o on patches 0,1,3 (top-left L), background b elsewhere, b . o < 0.
  // Background patches are many (5 others + themselves) so their degree is high; object patches low.
  const o = [1, 0.2],
    b = [-0.2, 1];
  const layout = [o, o, b, o, b, b, b, b, b];
  const A = affinityHost(Float32Array.from(layout.flat()), 9, 2);
  const deg = degrees(A, 9);
  assert.deepEqual(Array.from(deg), [2, 2, 5, 2, 5, 5, 5, 5, 5]);
  const order = lowestDegreeOrder(deg);
  assert.equal(order[0], 0);
  assert.deepEqual(Array.from(expandSeed(A, 9, order, 100)), [0, 1, 3]);
  // with k = 2 only the two lowest-degree patches are potentials
  assert.deepEqual(Array.from(expandSeed(A, 9, order, 2)), [0, 1]);
  const r = lostFromAffinity(A, [3, 3], 14);
  assert.deepEqual(Array.from(r.mask), [1, 1, 0, 1, 0, 0, 0, 0, 0]);
  assert.deepEqual(r.box, [0, 0, 28, 28]);
});

test('the component is 4-connected: a diagonal neighbour is not joined', () => {
  const mask = Uint8Array.from([1, 0, 0, 0, 1, 0, 0, 0, 1]);
  assert.deepEqual(Array.from(seedComponent(mask, 3, 3, 4)), [0, 0, 0, 0, 1, 0, 0, 0, 0]);
  const ring = Uint8Array.from([1, 1, 1, 1, 0, 1, 1, 1, 1]);
  assert.deepEqual(Array.from(seedComponent(ring, 3, 3, 0)), Array.from(ring));
  // seed outside the mask: the seed patch alone
  assert.deepEqual(Array.from(seedComponent(ring, 3, 3, 4)), [0, 0, 0, 0, 1, 0, 0, 0, 0]);
});

test('box uses (max + 1) * patch and is clipped to the unpadded image', () => {
  const comp = new Uint8Array(12); // 3 rows x 4 cols
  comp[1 * 4 + 2] = 1;
  comp[2 * 4 + 3] = 1;
  assert.deepEqual(componentBox(comp, 3, 4, 16), [32, 16, 64, 48]);
  assert.deepEqual(componentBox(comp, 3, 4, 16, { width: 60, height: 40 }), [32, 16, 60, 40]);
  assert.throws(() => componentBox(new Uint8Array(12), 3, 4, 16), /empty/);
});

test('tfjs affinity equals the host one', async () => {
  await initBackend('wasm', { log: () => {} });
  const rng = new Rng(3);
  const f = Float32Array.from({ length: 20 * 6 }, () => rng.normal());
  const t = tf.tensor2d(f, [20, 6]);
  const a = affinity(t);
  const h = affinityHost(f, 20, 6);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - h[i]) < 1e-4);
  assert.deepEqual(lost(t, [4, 5], 8).box, lost({ data: f, dim: 6 }, [4, 5], 8).box);
  assert.throws(() => lost(t, [4, 4], 8), /expected 16 patches/);
  t.dispose();
});

test('bad inputs are refused naming what is wrong; k = 1 and the last patch as seed are accepted', () => {
  assert.throws(() => affinityHost(new Float32Array(5), 2, 3), /LOST: features has 5 values, expected 6 for shape \[2, 3\]/);
  assert.throws(() => degrees(new Float32Array(8), 3), /LOST: affinity has 8 values, expected 9 for shape \[3, 3\]/);
  assert.throws(() => seedComponent(new Uint8Array(5), 2, 3, 0), /LOST: mask has 5 values, expected 6 for shape \[2, 3\]/);
  assert.throws(() => componentBox(new Uint8Array(7), 2, 3, 14), /LOST: component has 7 values, expected 6 for shape \[2, 3\]/);
  for (const seed of [-1, 6, 1.5]) {
    assert.throws(() => seedComponent(new Uint8Array(6), 2, 3, seed), new RegExp(`LOST: seed ${seed} is outside the 2x3 patch grid`));
  }
  // The last patch as seed, outside the mask: the seed patch alone (its masked neighbours are not joined).
  assert.deepEqual(Array.from(seedComponent(Uint8Array.from([1, 1, 1, 1, 1, 0]), 2, 3, 5)), [0, 0, 0, 0, 0, 1]);
  const A = affinityHost(Float32Array.from([1, 0, 1, 0, 0, 1]), 3, 2); // patches 0 and 1 alike, 2 apart
  const order = lowestDegreeOrder(degrees(A, 3));
  assert.deepEqual(Array.from(order), [2, 0, 1]);
  assert.deepEqual(Array.from(expandSeed(A, 3, Int32Array.from([0, 1, 2]), 1)), [0], 'k = 1: the seed alone');
  for (const k of [0, 1.5, NaN])
    assert.throws(() => expandSeed(A, 3, order, k), new RegExp(`LOST: kPatches must be an integer >= 1, got ${k}`));
  assert.throws(() => lostFromAffinity(A, [1, 3], 14, { kPatches: 0 }), /kPatches must be an integer >= 1, got 0/);
});
