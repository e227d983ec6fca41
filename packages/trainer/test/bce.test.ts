import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { bceWithLogits, binaryCrossEntropyLoss, binaryCrossEntropyTargets } from '../src/losses.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

/** deit/engine.py --bce-loss run by fixtures/make_deit_reference.py with torch 1.13 (loss and autograd gradient). */
interface BceCase {
  name: string;
  shape: [number, number];
  logits: number[];
  targets: number[];
  binarized: number[];
  loss: number;
  grad: number[];
}
const cases = (JSON.parse(readFileSync(new URL('./fixtures/deit-reference.json', import.meta.url), 'utf8')) as { bce: BceCase[] }).bce;

test('--bce-loss: targets.gt(0) then BCEWithLogitsLoss mean, loss and gradient against torch', () => {
  assert.equal(cases.length, 4);
  for (const c of cases) {
    const logits = tf.tensor2d(c.logits, c.shape);
    const targets = tf.tensor2d(c.targets, c.shape);
    assert.deepEqual(Array.from(binaryCrossEntropyTargets(targets).dataSync()), c.binarized, `${c.name}: binarised targets`);
    assertClose(binaryCrossEntropyLoss(logits, targets).dataSync()[0]!, c.loss, 1e-6, `${c.name}: loss`);
    const grad = tf.grad((z: tf.Tensor) => binaryCrossEntropyLoss(z as tf.Tensor2D, targets))(logits);
    const g = grad.dataSync();
    c.grad.forEach((w, k) => assertClose(g[k]!, w, 1e-6, `${c.name}: dloss/dlogits[${k}]`));
    tf.dispose([logits, targets, grad]);
  }
  // smoothed mixup: every target positive, so all ones (the reason the recipe uses --smoothing 0)
  assert.ok(cases[2]!.binarized.every((t) => t === 1));
});

test('bceWithLogits: the textbook formula by hand; shapes must match', () => {
  const z = [
    [0.5, -2],
    [3, 0],
  ];
  const t = [
    [1, 0],
    [0, 1],
  ];
  const sig = (x: number) => 1 / (1 + Math.exp(-x));
  let sum = 0;
  z.forEach((row, i) =>
    row.forEach((x, j) => {
      sum -= t[i]![j]! * Math.log(sig(x)) + (1 - t[i]![j]!) * Math.log(1 - sig(x));
    }),
  );
  assertClose(bceWithLogits(tf.tensor2d(z), tf.tensor2d(t)).dataSync()[0]!, sum / 4, 1e-6);
  assert.throws(
    () => bceWithLogits(tf.zeros([2, 3]) as tf.Tensor2D, tf.zeros([2, 2]) as tf.Tensor2D),
    /logits \[2,3\] and targets \[2,2\] must have the same shape/,
  );
});
