import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DistributedSampler, RASampler, Rng, type SampleRef } from '../src/index.js';

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
      const split = Array.from({ length: W }, (_, r) => s.batch(cursor, r, W, 4))
        .flat()
        .map((x) => x.position)
        .sort((a, b) => a - b);
      const whole = s.batch(cursor, 0, 1, 4 * W).map((x) => x.position);
      assert.deepEqual(split, whole);
    }
  }
  // PyTorch's layout: rank r takes positions r, r + W, ... of the shared permutation
  const perm = new Rng(17).shuffle(Array.from({ length: 40 }, (_, i) => i));
  assert.deepEqual(s.permutation(0), perm);
  assert.deepEqual(
    s.batch(0, 1, 2, 3).map((x) => x.index),
    [perm[1], perm[3], perm[5]],
  );
});

test('every item of an epoch exactly once, also when the world size changes mid-epoch; the last step runs into the next epoch', () => {
  const s = new DistributedSampler({ length: 23, seed: 3 });
  // 3 ranks x 2, then a worker leaves (2 ranks), then two join (4 ranks): 6 + 6 + 4 + 4 + 8 + 8 = 36 positions
  const items = run(s, [3, 3, 2, 2, 4, 4], 2);
  assert.equal(items.length, 36);
  const epoch0 = items
    .filter((x) => x.epoch === 0)
    .map((x) => x.index)
    .sort((a, b) => a - b);
  assert.deepEqual(
    epoch0,
    Array.from({ length: 23 }, (_, i) => i),
  );
  const epoch1 = items.filter((x) => x.epoch === 1).map((x) => x.index);
  assert.equal(epoch1.length, 13);
  assert.equal(new Set(epoch1).size, 13);
  assert.deepEqual(
    [...epoch1].sort((a, b) => a - b),
    s
      .permutation(1)
      .slice(0, 13)
      .sort((a, b) => a - b),
  );
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
  assert.deepEqual(
    plain.batch(3, 0, 2, 3).map((x) => [x.epoch, x.index]),
    [
      [0, 3],
      [1, 0],
      [1, 2],
    ],
  );
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

/**
 * deit/samplers.py RASampler.__iter__ for one epoch, written out naively from the official index
 * arithmetic, on a given permutation (in place of torch.randperm): repeat_interleave, pad to
 * num_samples * W, take list[rank::W], keep the first num_selected_samples.
 */
function officialRA(perm: number[], W: number, rank: number, R = 3): number[] {
  const N = perm.length;
  const numSamples = Math.ceil((N * R) / W);
  const totalSize = numSamples * W;
  const numSelected = Math.floor((Math.floor(N / 256) * 256) / W);
  const indices: number[] = [];
  for (const i of perm) for (let c = 0; c < R; c++) indices.push(i);
  indices.push(...indices.slice(0, totalSize - indices.length));
  assert.equal(indices.length, totalSize);
  const mine: number[] = [];
  for (let q = rank; q < totalSize; q += W) mine.push(indices[q]!);
  assert.equal(mine.length, numSamples);
  return mine.slice(0, numSelected);
}

/** Each rank's items of `steps` steps of W ranks x B from `cursor`. */
function perRank(s: RASampler, cursor: number, W: number, B: number, steps: number): SampleRef[][] {
  const out: SampleRef[][] = Array.from({ length: W }, () => []);
  for (let t = 0; t < steps; t++) for (let r = 0; r < W; r++) out[r]!.push(...s.batch(cursor + t * W * B, r, W, B));
  return out;
}

test("RASampler: an epoch of each rank equals deit/samplers.py's RASampler on the same permutation", () => {
  const N = 1000; // (1000 // 256) * 256 = 768 positions per epoch, 256 distinct images
  const s = new RASampler({ length: N, seed: 5 });
  assert.equal(s.epochLength, 768);
  for (const [W, B] of [
    [1, 64],
    [2, 48],
    [4, 16],
    [8, 12],
    [8, 96],
  ] as const) {
    const steps = 768 / (W * B);
    for (const epoch of [0, 1]) {
      const got = perRank(s, epoch * 768, W, B, steps);
      for (let r = 0; r < W; r++) {
        const want = officialRA(s.permutation(epoch), W, r);
        assert.deepEqual(
          got[r]!.map((x) => x.index),
          want,
          `W=${W} B=${B} rank ${r} epoch ${epoch}`,
        );
        assert.ok(got[r]!.every((x) => x.epoch === epoch));
      }
    }
  }
});

test('RASampler: each shown image R times with repeats 0..R-1, copies on different ranks of one step; steps that straddle epochs', () => {
  const s = new RASampler({ length: 300, seed: 2, repeats: 3 }); // epoch: 256 positions, 86 images (the last twice)
  const W = 4;
  const B = 10; // 40 positions a step: not a divisor of 256, steps run across epoch ends
  const all = perRank(s, 0, W, B, 13).flat(); // 520 positions: epochs 0, 1 and 8 of epoch 2
  const seen = new Set(all.map((x) => `${x.epoch}/${x.index}/${x.repeat}`));
  assert.equal(seen.size, all.length, 'every (epoch, index, repeat) once');
  for (const epoch of [0, 1]) {
    const inEpoch = all.filter((x) => x.epoch === epoch);
    assert.equal(inEpoch.length, 256);
    const perm = s.permutation(epoch);
    const counts = new Map<number, number[]>();
    for (const x of inEpoch) counts.set(x.index, [...(counts.get(x.index) ?? []), x.repeat!]);
    assert.deepEqual(
      [...counts.keys()].sort((a, b) => a - b),
      perm.slice(0, 86).sort((a, b) => a - b),
    );
    for (const [i, reps] of counts) assert.deepEqual(reps.sort(), i === perm[85] ? [0] : [0, 1, 2], `image ${i}`);
  }
  // In a step, the copies of an image sit on distinct ranks (W >= R).
  for (let t = 0; t < 13; t++) {
    const byImage = new Map<string, number[]>();
    for (let r = 0; r < W; r++)
      for (const x of s.batch(t * W * B, r, W, B))
        byImage.set(`${x.epoch}/${x.index}`, [...(byImage.get(`${x.epoch}/${x.index}`) ?? []), r]);
    for (const [k, ranks] of byImage) assert.equal(new Set(ranks).size, ranks.length, `step ${t} image ${k} ranks ${ranks}`);
  }
  assert.equal(s.epochOf(255), 0);
  assert.equal(s.epochOf(256), 1);
});

test('RASampler: world-size changes mid-epoch skip and repeat nothing; 1 repeat and multiple 1 is DistributedSampler', () => {
  const s = new RASampler({ length: 600, seed: 9 }); // 512 positions an epoch
  let cursor = 0;
  const got: SampleRef[] = [];
  for (const W of [4, 4, 3, 2, 8, 8, 8]) {
    for (let r = 0; r < W; r++) got.push(...s.batch(cursor, r, W, 16));
    cursor += W * 16;
  }
  const positions = got.map((x) => x.position).sort((a, b) => a - b);
  assert.deepEqual(
    positions,
    Array.from({ length: cursor }, (_, p) => p),
  );
  const perm = s.permutation(0);
  for (const x of got.filter((y) => y.epoch === 0)) assert.equal(x.index, perm[Math.floor(x.position / 3)]);
  const plain = new RASampler({ length: 37, seed: 4, repeats: 1, epochMultiple: 1 });
  const ds = new DistributedSampler({ length: 37, seed: 4 });
  assert.deepEqual(
    plain.batch(30, 1, 3, 9).map((x) => [x.epoch, x.index]),
    ds.batch(30, 1, 3, 9).map((x) => [x.epoch, x.index]),
  );
  assert.equal(ds.epochLength, 37);
  // ImageNet-1k: 1281167 images -> 5004 * 256 = 1281024 positions, 427008 images an epoch
  assert.equal(new RASampler({ length: 1281167, seed: 0 }).epochLength, 1281024);
});

test('RASampler: bad arguments name the field', () => {
  assert.throws(() => new RASampler({ length: 10, seed: 0, repeats: 0 }), /repeats must be a positive integer, got 0/);
  assert.throws(() => new RASampler({ length: 10, seed: 0, epochMultiple: 2.5 }), /epochMultiple/);
  assert.throws(() => new RASampler({ length: 200, seed: 0 }), /length 200 < epochMultiple 256 gives empty epochs/);
  assert.throws(() => new RASampler({ length: 0, seed: 0, epochMultiple: 1 }), /length must be a positive integer/);
  const s = new RASampler({ length: 10, seed: 0, epochMultiple: 1 });
  assert.throws(() => s.batch(0, 3, 3, 1), /RASampler: rank must be an integer in \[0, 3\), got 3/);
  assert.throws(() => s.at(-1), /RASampler: position/);
});
