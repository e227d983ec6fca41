/**
 * AdamW with decoupled weight decay (PyTorch's formula) over a list of ParamSpecs, each with its
 * own learning-rate and weight-decay multipliers, plus gradient clipping by global norm.
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

  constructor(readonly params: ParamSpec[], opts: AdamWOptions = {}) {
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    const names = new Set<string>();
    for (const p of params) {
      if (names.has(p.name)) throw new Error(`AdamW: parameter "${p.name}" listed twice`);
      names.add(p.name);
    }
    this.m = params.map((p) => tf.variable(tf.zerosLike(p.variable), false));
    this.v = params.map((p) => tf.variable(tf.zerosLike(p.variable), false));
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
    tf.tidy(() => {
      this.params.forEach((p, i) => {
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
      });
    });
  }

  getState(): AdamWState {
    const moments: AdamWState['moments'] = {};
    this.params.forEach((p, i) => {
      const shape = [...p.variable.shape];
      moments[`${p.name}.exp_avg`] = { shape, data: this.m[i]!.dataSync() as Float32Array };
      moments[`${p.name}.exp_avg_sq`] = { shape, data: this.v[i]!.dataSync() as Float32Array };
    });
    return { step: this.step, moments };
  }

  /** Restore moments saved by getState; every parameter must be present with its size. */
  setState(state: AdamWState): void {
    this.params.forEach((p, i) => {
      for (const [suffix, vars] of [['exp_avg', this.m], ['exp_avg_sq', this.v]] as const) {
        const key = `${p.name}.${suffix}`;
        const t = state.moments[key];
        if (!t) throw new Error(`optimizer state: missing tensor "${key}"`);
        if (t.data.length !== p.variable.size) {
          throw new Error(`optimizer state: "${key}" has ${t.data.length} values, expected ${p.variable.size}`);
        }
        vars[i]!.assign(tf.tensor(t.data, p.variable.shape, 'float32'));
      }
    });
    this.step = state.step;
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}

/**
 * Global L2 norm of a list of gradients and, when it exceeds `maxNorm`, the gradients scaled by
 * maxNorm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). `maxNorm` <= 0 disables clipping.
 * Returns new tensors (the inputs when not clipped) and the norm before clipping.
 */
export function clipByGlobalNorm(grads: tf.Tensor[], maxNorm: number): { grads: tf.Tensor[]; norm: number } {
  const normT = tf.tidy(() => tf.sqrt(tf.addN(grads.map((g) => tf.sum(tf.square(g))))));
  const norm = normT.dataSync()[0]!;
  normT.dispose();
  if (!(maxNorm > 0) || !(norm > maxNorm)) return { grads, norm };
  const coef = maxNorm / (norm + 1e-6);
  return { grads: grads.map((g) => tf.mul(g, coef)), norm };
}
