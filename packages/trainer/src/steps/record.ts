/**
 * What a tfjs step module returns: a plain record of the step (loss functions, the tensors they
 * read, the teacher's targets, per-rank statistics, metrics and the post-commit update), which the
 * tfjs engine differentiates, reduces and applies. Nothing is filled in through parameters.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { StepUpdate } from '../engine.js';

/** A loss and its named parts (as the metrics name them), computed inside the engine's gradient tape. */
export interface LossParts {
  total: tf.Scalar;
  parts: Record<string, tf.Scalar>;
}

/** A loss function of a step: its gradients are summed with the other functions' (each loss pre-weighted). */
export type LossFn = () => LossParts;

export interface StepRecord {
  /** One per micro-batch (DINO: one). */
  losses: LossFn[];
  /** Tensors the loss functions read (inputs, masks, targets); the engine disposes them after the backward passes. */
  inputs: tf.Tensor[];
  /** DINO: the teacher's targets (also in `inputs`): DINO [2B, K] and iBOT [masked patches, K]. */
  targets?: { dino: tf.Tensor2D; ibot?: tf.Tensor2D };
  /** Per-rank statistics averaged over the ranks with the gradients, in `update.centres` order (the engine disposes them). */
  means: tf.Tensor[];
  /** Metrics of the step known before the commit. */
  metrics: Record<string, number>;
  update: StepUpdate;
}
