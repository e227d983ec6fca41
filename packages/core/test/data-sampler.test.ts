import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DistributedSampler } from '../src/data/index.js';

function allRanks(length: number, worldSize: number, opts: { seed?: number; shuffle?: boolean; dropLast?: boolean; epoch?: number } = {}): number[][] {
  return Array.from({ length: worldSize }, (_, rank) => {
    const s = new DistributedSampler({ length, rank, worldSize, seed: opts.seed ?? 0, shuffle: opts.shuffle, dropLast: opts.dropLast });
    s.setEpoch(opts.epoch ?? 0);
    return s.indices();
  });
}

test('ranks together cover every index exactly once when length % worldSize == 0', () => {
  for (const worldSize of [1, 2, 4, 5]) {
    for (const epoch of [0, 3]) {
      const shards = allRanks(40, worldSize, { seed: 17, epoch });
      for (const s of shards) assert.equal(s.length, 40 / worldSize);
      const all = shards.flat().sort((a, b) => a - b);
      assert.deepEqual(all, Array.from({ length: 40 }, (_, i) => i));
    }
  }
});

test('shuffle changes with the epoch and the seed, not with the rank count', () => {
  const e0 = allRanks(50, 2, { seed: 1, epoch: 0 });
  const e1 = allRanks(50, 2, { seed: 1, epoch: 1 });
  const otherSeed = allRanks(50, 2, { seed: 2, epoch: 0 });
  assert.notDeepEqual(e0[0], e1[0]);
  assert.notDeepEqual(e0[0], otherSeed[0]);
  assert.deepEqual(allRanks(50, 2, { seed: 1, epoch: 0 }), e0, 'deterministic');
  // PyTorch's layout: rank r takes positions r, r + W, ... of the shared permutation
  const one = allRanks(50, 1, { seed: 1, epoch: 0 })[0];
  assert.deepEqual(e0[0], one.filter((_, i) => i % 2 === 0));
  assert.deepEqual(e0[1], one.filter((_, i) => i % 2 === 1));
});

test('without shuffle: padding repeats the start, dropLast truncates', () => {
  assert.deepEqual(allRanks(10, 4, { shuffle: false }), [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]);
  assert.deepEqual(allRanks(10, 4, { shuffle: false, dropLast: true }), [[0, 4], [1, 5], [2, 6], [3, 7]]);
  // padding longer than the data repeats it several times
  assert.deepEqual(allRanks(2, 5, { shuffle: false }), [[0], [1], [0], [1], [0]]);
  // with padding, every index still appears at least once
  const padded = allRanks(37, 4, { seed: 5 }).flat();
  assert.equal(padded.length, 40);
  assert.equal(new Set(padded).size, 37);
});

test('next() walks the epoch, rolls over, and resumes exactly from state()', () => {
  const make = (): DistributedSampler => new DistributedSampler({ length: 23, rank: 1, worldSize: 3, seed: 9 });
  const straight = make();
  const stream: number[] = [];
  for (let step = 0; step < 10; step++) stream.push(...straight.next(5));
  // the stream is epoch 0's shard, then epoch 1's, ...
  const ref = make();
  const epochs: number[] = [];
  for (let e = 0; e < 7; e++) {
    ref.setEpoch(e);
    epochs.push(...ref.indices());
  }
  assert.deepEqual(stream, epochs.slice(0, 50));
  assert.equal(straight.state().epoch, Math.floor(50 / straight.numSamples));

  const first = make();
  const resumed: number[] = [];
  for (let step = 0; step < 4; step++) resumed.push(...first.next(5));
  const saved = JSON.parse(JSON.stringify(first.state()));
  const second = make();
  second.restore(saved);
  for (let step = 4; step < 10; step++) resumed.push(...second.next(5));
  assert.deepEqual(resumed, stream);
});

test('bad arguments name the field', () => {
  assert.throws(() => new DistributedSampler({ length: 10, rank: 2, worldSize: 2, seed: 0 }), /rank/);
  assert.throws(() => new DistributedSampler({ length: 0, rank: 0, worldSize: 1, seed: 0 }), /length/);
  assert.throws(() => new DistributedSampler({ length: 3, rank: 0, worldSize: 4, seed: 0, dropLast: true }), /dropLast/);
  const s = new DistributedSampler({ length: 10, rank: 0, worldSize: 2, seed: 0 });
  assert.throws(() => s.restore({ epoch: 0, position: 6 }), /position/);
  assert.throws(() => s.setEpoch(-1), /epoch/);
});
