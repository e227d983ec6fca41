/**
 * Sinkhorn-Knopp's plumbing (its numbers are checked against the official code in recipe.test.ts, its
 * wiring into the step in sinkhorn-step.test.ts): reduceSumOf turns a GradientSync's mean into a sum and
 * skips the collective on one rank, the iteration count is checked, an input with no rows on any rank
 * gives an empty result without disturbing the others, and nothing is left allocated.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { reduceSumOf, sinkhornKnopp, type ReduceSum } from '../src/centering.js';
import { LocalGradientSync, type GradientSync } from '../src/sync.js';
import { useWasm } from './helpers.js';

before(useWasm);

/** A rank of a 2-rank world whose peer holds `other`: allReduce leaves the mean of the two. */
function pairedSync(other: Float32Array[]): GradientSync & { calls: number } {
  const s = {
    rank: 0,
    worldSize: 2,
    calls: 0,
    allReduce: async (buffers: Float32Array[]) => {
      s.calls++;
      buffers.forEach((b, i) => b.forEach((v, j) => (b[j] = (v + other[i]![j]!) / 2)));
    },
    broadcast: new LocalGradientSync().broadcast,
    commitStep: new LocalGradientSync().commitStep,
  };
  return s;
}

test('reduceSumOf: the sum over the ranks (the mean times the world size), shapes kept; one rank copies without a collective', async () => {
  const sync = pairedSync([Float32Array.from([10, 20, 30, 40, 50, 60]), Float32Array.from([0.5])]);
  const a = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
  const b = tf.scalar(1.5);
  const [sa, sb] = await reduceSumOf(sync)([a, b]);
  assert.equal(sync.calls, 1);
  assert.deepEqual(sa!.shape, [2, 3]);
  assert.equal(sa!.dtype, 'float32');
  assert.deepEqual(Array.from(sa!.dataSync()), [11, 22, 33, 44, 55, 66]);
  assert.deepEqual([...sb!.shape, ...sb!.dataSync()], [2]);
  assert.deepEqual(Array.from(a.dataSync()), [1, 2, 3, 4, 5, 6], 'the inputs are left as they were');
  // One rank: no host round trip (a collective here would only copy the values through the host).
  const local = new LocalGradientSync();
  let collectives = 0;
  local.allReduce = async () => void collectives++;
  const one = await reduceSumOf(local)([a]);
  assert.equal(collectives, 0, 'one rank calls no collective');
  assert.notEqual(one[0], a, 'a new tensor');
  assert.deepEqual(Array.from(one[0]!.dataSync()), [1, 2, 3, 4, 5, 6]);
  tf.dispose([a, b, sa!, sb!, one[0]!]);
});

test('sinkhornKnopp: a positive integer number of iterations; an input with no rows anywhere gives [0, K]; no tensor left behind', async () => {
  const one: ReduceSum = async (ts) => ts.map((t) => tf.clone(t));
  const logits = () => tf.tensor2d([0.3, -1, 2, 0.5, 0.1, -0.2], [2, 3]);
  for (const bad of [0, -1, 1.5, NaN]) {
    await assert.rejects(sinkhornKnopp([{ logits: logits(), temperature: 0.1 }], one, bad), /iterations must be a positive integer, got/);
  }
  const before = tf.memory().numTensors;
  const x = logits();
  const none = tf.zeros([0, 5]) as tf.Tensor2D;
  const [q1, empty] = await sinkhornKnopp(
    [
      { logits: x, temperature: 0.1 },
      { logits: none, temperature: 0.1 },
    ],
    one,
    1,
  );
  assert.deepEqual(empty!.shape, [0, 5]);
  assert.equal(empty!.dtype, 'float32');
  // One iteration by hand: Q = exp(x / t)^T / sum; rows / their sums / K; columns / their sums / N; times N.
  const e = [0.3, -1, 2, 0.5, 0.1, -0.2].map((v) => Math.exp(v / 0.1));
  const rowsum = [0, 1, 2].map((k) => e[k]! + e[3 + k]!);
  const q = e.map((v, i) => v / rowsum[i % 3]!);
  const want = q.map((v, i) => v / (i < 3 ? q[0]! + q[1]! + q[2]! : q[3]! + q[4]! + q[5]!));
  Array.from(q1!.dataSync()).forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-6, `target ${i}: ${v} vs ${want[i]}`));
  tf.dispose([x, none, q1!, empty!]);
  assert.equal(tf.memory().numTensors, before, 'every intermediate disposed');
});
