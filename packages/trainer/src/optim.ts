/**
 * The optimisers and gradient clipping of every training in vitreg (the trainer's loop and the dense
 * probes' heads): AdamW with decoupled weight decay (PyTorch's formula) and LAMB (timm's `Lamb`, the
 * pure-PyTorch twin of apex's FusedLAMB that DeiT-III's `--opt fusedlamb` uses) over a list of
 * ParamSpecs, each with its own learning-rate and weight-decay multipliers; clipping by global norm
 * (`clipByGlobalNorm`) and per module (`clipPerModule`, DINOv2's loop). The schedules are in
 * schedules.ts.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ParamSpec } from './param-groups.js';

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
}

export interface StepHyperparams {
  lr: number;
  wd: number;
  /** Learning rate of `isLastLayer` parameters (0 while the DINO head's last layer is frozen). */
  lastLayerLr?: number;
}

/** Optimiser state as host arrays: `<name>.exp_avg` and `<name>.exp_avg_sq` per parameter. */
export interface AdamWState {
  step: number;
  moments: Record<string, { shape: number[]; data: Float32Array }>;
}

export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** Number of steps taken (the bias-correction exponent). */
  step = 0;
  private readonly m: tf.Variable[];
  private readonly v: tf.Variable[];

  constructor(
    readonly params: ParamSpec[],
    opts: AdamWOptions = {},
  ) {
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    const names = new Set<string>();
    for (const p of params) {
      if (names.has(p.name)) throw new Error(`AdamW: parameter "${p.name}" listed twice`);
      names.add(p.name);
    }
    // In a tidy: a variable made from a tensor keeps that tensor alive; dispose() must free the moments whole.
    this.m = params.map((p) => tf.tidy(() => tf.variable(tf.zerosLike(p.variable), false)));
    this.v = params.map((p) => tf.tidy(() => tf.variable(tf.zerosLike(p.variable), false)));
  }

  /**
   * One update. `grads[i]` is the gradient of `params[i]`:
   * p <- p (1 - lr wd); m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
   * p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
   */
  apply(grads: tf.Tensor[], hp: StepHyperparams): void {
    if (grads.length !== this.params.length) {
      throw new Error(`AdamW: expected ${this.params.length} gradients, got ${grads.length}`);
    }
    this.step += 1;
    const bc1 = 1 - this.beta1 ** this.step;
    const bc2Sqrt = Math.sqrt(1 - this.beta2 ** this.step);
    // One tidy per parameter: its temporaries (about ten copies of it) are freed before the next one's,
    // so the update needs the largest tensor's ten copies, not the whole model's.
    this.params.forEach((p, i) =>
      tf.tidy(() => {
        const g = grads[i]!;
        const lr = (p.isLastLayer ? (hp.lastLayerLr ?? hp.lr) : hp.lr) * p.lrMult;
        const wd = hp.wd * p.wdMult;
        const m = tf.add(tf.mul(this.m[i]!, this.beta1), tf.mul(g, 1 - this.beta1));
        const v = tf.add(tf.mul(this.v[i]!, this.beta2), tf.mul(tf.square(g), 1 - this.beta2));
        let w: tf.Tensor = p.variable;
        if (lr * wd !== 0) w = tf.mul(w, 1 - lr * wd);
        const denom = tf.add(tf.div(tf.sqrt(v), bc2Sqrt), this.eps);
        w = tf.sub(w, tf.mul(tf.div(m, denom), lr / bc1));
        this.m[i]!.assign(m);
        this.v[i]!.assign(v);
        p.variable.assign(w);
      }),
    );
  }

  getState(): AdamWState {
    return momentState(this.params, this.m, this.v, this.step);
  }

  /** Restore moments saved by getState; every parameter must be present with its size. */
  setState(state: AdamWState): void {
    restoreMoments(this.params, this.m, this.v, state);
    this.step = state.step;
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}

/**
 * sqrt of the float32 sum (tf.addN) of every tensor's sum of squares, each square freed once summed: the
 * norm of a model's gradients without a squared copy of all of them.
 */
