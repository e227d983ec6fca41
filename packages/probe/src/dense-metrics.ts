/**
 * What the dense probes need besides the heads: PyTorch's bilinear resampling (`F.interpolate(...,
 * mode='bilinear', align_corners=False)`, the `resize` of mmseg and of DINOv2's depth code) as
 * separable 1-D weight matrices, and the evaluation metrics:
 * - segmentation as mmseg's `intersect_and_union` / `total_intersect_and_union`: per-class
 *   intersection and union summed over the whole dataset (pixels labelled 255 skipped), IoU = I / U,
 *   mIoU = mean over classes whose union is non-empty (nanmean), aAcc = sum I / sum labelled pixels;
 * - depth as the Monocular-Depth-Estimation-Toolbox's `calculate` (DINOv2's depth evaluation): per
 *   image over the valid pixels (gt in (min, max), inside the crop), delta < 1.25 / 1.25^2 / 1.25^3,
 *   abs rel, sq rel, RMSE, RMSE log, log10, SILog; then each metric averaged over images (nanmean).
 */
import { IGNORE_LABEL, type DenseTarget } from '@vitreg/core';

/** Source rows of a 1-D bilinear resampling from `inSize` to `outSize` samples. */
export interface BilinearWeights {
  i0: Int32Array;
  i1: Int32Array;
  w0: Float64Array;
  w1: Float64Array;
}

/**
 * PyTorch's 1-D bilinear weights with align_corners=False (aten upsample_bilinear2d): source
 * coordinate (o + 0.5) * in / out - 0.5, clamped at 0; i1 = min(i0 + 1, in - 1).
 */
export function bilinearWeights(outSize: number, inSize: number): BilinearWeights {
  if (!(Number.isInteger(outSize) && outSize >= 1 && Number.isInteger(inSize) && inSize >= 1)) {
    throw new Error(`bilinear: sizes must be positive integers, got ${inSize} -> ${outSize}`);
  }
  const scale = inSize / outSize;
  const w: BilinearWeights = {
    i0: new Int32Array(outSize),
    i1: new Int32Array(outSize),
    w0: new Float64Array(outSize),
    w1: new Float64Array(outSize),
  };
  for (let o = 0; o < outSize; o++) {
    const src = Math.max(0, (o + 0.5) * scale - 0.5);
    const i0 = Math.min(Math.floor(src), inSize - 1);
    const lambda = src - i0;
    w.i0[o] = i0;
    w.i1[o] = Math.min(i0 + 1, inSize - 1);
    w.w1[o] = lambda;
    w.w0[o] = 1 - lambda;
  }
  return w;
}

/** The same resampling as a dense [outSize, inSize] matrix (row-major, float64 for composition). */
export function bilinearMatrix(outSize: number, inSize: number): Float64Array {
  const w = bilinearWeights(outSize, inSize);
  const m = new Float64Array(outSize * inSize);
  for (let o = 0; o < outSize; o++) {
    m[o * inSize + w.i0[o]] += w.w0[o];
    m[o * inSize + w.i1[o]] += w.w1[o];
  }
  return m;
}

/**
 * The matrix of resizing through the sizes `sizes[0] -> sizes[1] -> ... -> sizes[k]` (each step a
 * bilinear resampling), as [last, first]: e.g. mmseg's grid -> input size -> label size.
 */
export function chainedBilinearMatrix(sizes: number[]): Float64Array {
  if (sizes.length < 2) throw new Error('bilinear chain: needs at least two sizes');
  let m = bilinearMatrix(sizes[1], sizes[0]);
  for (let k = 2; k < sizes.length; k++) {
    const next = bilinearMatrix(sizes[k], sizes[k - 1]);
    const out = new Float64Array(sizes[k] * sizes[0]);
    for (let i = 0; i < sizes[k]; i++) {
      for (let j = 0; j < sizes[k - 1]; j++) {
        const a = next[i * sizes[k - 1] + j];
        if (a === 0) continue;
        for (let c = 0; c < sizes[0]; c++) out[i * sizes[0] + c] += a * m[j * sizes[0] + c];
      }
    }
    m = out;
  }
  return m;
}

/**
 * Resample an [h, w, c] map to [H, W, c] with row matrix `my` [H, h] and column matrix `mx` [W, w]
 * (bilinearMatrix / chainedBilinearMatrix): out = my . x . mx^T per channel.
 */
