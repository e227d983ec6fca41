/**
 * Batch mixing for supervised training: timm's batch-mode mixup / cutmix with label-smoothed soft
 * targets (`mixupCutmix`), and the smoothed one-hot targets without mixing (`smoothOneHot`).
 */
import type { Rng } from '@vitreg/core';

/** Gamma(shape, 1) deviate (Marsaglia & Tsang; shape < 1 through the boost U^(1/shape)). */
function gamma(rng: Rng, shape: number): number {
  if (shape < 1) return gamma(rng, shape + 1) * Math.pow(1 - rng.float(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number, v: number;
    do {
      x = rng.normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = 1 - rng.float();
    if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v;
  }
}

/** Beta(alpha, alpha) deviate. */
function symmetricBeta(rng: Rng, alpha: number): number {
  const a = gamma(rng, alpha);
  const b = gamma(rng, alpha);
  return a / (a + b);
}

/** Label-smoothed one-hot targets [B, C]: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere. */
export function smoothOneHot(labels: ArrayLike<number>, numClasses: number, smoothing = 0): Float32Array {
  const off = smoothing / numClasses;
  const on = 1 - smoothing + off;
  const out = new Float32Array(labels.length * numClasses).fill(off);
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (!Number.isInteger(y) || y < 0 || y >= numClasses)
      throw new Error(`smoothOneHot: label ${i} is ${y}, expected an integer in [0, ${numClasses})`);
    out[i * numClasses + y] = on;
  }
  return out;
}

export interface MixupCutmixOptions {
  /** Beta(alpha, alpha) for mixup's lambda; 0 disables mixup (default 0.8). */
  mixupAlpha?: number;
  /** Beta(alpha, alpha) for cutmix's area; 0 disables cutmix (default 1.0). */
  cutmixAlpha?: number;
  /** Probability of mixing this batch at all (default 1.0). */
  prob?: number;
  /** With both enabled, probability of cutmix rather than mixup (default 0.5). */
  switchProb?: number;
  /** Label smoothing of the targets (default 0.1). */
  labelSmoothing?: number;
}

export interface MixedBatch {
  /** Mixed images, same shape as the input. */
  images: Float32Array;
  /** Soft targets [B, C]; each row sums to 1. */
  targets: Float32Array;
  /** Weight of each image's own label (1 when the batch was not mixed). */
  lambda: number;
  /** The pasted box [x0, y0, x1, y1] when cutmix was used. */
  box: [number, number, number, number] | null;
}

/**
 * timm's `Mixup` in batch mode: image i is mixed with image B-1-i using one lambda for the whole
 * batch, drawn from Beta(alpha, alpha); cutmix pastes a box whose area is 1 - lambda (lambda is then
 * corrected to the clipped box). Targets: lambda * smooth(y_i) + (1 - lambda) * smooth(y_{B-1-i}).
 * `images` is float32 NHWC with `shape` [B, H, W, C].
 */
export function mixupCutmix(
  images: Float32Array,
  shape: [number, number, number, number],
  labels: ArrayLike<number>,
  numClasses: number,
  rng: Rng,
  opts: MixupCutmixOptions = {},
): MixedBatch {
  const [B, H, W, C] = shape;
  if (images.length !== B * H * W * C)
    throw new Error(`mixupCutmix: images hold ${images.length} values, shape [${shape}] needs ${B * H * W * C}`);
  if (labels.length !== B) throw new Error(`mixupCutmix: expected ${B} labels, got ${labels.length}`);
  const mixupAlpha = opts.mixupAlpha ?? 0.8;
  const cutmixAlpha = opts.cutmixAlpha ?? 1.0;
  const smoothing = opts.labelSmoothing ?? 0.1;

  let lambda = 1;
  let useCutmix = false;
  if ((mixupAlpha > 0 || cutmixAlpha > 0) && rng.float() < (opts.prob ?? 1)) {
    useCutmix = cutmixAlpha > 0 && (mixupAlpha <= 0 || rng.float() < (opts.switchProb ?? 0.5));
    lambda = symmetricBeta(rng, useCutmix ? cutmixAlpha : mixupAlpha);
  }

  const out = images.slice();
  const imageSize = H * W * C;
  let box: MixedBatch['box'] = null;
  if (lambda < 1 && useCutmix) {
    const cutRatio = Math.sqrt(1 - lambda);
    const cutH = Math.floor(H * cutRatio),
      cutW = Math.floor(W * cutRatio);
    const cy = rng.int(H),
      cx = rng.int(W);
    const y0 = Math.min(Math.max(cy - Math.floor(cutH / 2), 0), H),
      y1 = Math.min(Math.max(cy + Math.floor(cutH / 2), 0), H);
    const x0 = Math.min(Math.max(cx - Math.floor(cutW / 2), 0), W),
      x1 = Math.min(Math.max(cx + Math.floor(cutW / 2), 0), W);
    box = [x0, y0, x1, y1];
    lambda = 1 - ((y1 - y0) * (x1 - x0)) / (H * W);
    for (let i = 0; i < B; i++) {
      const j = B - 1 - i;
      for (let y = y0; y < y1; y++) {
        const row = (y * W + x0) * C;
        out.set(images.subarray(j * imageSize + row, j * imageSize + row + (x1 - x0) * C), i * imageSize + row);
      }
    }
  } else if (lambda < 1) {
    for (let i = 0; i < B; i++) {
      const a = i * imageSize,
        b = (B - 1 - i) * imageSize;
      for (let k = 0; k < imageSize; k++) out[a + k] = lambda * images[a + k] + (1 - lambda) * images[b + k];
    }
  }

  const own = smoothOneHot(labels, numClasses, smoothing);
  const targets = new Float32Array(B * numClasses);
  for (let i = 0; i < B; i++) {
    const j = B - 1 - i;
    for (let c = 0; c < numClasses; c++) {
      targets[i * numClasses + c] = lambda * own[i * numClasses + c] + (1 - lambda) * own[j * numClasses + c];
    }
  }
  return { images: out, targets, lambda, box };
}
