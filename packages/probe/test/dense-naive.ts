/**
 * Naive re-implementations of the dense probes' evaluation, written from the protocol (DINOv2's BNHead
 * and linear depth head, mmseg's resizes and IoU, the depth toolbox's metrics), not from the module: loops
 * in float64 over the exported head tensors. The tests compare the module's reports with these.
 */
import { toFloat32, type DenseDataset, type HostTensor } from '@vitreg/core';
import type { VisionTransformer } from '@vitreg/registers';
import { extractDenseFeatures } from '../src/dense-run.js';
import { batchTensor, prepareInput } from '../src/extract.js';
import { bilinear } from './dense-naive-resize.js';

export { bilinear };

const values = (t: HostTensor | undefined, name: string): ArrayLike<number> => {
  if (!t) throw new Error(`naive dense: no tensor ${name}`);
  return toFloat32(t);
};

/** One image's features [gh, gw, D] (row-major). */
export interface NaiveImage {
  x: ArrayLike<number>;
  /** Its CLS token [D] (the depth head reads [patch, CLS] per position). */
  cls?: ArrayLike<number>;
}

/**
 * mIoU, per-class IoU and pixel accuracy of a segmentation head given as its tensors (bn.*, conv_seg.*):
 * BatchNorm with the running statistics (eps 1e-5), the 1x1 convolution, logits resized to the input size
 * then to the label size, argmax (first maximum), IoU over the test set's summed counts (label 255 ignored),
 * the mean over classes with a non-empty union.
 */
export function naiveSegmentation(
  tensors: Record<string, HostTensor>,
  images: NaiveImage[],
  grid: [number, number],
  inputSize: number | [number, number],
  labels: { width: number; height: number; segmentation: ArrayLike<number> }[],
): { miou: number; accuracy: number; iou: number[] } {
  const [gh, gw] = grid;
  const [ih, iw] = typeof inputSize === 'number' ? [inputSize, inputSize] : inputSize;
  const w = values(tensors['conv_seg.weight'], 'conv_seg.weight');
  const b = values(tensors['conv_seg.bias'], 'conv_seg.bias');
  const [C, D] = tensors['conv_seg.weight']!.shape as number[];
  const g = values(tensors['bn.weight'], 'bn.weight');
  const beta = values(tensors['bn.bias'], 'bn.bias');
  const mean = values(tensors['bn.running_mean'], 'bn.running_mean');
  const variance = values(tensors['bn.running_var'], 'bn.running_var');
  const inter = new Array(C!).fill(0);
  const pred = new Array(C!).fill(0);
  const lab = new Array(C!).fill(0);
  let right = 0;
  let labelled = 0;
  images.forEach((img, i) => {
    const logits = new Float64Array(gh * gw * C!);
    for (let p = 0; p < gh * gw; p++) {
      for (let c = 0; c < C!; c++) {
        let s = b[c]!;
        for (let d = 0; d < D!; d++)
          s += w[c * D! + d]! * (((img.x[p * D! + d]! - mean[d]!) / Math.sqrt(variance[d]! + 1e-5)) * g[d]! + beta[d]!);
        logits[p * C! + c] = s;
      }
    }
    const { width: W, height: H, segmentation } = labels[i]!;
    const up = bilinear(bilinear(logits, gh, gw, C!, ih, iw), ih, iw, C!, H, W);
    for (let p = 0; p < H * W; p++) {
      const l = segmentation[p]!;
      if (l === 255) continue;
      let best = 0;
      for (let c = 1; c < C!; c++) if (up[p * C! + c]! > up[p * C! + best]!) best = c;
      pred[best]++;
      if (l < C!) {
        lab[l]++;
        labelled++;
      }
      if (best === l) {
        inter[l]++;
        right++;
      }
    }
  });
  const iou = inter.map((n, c) => (pred[c] + lab[c] - n > 0 ? n / (pred[c] + lab[c] - n) : NaN));
  const ok = iou.filter((v) => !Number.isNaN(v));
  return { miou: ok.reduce((a, v) => a + v, 0) / ok.length, accuracy: right / labelled, iou };
}

