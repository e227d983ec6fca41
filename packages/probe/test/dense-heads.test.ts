/**
 * The dense heads against PyTorch and DINOv2's own depth head and SigLoss (fixture written by
 * fixtures/dense/make_dense_reference.py), and the metrics against hand-computed values.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients, initBackend } from '@vitreg/core';
import { denseBatch, trainDepthHead, trainSegmentationHead, type DenseFeatures } from '../src/index.js';
import { cosineAnnealingSchedule, polySchedule } from '@vitreg/trainer';
import { optimiserCase } from './dense-optimiser-case.js';
import {
  addSegmentation,
  bilinearMatrix,
  chainedBilinearMatrix,
  depthEvalMask,
  depthScores,
  meanDepthScores,
  resampleMap,
  resizeNearest,
  segmentationScores,
  segmentationTotals,
} from '../src/dense-metrics.js';
import { depthGrid, depthTrainLoss, predictDepth, type DepthHead } from '../src/dense-depth.js';
import {
  labelsColumnsFirst,
  predictSegmentation,
  segmentationGridLogits,
  segmentationTrainLoss,
  type SegmentationHead,
} from '../src/dense-segmentation.js';

const polyLr = (t: number, total: number, base: number, o: { warmupSteps: number }) => polySchedule({ base, totalSteps: total, ...o })(t);
const cosineLr = (t: number, total: number, base: number, o: { warmupSteps: number }) =>
  cosineAnnealingSchedule({ base, totalSteps: total, ...o })(t);

await initBackend('wasm', { log: () => {} });
await ensureGradients();

const ref = JSON.parse(await readFile(join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'dense', 'dense-reference.json'), 'utf8'));

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0,
    at = -1;
  for (let i = 0; i < expected.length; i++) {
    const e = Math.abs(actual[i] - expected[i]) / (1 + Math.abs(expected[i]));
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  assert.ok(worst <= tol, `${what}: worst relative error ${worst} at ${at} (${actual[at]} vs ${expected[at]})`);
}

/** [cols, rows] (PyTorch conv layout [out, in], flat) -> [rows, cols]. */
const transpose = (w: number[], rows: number, cols: number) =>
  Float32Array.from({ length: rows * cols }, (_, k) => w[(k % cols) * rows + Math.floor(k / cols)]);

test('bilinear resampling equals torch F.interpolate(align_corners=False), one stage and two', () => {
  for (const c of ref.bilinear as { in: [number, number]; sizes: [number, number][]; x: number[]; y: number[] }[]) {
    const [h, w] = c.in;
    const my = chainedBilinearMatrix([h, ...c.sizes.map((s) => s[0])]);
    const mx = chainedBilinearMatrix([w, ...c.sizes.map((s) => s[1])]);
    close(resampleMap(Float32Array.from(c.x), h, w, 2, my, mx), c.y, 1e-6, `resize ${c.in} -> ${JSON.stringify(c.sizes)}`);
  }
  // rows of a resampling matrix sum to 1; the same size is the identity
  const m = bilinearMatrix(7, 3);
  for (let o = 0; o < 7; o++) assert.ok(Math.abs(m[o * 3] + m[o * 3 + 1] + m[o * 3 + 2] - 1) < 1e-12);
  assert.deepEqual(Array.from(bilinearMatrix(3, 3)), [1, 0, 0, 0, 1, 0, 0, 0, 1]);
});

test('nearest resize of maps as cv2 INTER_NEAREST (src = floor(dst * in / out))', () => {
  const x = Uint8Array.from([1, 2, 3, 4, 5, 6]); // 2 x 3
  assert.deepEqual(Array.from(resizeNearest(x, 2, 3, 4, 2)), [1, 2, 1, 2, 4, 5, 4, 5]);
  assert.deepEqual(Array.from(resizeNearest(Float32Array.from([1, 2, 3, 4]), 2, 2, 1, 1)), [1]);
});