export function globalNorm(tensors: readonly tf.Tensor[]): tf.Scalar {
  const sums = tensors.map((g) => tf.tidy(() => tf.sum(tf.square(g))));
  try {
    return tf.tidy(() => tf.sqrt(tf.addN(sums)) as tf.Scalar);
  } finally {
    tf.dispose(sums);
  }
}

/** How `clipByGlobalNorm` sums and when it scales (the defaults are the trainer's; the dense probes set both). */
export interface ClipOptions {
  /**
   * Where the tensors' squared norms are added: 'device' (default: one float32 sum in tfjs) or 'host'
   * (each tensor's float32 sum of squares read back and added in float64, as the dense probes do).
   */
  sumOn?: 'device' | 'host';
  /**
   * When the gradients are scaled: 'norm-above-max' (default: norm > maxNorm) or 'coef-below-one'
   * (unless maxNorm / (norm + 1e-6) >= 1: torch's own test, which also scales a norm within 1e-6 below
   * maxNorm).
   */
  when?: 'norm-above-max' | 'coef-below-one';
}

/**
 * Global L2 norm of a list of gradients and, when it exceeds `maxNorm`, the gradients scaled by
 * maxNorm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). `maxNorm` <= 0 disables clipping.
 * Returns new tensors (the inputs when not clipped) and the norm before clipping.
 */
export function clipByGlobalNorm(grads: tf.Tensor[], maxNorm: number, opts: ClipOptions = {}): { grads: tf.Tensor[]; norm: number } {
  let norm: number;
  if (opts.sumOn === 'host') {
    norm = 0;
    for (const g of grads) {
      const sq = tf.tidy(() => tf.sum(tf.square(g)));
      norm += sq.dataSync()[0]!;
      sq.dispose();
    }
    norm = Math.sqrt(norm);
  } else {
    const normT = globalNorm(grads);
    norm = normT.dataSync()[0]!;
    normT.dispose();
  }
  if (!(maxNorm > 0)) return { grads, norm };
  const coef = maxNorm / (norm + 1e-6);
  const scale = opts.when === 'coef-below-one' ? !(coef >= 1) : norm > maxNorm;
  if (!scale) return { grads, norm };
  return { grads: grads.map((g) => tf.mul(g, coef)), norm };
}

/**
 * DINOv2's clipping (dinov2/train/train.py: `for v in model.student.values(): v.clip_grad_norm_(clip_grad)`):
 * the gradients of each module, named by the part of `names[i]` before the first dot (`backbone`,
 * `dino_head`, `ibot_head`), scaled by maxNorm / (norm + 1e-6) when their own L2 norm exceeds maxNorm.
 * Returns the gradients (new tensors where clipped, the inputs elsewhere) and each module's norm before
 * clipping; maxNorm <= 0 clips nothing.
 */
export function clipPerModule(
  names: readonly string[],
  grads: tf.Tensor[],
  maxNorm: number,
): { grads: tf.Tensor[]; norms: Record<string, number> } {
  if (names.length !== grads.length) throw new Error(`clipPerModule: ${names.length} names for ${grads.length} gradients`);
  const modules = new Map<string, number[]>();
  names.forEach((name, i) => {
    const dot = name.indexOf('.');
    const m = dot < 0 ? name : name.slice(0, dot);
    modules.set(m, [...(modules.get(m) ?? []), i]);
  });
  const out = [...grads];
  const norms: Record<string, number> = {};
  for (const [m, idx] of modules) {
    const r = clipByGlobalNorm(
      idx.map((i) => grads[i]!),
      maxNorm,
    );
    idx.forEach((i, k) => {
      out[i] = r.grads[k]!;
    });
    norms[m] = r.norm;
  }
  return { grads: out, norms };
}

export interface LambOptions {
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /**
   * Default 1e-6 (timm's Lamb and apex's FusedLAMB). DeiT's create_optimizer passes `--opt-eps`,
   * default 1e-8: use 1e-8 for the DeiT-III recipe.
   */
  eps?: number;
  /**
   * Global gradient-norm clipping inside the optimiser: gradients are divided by
   * max(norm / maxGradNorm, 1). Default 1.0 (timm and apex); null disables it.
   */
  maxGradNorm?: number | null;
  /** m <- b1 m + (1 - b1) g when true (default), m <- b1 m + g when false. */
  gradAveraging?: boolean;
  /** Divide m and v by 1 - b^t (default true). */
  biasCorrection?: boolean;
  /** Trust ratio also on parameters without weight decay (default false: timm's always_adapt). */
  alwaysAdapt?: boolean;
  /** Trust ratio clipped at 1 (LAMBC, default false: timm's trust_clip). */
  trustClip?: boolean;
}

