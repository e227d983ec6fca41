/**
 * Gradient synchronisation between data-parallel replicas. The training loop calls `allReduce`
 * every step whatever the world size; a cluster worker plugs in its own implementation (ring
 * all-reduce over gRPC), a single process uses `LocalGradientSync`.
 */
import type * as tf from '@tensorflow/tfjs-core';

export interface GradientSync {
  /** This replica's index in [0, worldSize). */
  readonly rank: number;
  readonly worldSize: number;
  /**
   * Mean of each gradient over all replicas, in the same order. The returned tensors are new or
   * the inputs themselves; the caller disposes the inputs and the outputs (disposing a tensor
   * twice is harmless in tfjs).
   */
  allReduce(grads: tf.Tensor[]): Promise<tf.Tensor[]>;
  /** Rank 0's state, delivered to every replica (used for initial weights). */
  broadcast(state: Record<string, Float32Array>): Promise<Record<string, Float32Array>>;
}

/** World size 1: the mean over one replica is the gradient itself. */
export class LocalGradientSync implements GradientSync {
  readonly rank = 0;
  readonly worldSize = 1;

  async allReduce(grads: tf.Tensor[]): Promise<tf.Tensor[]> {
    return grads;
  }

  async broadcast(state: Record<string, Float32Array>): Promise<Record<string, Float32Array>> {
    return state;
  }
}