test('segmentation head: train-mode loss and gradients equal BatchNorm2d + Conv2d + interpolate + cross_entropy(ignore 255)', () => {
  const s = ref.segmentation;
  const [gh, gw] = s.grid as [number, number];
  const [H, W] = s.label as [number, number];
  const p = {
    gamma: tf.variable(tf.tensor1d(s.init['bn.weight'])),
    beta: tf.variable(tf.tensor1d(s.init['bn.bias'])),
    weight: tf.variable(tf.tensor2d(transpose(s.init['conv_seg.weight'], s.D, s.C), [s.D, s.C])),
    bias: tf.variable(tf.tensor1d(s.init['conv_seg.bias'])),
  };
  const x = tf.tensor2d(s.x, [s.b * gh * gw, s.D]);
  const labels = labelsColumnsFirst(s.labels, s.b, H, W);
  const my = tf.tensor2d(Float32Array.from(bilinearMatrix(H, gh)), [H, gh]);
  const mx = tf.tensor2d(Float32Array.from(bilinearMatrix(W, gw)), [W, gw]);
  const { value, grads } = tf.variableGrads(() => segmentationTrainLoss(p as never, x, labels, [gh, gw], my, mx), Object.values(p));
  close([value.dataSync()[0]], [s.loss], 1e-5, 'loss');
  close(grads[p.gamma.name].dataSync(), s.grads['bn.weight'], 1e-4, 'd bn.weight');
  close(grads[p.beta.name].dataSync(), s.grads['bn.bias'], 1e-4, 'd bn.bias');
  close(grads[p.weight.name].dataSync(), transpose(s.grads['conv_seg.weight'], s.D, s.C), 1e-4, 'd conv_seg.weight');
  close(grads[p.bias.name].dataSync(), s.grads['conv_seg.bias'], 1e-4, 'd conv_seg.bias');
  tf.dispose([...Object.values(p), x, my, mx, value, ...Object.values(grads)]);
  // the reordering: label (k, i, j) lands at ((j * b + k) * H + i)
  assert.equal(labels[(5 * s.b + 1) * H + 7], s.labels[(1 * H + 7) * W + 5]);

  // one step with lr 0 on the whole batch: the running statistics move as BatchNorm2d's (momentum 0.1, unbiased var)
  const f: DenseFeatures = { n: s.b, grid: [gh, gw], dim: s.D, x: Float32Array.from(s.x) };
  const head = trainSegmentationHead(f, Uint8Array.from(s.labels), [H, W], { numClasses: s.C, steps: 1, lr: 0, batchSize: s.b });
  close(head.bn.runningMean, s.running_mean, 1e-5, 'running_mean');
  close(head.bn.runningVar, s.running_var, 1e-5, 'running_var');
});

test('segmentation head at evaluation: running-statistics BatchNorm, conv, grid -> input size -> label size, argmax', () => {
  const s = ref.segmentation;
  const e = s.eval;
  const head: SegmentationHead = {
    numClasses: s.C,
    dim: s.D,
    bn: {
      weight: Float32Array.from(s.init['bn.weight']),
      bias: Float32Array.from(s.init['bn.bias']),
      runningMean: Float32Array.from(e.running_mean),
      runningVar: Float32Array.from(e.running_var),
      eps: 1e-5,
    },
    weight: Float32Array.from(s.init['conv_seg.weight']),
    bias: Float32Array.from(s.init['conv_seg.bias']),
  };
  const f: DenseFeatures = { n: s.b, grid: s.grid, dim: s.D, x: Float32Array.from(s.x) };
  const P = s.grid[0] * s.grid[1] * s.C;
  for (let i = 0; i < s.b; i++) {
    close(segmentationGridLogits(head, f, i), e.grid_logits.slice(i * P, (i + 1) * P), 1e-5, `grid logits ${i}`);
    const n = e.label_size[0] * e.label_size[1];
    assert.deepEqual(Array.from(predictSegmentation(head, f, i, e.input, e.label_size)), e.argmax.slice(i * n, (i + 1) * n));
  }
});