/** The toolbox's RMSE, abs rel and delta < 1.25 of one image over the pixels with gt in (min, max). */
export function naiveDepthScores(gt: ArrayLike<number>, pred: ArrayLike<number>, range: [number, number]) {
  let n = 0,
    se = 0,
    rel = 0,
    d1 = 0;
  for (let i = 0; i < gt.length; i++) {
    const g = gt[i]!;
    if (!(g > range[0] && g < range[1])) continue;
    const p = pred[i]!;
    n++;
    se += (g - p) ** 2;
    rel += Math.abs(g - p) / g;
    if (Math.max(g / p, p / g) < 1.25) d1++;
  }
  return { rmse: Math.sqrt(se / n), absRel: rel / n, delta1: d1 / n };
}

/**
 * Depth maps of a linear depth head given as its tensors (conv_depth.*): per position [patch, CLS] through
 * the 1x1 convolution, upsampled `upsample` x bilinearly, 'bins' (relu + 0.1, normalised, times
 * linspace(min, max, K)), clamped to [min, max], resized bilinearly to the label size.
 */
export function naiveDepth(
  tensors: Record<string, HostTensor>,
  img: NaiveImage,
  grid: [number, number],
  o: { min: number; max: number; upsample: number },
  labelSize: [number, number],
): Float64Array {
  const [gh, gw] = grid;
  const w = values(tensors['conv_depth.weight'], 'conv_depth.weight');
  const b = values(tensors['conv_depth.bias'], 'conv_depth.bias');
  const [K, Cin] = tensors['conv_depth.weight']!.shape as number[];
  const D = img.cls ? Cin! / 2 : Cin!;
  const logits = new Float64Array(gh * gw * K!);
  for (let p = 0; p < gh * gw; p++) {
    const feat = [...Array.from({ length: D }, (_, d) => img.x[p * D + d]!), ...(img.cls ? Array.from(img.cls) : [])];
    for (let k = 0; k < K!; k++) logits[p * K! + k] = feat.reduce((s, v, c) => s + v * w[k * Cin! + c]!, b[k]!);
  }
  const u = o.upsample;
  const up = bilinear(logits, gh, gw, K!, u * gh, u * gw);
  const depth = new Float64Array(u * gh * u * gw);
  for (let p = 0; p < depth.length; p++) {
    const q = Array.from({ length: K! }, (_, k) => Math.max(up[p * K! + k]!, 0) + 0.1);
    const total = q.reduce((a, v) => a + v, 0);
    const d = q.reduce((a, v, k) => a + (v / total) * (o.min + ((o.max - o.min) * k) / (K! - 1)), 0);
    depth[p] = Math.min(Math.max(d, o.min), o.max);
  }
  return bilinear(depth, u * gh, u * gw, 1, labelSize[0], labelSize[1]);
}

/** cv2 INTER_NEAREST of an [h, w] map to [H, W] (src = floor(dst * in / out)), as the training targets. */
function nearest(x: ArrayLike<number>, h: number, w: number, H: number, W: number): number[] {
  return Array.from({ length: H * W }, (_, p) => x[Math.floor((Math.floor(p / W) * h) / H) * w + Math.floor(((p % W) * w) / W)]!);
}

/** What a dense probe's report should say, recomputed naively from its head tensors and the test images' features. */
export interface NaiveDenseReport {
  miou?: number;
  accuracy?: number;
  rmse?: number;
  absRel?: number;
  delta1?: number;
  baseline: { miou?: number; accuracy?: number; rmse?: number };
}

