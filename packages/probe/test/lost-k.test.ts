/**
 * LOST's k (k_patches = 100 in valeoai/LOST's object_discovery.py) on grids larger than k, where it
 * matters: `lost` with its default k against a naive transcription of the official `lost`,
 * `patch_scoring` and `detect_box` with k_patches = 100, on 12 x 12 grids (144 patches) whose result
 * changes with k. lost.test.ts checks every step for an explicit k on grids of at most 64 patches.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '@vitreg/core';
import { lost, LOST_K_PATCHES } from '../src/lost.js';

/** valeoai/LOST object_discovery.py's default. */
const OFFICIAL_K_PATCHES = 100;

/**
 * object_discovery.lost(feats, dims, scales, init_image_size, k_patches) line by line: A = F F^T;
 * patch_scoring (diagonal 0, negatives 0, degree = #A > 0, argsort of -degree descending: stable here,
 * ties by index); seed = sorted[0]; potentials = sorted[:k]; similars = potentials[A[seed, potentials] > 0];
 * M = A[similars].sum(0); detect_box: scipy.ndimage.label(M > 0) (4-connected), the seed's component,
 * [xmin, ymin, xmax + 1, ymax + 1] * scale.
 */
function officialLost(f: number[][], rows: number, cols: number, patch: number, k: number) {
  const n = f.length;
  const A = f.map((u) => f.map((v) => u.reduce((s, x, d) => s + x * v[d]!, 0)));
  const cent = A.map((row, i) => -row.filter((x, j) => j !== i && x > 0).length);
  const sorted = cent.map((c, i) => i).sort((i, j) => cent[j]! - cent[i]! || i - j);
  const seed = sorted[0]!;
  const potentials = sorted.slice(0, k);
  const similars = potentials.filter((j) => A[seed]![j]! > 0);
  const M = Array.from({ length: n }, (_, j) => similars.reduce((s, i) => s + A[i]![j]!, 0));
  // scipy.ndimage.label with its default cross structure: flood fill from the seed.
  const inside = M.map((v) => v > 0);
  const comp = new Set<number>([seed]);
  const queue = [seed];
  while (queue.length) {
    const p = queue.shift()!;
    const r = Math.floor(p / cols);
    const c = p % cols;
    for (const [rr, cc] of [
      [r - 1, c],
      [r + 1, c],
      [r, c - 1],
      [r, c + 1],
    ] as const) {
      const q = rr * cols + cc;
      if (rr >= 0 && rr < rows && cc >= 0 && cc < cols && inside[q] && !comp.has(q)) {
        comp.add(q);
        queue.push(q);
      }
    }
  }
  const rs = [...comp].map((p) => Math.floor(p / cols));
  const cs = [...comp].map((p) => p % cols);
  const box = [Math.min(...cs) * patch, Math.min(...rs) * patch, (Math.max(...cs) + 1) * patch, (Math.max(...rs) + 1) * patch];
  return { seed, similars, box };
}

/**
 * A 12 x 12 grid: background patches share one direction, an object of 30 patches another; every feature
 * gets noise so the degrees spread, and the k lowest-degree patches reach into the background only
 * for k near 100.
 */
function grid(seed: number): number[][] {
  const rng = new Rng(seed);
  const rows = 12;
  const object = (r: number, c: number) => r >= 3 && r < 8 && c >= 2 && c < 8;
  return Array.from({ length: rows * rows }, (_, p) => {
    const r = Math.floor(p / rows);
    const c = p % rows;
    const base = object(r, c) ? [1, 0.3, 0, 0] : [-0.2, 1, 0.2, 0];
    return base.map((v) => v + rng.normal() * 0.6);
  });
}

test('LOST_K_PATCHES is the official k_patches (100)', () => {
  assert.equal(LOST_K_PATCHES, OFFICIAL_K_PATCHES);
});

test('LOST with its default k equals the official code with k_patches = 100 on 12 x 12 grids, where k = 10 or 143 differ', () => {
  let differs = 0;
  for (let s = 0; s < 6; s++) {
    const f = grid(s);
    const want = officialLost(f, 12, 12, 16, OFFICIAL_K_PATCHES);
    const got = lost({ data: Float32Array.from(f.flat()), dim: 4 }, [12, 12], 16);
    assert.equal(got.seedIndex, want.seed, `grid ${s}: seed`);
    assert.deepEqual(Array.from(got.similars), want.similars, `grid ${s}: expanded seed`);
    assert.deepEqual(got.box, want.box, `grid ${s}: box`);
    // The case is one where k matters: fewer or more potentials give another expansion.
    for (const k of [10, 143]) {
      const other = officialLost(f, 12, 12, 16, k);
      if (other.similars.length !== want.similars.length) differs++;
    }
  }
  assert.ok(differs >= 6, `k changes the expanded seed set on these grids (${differs} of 12 cases)`);
});
