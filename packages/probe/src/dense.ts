/**
 * DINOv2's linear dense heads, trained with tfjs on frozen features (the backbone never runs here: the
 * features are extracted once, see dense-run.ts).
 *
 * Segmentation: DINOv2's `BNHead` (dinov2/eval/segmentation/models/decode_heads/linear_head.py; config
 * dinov2_vit*14_ade20k_linear_config.py): BatchNorm (batch statistics in training, running statistics
 * at evaluation, momentum 0.1, eps 1e-5) then a 1x1 convolution `conv_seg` (mmseg's normal init, std
 * 0.01) on the patch tokens of the last block, or of the last 4 blocks concatenated. Training: logits
 * resized bilinearly (align_corners=False) to the label size, cross-entropy with ignore index 255
 * averaged over all pixels (mmseg's CrossEntropyLoss, avg_non_ignore=False), AdamW (lr 1e-3, weight
 * decay 1e-4, betas 0.9 / 0.999), poly schedule (power 1) after a linear warm-up over 1500 / 40000 of
 * the steps from 1e-6 of the lr. Evaluation: logits resized to the input size and then to the label
 * size (mmseg's encode_decode + rescale), argmax, mIoU (dense-metrics.ts).
 *
 * Depth: DINOv2's linear depth head (dinov2/hub/depth/decode_heads.py `BNHead`, built as in
 * dinov2/hub/depthers.py: no BatchNorm) on each position's patch token concatenated with the CLS token
 * (per block when 4 blocks are used): features upsampled 4x bilinearly, a 1x1 convolution `conv_depth`
 * (PyTorch's default init), then either
 * - `bins` (the official head: classify=True, 256 bins, 'UD' = linspace(min, max, 256), 'linear' norm):
 *   p = (relu(logits) + 0.1) / sum, depth = sum_k p_k bin_k; or
 * - `regression` (classify=False): depth = relu(conv) + min_depth.
 * The 4x upsampling is applied to the convolution's output instead of its input: a 1x1 convolution and
 * a bilinear resampling (weights summing to 1) commute exactly, and the output has fewer channels.
 * Training: prediction resized bilinearly to the label size, SigLoss (AdaBins; eps 1e-3, valid = gt > 0,
 * warm-up: sqrt(0.15 mean(g)^2) for its first steps), AdamW (weight decay 0.01), cosine schedule to
 * 1e-8 of the lr after a linear warm-up over the first third from 1e-3 of the lr, gradient-norm
 * clipping at 35 (the released dinov2_vitb14_nyu_linear_config.py as mirrored by Denoising-ViT's
 * evaluation/configs/vitb_nyu_linear_config.py; the original is only on dl.fbaipublicfiles.com). Its GradientLoss (weight 0.5) is
 * left out: applied to [B, 1, H, W] tensors it indexes the batch and channel axes, and with the
 * config's 2 images per GPU it is identically 0. Evaluation: depth clamped to [min, max], resized to
 * the label size, the toolbox's metrics (dense-metrics.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { IGNORE_LABEL, Rng, type HostTensor, hostTensor } from '@vitreg/core';
import { AdamW, clipByGlobalNorm, cosineAnnealingSchedule, plainParams, polySchedule } from '@vitreg/trainer';
import {
  addSegmentation, bilinearMatrix, chainedBilinearMatrix, depthEvalMask, depthScores, resampleMap, segmentationScores,
  segmentationTotals, type DepthScores, type SegmentationScores, type SegmentationTotals,
} from './dense-metrics.js';

/** Frozen features of n images on one gh x gw patch grid. */
export interface DenseFeatures {
  n: number;
  grid: [number, number];
  /** Channels per position in `x`: `groups` blocks of `dim / groups` channels. */
  dim: number;
  /** [n, gh, gw, dim], row-major. */
  x: Float32Array;
  /**
   * Optional per-image vectors [n, dim] (the CLS token of each block), appended by the depth head:
   * position features become [x_g0, cls_g0, x_g1, cls_g1, ...] as DINOv2's BNHead concatenates them.
   */
  cls?: Float32Array;
  /** Number of blocks whose features are concatenated in `x` (and `cls`); default 1. */
  groups?: number;
}

