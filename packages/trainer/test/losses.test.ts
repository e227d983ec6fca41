import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import {
  Center,
  dinoCrossEntropy,
  dinoGlobalLocalLoss,
  ibotMaskedLoss,
  koleoLoss,
  oneHotTargets,
  rankMean,
  softTargetCrossEntropy,
  teacherSoftmaxCenter,
} from '../src/losses.js';
import { assertClose, logSoftmaxRow, softmaxRow, useWasm } from './helpers.js';

before(useWasm);

const value = (t: tf.Tensor) => {
  const v = t.dataSync()[0]!;
  t.dispose();
  return v;
};

test('cross-entropy: uniform logits give log(C); label smoothing and soft targets by hand', () => {
  assertClose(value(softTargetCrossEntropy(tf.zeros([2, 5]), oneHotTargets([1, 3], 5))), Math.log(5));
  const logits = [
    [2, 0, -1],
    [0.5, 1.5, 0],
  ];
  const lsm = logits.map(logSoftmaxRow);
  // label smoothing 0.1 on labels [0, 1]: target = 0.9 * onehot + 0.1 / 3
  const s = 0.1;
  const t = [
    [1 - s + s / 3, s / 3, s / 3],
    [s / 3, 1 - s + s / 3, s / 3],
  ];
  const expected = -(t[0]!.reduce((a, v, j) => a + v * lsm[0]![j]!, 0) + t[1]!.reduce((a, v, j) => a + v * lsm[1]![j]!, 0)) / 2;
  assertClose(value(softTargetCrossEntropy(tf.tensor2d(logits), oneHotTargets([0, 1], 3), s)), expected);
  // mixup target 0.7 / 0.3, no smoothing
  const mix = [
    [0.7, 0.3, 0],
    [0, 0.3, 0.7],
  ];
  const expMix = -(0.7 * lsm[0]![0]! + 0.3 * lsm[0]![1]! + 0.3 * lsm[1]![1]! + 0.7 * lsm[1]![2]!) / 2;
  assertClose(value(softTargetCrossEntropy(tf.tensor2d(logits), tf.tensor2d(mix))), expMix);
});

test('teacher centering and sharpening: softmax((t - c) / temp)', () => {
  const t = [
    [1, 2, 3],
    [0, 0, 1],
  ];
  const c = [0.5, 1, 0];
  const out = teacherSoftmaxCenter(tf.tensor2d(t), tf.tensor1d(c), 0.04).arraySync() as number[][];
  t.forEach((row, i) => {
    const ref = softmaxRow(row.map((v, j) => (v - c[j]!) / 0.04));
    ref.forEach((r, j) => assertClose(out[i]![j]!, r, 1e-5, `prob[${i}][${j}]`));
  });
});

test('DINO loss: every student/teacher pair, -mean(sum(t log softmax(s / 0.1))), global/local split', () => {
  const B = 2;
  const K = 4;
  const rnd = (seed: number) => Array.from({ length: B * K }, (_, i) => Math.sin(seed * 13.7 + i * 2.3) * 3);
  const rows = (flat: number[]) => Array.from({ length: flat.length / K }, (_, r) => flat.slice(r * K, r * K + K));
  const studentGlobal = rows([...rnd(1), ...rnd(2)]); // crop 1 rows then crop 2 rows
  const local = [rows(rnd(3)), rows(rnd(4)), rows(rnd(5))];
  const teacherRaw = rows([...rnd(6), ...rnd(7)]);
  const teacherProbs = teacherRaw.map((r) => softmaxRow(r.map((v) => v / 0.07)));
  // Swapped teacher: rows of view 2 then view 1.
  const swapped = [...teacherProbs.slice(B), ...teacherProbs.slice(0, B)];
  const ce = (s: number[][], t: number[][]) =>
    -s.reduce((acc, row, i) => acc + logSoftmaxRow(row.map((v) => v / 0.1)).reduce((a, l, j) => a + t[i]![j]! * l, 0), 0) / s.length;
  const terms = 2 + 2 * local.length;
  const expGlobal = (ce(studentGlobal, swapped) * 2) / terms;
  const views = [teacherProbs.slice(0, B), teacherProbs.slice(B)];
  const expLocal = local.reduce((a, l) => a + ce(l, views[0]!) + ce(l, views[1]!), 0) / terms;
  const { global, local: loc } = dinoGlobalLocalLoss(
    tf.tensor2d(studentGlobal),
    tf.tensor2d(swapped),
    local.map((l) => tf.tensor2d(l)),
    0.1,
  );
  assertClose(value(global), expGlobal, 1e-5, 'global');
  assertClose(value(loc), expLocal, 1e-5, 'local');
  // the raw pairwise sum
  assertClose(value(dinoCrossEntropy([tf.tensor2d(local[0]!)], [tf.tensor2d(views[0]!)], 0.1)), ce(local[0]!, views[0]!));
  assert.throws(() => dinoGlobalLocalLoss(tf.zeros([3, K]), tf.zeros([3, K]), [], 0.1), /must be even/);
});