export function resampleMap(x: Float32Array, h: number, w: number, c: number, my: Float64Array, mx: Float64Array): Float32Array {
  const H = my.length / h,
    W = mx.length / w;
  if (x.length !== h * w * c) throw new Error(`resample: map holds ${x.length} values, expected ${h}x${w}x${c}`);
  // rows first: [H, w, c]
  const rows = new Float64Array(H * w * c);
  for (let i = 0; i < H; i++) {
    for (let r = 0; r < h; r++) {
      const a = my[i * h + r];
      if (a === 0) continue;
      const src = r * w * c,
        dst = i * w * c;
      for (let k = 0; k < w * c; k++) rows[dst + k] += a * x[src + k];
    }
  }
  const out = new Float32Array(H * W * c);
  const acc = new Float64Array(c);
  for (let i = 0; i < H; i++) {
    for (let j = 0; j < W; j++) {
      acc.fill(0);
      for (let q = 0; q < w; q++) {
        const a = mx[j * w + q];
        if (a === 0) continue;
        const src = (i * w + q) * c;
        for (let k = 0; k < c; k++) acc[k] += a * rows[src + k];
      }
      out.set(acc, (i * W + j) * c);
    }
  }
  return out;
}

/** Nearest-neighbour resize as mmcv.imresize(interpolation='nearest') / cv2 INTER_NEAREST: src = floor(dst * in / out). */
export function resizeNearest<T extends Uint8Array | Float32Array>(x: T, h: number, w: number, H: number, W: number): T {
  const out = new (x.constructor as { new (n: number): T })(H * W);
  for (let i = 0; i < H; i++) {
    const si = Math.min(h - 1, Math.floor((i * h) / H));
    for (let j = 0; j < W; j++) out[i * W + j] = x[si * w + Math.min(w - 1, Math.floor((j * w) / W))];
  }
  return out;
}

/** Per-class pixel counts summed over a dataset (mmseg's total_intersect_and_union). */
export interface SegmentationTotals {
  numClasses: number;
  intersect: Float64Array;
  union: Float64Array;
  predicted: Float64Array;
  labelled: Float64Array;
}

export function segmentationTotals(numClasses: number): SegmentationTotals {
  const z = () => new Float64Array(numClasses);
  return { numClasses, intersect: z(), union: z(), predicted: z(), labelled: z() };
}

/**
 * Add one image to `t`: `pred` and `label` per pixel; pixels labelled `ignore` (255) are skipped,
 * as are labels / predictions outside [0, numClasses) (mmseg's histc range). Returns `t`.
 */
export function addSegmentation(
  t: SegmentationTotals,
  pred: ArrayLike<number>,
  label: ArrayLike<number>,
  ignore = IGNORE_LABEL,
): SegmentationTotals {
  if (pred.length !== label.length) throw new Error(`segmentation metrics: ${pred.length} predictions for ${label.length} labels`);
  const C = t.numClasses;
  for (let i = 0; i < label.length; i++) {
    const l = label[i];
    if (l === ignore) continue;
    const p = pred[i];
    const pin = p >= 0 && p < C,
      lin = l >= 0 && l < C;
    if (pin) t.predicted[p]++;
    if (lin) t.labelled[l]++;
    if (pin && p === l) t.intersect[p]++;
  }
  for (let c = 0; c < C; c++) t.union[c] = t.predicted[c] + t.labelled[c] - t.intersect[c];
  return t;
}

export interface SegmentationScores {
  /** Mean IoU over classes with a non-empty union. */
  miou: number;
  /** IoU per class (NaN where the union is empty). */
  iou: number[];
  /** Pixel accuracy over labelled pixels (mmseg's aAcc). */
  accuracy: number;
  /** Mean per-class accuracy over classes that occur (mmseg's mAcc). */
  meanAccuracy: number;
}

const nanmean = (v: number[]): number => {
  const ok = v.filter((x) => !Number.isNaN(x));
  return ok.length > 0 ? ok.reduce((s, x) => s + x, 0) / ok.length : NaN;
};

