/**
 * optim.ts keeps no tensor behind (issue 22; survivors of its mutation run on the code of 285130c): the
 * squared sums of `globalNorm`, the norm and the clip factor of `Lamb.apply`, and what `clipByGlobalNorm`
 * and `AdamW.apply` allocate. A tensor left each step grows a run's `tf_tensors` / `tf_mb` metrics and its
 * memory until the wasm heap aborts. Also globalNorm's value against the sum computed here. Tiny tensors.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { AdamW, Lamb, clipByGlobalNorm, globalNorm } from '../src/optim.js';
import type { ParamSpec } from '../src/param-groups.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

const spec = (name: string, values: number[]): ParamSpec => ({
  name,
  variable: tf.variable(tf.tensor1d(values)),
  lrMult: 1,
  wdMult: 1,
  isLastLayer: false,
});

test('globalNorm: sqrt of every tensor sum of squares, one tensor out and nothing else left', () => {
  const g = [tf.tensor1d([3, 1]), tf.tensor2d([[-2, 5]])];
  const before = tf.memory().numTensors;
  const n = globalNorm(g);
  assert.equal(tf.memory().numTensors, before + 1, 'only the norm');
  assertClose(n.dataSync()[0]!, Math.sqrt(9 + 1 + 4 + 25), 1e-6);
  tf.dispose([n, ...g]);
});

test('clipByGlobalNorm: one new tensor per gradient when it clips, none when it does not, on the device and the host sum', () => {
  const g = [tf.tensor1d([3, 0]), tf.tensor1d([0, 4])];
  for (const sumOn of ['device', 'host'] as const) {
    const before = tf.memory().numTensors;
    const left = clipByGlobalNorm(g, 10, { sumOn });
    assert.equal(tf.memory().numTensors, before, `${sumOn}: not clipped`);
    assert.equal(left.grads[0], g[0]);
    const clipped = clipByGlobalNorm(g, 1, { sumOn });
    assert.equal(tf.memory().numTensors, before + 2, `${sumOn}: clipped`);
    tf.dispose(clipped.grads);
  }
  tf.dispose(g);
});

test('AdamW.apply and Lamb.apply (with and without its clipping) leave the tensor count as it was', () => {
  for (const make of [
    (p: ParamSpec[]) => new AdamW(p),
    (p: ParamSpec[]) => new Lamb(p),
    (p: ParamSpec[]) => new Lamb(p, { maxGradNorm: null }),
  ]) {
    const params = [spec('a', [1, -2, 3]), spec('b', [0.5, 0.25])];
    const opt = make(params);
    const grads = [tf.tensor1d([10, 20, -30]), tf.tensor1d([5, -5])];
    const hp = { lr: 0.1, wd: 0.05 };
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) opt.apply(grads, hp);
    assert.equal(tf.memory().numTensors, before, `${opt.constructor.name}: 3 steps left no tensor`);
    opt.dispose();
    tf.dispose([...grads, ...params.map((p) => p.variable)]);
  }
});

test('AdamW and Lamb: built and disposed, their moments leave no tensor or byte behind', () => {
  const p = [spec('a', [1, 2, 3]), spec('b', [4])];
  for (const make of [() => new AdamW(p), () => new Lamb(p)]) {
    const before = tf.memory();
    const opt = make();
    assert.equal(tf.memory().numTensors, before.numTensors + 4, 'm and v of both parameters');
    opt.dispose();
    assert.deepEqual([tf.memory().numTensors, tf.memory().numBytes], [before.numTensors, before.numBytes]);
  }
  for (const s of p) s.variable.dispose();
});
