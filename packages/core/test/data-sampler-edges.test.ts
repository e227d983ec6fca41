// The samplers' edges, from mutation testing (issue 22): a one-image dataset and a one-image batch are
// valid, permutation() hands out a copy (the sampler's order cannot be changed through it), and every
// refusal names the sampler and the argument at fault.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DistributedSampler, RASampler } from '../src/index.js';

test('a dataset of one image and a batch of one are valid', () => {
  const s = new DistributedSampler({ length: 1, seed: 3 });
  assert.deepEqual(s.permutation(0), [0]);
  assert.deepEqual(s.at(5), { epoch: 5, index: 0, position: 5 });
  assert.deepEqual(s.batch(2, 1, 2, 1), [{ epoch: 3, index: 0, position: 3 }]);
  const ra = new RASampler({ length: 1, seed: 3, repeats: 2, epochMultiple: 1 });
  assert.deepEqual(ra.batch(0, 0, 1, 1), [{ epoch: 0, index: 0, position: 0, repeat: 0 }]);
});

test('permutation() is a copy: changing it changes nothing the sampler hands out', () => {
  const s = new DistributedSampler({ length: 6, seed: 1 });
  const first = s.permutation(0);
  const before = [0, 1, 2, 3, 4, 5].map((p) => s.at(p).index);
  assert.deepEqual(before, first);
  first.reverse();
  first[0] = 99;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((p) => s.at(p).index),
    before,
  );
  assert.deepEqual(s.permutation(0), before);
  const ra = new RASampler({ length: 4, seed: 1, repeats: 2, epochMultiple: 1 });
  ra.permutation(0).fill(7);
  assert.notDeepEqual(ra.permutation(0), [7, 7, 7, 7]);
});

test('every refusal names the sampler and the argument', () => {
  const s = new DistributedSampler({ length: 4, seed: 0 });
  const ra = new RASampler({ length: 4, seed: 0, epochMultiple: 2 });
  assert.throws(
    () => new DistributedSampler({ length: 0, seed: 0 }),
    /^Error: DistributedSampler: length must be a positive integer, got 0$/,
  );
  assert.throws(() => s.epochOf(-1), /^Error: DistributedSampler: position must be a non-negative integer, got -1$/);
  assert.throws(() => s.at(1.5), /^Error: DistributedSampler: position must be a non-negative integer, got 1.5$/);
  assert.throws(() => s.batch(-2, 0, 1, 1), /^Error: DistributedSampler: cursor must be a non-negative integer, got -2$/);
  assert.throws(() => ra.epochOf(-1), /^Error: RASampler: position must be a non-negative integer, got -1$/);
  assert.throws(() => ra.batch(-2, 0, 1, 1), /^Error: RASampler: cursor must be a non-negative integer, got -2$/);
  for (const [rank, worldSize] of [
    [-1, 2],
    [0.5, 2],
    [2, 2],
  ]) {
    assert.throws(
      () => s.batch(0, rank!, worldSize!, 1),
      new RegExp(`^Error: DistributedSampler: rank must be an integer in \\[0, 2\\), got ${rank}$`),
      `rank ${rank}`,
    );
  }
  assert.throws(() => s.batch(0, 0, 0, 1), /^Error: DistributedSampler: worldSize must be a positive integer, got 0$/);
  assert.throws(() => s.batch(0, 0, 1, 0), /^Error: DistributedSampler: count must be a positive integer, got 0$/);
  assert.throws(
    () => new RASampler({ length: 4, seed: 0, epochMultiple: 0 }),
    /^Error: RASampler: epochMultiple must be a positive integer, got 0$/,
  );
  assert.throws(
    () => new RASampler({ length: 4, seed: 0, epochMultiple: 1.5 }),
    /^Error: RASampler: epochMultiple must be a positive integer, got 1.5$/,
  );
  assert.throws(() => new RASampler({ length: 4, seed: 0, repeats: 0 }), /^Error: RASampler: repeats must be a positive integer, got 0$/);
});

test('positions visited out of order across epochs give the same items as a fresh sampler (the order cache)', () => {
  const s = new DistributedSampler({ length: 5, seed: 9 });
  const seq = [0, 7, 12, 3, 24, 1, 18, 9, 0, 13, 22, 4];
  const got = seq.map((p) => s.at(p).index);
  const want = seq.map((p) => new DistributedSampler({ length: 5, seed: 9 }).at(p).index);
  assert.deepEqual(got, want);
});