/** Throws unless the arrays have the sizes the shape promises. */
export function checkDenseFeatures(name: string, f: DenseFeatures): void {
  const [gh, gw] = f.grid;
  if (!(Number.isInteger(f.n) && f.n >= 0 && Number.isInteger(gh) && gh >= 1 && Number.isInteger(gw) && gw >= 1 && Number.isInteger(f.dim) && f.dim >= 1)) {
    throw new Error(`${name}: expected integers n >= 0, grid >= 1 and dim >= 1, got n=${f.n}, grid=${f.grid}, dim=${f.dim}`);
  }
  if (f.x.length !== f.n * gh * gw * f.dim) {
    throw new Error(`${name}: features hold ${f.x.length} values, expected n*gh*gw*dim = ${f.n}*${gh}*${gw}*${f.dim}`);
  }
  const groups = f.groups ?? 1;
  if (!(Number.isInteger(groups) && groups >= 1 && f.dim % groups === 0)) throw new Error(`${name}: ${groups} groups do not divide dim ${f.dim}`);
  if (f.cls && f.cls.length !== f.n * f.dim) throw new Error(`${name}: cls holds ${f.cls.length} values, expected n*dim = ${f.n}*${f.dim}`);
}

/** Channels per position the head reads: dim, doubled when the CLS tokens are appended. */
const headDim = (f: DenseFeatures, withCls: boolean) => (withCls ? 2 * f.dim : f.dim);