/**
 * The report of `runDenseProbe` on a dataset pair, recomputed: `features(i)` gives test image i's features
 * (the same model run), `tensors` the trained head; the baselines from the training targets alone (the most
 * frequent class everywhere; the geometric mean depth everywhere), every test image's metrics then their
 * mean (depth) or the counts summed over the set (segmentation).
 */
export async function naiveDenseReport(
  task: 'segmentation' | 'depth',
  tensors: Record<string, HostTensor>,
  features: NaiveImage[],
  grid: [number, number],
  size: number,
  train: { length: number; target(i: number): Promise<{ width: number; height: number; segmentation?: Uint8Array; depth?: Float32Array }> },
  test: {
    length: number;
    numClasses: number;
    depthRange?: [number, number];
    target(i: number): Promise<{ width: number; height: number; segmentation?: Uint8Array; depth?: Float32Array }>;
  },
): Promise<NaiveDenseReport> {
  const trainTargets = await Promise.all(Array.from({ length: train.length }, (_, i) => train.target(i)));
  const testTargets = await Promise.all(Array.from({ length: test.length }, (_, i) => test.target(i)));
  if (task === 'segmentation') {
    const counts = new Array(test.numClasses).fill(0);
    for (const t of trainTargets)
      for (const v of nearest(t.segmentation!, t.height, t.width, size, size)) if (v < test.numClasses) counts[v]++;
    const majority = counts.indexOf(Math.max(...counts));
    // The constant prediction: IoU of the majority class = its labelled pixels / all labelled pixels, 0 elsewhere.
    const lab = new Array(test.numClasses).fill(0);
    let all = 0;
    for (const t of testTargets) {
      for (const v of t.segmentation!) {
        if (v === 255) continue;
        all++;
        if (v < test.numClasses) lab[v]++;
      }
    }
    const present = lab.filter((n, c) => n > 0 || c === majority).length;
    const labels = testTargets.map((t) => ({ width: t.width, height: t.height, segmentation: t.segmentation! }));
    const head = naiveSegmentation(tensors, features, grid, size, labels);
    const labelled = lab.reduce((a, v) => a + v, 0);
    return {
      miou: head.miou,
      accuracy: head.accuracy,
      baseline: { miou: lab[majority] / all / present, accuracy: lab[majority] / labelled },
    };
  }
  const range = test.depthRange ?? [1e-3, 10];
  let logSum = 0,
    n = 0;
  for (const t of trainTargets)
    for (const v of nearest(t.depth!, t.height, t.width, size, size))
      if (v > 0) {
        logSum += Math.log(v);
        n++;
      }
  const constant = Math.fround(Math.exp(logSum / n));
  const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
  const per = testTargets.map((t, i) => {
    const pred = naiveDepth(tensors, features[i]!, grid, { min: range[0], max: range[1], upsample: 4 }, [t.height, t.width]);
    return {
      head: naiveDepthScores(t.depth!, pred, range),
      base: naiveDepthScores(t.depth!, new Array(t.depth!.length).fill(constant), range),
    };
  });
  return {
    rmse: mean(per.map((s) => s.head.rmse)),
    absRel: mean(per.map((s) => s.head.absRel)),
    delta1: mean(per.map((s) => s.head.delta1)),
    baseline: { rmse: mean(per.map((s) => s.base.rmse)) },
  };
}

/** Each image's features as a dense probe reads them: square `size` inputs, the model's last block (and CLS for depth). */
export async function naiveFeatures(
  model: VisionTransformer,
  dataset: DenseDataset,
  size: number,
  task: 'segmentation' | 'depth',
): Promise<NaiveImage[]> {
  const out: NaiveImage[] = [];
  for (let i = 0; i < dataset.length; i++) {
    const images = batchTensor([prepareInput(await dataset.get(i), { kind: 'square', size }, model.config.patch_size)]);
    const f = extractDenseFeatures(model, images, task, [model.config.depth - 1]);
    images.dispose();
    out.push({ x: f.x, cls: f.cls });
  }
  return out;
}
