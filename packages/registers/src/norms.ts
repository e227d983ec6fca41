/**
 * Token norms: the L2 norm of each token, on the host (`l2Norms`) or on the device (`tokenNorms`), the
 * measure the paper's high-norm artifacts are found by.
 */
import * as tf from '@tensorflow/tfjs-core';

/** L2 norm of each consecutive `dim`-long row of `data`. */
export function l2Norms(data: ArrayLike<number>, dim: number): Float32Array {
  if (!Number.isInteger(dim) || dim <= 0 || data.length % dim !== 0) {
    throw new Error(`l2Norms: data length ${data.length} is not a multiple of dim ${dim}`);
  }
  const n = data.length / dim;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = i * dim, e = j + dim; j < e; j++) s += data[j] * data[j];
    out[i] = Math.sqrt(s);
  }
  return out;
}

/** L2 norm over the last axis, on the device: [..., D] -> [...]. */
export function tokenNorms<T extends tf.Tensor>(tokens: T): tf.Tensor {
  return tf.tidy(() => tf.sqrt(tf.sum(tf.square(tokens), -1)));
}