test('iBOT masked-patch loss: weights 1/n_masked per image, divided by the number of images', () => {
  const s = [
    [1, 0, 2],
    [0.3, -1, 0],
    [2, 2, 0],
  ];
  const t = [
    [0.2, 0.5, 0.3],
    [0.9, 0.05, 0.05],
    [1 / 3, 1 / 3, 1 / 3],
  ];
  // image 0 has 2 masked patches (rows 0, 1), image 1 has 1 (row 2), image 2 none.
  const w = [0.5, 0.5, 1];
  const per = s.map((row, i) => logSoftmaxRow(row.map((v) => v / 0.1)).reduce((a, l, j) => a + t[i]![j]! * l, 0));
  const expected = -(per[0]! * 0.5 + per[1]! * 0.5 + per[2]! * 1) / 3;
  assertClose(value(ibotMaskedLoss(tf.tensor2d(s), tf.tensor2d(t), tf.tensor1d(w), 3, 0.1)), expected);
});

test('KoLeo: -mean log distance to the nearest other normalised vector', () => {
  const x = [
    [1, 0],
    [0.8, 0.6],
    [0, 2],
    [-1, -1],
  ];
  const naive = (x: number[][]) => {
    const n = x.map((r) => {
      const l = Math.hypot(...r);
      return r.map((v) => v / l);
    });
    return (
      -n.reduce((acc, a, i) => {
        let best = -Infinity;
        let bj = -1;
        n.forEach((b, j) => {
          if (j !== i) {
            const d = a[0]! * b[0]! + a[1]! * b[1]!;
            if (d > best) {
              best = d;
              bj = j;
            }
          }
        });
        const d = Math.hypot(a[0]! - n[bj]![0]! + 1e-8, a[1]! - n[bj]![1]! + 1e-8);
        return acc + Math.log(d + 1e-8);
      }, 0) / n.length
    );
  };
  const expected = naive(x);
  assertClose(value(koleoLoss(tf.tensor2d(x))), expected, 1e-5);
  // The gradient (no gather kernel) equals central differences of the naive loss; a step against it spreads
  // the points apart and lowers the loss (code-defaults.test.ts checks both against DINOv2's KoLeoLoss).
  // Row 3 moved off the tie above (its two nearest rows at equal distance), where the loss has a kink.
  const xg = x.map((r, i) => (i === 3 ? [-1, -1.3] : r));
  const g = tf.grad((v: tf.Tensor) => koleoLoss(v as tf.Tensor2D))(tf.tensor2d(xg));
  const grad = g.arraySync() as number[][];
  g.dispose();
  const h = 1e-5;
  xg.forEach((row, i) =>
    row.forEach((_, j) => {
      const at = (d: number) => naive(xg.map((r, k) => r.map((v, l) => (k === i && l === j ? v + d : v))));
      assertClose(grad[i]![j]!, (at(h) - at(-h)) / (2 * h), 1e-3, `d loss / d x[${i}][${j}]`);
    }),
  );
  const stepped = xg.map((r, i) => r.map((v, j) => v - 0.05 * grad[i]![j]!));
  assert.ok(naive(stepped) < naive(xg) - 1e-3, `a gradient step lowers the loss: ${naive(xg)} -> ${naive(stepped)}`);
});

test('centre: EMA with momentum 0.9 of the batch means', () => {
  const c = new Center(2, 0.9);
  c.update(new Float32Array([1, -2]));
  assertClose(c.value[0]!, 0.1);
  assertClose(c.value[1]!, -0.2);
  c.update(new Float32Array([1, 0]));
  assertClose(c.value[0]!, 0.19);
  assertClose(c.value[1]!, -0.18);
  assert.throws(() => c.update(new Float32Array(3)), /expected 2 values/);
});

test('rankMean: the mean of the rows then 1, or zeros then 0 for a rank without rows', () => {
  const rows = tf.tensor2d([
    [1, 2],
    [3, 8],
  ]);
  const none = tf.zeros([0, 2]) as tf.Tensor2D;
  assert.deepEqual([...rankMean(rows, 2).dataSync()], [2, 5, 1]);
  assert.deepEqual([...rankMean(none, 2).dataSync()], [0, 0, 0]);
  assert.deepEqual([...rankMean(undefined, 2).dataSync()], [0, 0, 0]);
  tf.dispose([rows, none]);
});

test('centre from ranks: the mean over the ranks that had rows; no update when none had', () => {
  // Rank 0's mean [1, -2], rank 1 without rows: averaged over 2 ranks [0.5, -1] with a share of 0.5.
  const c = new Center(2, 0.9);
  c.updateFromRanks(new Float32Array([0.5, -1, 0.5]));
  assertClose(c.value[0]!, 0.1);
  assertClose(c.value[1]!, -0.2);
  // Three ranks with rows (means 1, 2, 6 for the first value): the plain mean over the ranks.
  c.updateFromRanks(new Float32Array([3, 0, 1]));
  assertClose(c.value[0]!, 0.9 * 0.1 + 0.1 * 3);
  c.updateFromRanks(new Float32Array([0, 0, 0]));
  assertClose(c.value[0]!, 0.39, 1e-6, 'no rank had rows: unchanged');
  assert.throws(() => c.updateFromRanks(new Float32Array(2)), /expected 2 values and a share/);
});
