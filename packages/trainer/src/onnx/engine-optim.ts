/**
 * The ONNX Runtime engine's optimiser, clipping and EMA teacher on its flat host buffers: optim.ts's
 * AdamW and Lamb and steps/dino.ts's EMA, element by element in float32 with the same operations in the
 * same order as the tfjs code (each product, sum, quotient and square root rounded to float32 as a tfjs
 * backend computes it, with the scalars tfjs turns into float32 tensors rounded the same way), so that an
 * update agrees with tfjs's to float32 rounding. Norms (clipping, LAMB's global norm and trust ratio) are
 * summed in float64, where tfjs sums float32: they agree to ~1e-7 relative.
 *
 * Why host loops and not an ONNX graph: measured in the README ("Where the optimiser runs"): one AdamW step
 * over ViT-S/16's 22 M values takes ~0.1 s in these loops on one core, a few percent of a training step on
 * the CPU, and an ONNX graph doing the same cannot write in place and returns every output as a fresh copy
 * through onnxruntime-node, which costs more than the loop saves. On WebGPU, where the outputs can stay on
 * the device, engine-device.ts runs the same steps as graphs there (tested against these loops).
 */
import type { AdamWOptions, LambOptions, StepHyperparams } from '../optim.js';
import type { TrainedParam } from './engine-params.js';

const f = Math.fround;

/** Sum of squares of `a[start, start + size)`, in float64. */
export function sumOfSquares(a: Float32Array, start: number, size: number): number {
  let s = 0;
  const end = start + size;
  for (let i = start; i < end; i++) {
    const v = a[i]!;
    s += v * v;
  }
  return s;
}

/** `a[start, start + size) *= coef` in float32 (tf.mul by a scalar). */
function scale(a: Float32Array, start: number, size: number, coef: number): void {
  const c = f(coef);
  const end = start + size;
  for (let i = start; i < end; i++) a[i] = a[i]! * c;
}

/**
 * clipByGlobalNorm over the gradients of `params` (in the gradient buffer `g`): their L2 norm, and when
 * it exceeds `maxNorm` > 0 the gradients scaled in place by maxNorm / (norm + 1e-6). Returns the norm
 * before clipping.
 */
export function clipGradients(g: Float32Array, params: readonly TrainedParam[], maxNorm: number): number {
  let sq = 0;
  for (const p of params) sq += sumOfSquares(g, p.gradOffset, p.size);
  const norm = Math.sqrt(sq);
  if (maxNorm > 0 && norm > maxNorm) {
    const coef = maxNorm / (norm + 1e-6);
    for (const p of params) scale(g, p.gradOffset, p.size, coef);
  }
  return norm;
}

/** clipPerModule: each student module's gradients by their own norm; returns each module's norm before clipping. */
export function clipPerModule(g: Float32Array, params: readonly TrainedParam[], maxNorm: number): Record<string, number> {
  const modules = new Map<string, TrainedParam[]>();
  for (const p of params) modules.set(p.module, [...(modules.get(p.module) ?? []), p]);
  const norms: Record<string, number> = {};
  for (const [m, ps] of modules) norms[m] = clipGradients(g, ps, maxNorm);
  return norms;
}

/** The EMA teacher t <- m t + (1 - m) s over whole buffers (steps/dino.ts's applyTeacherUpdate, float32). */
export function emaUpdate(teacher: Float32Array, student: Float32Array, momentum: number): void {
  const m = f(momentum);
  const om = f(1 - momentum);
  const n = teacher.length;
  for (let i = 0; i < n; i++) teacher[i] = f(teacher[i]! * m) + f(student[i]! * om);
}

export type FlatOptimizerKind = 'adamw' | 'lamb';

/** Trained tensor `p`'s learning rate at `hp`: `lastLayerLr` for the DINO heads' last layer, times its multiplier. */
export function learningRate(p: TrainedParam, hp: StepHyperparams): number {
  return (p.isLastLayer ? (hp.lastLayerLr ?? hp.lr) : hp.lr) * p.lrMult;
}

