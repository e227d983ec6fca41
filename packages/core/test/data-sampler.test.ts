import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DistributedSampler, Rng } from '../src/index.js';

/** Items of `steps` steps of a world of `worldSize` ranks x `count` items, every rank's, from cursor 0. */
function run(s: DistributedSampler, worldSizes: number[], count: number): { epoch: number; index: number }[] {
  const out: { epoch: number; index: number }[] = [];
  let cursor = 0;
  for (const W of worldSizes) {
    for (let r = 0; r < W; r++) out.push(...s.batch(cursor, r, W, count).map(({ epoch, index }) => ({ epoch, index })));
    cursor += W * count;
  }
  return out;
}

test('a step of W ranks x B items is the step of one rank x W*B items: the same set', () => {
  const s = new DistributedSampler({ length: 40, seed: 17 });
  for (const W of [2, 3, 5]) {
    for (const cursor of [0, 12, 38]) {
      const split = Array.from({ length: W }, (_, r) => s.batch(cursor, r, W, 4)).flat().map((x) => x.position).sort((a, b) => a - b);
      const whole = s.batch(cursor, 0, 1, 4 * W).map((x) => x.position);
      assert.deepEqual(split, whole);
    }
  }
  // PyTorch's layout: rank r takes positions r, r + W, ... of the shared permutation
  const perm = new Rng(17).shuffle(Array.from({ length: 40 }, (_, i) => i));
  assert.deepEqual(s.permutation(0), perm);
  assert.deepEqual(s.batch(0, 1, 2, 3).map((x) => x.index), [perm[1], perm[3], perm[5]]);
});

test('every item of an epoch exactly once, also when the world size changes mid-epoch; the last step runs into the next epoch', () => {
  const s = new DistributedSampler({ length: 23, seed: 3 });
  // 3 ranks x 2, then a worker leaves (2 ranks), then two join (4 ranks): 6 + 6 + 4 + 4 + 8 + 8 = 36 positions
  const items = run(s, [3, 3, 2, 2, 4, 4], 2);
  assert.equal(items.length, 36);
  const epoch0 = items.filter((x) => x.epoch === 0).map((x) => x.index).sort((a, b) => a - b);
  assert.deepEqual(epoch0, Array.from({ length: 23 }, (_, i) => i));
  const epoch1 = items.filter((x) => x.epoch === 1).map((x) => x.index);
  assert.equal(epoch1.length, 13);
  assert.equal(new Set(epoch1).size, 13);
  assert.deepEqual([...epoch1].sort((a, b) => a - b), s.permutation(1).slice(0, 13).sort((a, b) => a - b));
  assert.equal(s.epochOf(22), 0);
  assert.equal(s.epochOf(23), 1);
});

test('shuffle changes with the epoch and the seed; without shuffle the order is 0..n-1', () => {
  const a = new DistributedSampler({ length: 50, seed: 1 });
  assert.notDeepEqual(a.permutation(0), a.permutation(1));
  assert.notDeepEqual(a.permutation(0), new DistributedSampler({ length: 50, seed: 2 }).permutation(0));
  assert.deepEqual(a.permutation(0), new DistributedSampler({ length: 50, seed: 1 }).permutation(0));
  assert.deepEqual(new Rng(1 + 4).shuffle(Array.from({ length: 50 }, (_, i) => i)), a.permutation(4));
  const plain = new DistributedSampler({ length: 5, seed: 0, shuffle: false });
  assert.deepEqual(plain.batch(3, 0, 2, 3).map((x) => [x.epoch, x.index]), [[0, 3], [1, 0], [1, 2]]);
});

test('bad arguments name the field', () => {
  assert.throws(() => new DistributedSampler({ length: 0, seed: 0 }), /length/);
  assert.throws(() => new DistributedSampler({ length: 3, seed: 0.5 }), /seed/);
  const s = new DistributedSampler({ length: 10, seed: 0 });
  assert.throws(() => s.batch(0, 2, 2, 1), /rank must be an integer in \[0, 2\), got 2/);
  assert.throws(() => s.batch(-1, 0, 1, 1), /cursor/);
  assert.throws(() => s.batch(0, 0, 0, 1), /worldSize/);
  assert.throws(() => s.batch(0, 0, 1, 0), /count/);
});
