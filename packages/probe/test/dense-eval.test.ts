/**
 * The dense probes' evaluation on a tiny case against the naive recomputation of dense-naive.ts: a
 * BatchNorm + 1x1 conv segmentation head and a bins / regression depth head given by hand, on 2 images
 * of 2 x 3 patches, labels of other sizes (ignore 255, a class never predicted, a class never labelled),
 * depth maps with pixels outside the range and an evaluation crop.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend, Rng } from '@vitreg/core';
import { depthHeadTensors, evaluateDepth, type DepthHead } from '../src/dense-depth.js';
import { evaluateSegmentation, segmentationHeadTensors, type SegmentationHead } from '../src/dense-segmentation.js';
import { meanDepthScores } from '../src/dense-metrics.js';
import { bilinear, naiveDepth, naiveDepthScores, naiveSegmentation } from './dense-naive.js';

await initBackend('wasm', { log: () => {} });

const rng = new Rng(4);
const vec = (n: number, scale = 1, shift = 0) => Float32Array.from({ length: n }, () => shift + scale * rng.normal());
const grid: [number, number] = [2, 3];
const D = 4;
const features = { n: 2, grid, dim: D, x: vec(2 * 6 * D), cls: vec(2 * D) };

test('segmentation: mIoU, per-class IoU and pixel accuracy equal the naive computation', async () => {
  const C = 4;
  const head: SegmentationHead = {
    numClasses: C,
    dim: D,
    bn: { weight: vec(D, 0.3, 1), bias: vec(D, 0.2), runningMean: vec(D, 0.5), runningVar: vec(D, 0.1, 1).map(Math.abs), eps: 1e-5 },
    weight: vec(C * D, 2),
    bias: vec(C),
  };
  const labels = [0, 1].map((i) => {
    const [H, W] = i === 0 ? [5, 7] : [9, 4];
    const seg = Uint8Array.from({ length: H * W }, (_, p) => (p % 11 === 0 ? 255 : (p * 7 + i) % 3));
    return { width: W, height: H, segmentation: seg };
  });
  const { scores } = await evaluateSegmentation(head, features, [12, 18], async (i) => labels[i]!);
  const images = [0, 1].map((i) => ({ x: features.x.subarray(i * 6 * D, (i + 1) * 6 * D) }));
  const want = naiveSegmentation(segmentationHeadTensors(head), images, grid, [12, 18], labels);
  assert.ok(Math.abs(scores.miou - want.miou) < 1e-12, `mIoU ${scores.miou}, naive ${want.miou}`);
  assert.ok(Math.abs(scores.accuracy - want.accuracy) < 1e-12, `accuracy ${scores.accuracy}, naive ${want.accuracy}`);
  scores.iou.forEach((v, c) =>
    assert.ok(Number.isNaN(v) ? Number.isNaN(want.iou[c]!) : Math.abs(v - want.iou[c]!) < 1e-12, `IoU ${c}: ${v} vs ${want.iou[c]}`),
  );
  assert.ok(want.iou.some((v) => v > 0) && want.iou.some((v) => v < 1), `a mixed case: IoUs ${want.iou}`);
});

test('depth: RMSE, abs rel and delta1 per image and their mean equal the naive computation (bins and regression heads)', async () => {
  const range: [number, number] = [0.5, 6];
  for (const mode of ['bins', 'regression'] as const) {
    const K = mode === 'bins' ? 5 : 1;
    const head: DepthHead = {
      mode,
      dim: 2 * D,
      nBins: 5,
      minDepth: range[0],
      maxDepth: range[1],
      upsample: 2,
      weight: vec(K * 2 * D, mode === 'bins' ? 1 : 0.5),
      bias: vec(K, 0.5, mode === 'bins' ? 0 : 2),
    };
    const targets = [0, 1].map((i) => {
      const [H, W] = i === 0 ? [6, 8] : [5, 5];
      const depth = Float32Array.from({ length: H * W }, (_, p) => (p % 9 === 0 ? 0 : p % 13 === 0 ? 7 : 1 + ((p * 5 + i) % 4)));
      return { width: W, height: H, depth, evalCrop: i === 1 ? ([1, 5, 0, 4] as [number, number, number, number]) : undefined };
    });
    const per = await evaluateDepth(head, features, range, async (i) => targets[i]!);
    const tensors = depthHeadTensors(head);
    per.forEach((s, i) => {
      const t = targets[i]!;
      const img = { x: features.x.subarray(i * 6 * D, (i + 1) * 6 * D), cls: features.cls.subarray(i * D, (i + 1) * D) };
      let pred = naiveDepth(tensors, img, grid, { min: range[0], max: range[1], upsample: 2 }, [t.height, t.width]);
      if (mode === 'regression') {
        // regression: relu(conv) + min, clamped, resized (naiveDepth computes the bins head)
        const [gh, gw] = grid;
        const logits = Array.from({ length: gh * gw }, (_, p) => {
          const f = [...img.x.subarray(p * D, (p + 1) * D), ...img.cls];
          return f.reduce((a, v, c) => a + v * head.weight[c]!, head.bias[0]!);
        });
        const up = bilinear(logits, gh, gw, 1, 2 * gh, 2 * gw).map((v) =>
          Math.min(Math.max(Math.max(v, 0) + range[0], range[0]), range[1]),
        );
        pred = bilinear(up, 2 * gh, 2 * gw, 1, t.height, t.width);
      }
      // Pixels outside the evaluation crop are not scored: zero them (gt 0 is outside the range).
      const gt = Float32Array.from(t.depth, (v, p) => {
        const [y0, y1, x0, x1] = t.evalCrop ?? [0, t.height, 0, t.width];
        const y = Math.floor(p / t.width);
        const x = p % t.width;
        return y >= y0 && y < y1 && x >= x0 && x < x1 ? v : 0;
      });
      const want = naiveDepthScores(gt, pred, range);
      for (const k of ['rmse', 'absRel', 'delta1'] as const) {
        assert.ok(Math.abs(s[k] - want[k]) < 1e-5 * Math.max(1, want[k]), `${mode} image ${i} ${k}: ${s[k]}, naive ${want[k]}`);
      }
    });
    const mean = meanDepthScores(per);
    assert.ok(Math.abs(mean.rmse - (per[0]!.rmse + per[1]!.rmse) / 2) < 1e-12);
  }
});