/** mIoU, per-class IoU, aAcc and mAcc of summed counts (see the module comment). */
export function segmentationScores(t: SegmentationTotals): SegmentationScores {
  const iou = Array.from(t.intersect, (i, c) => (t.union[c] > 0 ? i / t.union[c] : NaN));
  const acc = Array.from(t.intersect, (i, c) => (t.labelled[c] > 0 ? i / t.labelled[c] : NaN));
  const labelled = t.labelled.reduce((s, x) => s + x, 0);
  const inter = t.intersect.reduce((s, x) => s + x, 0);
  return { miou: nanmean(iou), iou, accuracy: labelled > 0 ? inter / labelled : NaN, meanAccuracy: nanmean(acc) };
}

/** The toolbox's depth metrics of one image (or their averages over images). */
export interface DepthScores {
  /** Share of pixels with max(gt / pred, pred / gt) < 1.25, 1.25^2, 1.25^3. */
  delta1: number;
  delta2: number;
  delta3: number;
  absRel: number;
  sqRel: number;
  rmse: number;
  rmseLog: number;
  log10: number;
  silog: number;
}

export const DEPTH_METRICS: readonly (keyof DepthScores)[] = [
  'delta1',
  'delta2',
  'delta3',
  'absRel',
  'sqRel',
  'rmse',
  'rmseLog',
  'log10',
  'silog',
];

/**
 * The pixels a depth map is evaluated on: gt in (min, max) exclusive, inside the target's evalCrop
 * (the toolbox's eval_mask). 1 = evaluated.
 */
export function depthEvalMask(target: Pick<DenseTarget, 'width' | 'height' | 'depth' | 'evalCrop'>, range: [number, number]): Uint8Array {
  const { width: W, height: H, depth } = target;
  if (!depth) throw new Error('depth metrics: the target has no depth map');
  const [y0, y1, x0, x1] = target.evalCrop ?? [0, H, 0, W];
  const m = new Uint8Array(W * H);
  for (let y = Math.max(0, y0); y < Math.min(H, y1); y++) {
    for (let x = Math.max(0, x0); x < Math.min(W, x1); x++) {
      const d = depth[y * W + x];
      if (d > range[0] && d < range[1]) m[y * W + x] = 1;
    }
  }
  return m;
}

/**
 * The toolbox's `calculate(gt, pred)` over the pixels where `mask` is 1; every metric NaN when no pixel
 * is valid (the toolbox returns NaN and nanmean skips the image). A SILog made NaN by rounding is 0.
 */
export function depthScores(gt: ArrayLike<number>, pred: ArrayLike<number>, mask?: ArrayLike<number>): DepthScores {
  if (gt.length !== pred.length) throw new Error(`depth metrics: ${pred.length} predictions for ${gt.length} ground-truth pixels`);
  let n = 0,
    a1 = 0,
    a2 = 0,
    a3 = 0,
    absRel = 0,
    sqRel = 0,
    se = 0,
    sle = 0,
    l10 = 0,
    e = 0,
    e2 = 0;
  for (let i = 0; i < gt.length; i++) {
    if (mask && !mask[i]) continue;
    const g = gt[i],
      p = pred[i];
    n++;
    const t = Math.max(g / p, p / g);
    if (t < 1.25) a1++;
    if (t < 1.25 ** 2) a2++;
    if (t < 1.25 ** 3) a3++;
    const d = g - p;
    absRel += Math.abs(d) / g;
    sqRel += (d * d) / g;
    se += d * d;
    const le = Math.log(p) - Math.log(g);
    sle += le * le;
    e += le;
    e2 += le * le;
    l10 += Math.abs(Math.log10(g) - Math.log10(p));
  }
  if (n === 0) return Object.fromEntries(DEPTH_METRICS.map((k) => [k, NaN])) as unknown as DepthScores;
  const silog = Math.sqrt(e2 / n - (e / n) ** 2) * 100;
  return {
    delta1: a1 / n,
    delta2: a2 / n,
    delta3: a3 / n,
    absRel: absRel / n,
    sqRel: sqRel / n,
    rmse: Math.sqrt(se / n),
    rmseLog: Math.sqrt(sle / n),
    log10: l10 / n,
    silog: Number.isNaN(silog) ? 0 : silog,
  };
}

/** Each metric averaged over images, skipping NaN (the toolbox's pre_eval_to_metrics). */
export function meanDepthScores(perImage: DepthScores[]): DepthScores {
  return Object.fromEntries(DEPTH_METRICS.map((k) => [k, nanmean(perImage.map((s) => s[k]))])) as unknown as DepthScores;
}