test("depth head: DINOv2's BNHead output, SigLoss (and its warm-up) with gradients, and encode_decode's clamp + resize", () => {
  for (const c of ref.depth) {
    const [gh, gw] = c.grid as [number, number];
    const [H, W] = c.label as [number, number];
    const K = c.mode === 'bins' ? c.nBins : 1;
    // features: x of each block side by side, cls likewise; denseBatch interleaves them as BNHead
    const D = c.D * c.blocks,
      P = gh * gw;
    const x = new Float32Array(c.b * P * D),
      cls = new Float32Array(c.b * D);
    for (let k = 0; k < c.blocks; k++) {
      for (let i = 0; i < c.b * P; i++) for (let d = 0; d < c.D; d++) x[i * D + k * c.D + d] = c.x[k][i * c.D + d];
      for (let i = 0; i < c.b; i++) for (let d = 0; d < c.D; d++) cls[i * D + k * c.D + d] = c.cls[k][i * c.D + d];
    }
    const f: DenseFeatures = { n: c.b, grid: [gh, gw], dim: D, x, cls, groups: c.blocks };
    const head: DepthHead = {
      mode: c.mode,
      dim: 2 * D,
      nBins: c.nBins,
      minDepth: 0.001,
      maxDepth: 10,
      upsample: 4,
      weight: Float32Array.from(c.weight),
      bias: Float32Array.from(c.bias),
    };
    const n4 = 16 * P;
    for (let i = 0; i < c.b; i++) {
      const want = c.pred.slice(i * n4, (i + 1) * n4).map((v: number) => Math.min(10, Math.max(0.001, v)));
      close(depthGrid(head, f, i), want, 1e-5, `${c.mode}/${c.blocks} head output ${i}`);
      close(predictDepth(head, f, i, [H, W]), c.eval.slice(i * H * W, (i + 1) * H * W), 1e-5, `${c.mode}/${c.blocks} evaluation ${i}`);
    }
    const w = tf.variable(tf.tensor2d(transpose(c.weight, 2 * D, K), [2 * D, K]));
    const b = tf.variable(tf.tensor1d(c.bias));
    const xb = tf.tensor2d(denseBatch(f, [0, 1], true), [c.b * P, 2 * D]);
    const gt = tf.tensor3d(c.gt, [c.b, H, W]);
    const mats = [
      [4 * gh, gh],
      [4 * gw, gw],
      [H, 4 * gh],
      [W, 4 * gw],
    ].map(([o, i]) => tf.tensor2d(Float32Array.from(bilinearMatrix(o, i)), [o, i]));
    for (const warm of [false, true]) {
      const r = warm ? c.warm : c.full;
      const { value, grads } = tf.variableGrads(() => depthTrainLoss(head, w, b, xb, gt, [gh, gw], mats, warm), [w, b]);
      close([value.dataSync()[0]], [r.loss], 1e-4, `${c.mode}/${c.blocks} SigLoss${warm ? ' warm-up' : ''}`);
      close(grads[w.name].dataSync(), transpose(r.grad_weight, 2 * D, K), 1e-3, `${c.mode}/${c.blocks} d conv_depth.weight`);
      close(grads[b.name].dataSync(), r.grad_bias, 1e-3, `${c.mode}/${c.blocks} d conv_depth.bias`);
      tf.dispose([value, ...Object.values(grads)]);
    }
    tf.dispose([w, b, xb, gt, ...mats]);
  }
});

test('mIoU with ignore 255 against hand-computed counts (mmseg total_intersect_and_union)', () => {
  // image 1: label [0 0 1 1 255 2], pred [0 1 1 1 2 0]; image 2: label [1 255], pred [1 0]
  const t = segmentationTotals(4);
  addSegmentation(t, [0, 1, 1, 1, 2, 0], Uint8Array.from([0, 0, 1, 1, 255, 2]));
  addSegmentation(t, [1, 0], Uint8Array.from([1, 255]));
  // class 0: I 1, pred {0, 5} = 2, label {0, 1} = 2 -> U 3; class 1: I 3, pred 4, label 3 -> U 4;
  // class 2: I 0, pred 0 (the 2 sits on an ignored pixel), label 1 -> U 1; class 3: absent -> NaN
  assert.deepEqual(Array.from(t.intersect), [1, 3, 0, 0]);
  assert.deepEqual(Array.from(t.union), [3, 4, 1, 0]);
  const s = segmentationScores(t);
  assert.ok(Number.isNaN(s.iou[3]));
  assert.ok(Math.abs(s.miou - (1 / 3 + 3 / 4 + 0) / 3) < 1e-12);
  assert.ok(Math.abs(s.accuracy - 4 / 6) < 1e-12);
  assert.ok(Math.abs(s.meanAccuracy - (1 / 2 + 1 + 0) / 3) < 1e-12);
  assert.throws(() => addSegmentation(t, [1], Uint8Array.from([1, 2])), /1 predictions for 2 labels/);
});