/** Position features of images `idx` as [B, gh, gw, C] (C = dim, or 2 dim interleaved with CLS). */
export function denseBatch(f: DenseFeatures, idx: ArrayLike<number>, withCls: boolean): Float32Array {
  const [gh, gw] = f.grid;
  const P = gh * gw, D = f.dim;
  if (!withCls) {
    const out = new Float32Array(idx.length * P * D);
    for (let b = 0; b < idx.length; b++) out.set(f.x.subarray(idx[b] * P * D, (idx[b] + 1) * P * D), b * P * D);
    return out;
  }
  if (!f.cls) throw new Error('dense head: the features have no CLS tokens to append');
  const groups = f.groups ?? 1, g = D / groups, C = 2 * D;
  const out = new Float32Array(idx.length * P * C);
  for (let b = 0; b < idx.length; b++) {
    const cls = f.cls.subarray(idx[b] * D, (idx[b] + 1) * D);
    for (let p = 0; p < P; p++) {
      const src = (idx[b] * P + p) * D, dst = (b * P + p) * C;
      for (let k = 0; k < groups; k++) {
        out.set(f.x.subarray(src + k * g, src + (k + 1) * g), dst + 2 * k * g);
        out.set(cls.subarray(k * g, (k + 1) * g), dst + (2 * k + 1) * g);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Training: @vitreg/trainer's AdamW, clipping and mmcv schedules

/** Every tensor of a head trained alike, as PyTorch's AdamW over `model.parameters()`: one lr, decay on all. */
function headOptimizer(params: Record<string, tf.Variable>): AdamW {
  return new AdamW(plainParams(params));
}

/** Seeded image order: a fresh permutation every epoch, cut into batches of `b`. */
function* batches(n: number, b: number, seed: number): Generator<number[]> {
  const rng = new Rng(seed);
  for (;;) {
    const order = rng.shuffle(Array.from({ length: n }, (_, i) => i));
    for (let s = 0; s + b <= n || (s === 0 && n < b); s += b) yield order.slice(s, Math.min(n, s + b));
  }
}

/**
 * Bilinear resize of [B, h, w, C] to [B, H, W, C] with 1-D matrices my [H, h], mx [W, w]; with
 * `columnsFirst` the result is left as [W, B, H, C] (one transpose of the large tensor fewer, for a
 * loss that sums over pixels anyway). Matrices rather than tf.image.resizeBilinear: its values match
 * PyTorch with halfPixelCenters, but tfjs's ResizeBilinearGrad ignores halfPixelCenters.
 */
export function resizeBilinearTf(x: tf.Tensor4D, my: tf.Tensor2D, mx: tf.Tensor2D, columnsFirst = false): tf.Tensor4D {
  return tf.tidy(() => {
    const [B, h, w, C] = x.shape;
    const H = my.shape[0], W = mx.shape[0];
    const rows = tf.reshape(tf.matMul(my, tf.reshape(tf.transpose(x, [1, 0, 2, 3]), [h, B * w * C])), [H, B, w, C]);
    const cols = tf.reshape(tf.matMul(mx, tf.reshape(tf.transpose(rows, [2, 1, 0, 3]), [w, B * H * C])), [W, B, H, C]) as tf.Tensor4D;
    return columnsFirst ? cols : (tf.transpose(cols, [1, 2, 0, 3]) as tf.Tensor4D);
  });
}

const f32matrix = (m: Float64Array, rows: number, cols: number) => tf.tensor2d(Float32Array.from(m), [rows, cols]);

// ---------------------------------------------------------------------------------------------
// Segmentation

/** A trained linear segmentation head; weight in PyTorch's conv_seg layout [classes, dim]. */
export interface SegmentationHead {
  numClasses: number;
  dim: number;
  bn: { weight: Float32Array; bias: Float32Array; runningMean: Float32Array; runningVar: Float32Array; eps: number };
  weight: Float32Array;
  bias: Float32Array;
}

export interface SegmentationTrainOptions {
  numClasses: number;
  /** Optimizer steps (default 1000). */
  steps?: number;
  /** Images per step (default 4). */
  batchSize?: number;
  /** AdamW lr (default 1e-3) and weight decay (default 1e-4). */
  lr?: number;
  weightDecay?: number;
  /** Warm-up length as a fraction of the steps (default 1500 / 40000). */
  warmupFraction?: number;
  seed?: number;
  /** Called after each step with the step (1-based) and the loss. */
  onStep?: (step: number, loss: number) => void;
}

/** Labels [b, H, W] reordered to [W, b, H] (the layout of resizeBilinearTf's columnsFirst output). */
export function labelsColumnsFirst(labels: ArrayLike<number>, b: number, H: number, W: number): Int32Array {
  const out = new Int32Array(b * H * W);
  for (let k = 0; k < b; k++) for (let i = 0; i < H; i++) for (let j = 0; j < W; j++) out[(j * b + k) * H + i] = labels[(k * H + i) * W + j];
  return out;
}

/**
 * The training loss of a segmentation head on one batch: BatchNorm with the batch's statistics over
 * all positions, the 1x1 conv (`weight` [D, C] = conv_seg.weight^T), logits resized bilinearly to the
 * label size, cross-entropy summed over the pixels not labelled 255 and divided by all b * H * W
 * pixels (mmseg's mean with avg_non_ignore=False). `x` is [b * gh * gw, D]; `labels` [b, H, W]
 * reordered by labelsColumnsFirst; `my` [H, gh], `mx` [W, gw] are bilinearMatrix resamplings.
 */
export function segmentationTrainLoss(
  p: { gamma: tf.Tensor1D; beta: tf.Tensor1D; weight: tf.Tensor2D; bias: tf.Tensor1D },
  x: tf.Tensor2D,
  labels: Int32Array,
  grid: [number, number],
  my: tf.Tensor2D,
  mx: tf.Tensor2D,
  eps = 1e-5,
): tf.Scalar {
  return tf.tidy(() => {
    const C = p.weight.shape[1];
    const n = labels.length;
    const b = x.shape[0] / (grid[0] * grid[1]);
    const { mean, variance } = tf.moments(x, 0);
    const xhat = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    const y = tf.add(tf.mul(xhat, p.gamma), p.beta);
    const logits = tf.reshape(tf.add(tf.matMul(y, p.weight), p.bias), [b, grid[0], grid[1], C]) as tf.Tensor4D;
    const logp = tf.logSoftmax(tf.reshape(resizeBilinearTf(logits, my, mx, true), [n, C]));
    const onehot = tf.oneHot(tf.tensor1d(labels, 'int32'), C); // 255 (>= C): a zero row
    return tf.div(tf.neg(tf.sum(tf.mul(logp, onehot))), n) as tf.Scalar;
  });
}

/**
 * Train a BN + 1x1 conv segmentation head on `train` features with per-pixel `labels`
 * [n, H, W] (labelSize = [H, W]; 255 ignored); see the module comment.
 */
export function trainSegmentationHead(train: DenseFeatures, labels: Uint8Array, labelSize: [number, number], opts: SegmentationTrainOptions): SegmentationHead {
  checkDenseFeatures('segmentation head training set', train);
  const { numClasses: C } = opts;
  const [H, W] = labelSize;
  const [gh, gw] = train.grid;
  const D = train.dim;
  if (!(Number.isInteger(C) && C >= 2 && C < IGNORE_LABEL)) throw new Error(`segmentation head: numClasses must be in [2, 255), got ${C}`);
  if (labels.length !== train.n * H * W) throw new Error(`segmentation head: labels hold ${labels.length} values, expected n*H*W = ${train.n}*${H}*${W}`);
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] >= C && labels[i] !== IGNORE_LABEL) throw new Error(`segmentation head: label ${labels[i]} is outside [0, ${C}) and not ${IGNORE_LABEL}`);
  }
  if (train.n === 0) throw new Error('segmentation head: the training set is empty');
  const steps = opts.steps ?? 1000;
  const B = Math.min(opts.batchSize ?? 4, train.n);
  const lr = opts.lr ?? 1e-3;
  const warmupSteps = Math.round(steps * (opts.warmupFraction ?? 1500 / 40000));
  const seed = opts.seed ?? 0;
  const rng = new Rng(seed).fork(1);
  const eps = 1e-5, momentum = 0.1;
  const gamma = tf.variable(tf.ones([D])) as tf.Variable<tf.Rank.R1>;
  const beta = tf.variable(tf.zeros([D])) as tf.Variable<tf.Rank.R1>;
  const weight = tf.variable(tf.tensor2d(Float32Array.from({ length: D * C }, () => rng.normal(0, 0.01)), [D, C])); // conv_seg.weight^T
  const bias = tf.variable(tf.zeros([C])) as tf.Variable<tf.Rank.R1>;
  const runningMean = new Float64Array(D);
  const runningVar = new Float64Array(D).fill(1);
  const my = f32matrix(bilinearMatrix(H, gh), H, gh);
  const mx = f32matrix(bilinearMatrix(W, gw), W, gw);
  const opt = headOptimizer({ gamma, beta, weight, bias });
  const wd = opts.weightDecay ?? 1e-4;
  const lrAt = polySchedule({ base: lr, totalSteps: steps, warmupSteps });
  const order = batches(train.n, B, seed);
  try {
    for (let step = 0; step < steps; step++) {
      const idx = order.next().value as number[];
      const b = idx.length;
      const xb = tf.tensor2d(denseBatch(train, idx, false), [b * gh * gw, D]);
      const lab = new Int32Array(b * H * W);
      idx.forEach((i, k) => lab.set(labels.subarray(i * H * W, (i + 1) * H * W), k * H * W));
      const labCols = labelsColumnsFirst(lab, b, H, W);
      const { mean, variance } = tf.moments(xb, 0);
      const [bm, bv] = [mean.dataSync(), variance.dataSync()];
      tf.dispose([mean, variance]);
      const N = b * gh * gw;
      for (let d = 0; d < D; d++) {
        runningMean[d] = (1 - momentum) * runningMean[d] + momentum * bm[d];
        runningVar[d] = (1 - momentum) * runningVar[d] + momentum * (bv[d] * N) / Math.max(1, N - 1);
      }
      const { value, grads } = tf.variableGrads(
        () => segmentationTrainLoss({ gamma, beta, weight, bias }, xb, labCols, train.grid, my, mx),
        [gamma, beta, weight, bias],
      );
      opt.apply([grads[gamma.name], grads[beta.name], grads[weight.name], grads[bias.name]], { lr: lrAt(step), wd });
      const loss = value.dataSync()[0];
      tf.dispose([xb, value, ...Object.values(grads)]);
      if (!Number.isFinite(loss)) throw new Error(`segmentation head: the loss became ${loss} at step ${step + 1}`);
      opts.onStep?.(step + 1, loss);
    }
    const wT = weight.arraySync() as number[][];
    return {
      numClasses: C,
      dim: D,
      bn: {
        weight: gamma.dataSync().slice() as Float32Array, bias: beta.dataSync().slice() as Float32Array,
        runningMean: Float32Array.from(runningMean), runningVar: Float32Array.from(runningVar), eps,
      },
      weight: Float32Array.from({ length: C * D }, (_, k) => wT[k % D][Math.floor(k / D)]),
      bias: bias.dataSync().slice() as Float32Array,
    };
  } finally {
    opt.dispose();
    tf.dispose([gamma, beta, weight, bias, my, mx]);
  }
}

/** Logits [gh, gw, classes] of image `i` on its patch grid (BatchNorm with the running statistics). */
export function segmentationGridLogits(head: SegmentationHead, f: DenseFeatures, i: number): Float32Array {
  if (f.dim !== head.dim) throw new Error(`segmentation head: features have dim ${f.dim}, the head was trained on dim ${head.dim}`);
  const [gh, gw] = f.grid;
  const D = head.dim, C = head.numClasses;
  const scale = Float32Array.from(head.bn.weight, (g, d) => g / Math.sqrt(head.bn.runningVar[d] + head.bn.eps));
  const shift = Float32Array.from(head.bn.bias, (b, d) => b - head.bn.runningMean[d] * scale[d]);
  // fold the BatchNorm into the convolution: W' = W diag(scale), b' = b + W shift
  const w = new Float32Array(D * C);
  const b = Float32Array.from(head.bias);
  for (let c = 0; c < C; c++) {
    for (let d = 0; d < D; d++) {
      w[d * C + c] = head.weight[c * D + d] * scale[d];
      b[c] += head.weight[c * D + d] * shift[d];
    }
  }
  return tf.tidy(() => {
    const x = tf.tensor2d(f.x.subarray(i * gh * gw * D, (i + 1) * gh * gw * D), [gh * gw, D]);
    return tf.add(tf.matMul(x, tf.tensor2d(w, [D, C])), tf.tensor1d(b)).dataSync() as Float32Array;
  }).slice();
}

/** Per-pixel classes of image `i` at `labelSize`, via the input size `inputSize` (mmseg's two resizes). */
export function predictSegmentation(head: SegmentationHead, f: DenseFeatures, i: number, inputSize: [number, number], labelSize: [number, number]): Uint8Array {
  const [gh, gw] = f.grid;
  const [H, W] = labelSize;
  const logits = segmentationGridLogits(head, f, i);
  const up = resampleMap(logits, gh, gw, head.numClasses, chainedBilinearMatrix([gh, inputSize[0], H]), chainedBilinearMatrix([gw, inputSize[1], W]));
  const C = head.numClasses;
  const out = new Uint8Array(H * W);
  for (let p = 0; p < H * W; p++) {
    let best = 0;
    for (let c = 1; c < C; c++) if (up[p * C + c] > up[p * C + best]) best = c;
    out[p] = best;
  }
  return out;
}

/** Accumulate segmentation counts over test images; `label(i)` gives image i's label map. */
export async function evaluateSegmentation(
  head: SegmentationHead,
  f: DenseFeatures,
  inputSize: [number, number],
  label: (i: number) => Promise<{ width: number; height: number; segmentation: Uint8Array }>,
  onImage?: (done: number) => void,
): Promise<{ scores: SegmentationScores; totals: SegmentationTotals }> {
  const totals = segmentationTotals(head.numClasses);
  for (let i = 0; i < f.n; i++) {
    const t = await label(i);
    addSegmentation(totals, predictSegmentation(head, f, i, inputSize, [t.height, t.width]), t.segmentation);
    onImage?.(i + 1);
  }
  return { scores: segmentationScores(totals), totals };
}

/** The head as PyTorch tensors (DINOv2 BNHead names: bn.*, conv_seg.weight [C, D, 1, 1], conv_seg.bias). */
export function segmentationHeadTensors(head: SegmentationHead): Record<string, HostTensor> {
  return {
    'bn.weight': hostTensor(head.bn.weight, [head.dim]),
    'bn.bias': hostTensor(head.bn.bias, [head.dim]),
    'bn.running_mean': hostTensor(head.bn.runningMean, [head.dim]),
    'bn.running_var': hostTensor(head.bn.runningVar, [head.dim]),
    'conv_seg.weight': hostTensor(head.weight, [head.numClasses, head.dim, 1, 1]),
    'conv_seg.bias': hostTensor(head.bias, [head.numClasses]),
  };
}

// ---------------------------------------------------------------------------------------------
// Depth

export type DepthHeadMode = 'bins' | 'regression';

/** A trained linear depth head; weight in PyTorch's conv_depth layout [outputs, channels]. */
export interface DepthHead {
  mode: DepthHeadMode;
  /** Input channels (patch and CLS channels of every block). */
  dim: number;
  nBins: number;
  minDepth: number;
  maxDepth: number;
  upsample: number;
  weight: Float32Array;
  bias: Float32Array;
}

export interface DepthHeadOptions {
  /** 'bins' (default, the official linear head) or 'regression'. */
  mode?: DepthHeadMode;
  /** Bins of the 'bins' head (default 256). */
  nBins?: number;
  /** Depth range of the bins and of the clamp (default [0.001, 10]). */
  minDepth?: number;
  maxDepth?: number;
  /** Feature upsampling before the head (default 4). */
  upsample?: number;
}

export interface DepthTrainOptions extends DepthHeadOptions {
  steps?: number;
  /** Images per step (default 4). */
  batchSize?: number;
  /** AdamW lr (default 5e-3) and weight decay (default 0.01). */
  lr?: number;
  weightDecay?: number;
  /** Warm-up of the lr as a fraction of the steps (default 1/3: 12800 of 38400). */
  warmupFraction?: number;
  /** SigLoss warm-up steps (default: 100 of 38400, scaled to `steps`). */
  sigWarmupSteps?: number;
  /** Gradient-norm clip (default 35; 0 = none). */
  clip?: number;
  seed?: number;
  onStep?: (step: number, loss: number) => void;
}

/** The depth map [B, u gh, u gw] of a depth head's conv output [B, gh, gw, K] (K bins or 1). */
function depthFromLogits(head: Pick<DepthHead, 'mode' | 'nBins' | 'minDepth' | 'maxDepth'>, logits: tf.Tensor4D, my: tf.Tensor2D, mx: tf.Tensor2D): tf.Tensor3D {
  return tf.tidy(() => {
    const up = resizeBilinearTf(logits, my, mx);
    const [B, H, W, K] = up.shape;
    if (head.mode === 'regression') return tf.reshape(tf.add(tf.relu(up), head.minDepth), [B, H, W]) as tf.Tensor3D;
    const p = tf.add(tf.relu(up), 0.1);
    const prob = tf.div(p, tf.sum(p, -1, true));
    const bins = tf.linspace(head.minDepth, head.maxDepth, head.nBins);
    return tf.reshape(tf.matMul(tf.reshape(prob, [B * H * W, K]), tf.reshape(bins, [K, 1])), [B, H, W]) as tf.Tensor3D;
  });
}

/** SigLoss (AdaBins) over the pixels with gt > 0 of a batch; `warm` = the warm-up form. */
export function sigLoss(pred: tf.Tensor, gt: tf.Tensor, warm: boolean): tf.Scalar {
  return tf.tidy(() => {
    const valid = tf.cast(tf.greater(gt, 0), 'float32');
    const n = tf.sum(valid);
    const g = tf.mul(tf.sub(tf.log(tf.add(pred, 1e-3)), tf.log(tf.add(gt, 1e-3))), valid);
    const mean = tf.div(tf.sum(g), n);
    if (warm) return tf.sqrt(tf.mul(tf.square(mean), 0.15)) as tf.Scalar;
    const variance = tf.div(tf.sum(tf.mul(tf.square(tf.sub(g, mean)), valid)), tf.sub(n, 1));
    return tf.sqrt(tf.add(variance, tf.mul(tf.square(mean), 0.15))) as tf.Scalar;
  });
}

/**
 * The training loss of a depth head on one batch: `x` [b * gh * gw, C] through the 1x1 conv
 * (`weight` [C, K] = conv_depth.weight^T), upsampled (my4 / mx4), turned into depth (bins or
 * regression), resized to the label size (myL / mxL), SigLoss against `gt` [b, H, W] (warm-up form
 * when `warm`).
 */
export function depthTrainLoss(
  head: Pick<DepthHead, 'mode' | 'nBins' | 'minDepth' | 'maxDepth'>,
  weight: tf.Tensor2D,
  bias: tf.Tensor1D,
  x: tf.Tensor2D,
  gt: tf.Tensor3D,
  grid: [number, number],
  [my4, mx4, myL, mxL]: tf.Tensor2D[],
  warm: boolean,
): tf.Scalar {
  return tf.tidy(() => {
    const [b, H, W] = gt.shape;
    const logits = tf.reshape(tf.add(tf.matMul(x, weight), bias), [b, grid[0], grid[1], weight.shape[1]]) as tf.Tensor4D;
    const d4 = depthFromLogits(head, logits, my4, mx4);
    const pred = tf.reshape(resizeBilinearTf(tf.expandDims(d4, -1) as tf.Tensor4D, myL, mxL), [b, H, W]);
    return sigLoss(pred, gt, warm);
  });
}

/**
 * Train a linear depth head on `train` features (with CLS tokens when `train.cls` is set) and depth
 * maps `depths` [n, H, W] in metres (0 = none); see the module comment.
 */
export function trainDepthHead(train: DenseFeatures, depths: Float32Array, labelSize: [number, number], opts: DepthTrainOptions = {}): DepthHead {
  checkDenseFeatures('depth head training set', train);
  const [H, W] = labelSize;
  const [gh, gw] = train.grid;
  if (depths.length !== train.n * H * W) throw new Error(`depth head: depth maps hold ${depths.length} values, expected n*H*W = ${train.n}*${H}*${W}`);
  if (train.n === 0) throw new Error('depth head: the training set is empty');
  const head = depthHeadShape(train, opts);
  const K = head.mode === 'bins' ? head.nBins : 1;
  const Cin = head.dim;
  const steps = opts.steps ?? 1000;
  const B = Math.min(opts.batchSize ?? 4, train.n);
  const lr = opts.lr ?? 5e-3;
  const warmupSteps = Math.round(steps * (opts.warmupFraction ?? 12800 / 38400));
  const sigWarm = opts.sigWarmupSteps ?? Math.round((steps * 100) / 38400);
  const clip = opts.clip ?? 35;
  const seed = opts.seed ?? 0;
  const rng = new Rng(seed).fork(2);
  const bound = 1 / Math.sqrt(Cin); // PyTorch's Conv2d default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  const weight = tf.variable(tf.tensor2d(Float32Array.from({ length: Cin * K }, () => (2 * rng.float() - 1) * bound), [Cin, K]));
  const bias = tf.variable(tf.tensor1d(Float32Array.from({ length: K }, () => (2 * rng.float() - 1) * bound)));
  const u = head.upsample;
  const [my4, mx4] = [f32matrix(bilinearMatrix(u * gh, gh), u * gh, gh), f32matrix(bilinearMatrix(u * gw, gw), u * gw, gw)];
  const [myL, mxL] = [f32matrix(bilinearMatrix(H, u * gh), H, u * gh), f32matrix(bilinearMatrix(W, u * gw), W, u * gw)];
  const opt = headOptimizer({ weight, bias });
  const wd = opts.weightDecay ?? 0.01;
  const lrAt = cosineAnnealingSchedule({ base: lr, totalSteps: steps, warmupSteps });
  const withCls = train.cls !== undefined;
  const order = batches(train.n, B, seed);
  try {
    for (let step = 0; step < steps; step++) {
      const idx = order.next().value as number[];
      const b = idx.length;
      const gtHost = new Float32Array(b * H * W);
      idx.forEach((i, k) => gtHost.set(depths.subarray(i * H * W, (i + 1) * H * W), k * H * W));
      let valid = 0;
      for (const v of gtHost) if (v > 0) valid++;
      if (valid < 2) continue; // SigLoss needs two valid pixels
      const xb = tf.tensor2d(denseBatch(train, idx, withCls), [b * gh * gw, Cin]);
      const gt = tf.tensor3d(gtHost, [b, H, W]);
      const { value, grads } = tf.variableGrads(() => depthTrainLoss(head, weight, bias, xb, gt, train.grid, [my4, mx4, myL, mxL], step < sigWarm), [weight, bias]);
      const raw = [grads[weight.name], grads[bias.name]];
      // torch's clip_grad_norm_: the norm summed in float64 over the tensors, scaled unless max / (norm + 1e-6) >= 1.
      const clipped = clip > 0 ? clipByGlobalNorm(raw, clip, { sumOn: 'host', when: 'coef-below-one' }).grads : raw;
      opt.apply(clipped, { lr: lrAt(step), wd });
      const loss = value.dataSync()[0];
      tf.dispose([xb, gt, value, ...raw, ...clipped]);
      if (!Number.isFinite(loss)) throw new Error(`depth head: the loss became ${loss} at step ${step + 1}`);
      opts.onStep?.(step + 1, loss);
    }
    const wT = weight.arraySync() as number[][];
    return { ...head, weight: Float32Array.from({ length: K * Cin }, (_, k) => wT[k % Cin][Math.floor(k / Cin)]), bias: bias.dataSync().slice() as Float32Array };
  } finally {
    opt.dispose();
    tf.dispose([weight, bias, my4, mx4, myL, mxL]);
  }
}

function depthHeadShape(f: DenseFeatures, o: DepthHeadOptions): Omit<DepthHead, 'weight' | 'bias'> {
  const mode = o.mode ?? 'bins';
  if (mode !== 'bins' && mode !== 'regression') throw new Error(`depth head: mode must be bins or regression, got '${mode as string}'`);
  const minDepth = o.minDepth ?? 1e-3, maxDepth = o.maxDepth ?? 10;
  if (!(minDepth > 0 && maxDepth > minDepth)) throw new Error(`depth head: need 0 < minDepth < maxDepth, got ${minDepth}, ${maxDepth}`);
  const upsample = o.upsample ?? 4;
  if (!(Number.isInteger(upsample) && upsample >= 1)) throw new Error(`depth head: upsample must be a positive integer, got ${upsample}`);
  const nBins = o.nBins ?? 256;
  if (!(Number.isInteger(nBins) && nBins >= 2)) throw new Error(`depth head: nBins must be an integer >= 2, got ${nBins}`);
  return { mode, dim: headDim(f, f.cls !== undefined), nBins, minDepth, maxDepth, upsample };
}

/** Depth [u gh, u gw] of image `i` before the final resize, clamped to [minDepth, maxDepth]. */
export function depthGrid(head: DepthHead, f: DenseFeatures, i: number): Float32Array {
  const [gh, gw] = f.grid;
  const withCls = head.dim === 2 * f.dim;
  if (!withCls && head.dim !== f.dim) throw new Error(`depth head: features have dim ${f.dim}, the head reads ${head.dim} channels`);
  const K = head.mode === 'bins' ? head.nBins : 1;
  const u = head.upsample;
  return tf.tidy(() => {
    const x = tf.tensor2d(denseBatch(f, [i], withCls), [gh * gw, head.dim]);
    const wT = tf.transpose(tf.tensor2d(head.weight, [K, head.dim]));
    const logits = tf.reshape(tf.add(tf.matMul(x, wT), tf.tensor1d(head.bias)), [1, gh, gw, K]) as tf.Tensor4D;
    const my = f32matrix(bilinearMatrix(u * gh, gh), u * gh, gh), mx = f32matrix(bilinearMatrix(u * gw, gw), u * gw, gw);
    return tf.clipByValue(depthFromLogits(head, logits, my, mx), head.minDepth, head.maxDepth).dataSync() as Float32Array;
  }).slice();
}

/** Depth of image `i` at `labelSize` (the clamped head output resized bilinearly, as encode_decode). */
export function predictDepth(head: DepthHead, f: DenseFeatures, i: number, labelSize: [number, number]): Float32Array {
  const [gh, gw] = f.grid;
  const u = head.upsample;
  return resampleMap(depthGrid(head, f, i), u * gh, u * gw, 1, bilinearMatrix(labelSize[0], u * gh), bilinearMatrix(labelSize[1], u * gw));
}

/** Per-image toolbox metrics over test images; `target(i)` gives image i's depth map and crop. */
export async function evaluateDepth(
  head: DepthHead,
  f: DenseFeatures,
  range: [number, number],
  target: (i: number) => Promise<{ width: number; height: number; depth: Float32Array; evalCrop?: [number, number, number, number] }>,
  onImage?: (done: number) => void,
): Promise<DepthScores[]> {
  const out: DepthScores[] = [];
  for (let i = 0; i < f.n; i++) {
    const t = await target(i);
    const pred = predictDepth(head, f, i, [t.height, t.width]);
    out.push(depthScores(t.depth, pred, depthEvalMask(t, range)));
    onImage?.(i + 1);
  }
  return out;
}

/** The head as PyTorch tensors (DINOv2 depth BNHead names: conv_depth.weight [K, C, 1, 1], conv_depth.bias). */
export function depthHeadTensors(head: DepthHead): Record<string, HostTensor> {
  const K = head.mode === 'bins' ? head.nBins : 1;
  return { 'conv_depth.weight': hostTensor(head.weight, [K, head.dim, 1, 1]), 'conv_depth.bias': hostTensor(head.bias, [K]) };
}
