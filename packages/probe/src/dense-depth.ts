/**
 * DINOv2's linear depth head, trained with tfjs on frozen features (dense-features.ts).
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
import { Rng, hostTensor, type HostTensor } from '@vitreg/core';
import { clipByGlobalNorm, cosineAnnealingSchedule } from '@vitreg/trainer';
import { bilinearMatrix, depthEvalMask, depthScores, resampleMap, type DepthScores } from './dense-metrics.js';
import { checkDenseFeatures, denseBatch, resizeBilinearTf, type DenseFeatures } from './dense-features.js';
import { batches, f32matrix, headDim, headOptimizer } from './dense-train.js';

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
function depthFromLogits(
  head: Pick<DepthHead, 'mode' | 'nBins' | 'minDepth' | 'maxDepth'>,
  logits: tf.Tensor4D,
  my: tf.Tensor2D,
  mx: tf.Tensor2D,
): tf.Tensor3D {
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
export function trainDepthHead(
  train: DenseFeatures,
  depths: Float32Array,
  labelSize: [number, number],
  opts: DepthTrainOptions = {},
): DepthHead {
  checkDenseFeatures('depth head training set', train);
  const [H, W] = labelSize;
  const [gh, gw] = train.grid;
  if (depths.length !== train.n * H * W)
    throw new Error(`depth head: depth maps hold ${depths.length} values, expected n*H*W = ${train.n}*${H}*${W}`);
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
  // In tidies: a variable made from a tensor keeps it alive; the head's dispose must free both.
  const weightInit = Float32Array.from({ length: Cin * K }, () => (2 * rng.float() - 1) * bound);
  const weight = tf.tidy(() => tf.variable(tf.tensor2d(weightInit, [Cin, K])));
  const biasInit = Float32Array.from({ length: K }, () => (2 * rng.float() - 1) * bound);
  const bias = tf.tidy(() => tf.variable(tf.tensor1d(biasInit)));
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
      const { value, grads } = tf.variableGrads(
        () => depthTrainLoss(head, weight, bias, xb, gt, train.grid, [my4, mx4, myL, mxL], step < sigWarm),
        [weight, bias],
      );
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
    return {
      ...head,
      weight: Float32Array.from({ length: K * Cin }, (_, k) => wT[k % Cin][Math.floor(k / Cin)]),
      bias: bias.dataSync().slice() as Float32Array,
    };
  } finally {
    opt.dispose();
    tf.dispose([weight, bias, my4, mx4, myL, mxL]);
  }
}

function depthHeadShape(f: DenseFeatures, o: DepthHeadOptions): Omit<DepthHead, 'weight' | 'bias'> {
  const mode = o.mode ?? 'bins';
  if (mode !== 'bins' && mode !== 'regression') throw new Error(`depth head: mode must be bins or regression, got '${mode as string}'`);
  const minDepth = o.minDepth ?? 1e-3,
    maxDepth = o.maxDepth ?? 10;
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
  return tf
    .tidy(() => {
      const x = tf.tensor2d(denseBatch(f, [i], withCls), [gh * gw, head.dim]);
      const wT = tf.transpose(tf.tensor2d(head.weight, [K, head.dim]));
      const logits = tf.reshape(tf.add(tf.matMul(x, wT), tf.tensor1d(head.bias)), [1, gh, gw, K]) as tf.Tensor4D;
      const my = f32matrix(bilinearMatrix(u * gh, gh), u * gh, gh),
        mx = f32matrix(bilinearMatrix(u * gw, gw), u * gw, gw);
      return tf.clipByValue(depthFromLogits(head, logits, my, mx), head.minDepth, head.maxDepth).dataSync() as Float32Array;
    })
    .slice();
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
