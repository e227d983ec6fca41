/**
 * DINOv2's linear segmentation head, trained with tfjs on frozen features (dense-features.ts).
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
 */
import * as tf from '@tensorflow/tfjs-core';
import { IGNORE_LABEL, Rng, hostTensor, type HostTensor } from '@vitreg/core';
import { polySchedule } from '@vitreg/trainer';
import {
  addSegmentation,
  bilinearMatrix,
  chainedBilinearMatrix,
  resampleMap,
  segmentationScores,
  segmentationTotals,
  type SegmentationScores,
  type SegmentationTotals,
} from './dense-metrics.js';
import { checkDenseFeatures, denseBatch, resizeBilinearTf, type DenseFeatures } from './dense-features.js';
import { batches, f32matrix, headOptimizer } from './dense-train.js';

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
  for (let k = 0; k < b; k++)
    for (let i = 0; i < H; i++) for (let j = 0; j < W; j++) out[(j * b + k) * H + i] = labels[(k * H + i) * W + j];
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
export function trainSegmentationHead(
  train: DenseFeatures,
  labels: Uint8Array,
  labelSize: [number, number],
  opts: SegmentationTrainOptions,
): SegmentationHead {
  checkDenseFeatures('segmentation head training set', train);
  const { numClasses: C } = opts;
  const [H, W] = labelSize;
  const [gh, gw] = train.grid;
  const D = train.dim;
  if (!(Number.isInteger(C) && C >= 2 && C < IGNORE_LABEL)) throw new Error(`segmentation head: numClasses must be in [2, 255), got ${C}`);
  if (labels.length !== train.n * H * W)
    throw new Error(`segmentation head: labels hold ${labels.length} values, expected n*H*W = ${train.n}*${H}*${W}`);
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] >= C && labels[i] !== IGNORE_LABEL)
      throw new Error(`segmentation head: label ${labels[i]} is outside [0, ${C}) and not ${IGNORE_LABEL}`);
  }
  if (train.n === 0) throw new Error('segmentation head: the training set is empty');
  const steps = opts.steps ?? 1000;
  const B = Math.min(opts.batchSize ?? 4, train.n);
  const lr = opts.lr ?? 1e-3;
  const warmupSteps = Math.round(steps * (opts.warmupFraction ?? 1500 / 40000));
  const seed = opts.seed ?? 0;
  const rng = new Rng(seed).fork(1);
  const eps = 1e-5,
    momentum = 0.1;
  // In tidies: a variable made from a tensor keeps it alive; the head's dispose must free both.
  const gamma = tf.tidy(() => tf.variable(tf.ones([D]))) as tf.Variable<tf.Rank.R1>;
  const beta = tf.tidy(() => tf.variable(tf.zeros([D]))) as tf.Variable<tf.Rank.R1>;
  const weightInit = Float32Array.from({ length: D * C }, () => rng.normal(0, 0.01));
  const weight = tf.tidy(() => tf.variable(tf.tensor2d(weightInit, [D, C]))); // conv_seg.weight^T
  const bias = tf.tidy(() => tf.variable(tf.zeros([C]))) as tf.Variable<tf.Rank.R1>;
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
        runningVar[d] = (1 - momentum) * runningVar[d] + (momentum * (bv[d] * N)) / Math.max(1, N - 1);
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
        weight: gamma.dataSync().slice() as Float32Array,
        bias: beta.dataSync().slice() as Float32Array,
        runningMean: Float32Array.from(runningMean),
        runningVar: Float32Array.from(runningVar),
        eps,
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
  const D = head.dim,
    C = head.numClasses;
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
  return tf
    .tidy(() => {
      const x = tf.tensor2d(f.x.subarray(i * gh * gw * D, (i + 1) * gh * gw * D), [gh * gw, D]);
      return tf.add(tf.matMul(x, tf.tensor2d(w, [D, C])), tf.tensor1d(b)).dataSync() as Float32Array;
    })
    .slice();
}

/** Per-pixel classes of image `i` at `labelSize`, via the input size `inputSize` (mmseg's two resizes). */
export function predictSegmentation(
  head: SegmentationHead,
  f: DenseFeatures,
  i: number,
  inputSize: [number, number],
  labelSize: [number, number],
): Uint8Array {
  const [gh, gw] = f.grid;
  const [H, W] = labelSize;
  const logits = segmentationGridLogits(head, f, i);
  const up = resampleMap(
    logits,
    gh,
    gw,
    head.numClasses,
    chainedBilinearMatrix([gh, inputSize[0], H]),
    chainedBilinearMatrix([gw, inputSize[1], W]),
  );
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
