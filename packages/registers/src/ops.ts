/**
 * The few tensor operations the model is built from, written so that every tfjs backend (tfjs-node,
 * wasm, cpu) takes its fast path and can differentiate them:
 * - every matMul is a plain 2-D product with no transpose flags: the wasm backend sends batched or
 *   transposed products to a slow loop, and tfjs' own matMul gradient uses transpose flags, so
 *   `matMul2d` carries a gradient that transposes explicitly first;
 * - no Gelu, Einsum, Where or gather kernels (missing or gradient-less on wasm).
 */
import * as tf from '@tensorflow/tfjs-core';

const matMul2dGrad = tf.customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sa, sb] = saved as [tf.Tensor2D, tf.Tensor2D];
      return [tf.matMul(dy as tf.Tensor2D, tf.transpose(sb)), tf.matMul(tf.transpose(sa), dy as tf.Tensor2D)];
    },
  };
}) as (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;

/** [m, k] x [k, n] -> [m, n], fast on every backend, with a gradient that stays on the fast path. */
export function matMul2d(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  return matMul2dGrad(a, b);
}

/** A Linear layer on the last axis: x [..., in] @ w [in, out] + b [out]. */
export function linear<R extends tf.Rank>(x: tf.Tensor<R>, w: tf.Tensor, b?: tf.Tensor | null): tf.Tensor<R> {
  const shape = x.shape;
  const inDim = shape[shape.length - 1];
  const rows = x.size / inDim;
  let y: tf.Tensor = matMul2d(tf.reshape(x, [rows, inDim]) as tf.Tensor2D, w as tf.Tensor2D);
  if (b) y = tf.add(y, b);
  return tf.reshape(y, [...shape.slice(0, -1), w.shape[1]!]) as tf.Tensor<R>;
}

/** LayerNorm over the last axis (biased variance, as torch.nn.LayerNorm). */
export function layerNorm<R extends tf.Rank>(x: tf.Tensor<R>, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor<R> {
  const axis = x.rank - 1;
  const mean = tf.mean(x, axis, true);
  const centered = tf.sub(x, mean);
  const variance = tf.mean(tf.square(centered), axis, true);
  return tf.add(tf.mul(tf.mul(centered, tf.rsqrt(tf.add(variance, eps))), weight), bias) as tf.Tensor<R>;
}

/** Exact GELU, x/2 (1 + erf(x / sqrt 2)), as torch.nn.GELU() (not the tanh approximation). */
export function gelu<R extends tf.Rank>(x: tf.Tensor<R>): tf.Tensor<R> {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)) as tf.Tensor<R>;
}

/** SiLU, x * sigmoid(x). */
export function silu<R extends tf.Rank>(x: tf.Tensor<R>): tf.Tensor<R> {
  return tf.mul(x, tf.sigmoid(x)) as tf.Tensor<R>;
}

/**
 * Multi-head scaled dot-product attention on q, k, v of shape [B, H, N, hd] (q already scaled).
 * Every (batch, head) pair becomes two plain 2-D products, the fast path of the wasm backend.
 * Returns the output [B, H, N, hd] and the softmax attention [B, H, N, N].
 */
export function attention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): { out: tf.Tensor4D; attn: tf.Tensor4D } {
  const [B, H, N, hd] = q.shape;
  const BH = B * H;
  const qs = tf.unstack(tf.reshape(q, [BH, N, hd])) as tf.Tensor2D[];
  const kts = tf.unstack(tf.transpose(tf.reshape(k, [BH, N, hd]), [0, 2, 1])) as tf.Tensor2D[];
  const vs = tf.unstack(tf.reshape(v, [BH, N, hd])) as tf.Tensor2D[];
  const logits = tf.stack(qs.map((qi, i) => matMul2d(qi, kts[i])));
  const attn = tf.softmax(logits) as tf.Tensor3D;
  const rows = tf.unstack(attn) as tf.Tensor2D[];
  const out = tf.stack(rows.map((ai, i) => matMul2d(ai, vs[i])));
  return { out: tf.reshape(out, [B, H, N, hd]), attn: tf.reshape(attn, [B, H, N, N]) };
}