/** Lamb's state: the same layout and key names as AdamW's (`<name>.exp_avg`, `<name>.exp_avg_sq`). */
export type LambState = AdamWState;

/**
 * LAMB as timm/optim/lamb.py `Lamb` (NVLAMB / apex FusedLAMB behaviour), one step:
 * 1. n = global L2 norm of all gradients; with maxGradNorm set, g <- g / max(n / maxGradNorm, 1);
 * 2. m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
 *    u = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps);
 * 3. with wd = hp.wd * wdMult != 0: u <- u + wd p (weight decay inside the update, apex adam_w_mode);
 * 4. with wd != 0 (or alwaysAdapt): u <- u * ||p|| / ||u|| when both norms are > 0 (else ratio 1);
 * 5. p <- p - lr u, lr = hp.lr * lrMult (hp.lastLayerLr for `isLastLayer` parameters).
 * Parameters with wdMult 0 (biases, norms, LayerScale gammas, tokens) thus take a plain
 * bias-corrected Adam step, as in timm's create_optimizer groups (weight_decay 0 for 1-d params,
 * biases and no_weight_decay()).
 */
export class Lamb {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly maxGradNorm: number | null;
  readonly gradAveraging: boolean;
  readonly biasCorrection: boolean;
  readonly alwaysAdapt: boolean;
  readonly trustClip: boolean;
  /** Number of steps taken (the bias-correction exponent). */
  step = 0;
  private readonly m: tf.Variable[];
  private readonly v: tf.Variable[];

  constructor(
    readonly params: ParamSpec[],
    opts: LambOptions = {},
  ) {
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-6;
    this.maxGradNorm = opts.maxGradNorm === undefined ? 1.0 : opts.maxGradNorm;
    this.gradAveraging = opts.gradAveraging ?? true;
    this.biasCorrection = opts.biasCorrection ?? true;
    this.alwaysAdapt = opts.alwaysAdapt ?? false;
    this.trustClip = opts.trustClip ?? false;
    for (const [k, v] of [
      ['beta1', this.beta1],
      ['beta2', this.beta2],
    ] as const) {
      if (!(v >= 0 && v < 1)) throw new Error(`Lamb: ${k} must be in [0, 1), got ${v}`);
    }
    if (!(this.eps >= 0)) throw new Error(`Lamb: eps must be >= 0, got ${this.eps}`);
    if (this.maxGradNorm !== null && !(this.maxGradNorm > 0)) {
      throw new Error(`Lamb: maxGradNorm must be > 0 or null (no clipping), got ${this.maxGradNorm}`);
    }
    const names = new Set<string>();
    for (const p of params) {
      if (names.has(p.name)) throw new Error(`Lamb: parameter "${p.name}" listed twice`);
      names.add(p.name);
    }
    // In a tidy: a variable made from a tensor keeps that tensor alive; dispose() must free the moments whole.
    this.m = params.map((p) => tf.tidy(() => tf.variable(tf.zerosLike(p.variable), false)));
    this.v = params.map((p) => tf.tidy(() => tf.variable(tf.zerosLike(p.variable), false)));
  }

