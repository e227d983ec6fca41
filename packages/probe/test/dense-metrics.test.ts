/**
 * dense-metrics.ts on its own, host arithmetic only (no model, no tfjs kernels; fast enough to run per
 * mutant of `npm run mutate -- packages/probe/src/dense-metrics.ts`): each function against a naive
 * computation written here from the protocol (PyTorch's bilinear formula, cv2's nearest rule, mmseg's
 * intersect_and_union, the depth toolbox's `calculate`), plus hand values at the edges a mistake moves:
 * ratios exactly 1.25, 1.25^2 and 1.25^3, depths exactly at the range's ends, crops past the image,
 * labels and predictions outside [0, C), a SILog that rounding makes NaN.
 * dense-heads.test.ts checks the same functions against PyTorch's own output (fixtures).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  addSegmentation,
  bilinearMatrix,
  bilinearWeights,
  chainedBilinearMatrix,
  DEPTH_METRICS,
  depthEvalMask,
  depthScores,
  meanDepthScores,
  resampleMap,
  resizeNearest,
  segmentationScores,
  segmentationTotals,
  type DepthScores,
} from '../src/dense-metrics.js';
import { bilinear } from './dense-naive-resize.js';

/** A seeded stream of values in [0, 1) (no library: the test stays independent). */
function stream(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const close = (got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string) => {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= tol, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
};

test('bilinear weights, matrices and resampleMap equal the PyTorch formula (up, down, equal sizes, 1 sample)', () => {
  const sizes: [number, number][] = [
    [3, 7],
    [7, 3],
    [4, 4],
    [1, 5],
    [5, 1],
    [2, 9],
  ];
  for (const [n, N] of sizes) {
    // The matrix applied to the unit vectors is the naive resize of each unit vector.
    const m = bilinearMatrix(N, n);
    assert.equal(m.length, N * n);
    for (let col = 0; col < n; col++) {
      const unit = Array.from({ length: n }, (_, i) => (i === col ? 1 : 0));
      const want = bilinear(unit, n, 1, 1, N, 1);
      close(
        Array.from({ length: N }, (_, o) => m[o * n + col]!),
        want,
        1e-12,
        `matrix ${n}->${N} column ${col}`,
      );
    }
    const w = bilinearWeights(N, n);
    for (let o = 0; o < N; o++) {
      assert.ok(Math.abs(w.w0[o]! + w.w1[o]! - 1) < 1e-12, `weights of ${o} sum to 1`);
      assert.ok(w.i0[o]! >= 0 && w.i1[o]! <= n - 1 && w.i1[o]! - w.i0[o]! <= 1, `${n}->${N} sources of ${o}`);
    }
  }
  // Hand values: 2 -> 4 samples (torch: [x0, 0.75 x0 + 0.25 x1, 0.25 x0 + 0.75 x1, x1]; the last one's
  // source 1.25 is past the last sample: both sources are sample 1).
  const w = bilinearWeights(4, 2);
  assert.deepEqual(
    [Array.from(w.i0), Array.from(w.i1), Array.from(w.w1)],
    [
      [0, 0, 0, 1],
      [1, 1, 1, 1],
      [0, 0.25, 0.75, 0.25],
    ],
  );
  // A map of 3 x 2 with 2 channels to 5 x 4, through resampleMap with the matrices.
  const r = stream(7);
  const x = Float32Array.from({ length: 3 * 2 * 2 }, () => r() * 4 - 2);
  const out = resampleMap(x, 3, 2, 2, bilinearMatrix(5, 3), bilinearMatrix(4, 2));
  assert.ok(out instanceof Float32Array);
  close(out, bilinear(x, 3, 2, 2, 5, 4), 1e-6, 'resampleMap 3x2 -> 5x4');
  // Downsampling too (7 x 5 -> 3 x 2, one channel).
  const y = Float32Array.from({ length: 35 }, () => r());
  close(resampleMap(y, 7, 5, 1, bilinearMatrix(3, 7), bilinearMatrix(2, 5)), bilinear(y, 7, 5, 1, 3, 2), 1e-6, 'resampleMap down');
  assert.throws(() => resampleMap(x, 3, 3, 2, bilinearMatrix(5, 3), bilinearMatrix(4, 3)), /map holds 12 values, expected 3x3x2/);
  for (const [o, i] of [
    [0, 3],
    [3, 0],
    [2.5, 3],
  ]) {
    assert.throws(() => bilinearWeights(o!, i!), /sizes must be positive integers/);
  }
});

test("chainedBilinearMatrix is each stage's resize in turn (mmseg's grid -> input -> label)", () => {
  const r = stream(3);
  const x = Array.from({ length: 3 }, () => r());
  for (const sizes of [
    [3, 8, 5],
    [3, 6, 2, 7],
  ]) {
    const m = chainedBilinearMatrix(sizes);
    const last = sizes[sizes.length - 1]!;
    assert.equal(m.length, last * 3);
    let want: ArrayLike<number> = x;
    for (let k = 1; k < sizes.length; k++) want = bilinear(want, sizes[k - 1]!, 1, 1, sizes[k]!, 1);
    const got = Array.from({ length: last }, (_, i) => x.reduce((s, v, c) => s + m[i * 3 + c]! * v, 0));
    close(got, want, 1e-12, `chain ${sizes}`);
  }
  assert.deepEqual(Array.from(chainedBilinearMatrix([2, 4])), Array.from(bilinearMatrix(4, 2)), 'one stage is the matrix itself');
  assert.throws(() => chainedBilinearMatrix([4]), /at least two sizes/);
});

test('resizeNearest is cv2 INTER_NEAREST (src = floor(dst * in / out)), keeping the array type', () => {
  const x = Uint8Array.from({ length: 12 }, (_, i) => i * 3);
  for (const [H, W] of [
    [7, 5],
    [2, 3],
    [3, 4],
    [1, 1],
  ]) {
    const got = resizeNearest(x, 3, 4, H!, W!);
    assert.ok(got instanceof Uint8Array);
    const want = Array.from(
      { length: H! * W! },
      (_, p) => x[Math.floor((Math.floor(p / W!) * 3) / H!) * 4 + Math.floor(((p % W!) * 4) / W!)]!,
    );
    assert.deepEqual(Array.from(got), want, `3x4 -> ${H}x${W}`);
  }
  const f = resizeNearest(Float32Array.from([0.5, 1.5, 2.5, 3.5]), 2, 2, 3, 3);
  assert.ok(f instanceof Float32Array);
  // rows 0, 0, 1 and columns 0, 0, 1 of [[0.5, 1.5], [2.5, 3.5]]
  assert.deepEqual(Array.from(f), [0.5, 0.5, 1.5, 0.5, 0.5, 1.5, 2.5, 2.5, 3.5]);
});

/** mmseg's intersect_and_union summed over images, written out per class. */
function naiveSegmentation(images: { pred: number[]; label: number[] }[], C: number, ignore: number) {
  const I = new Array<number>(C).fill(0),
    P = new Array<number>(C).fill(0),
    L = new Array<number>(C).fill(0);
  for (const { pred, label } of images) {
    pred.forEach((p, i) => {
      const l = label[i]!;
      if (l === ignore) return;
      for (let c = 0; c < C; c++) {
        if (p === c) P[c]!++;
        if (l === c) L[c]!++;
        if (p === c && l === c) I[c]!++;
      }
    });
  }
  const U = I.map((v, c) => P[c]! + L[c]! - v);
  const iou = I.map((v, c) => (U[c]! > 0 ? v / U[c]! : NaN));
  const acc = I.map((v, c) => (L[c]! > 0 ? v / L[c]! : NaN));
  const mean = (a: number[]) => {
    const ok = a.filter((v) => !Number.isNaN(v));
    return ok.reduce((s, v) => s + v, 0) / ok.length;
  };
  const labelled = L.reduce((s, v) => s + v, 0);
  return { I, U, P, L, iou, miou: mean(iou), accuracy: I.reduce((s, v) => s + v, 0) / labelled, meanAccuracy: mean(acc) };
}

test('segmentation totals and scores equal mmseg counted class by class (ignore label, values outside [0, C), two images)', () => {
  const C = 5;
  const r = stream(11);
  // Labels 0..6 (5 and 6 outside [0, C): counted nowhere) and 255 (ignored); predictions -1..5.
  const images = [40, 25].map((n) => ({
    pred: Array.from({ length: n }, () => Math.floor(r() * 7) - 1),
    label: Array.from({ length: n }, () => (r() < 0.15 ? 255 : Math.floor(r() * 7))),
  }));
  const t = segmentationTotals(C);
  for (const im of images) assert.equal(addSegmentation(t, im.pred, Uint8Array.from(im.label)), t, 'returns the totals');
  const want = naiveSegmentation(images, C, 255);
  assert.deepEqual(Array.from(t.intersect), want.I);
  assert.deepEqual(Array.from(t.union), want.U);
  assert.deepEqual(Array.from(t.predicted), want.P);
  assert.deepEqual(Array.from(t.labelled), want.L);
  const s = segmentationScores(t);
  assert.ok(want.iou.every((v) => !Number.isNaN(v)) && want.I.some((v) => v > 0), 'every class occurs and some are right');
  close(s.iou, want.iou, 1e-12, 'IoU');
  assert.ok(Math.abs(s.miou - want.miou) < 1e-12, `mIoU ${s.miou} vs ${want.miou}`);
  assert.ok(Math.abs(s.accuracy - want.accuracy) < 1e-12, `aAcc ${s.accuracy} vs ${want.accuracy}`);
  assert.ok(Math.abs(s.meanAccuracy - want.meanAccuracy) < 1e-12, `mAcc ${s.meanAccuracy} vs ${want.meanAccuracy}`);

  // Another ignore value: label 2 is skipped, 255 is then a label outside [0, C) (its pixel's prediction counts).
  const u = addSegmentation(segmentationTotals(3), [2, 2, 1, 0, 0], [2, 255, 1, 1, 0], 2);
  assert.deepEqual(
    [Array.from(u.intersect), Array.from(u.predicted), Array.from(u.labelled)],
    [
      [1, 1, 0],
      [2, 1, 1],
      [1, 2, 0],
    ],
  );
  // A class predicted but never labelled has IoU 0 (counted); one neither predicted nor labelled is left out.
  const v = segmentationScores(addSegmentation(segmentationTotals(3), [0, 1, 1], [0, 0, 0]));
  assert.deepEqual(v.iou.slice(0, 2), [1 / 3, 0]);
  assert.ok(Number.isNaN(v.iou[2]!));
  assert.ok(Math.abs(v.miou - 1 / 6) < 1e-15);
  assert.equal(v.accuracy, 1 / 3);
  assert.equal(v.meanAccuracy, 1 / 3, 'class 1 is never labelled: left out of mAcc');
  assert.throws(() => addSegmentation(segmentationTotals(2), [1], [1, 0]), /segmentation metrics: 1 predictions for 2 labels/);
  const none = segmentationScores(segmentationTotals(2));
  assert.ok(Number.isNaN(none.miou) && Number.isNaN(none.accuracy) && Number.isNaN(none.meanAccuracy), 'nothing labelled: NaN');
});

/** The toolbox's calculate(gt, pred), all nine metrics, in float64 over the listed pixels. */
function naiveDepth(gt: number[], pred: number[]): DepthScores {
  const n = gt.length;
  const mean = (f: (g: number, p: number) => number) => gt.reduce((s, g, i) => s + f(g, pred[i]!), 0) / n;
  const thresh = gt.map((g, i) => Math.max(g / pred[i]!, pred[i]! / g));
  const d = gt.map((g, i) => Math.log(pred[i]!) - Math.log(g));
  const dm = d.reduce((s, v) => s + v, 0) / n;
  return {
    delta1: thresh.filter((t) => t < 1.25).length / n,
    delta2: thresh.filter((t) => t < 1.25 * 1.25).length / n,
    delta3: thresh.filter((t) => t < 1.25 * 1.25 * 1.25).length / n,
    absRel: mean((g, p) => Math.abs(g - p) / g),
    sqRel: mean((g, p) => (g - p) ** 2 / g),
    rmse: Math.sqrt(mean((g, p) => (g - p) ** 2)),
    rmseLog: Math.sqrt(mean((g, p) => (Math.log(g) - Math.log(p)) ** 2)),
    log10: mean((g, p) => Math.abs(Math.log10(g) - Math.log10(p))),
    silog: Math.sqrt(d.reduce((s, v) => s + v * v, 0) / n - dm * dm) * 100,
  };
}

const closeScores = (got: DepthScores, want: DepthScores, what: string) => {
  for (const k of DEPTH_METRICS)
    assert.ok(Math.abs(got[k] - want[k]) <= 1e-9 * Math.max(1, Math.abs(want[k])), `${what} ${k}: ${got[k]} vs ${want[k]}`);
};

test("depth metrics equal the toolbox's calculate, all nine, with a mask; thresholds strict at 1.25, 1.25^2, 1.25^3", () => {
  assert.deepEqual([...DEPTH_METRICS].sort(), ['absRel', 'delta1', 'delta2', 'delta3', 'log10', 'rmse', 'rmseLog', 'silog', 'sqRel']);
  const r = stream(5);
  const gt = Array.from({ length: 30 }, () => 0.5 + 9 * r());
  const pred = gt.map((g) => g * Math.exp((r() - 0.5) * 1.6));
  closeScores(depthScores(gt, pred), naiveDepth(gt, pred), 'all pixels');
  const mask = gt.map((_, i) => (i % 3 === 1 ? 0 : 1));
  const kept = (a: number[]) => a.filter((_, i) => mask[i]);
  closeScores(depthScores(gt, pred, mask), naiveDepth(kept(gt), kept(pred)), 'masked');
  // Ratios exactly 1.25, 1.5625, 1.953125 (both ways round) and below each: strict < as the toolbox.
  const g = [4, 16, 64, 5, 25, 125, 10];
  const p = [5, 25, 125, 4, 16, 64, 10.5];
  const s = depthScores(g, p);
  assert.deepEqual([s.delta1, s.delta2, s.delta3], [1 / 7, 3 / 7, 5 / 7]);
  closeScores(s, naiveDepth(g, p), 'threshold edges');
  // A prediction that is the ground truth times a constant: SILog is 0, also where rounding makes the
  // variance of the log errors slightly negative (sqrt: NaN).
  const g2 = [1, 2, 3, 4.5, 7];
  const p2 = g2.map((x) => x * 1.0785000000000002);
  assert.ok(Number.isNaN(naiveDepth(g2, p2).silog), 'the case where rounding gives a negative variance');
  const s2 = depthScores(g2, p2);
  assert.equal(s2.silog, 0);
  assert.ok(Math.abs(s2.rmseLog - Math.log(1.0785000000000002)) < 1e-12);
  const none = depthScores([1, 2], [1, 2], [0, 0]);
  for (const k of DEPTH_METRICS) assert.ok(Number.isNaN(none[k]), `${k}: NaN without a valid pixel`);
  assert.throws(() => depthScores([1, 2], [1]), /1 predictions for 2 ground-truth pixels/);
});

test('depth evaluation mask: gt strictly inside the range, inside the crop (clipped to the image)', () => {
  const depth = Float32Array.from([0.5, 1, 2, 10, 3, 9.99, 4, 0.51, 6, 7, 8, 5]); // 3 rows x 4 columns
  const t = { width: 4, height: 3, depth };
  assert.deepEqual(Array.from(depthEvalMask(t, [0.5, 10])), [0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1], 'range ends excluded');
  // crop [y0, y1, x0, x1) = [1, 3, 2, 4): rows 1-2, columns 2-3
  assert.deepEqual(Array.from(depthEvalMask({ ...t, evalCrop: [1, 3, 2, 4] }, [0.5, 10])), [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]);
  // a crop past the image on every side is the whole image
  assert.deepEqual(Array.from(depthEvalMask({ ...t, evalCrop: [-2, 9, -1, 7] }, [0.5, 10])), Array.from(depthEvalMask(t, [0.5, 10])));
  assert.deepEqual(Array.from(depthEvalMask({ ...t, evalCrop: [0, 1, 1, 3] }, [0, 100])), [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.throws(() => depthEvalMask({ width: 1, height: 1 }, [0, 1]), /no depth map/);
});

test('meanDepthScores averages every metric over images, skipping an image without valid pixels', () => {
  const a = depthScores([1, 2, 4], [1.1, 2.5, 3]);
  const b = depthScores([3, 5], [2, 5.5]);
  const empty = depthScores([1], [1], [0]);
  const m = meanDepthScores([a, empty, b]);
  for (const k of DEPTH_METRICS) assert.ok(Math.abs(m[k] - (a[k] + b[k]) / 2) < 1e-15, `${k}: ${m[k]}`);
  const all = meanDepthScores([empty]);
  for (const k of DEPTH_METRICS) assert.ok(Number.isNaN(all[k]), `${k} of no image: NaN`);
});
