import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../src/rng.js';

test('xoshiro128** matches the reference C implementation from state {1, 2, 3, 4}', () => {
  // First outputs of Vigna's xoshiro128starstar.c (prng.di.unimi.it) with s = {1, 2, 3, 4}.
  const rng = Rng.fromState([1, 2, 3, 4, 0, 0]);
  const got = Array.from({ length: 8 }, () => rng.uint32());
  assert.deepEqual(got, [11520, 0, 5927040, 70819200, 2031721883, 1637235492, 1287239034, 3734860849]);
});

test('equal seeds give equal sequences, different seeds different ones', () => {
  const draw = (seed: number) => {
    const rng = new Rng(seed);
    return [rng.uint32(), rng.float(), rng.normal(), rng.int(1000), rng.uint32()];
  };
  assert.deepEqual(draw(42), draw(42));
  assert.notDeepEqual(draw(42), draw(43));
  assert.notDeepEqual(draw(0), draw(2 ** 32)); // the high word of the seed counts
  assert.notDeepEqual(draw(-1), draw(1));
});

test('setState resumes exactly, including a cached normal deviate', () => {
  const rng = new Rng(7);
  for (let i = 0; i < 10; i++) rng.uint32();
  rng.normal(); // leaves the second deviate of the pair cached
  const saved = JSON.parse(JSON.stringify(rng.getState())) as number[];
  assert.equal(saved[4], 1);
  const sequence = (r: Rng) => Array.from({ length: 50 }, (_, i) => (i % 3 === 0 ? r.normal() : i % 3 === 1 ? r.float() : r.int(17)));
  const expected = sequence(rng);
  const other = new Rng(123);
  other.setState(saved);
  assert.deepEqual(sequence(other), expected);
  assert.deepEqual(sequence(Rng.fromState(saved)), expected);
});

test('float is in [0, 1) with mean 1/2 and variance 1/12', () => {
  const rng = new Rng(1);
  const n = 100_000;
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < n; i++) {
    const x = rng.float();
    assert.ok(x >= 0 && x < 1, `float out of range: ${x}`);
    sum += x;
    sq += x * x;
  }
  const mean = sum / n;
  assert.ok(Math.abs(mean - 0.5) < 0.01, `mean ${mean}`);
  assert.ok(Math.abs(sq / n - mean * mean - 1 / 12) < 0.005, `variance ${sq / n - mean * mean}`);
});

test('normal has the requested mean and standard deviation', () => {
  const rng = new Rng(2);
  const n = 100_000;
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < n; i++) {
    const x = rng.normal(3, 2);
    sum += x;
    sq += x * x;
  }
  const mean = sum / n;
  const variance = sq / n - mean * mean;
  assert.ok(Math.abs(mean - 3) < 0.05, `mean ${mean}`);
  assert.ok(Math.abs(variance - 4) < 0.1, `variance ${variance}`);
});

test('int is uniform and has no modulo bias', () => {
  const rng = new Rng(3);
  const counts = new Array(6).fill(0);
  for (let i = 0; i < 60_000; i++) counts[rng.int(6)]++;
  for (const c of counts) assert.ok(Math.abs(c - 10_000) < 500, `counts ${counts}`);
  // n = 3 * 2^30: plain `uint32 % n` would put half of the draws below 2^30 instead of a third.
  const n = 3 * 2 ** 30;
  let low = 0;
  for (let i = 0; i < 30_000; i++) {
    const x = rng.int(n);
    assert.ok(Number.isInteger(x) && x >= 0 && x < n);
    if (x < 2 ** 30) low++;
  }
  assert.ok(Math.abs(low / 30_000 - 1 / 3) < 0.02, `fraction below 2^30: ${low / 30_000}`);
  assert.equal(rng.int(1), 0);
  assert.throws(() => rng.int(0), /integer in \[1, 2\^32\]/);
  assert.throws(() => rng.int(2.5), /integer in \[1, 2\^32\]/);
});

test('shuffle permutes in place, deterministically, every order about equally often', () => {
  const a = Array.from({ length: 20 }, (_, i) => i);
  const shuffled = new Rng(5).shuffle([...a]);
  assert.deepEqual(
    [...shuffled].sort((x, y) => x - y),
    a,
  );
  assert.notDeepEqual(shuffled, a);
  assert.deepEqual(new Rng(5).shuffle([...a]), shuffled);
  const rng = new Rng(6);
  const counts = new Map<string, number>();
  for (let i = 0; i < 6000; i++) {
    const key = rng.shuffle(['a', 'b', 'c']).join('');
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  assert.equal(counts.size, 6);
  for (const c of counts.values()) assert.ok(Math.abs(c - 1000) < 150, `counts ${[...counts]}`);
});

test('fork gives independent, reproducible streams without advancing the parent', () => {
  const parent = new Rng(9);
  const before = parent.getState();
  const a = parent.fork(0);
  const b = parent.fork(1);
  assert.deepEqual(parent.getState(), before);
  const take = (r: Rng) => Array.from({ length: 5 }, () => r.uint32());
  const seqA = take(a);
  assert.deepEqual(take(parent.fork(0)), seqA);
  assert.notDeepEqual(take(b), seqA);
  assert.notDeepEqual(take(new Rng(9)), seqA);
});

test('bad seeds and states are refused with a clear error', () => {
  assert.throws(() => new Rng(1.5), /seed must be a safe integer, got 1.5/);
  assert.throws(() => new Rng(Number.NaN), /seed must be a safe integer/);
  const rng = new Rng(0);
  assert.throws(() => rng.setState([1, 2, 3]), /array of 6 numbers/);
  assert.throws(() => rng.setState([0, 0, 0, 0, 0, 0]), /all zero/);
  assert.throws(() => rng.setState([1, 2, 3, 2 ** 32, 0, 0]), /word 3 must be an integer in \[0, 2\^32\)/);
  assert.throws(() => rng.setState([1, 2, 3, 4, 2, 0]), /flag must be 0 or 1/);
  assert.throws(() => rng.fork(0.5), /stream must be a safe integer/);
});
