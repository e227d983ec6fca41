/**
 * What the dense heads' training shares (not part of the package's API): @vitreg/trainer's AdamW over
 * every tensor of a head alike, the seeded batch order, the channels a head reads and float32 resampling
 * matrices.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { AdamW, plainParams } from '@vitreg/trainer';
import type { DenseFeatures } from './dense-features.js';

/** Channels per position the head reads: dim, doubled when the CLS tokens are appended. */
export const headDim = (f: DenseFeatures, withCls: boolean) => (withCls ? 2 * f.dim : f.dim);

/** Every tensor of a head trained alike, as PyTorch's AdamW over `model.parameters()`: one lr, decay on all. */
export function headOptimizer(params: Record<string, tf.Variable>): AdamW {
  return new AdamW(plainParams(params));
}

/** Seeded image order: a fresh permutation every epoch, cut into batches of `b`. */
export function* batches(n: number, b: number, seed: number): Generator<number[]> {
  const rng = new Rng(seed);
  for (;;) {
    const order = rng.shuffle(Array.from({ length: n }, (_, i) => i));
    for (let s = 0; s + b <= n || (s === 0 && n < b); s += b) yield order.slice(s, Math.min(n, s + b));
  }
}

export const f32matrix = (m: Float64Array, rows: number, cols: number) => tf.tensor2d(Float32Array.from(m), [rows, cols]);