test('depth metrics against hand-computed values (the toolbox calculate), masks and the per-image mean', () => {
  const gt = [1, 2, 4, 8];
  const pred = [1, 2.5, 3, 16];
  const s = depthScores(gt, pred);
  // ratios max(g/p, p/g): 1, 1.25, 4/3, 2 -> < 1.25: 1 of 4; < 1.5625: 3; < 1.953125: 3
  assert.deepEqual([s.delta1, s.delta2, s.delta3], [0.25, 0.75, 0.75]);
  assert.ok(Math.abs(s.absRel - (0 + 0.25 + 0.25 + 1) / 4) < 1e-12);
  assert.ok(Math.abs(s.sqRel - (0 + 0.25 / 2 + 1 / 4 + 64 / 8) / 4) < 1e-12);
  assert.ok(Math.abs(s.rmse - Math.sqrt((0 + 0.25 + 1 + 64) / 4)) < 1e-12);
  const le = [0, Math.log(1.25), Math.log(0.75), Math.log(2)];
  const m = le.reduce((a, b) => a + b, 0) / 4;
  assert.ok(Math.abs(s.rmseLog - Math.sqrt(le.reduce((a, b) => a + b * b, 0) / 4)) < 1e-12);
  assert.ok(Math.abs(s.silog - 100 * Math.sqrt(le.reduce((a, b) => a + b * b, 0) / 4 - m * m)) < 1e-9);
  assert.ok(Math.abs(s.log10 - le.reduce((a, b) => a + Math.abs(b) / Math.LN10, 0) / 4) < 1e-12);
  // mask: gt in (min, max) and inside the crop [y0, y1, x0, x1)
  const target = {
    width: 3,
    height: 2,
    depth: Float32Array.from([0, 5, 11, 2, 3, 4]),
    evalCrop: [0, 2, 1, 3] as [number, number, number, number],
  };
  assert.deepEqual(Array.from(depthEvalMask(target, [0.001, 10])), [0, 1, 0, 0, 1, 1]);
  const masked = depthScores(target.depth, Float32Array.from([9, 5, 9, 9, 3, 2]), depthEvalMask(target, [0.001, 10]));
  assert.ok(Math.abs(masked.rmse - Math.sqrt(4 / 3)) < 1e-12);
  assert.ok(Number.isNaN(depthScores([0], [1], [0]).rmse), 'no valid pixel: NaN');
  const mean = meanDepthScores([s, depthScores([0], [1], [0]), masked]);
  assert.ok(Math.abs(mean.rmse - (s.rmse + masked.rmse) / 2) < 1e-12, 'NaN images are skipped');
});

test("mmcv's poly and cosine schedules with linear warm-up", () => {
  // poly power 1: base (1 - t / T); warm-up: lr (1 - (1 - t / w) (1 - ratio))
  assert.ok(Math.abs(polyLr(0, 100, 1e-3, { warmupSteps: 10 }) - 1e-3 * 1e-6) < 1e-15);
  assert.ok(Math.abs(polyLr(5, 100, 1e-3, { warmupSteps: 10 }) - 1e-3 * 0.95 * (1 - 0.5 * (1 - 1e-6))) < 1e-15);
  assert.ok(Math.abs(polyLr(50, 100, 1e-3, { warmupSteps: 10 }) - 0.5e-3) < 1e-15);
  // cosine to base * 1e-8: at T/2 the midpoint
  const end = 5e-3 * 1e-8;
  assert.ok(Math.abs(cosineLr(50, 100, 5e-3, { warmupSteps: 0 }) - (end + (5e-3 - end) / 2)) < 1e-15);
  assert.ok(Math.abs(cosineLr(0, 100, 5e-3, { warmupSteps: 30 }) - 5e-3 * 1e-3) < 1e-15);
});

test("DINOv2's GradientLoss on [B, 1, H, W] is 0 for batches of 1 and 2 (why the depth head leaves it out)", () => {
  const g = ref.gradient_loss_by_batch as Record<string, number>;
  assert.equal(g['1'], 0);
  assert.equal(g['2'], 0, 'the NYU linear config trains 2 images per GPU');
  assert.ok(g['3'] > 0 && g['4'] > 0, 'larger batches: differences between images, not pixels');
});

test("the heads train with @vitreg/trainer's AdamW, clipping and mmcv schedules to the values of the probe's own before (bit for bit)", async () => {
  const before = JSON.parse(
    await readFile(join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'dense', 'optimiser-before.json'), 'utf8'),
  );
  const c = optimiserCase();
  const seg = trainSegmentationHead(c.features, c.labels, c.labelSize, c.segOpts);
  assert.deepEqual(c.segLosses, before.segmentation.losses);
  assert.deepEqual(Array.from(seg.weight), before.segmentation.weight);
  assert.deepEqual(Array.from(seg.bias), before.segmentation.bias);
  assert.deepEqual(Array.from(seg.bn.weight), before.segmentation.bn_weight);
  assert.deepEqual(Array.from(seg.bn.bias), before.segmentation.bn_bias);
  // Depth with a clip that scales most steps (torch's test and a float64 norm), and without clipping.
  const depth = trainDepthHead(c.depthFeatures, c.depths, c.labelSize, c.depthOpts);
  assert.deepEqual(c.depthLosses, before.depth.losses);
  assert.deepEqual(Array.from(depth.weight), before.depth.weight);
  assert.deepEqual(Array.from(depth.bias), before.depth.bias);
  c.depthLosses.length = 0;
  const plain = trainDepthHead(c.depthFeatures, c.depths, c.labelSize, { ...c.depthOpts, clip: 0 });
  assert.deepEqual(c.depthLosses, before.depth_no_clip.losses);
  assert.deepEqual(Array.from(plain.weight), before.depth_no_clip.weight);
  assert.deepEqual(Array.from(plain.bias), before.depth_no_clip.bias);
  assert.notDeepEqual(before.depth.weight, before.depth_no_clip.weight, 'the clip changed the training');
});