/** AdamW or LAMB (optim.ts's formulas and defaults) over a parameter buffer, its gradients and two moment buffers. */
export class FlatOptimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly maxGradNorm: number | null;
  readonly gradAveraging: boolean;
  readonly biasCorrection: boolean;
  readonly alwaysAdapt: boolean;
  readonly trustClip: boolean;
  /** Steps taken (the bias-correction exponent). */
  step = 0;
  /** exp_avg and exp_avg_sq, laid out as the gradients. */
  readonly m: Float32Array;
  readonly v: Float32Array;
  /** LAMB's update of one tensor (the trust ratio needs its norm before it is applied). */
  private scratch: Float32Array | null = null;

  constructor(
    readonly kind: FlatOptimizerKind,
    readonly params: readonly TrainedParam[],
    gradTotal: number,
    opts: AdamWOptions & LambOptions = {},
  ) {
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? (kind === 'lamb' ? 1e-6 : 1e-8);
    this.maxGradNorm = opts.maxGradNorm === undefined ? 1.0 : opts.maxGradNorm;
    this.gradAveraging = opts.gradAveraging ?? true;
    this.biasCorrection = opts.biasCorrection ?? true;
    this.alwaysAdapt = opts.alwaysAdapt ?? false;
    this.trustClip = opts.trustClip ?? false;
    this.m = new Float32Array(gradTotal);
    this.v = new Float32Array(gradTotal);
  }

  /** One step on `w` (the student buffer) with gradients `g`; LAMB returns the global gradient norm before its clip. */
  apply(w: Float32Array, g: Float32Array, hp: StepHyperparams): number | undefined {
    return this.kind === 'lamb' ? this.lamb(w, g, hp) : this.adamw(w, g, hp);
  }

  /**
   * optim.ts's AdamW.apply: m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; w <- w (1 - lr wd);
   * w <- w - (m / (sqrt(v) / sqrt(1 - b2^t) + eps)) lr / (1 - b1^t).
   */
  private adamw(w: Float32Array, g: Float32Array, hp: StepHyperparams): undefined {
    this.step += 1;
    const b1 = f(this.beta1);
    const ob1 = f(1 - this.beta1);
    const b2 = f(this.beta2);
    const ob2 = f(1 - this.beta2);
    const bc1 = 1 - this.beta1 ** this.step;
    const bc2Sqrt = f(Math.sqrt(1 - this.beta2 ** this.step));
    const eps = f(this.eps);
    const { m, v } = this;
    for (const p of this.params) {
      const lr = learningRate(p, hp);
      const wd = hp.wd * p.wdMult;
      const decay = lr * wd !== 0 ? f(1 - lr * wd) : 1;
      const step = f(lr / bc1);
      const d = p.offset - p.gradOffset;
      const end = p.gradOffset + p.size;
      for (let i = p.gradOffset; i < end; i++) {
        const gi = g[i]!;
        const mi = f(f(m[i]! * b1) + f(gi * ob1));
        const vi = f(f(v[i]! * b2) + f(f(gi * gi) * ob2));
        m[i] = mi;
        v[i] = vi;
        const wi = decay === 1 ? w[i + d]! : f(w[i + d]! * decay);
        const denom = f(f(f(Math.sqrt(vi)) / bc2Sqrt) + eps);
        w[i + d] = f(wi - f(f(mi / denom) * step));
      }
    }
    return undefined;
  }

  /** optim.ts's Lamb.apply (timm's Lamb): global clip, Adam moments, weight decay inside the update, trust ratio. */
  private lamb(w: Float32Array, g: Float32Array, hp: StepHyperparams): number {
    this.step += 1;
    let sq = 0;
    for (const p of this.params) sq += sumOfSquares(g, p.gradOffset, p.size);
    const norm = f(Math.sqrt(sq));
    const clip = this.maxGradNorm === null ? 1 : Math.max(f(norm / f(this.maxGradNorm)), 1);
    const b1 = f(this.beta1);
    const b2 = f(this.beta2);
    const ob2 = f(1 - this.beta2);
    const beta3 = f(this.gradAveraging ? 1 - this.beta1 : 1);
    const bc1 = f(this.biasCorrection ? 1 - this.beta1 ** this.step : 1);
    const bc2Sqrt = f(this.biasCorrection ? Math.sqrt(1 - this.beta2 ** this.step) : 1);
    const eps = f(this.eps);
    const { m, v } = this;
    for (const p of this.params) {
      if (!this.scratch || this.scratch.length < p.size) this.scratch = new Float32Array(p.size);
      const u = this.scratch;
      const lr = f(learningRate(p, hp));
      const wd = hp.wd * p.wdMult;
      const fwd = f(wd);
      const d = p.offset - p.gradOffset;
      const o = p.gradOffset;
      let wSq = 0;
      let uSq = 0;
      for (let k = 0; k < p.size; k++) {
        const i = o + k;
        const gi = clip === 1 ? g[i]! : f(g[i]! / clip);
        const mi = f(f(m[i]! * b1) + f(gi * beta3));
        const vi = f(f(v[i]! * b2) + f(f(gi * gi) * ob2));
        m[i] = mi;
        v[i] = vi;
        const denom = f(f(f(Math.sqrt(vi)) / bc2Sqrt) + eps);
        let ui = f(f(mi / bc1) / denom);
        const wi = w[i + d]!;
        if (wd !== 0) ui = f(ui + f(wi * fwd));
        u[k] = ui;
        wSq += wi * wi;
        uSq += ui * ui;
      }
      let ratio = 1;
      if (wd !== 0 || this.alwaysAdapt) {
        const wNorm = f(Math.sqrt(wSq));
        const uNorm = f(Math.sqrt(uSq));
        ratio = wNorm > 0 && uNorm > 0 ? f(wNorm / uNorm) : 1;
        if (this.trustClip) ratio = Math.min(ratio, 1);
      }
      for (let k = 0; k < p.size; k++) {
        const ui = ratio === 1 ? u[k]! : f(u[k]! * ratio);
        w[o + k + d] = f(w[o + k + d]! - f(ui * lr));
      }
    }
    return norm;
  }
}