  /**
   * One update; `grads[i]` is the gradient of `params[i]` (not clipped: the optimiser clips).
   * Returns the global gradient norm before clipping (for logging).
   */
  apply(grads: tf.Tensor[], hp: StepHyperparams): number {
    if (grads.length !== this.params.length) {
      throw new Error(`Lamb: expected ${this.params.length} gradients, got ${grads.length}`);
    }
    grads.forEach((g, i) => {
      const p = this.params[i]!;
      if (g.shape.length !== p.variable.shape.length || g.shape.some((d, k) => d !== p.variable.shape[k])) {
        throw new Error(`Lamb: gradient ${i} ("${p.name}") has shape [${g.shape}], expected [${p.variable.shape}]`);
      }
    });
    this.step += 1;
    const bc1 = this.biasCorrection ? 1 - this.beta1 ** this.step : 1;
    const bc2Sqrt = this.biasCorrection ? Math.sqrt(1 - this.beta2 ** this.step) : 1;
    const beta3 = this.gradAveraging ? 1 - this.beta1 : 1;
    const normT = globalNorm(grads);
    const clip = this.maxGradNorm === null ? null : tf.tidy(() => tf.maximum(tf.div(normT, this.maxGradNorm!), 1));
    // One tidy per parameter, as AdamW.apply.
    this.params.forEach((p, i) =>
      tf.tidy(() => {
        const g = clip ? tf.div(grads[i]!, clip) : grads[i]!;
        const lr = (p.isLastLayer ? (hp.lastLayerLr ?? hp.lr) : hp.lr) * p.lrMult;
        const wd = hp.wd * p.wdMult;
        const m = tf.add(tf.mul(this.m[i]!, this.beta1), tf.mul(g, beta3));
        const v = tf.add(tf.mul(this.v[i]!, this.beta2), tf.mul(tf.square(g), 1 - this.beta2));
        const denom = tf.add(tf.div(tf.sqrt(v), bc2Sqrt), this.eps);
        let u: tf.Tensor = tf.div(tf.div(m, bc1), denom);
        if (wd !== 0) u = tf.add(u, tf.mul(p.variable, wd));
        if (wd !== 0 || this.alwaysAdapt) {
          const wNorm = tf.sqrt(tf.sum(tf.square(p.variable)));
          const uNorm = tf.sqrt(tf.sum(tf.square(u)));
          let ratio: tf.Tensor = tf.where(
            tf.logicalAnd(tf.greater(wNorm, 0), tf.greater(uNorm, 0)),
            tf.div(wNorm, uNorm),
            tf.onesLike(wNorm),
          );
          if (this.trustClip) ratio = tf.minimum(ratio, 1);
          u = tf.mul(u, ratio);
        }
        this.m[i]!.assign(m);
        this.v[i]!.assign(v);
        p.variable.assign(tf.sub(p.variable, tf.mul(u, lr)));
      }),
    );
    const norm = normT.dataSync()[0]!;
    tf.dispose([normT, ...(clip ? [clip] : [])]);
    return norm;
  }

  getState(): LambState {
    return momentState(this.params, this.m, this.v, this.step);
  }

  /** Restore moments saved by getState; every parameter must be present with its size. */
  setState(state: LambState): void {
    restoreMoments(this.params, this.m, this.v, state);
    this.step = state.step;
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}

function momentState(params: ParamSpec[], m: tf.Variable[], v: tf.Variable[], step: number): AdamWState {
  const moments: AdamWState['moments'] = {};
  params.forEach((p, i) => {
    const shape = [...p.variable.shape];
    moments[`${p.name}.exp_avg`] = { shape, data: m[i]!.dataSync() as Float32Array };
    moments[`${p.name}.exp_avg_sq`] = { shape, data: v[i]!.dataSync() as Float32Array };
  });
  return { step, moments };
}

function restoreMoments(params: ParamSpec[], m: tf.Variable[], v: tf.Variable[], state: AdamWState): void {
  if (!Number.isInteger(state.step) || state.step < 0) {
    throw new Error(`optimizer state: step must be a non-negative integer, got ${state.step}`);
  }
  params.forEach((p, i) => {
    for (const [suffix, vars] of [
      ['exp_avg', m],
      ['exp_avg_sq', v],
    ] as const) {
      const key = `${p.name}.${suffix}`;
      const t = state.moments[key];
      if (!t) throw new Error(`optimizer state: missing tensor "${key}"`);
      if (t.data.length !== p.variable.size) {
        throw new Error(`optimizer state: "${key}" has ${t.data.length} values, expected ${p.variable.size}`);
      }
      vars[i]!.assign(tf.tensor(t.data, p.variable.shape, 'float32'));
    }
  });
}
