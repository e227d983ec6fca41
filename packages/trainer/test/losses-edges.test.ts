/**
 * The losses module's smaller pieces, by hand: KoLeo's batch-size check, the centre as a tensor, and the
 * collapse indicators (mean row entropy of the targets, entropy of their mean) the DINO metrics report.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { Center, entropies, koleoLoss } from '../src/losses.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

test('koleoLoss needs 2 rows: one is refused, two are each other nearest neighbour', () => {
  assert.throws(() => koleoLoss(tf.tensor2d([[1, 0]])), /koleoLoss: expected at least 2 rows, got 1/);
  // Two unit vectors at 90 degrees: distance sqrt(2) (+ eps terms), loss -log(sqrt(2)).
  const v = koleoLoss(
    tf.tensor2d([
      [2, 0],
      [0, 3],
    ]),
  );
  assertClose(v.dataSync()[0]!, -Math.log(Math.SQRT2), 1e-6, 'two rows');
  v.dispose();
});

test('Center.tensor holds the EMA values', () => {
  const c = new Center(3, 0.5);
  c.update(new Float32Array([2, -4, 1]));
  const t = c.tensor();
  assert.deepEqual(t.shape, [3]);
  assert.deepEqual(Array.from(t.dataSync()), [1, -2, 0.5]);
  t.dispose();
});

test('entropies: mean entropy of the rows and entropy of the mean row, in nats', () => {
  const p = tf.tensor2d([
    [1, 0, 0, 0],
    [0.25, 0.25, 0.25, 0.25],
    [0.5, 0.5, 0, 0],
  ]);
  const h = (q: number[]) => -q.reduce((a, v) => a + (v > 0 ? v * Math.log(v) : 0), 0);
  const e = entropies(p);
  assertClose(e.rows, (0 + Math.log(4) + Math.log(2)) / 3, 1e-5, 'rows');
  assertClose(e.batch, h([1.75 / 3, 0.75 / 3, 0.25 / 3, 0.25 / 3]), 1e-5, 'batch');
  p.dispose();
});
