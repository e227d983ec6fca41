/**
 * The seam between the `clip` objective's loop (clip-loop.ts) and whatever computes its step, as engine.ts's
 * `StepEngine` is for the other objectives: `ClipStepEngine`, and its tfjs implementation `TfjsClipEngine`
 * (steps/clip.ts's `clipStep` on the ClipModel's variables, AdamW over them with clipParamSpecs' decay rule,
 * then logit_scale clamped). The ONNX Runtime implementation is onnx/clip-engine.ts's `OnnxClipEngine`;
 * clip-setup.ts's `clipStepEngine` picks one for the run's engine factory. The loop prepares each rank's batch,
 * all-reduces the gradients `compute` returns, commits the step and only then calls `apply`; it never knows
 * which engine computed the step. The ClipModel stays the run's record for checkpoints and evaluation: an
 * engine whose weights live elsewhere writes them into it on `pull` and reads them back on `push`.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ClipModel } from '@vitreg/registers';
import type { ContrastiveLoss } from './clip-loss.js';
import { clipParamSpecs } from './clip-train.js';
import { AdamW, type AdamWOptions, type AdamWState, type StepHyperparams } from './optim.js';
import type { ParamSpec } from './param-groups.js';
import { clipStep, type ClipBatch } from './steps/clip.js';
import type { GradientSync } from './sync.js';

/** What computes, applies and holds the `clip` objective's step (see the module comment). */
export interface ClipStepEngine {
  /**
   * This rank's loss and gradients of one step (nothing changed yet): one flat host buffer per trained
   * parameter, in clipParamSpecs' order, which the loop averages over the ranks in place.
   */
  compute(batch: ClipBatch, kind: ContrastiveLoss, sync: GradientSync): Promise<{ loss: number; grads: Float32Array[] }>;
  /** AdamW on the averaged gradients (`compute`'s buffers), then logit_scale clamped to [0, log 100]. */
  apply(grads: Float32Array[], hp: StepHyperparams): void;
  /** The current logit_scale (the log). */
  logitScale(): number;
  /** AdamW's state in optim.ts's names (`<name>.exp_avg`, `<name>.exp_avg_sq`), for checkpoints and broadcasts. */
  getState(): AdamWState;
  setState(state: AdamWState): void;
  /** AdamW's steps taken. */
  readonly step: number;
  /** The engine's weights -> the ClipModel's variables (before a checkpoint, an evaluation or a checksum). */
  pull(): void;
  /** The ClipModel's variables -> the engine's weights (after a restore or a broadcast). */
  push(): void;
  dispose(): Promise<void>;
}

/** The clip step on tfjs: `clipStep` on the model's variables and AdamW over its trainable ones. */
export class TfjsClipEngine implements ClipStepEngine {
  private readonly params: ParamSpec[];
  /** Where each trained parameter is in `model.variables()` (clipStep's gradient order). */
  private readonly index: number[];
  private readonly opt: AdamW;

  constructor(
    readonly model: ClipModel,
    opts: AdamWOptions = {},
  ) {
    this.params = clipParamSpecs(model).filter((p) => p.variable.trainable);
    const order = model.variables();
    this.index = this.params.map((p) => order.indexOf(p.variable));
    this.opt = new AdamW(this.params, opts);
  }

  async compute(batch: ClipBatch, kind: ContrastiveLoss, sync: GradientSync): Promise<{ loss: number; grads: Float32Array[] }> {
    const r = await clipStep(this.model, batch, kind, sync);
    return { loss: r.loss, grads: this.index.map((i) => r.gradients[i]!) };
  }

  apply(grads: Float32Array[], hp: StepHyperparams): void {
    const tensors = this.params.map((p, i) => tf.tensor(grads[i]!, p.variable.shape));
    this.opt.apply(tensors, hp);
    tf.dispose(tensors);
    this.model.clampLogitScale();
  }

  logitScale(): number {
    return this.model.logitScale.dataSync()[0]!;
  }

  getState(): AdamWState {
    return this.opt.getState();
  }

  setState(state: AdamWState): void {
    this.opt.setState(state);
  }

  get step(): number {
    return this.opt.step;
  }

  /** Nothing to do: the weights are the model's variables. */
  pull(): void {}

  /** Nothing to do: the weights are the model's variables. */
  push(): void {}

  async dispose(): Promise<void> {
    this.opt.dispose();
  }
}
