/**
 * The few tensor operations the model is built from, written so that every tfjs backend (tfjs-node,
 * wasm, cpu) takes its fast path and can differentiate them:
 * - every matMul is a plain 2-D product with no transpose flags: the wasm backend sends batched or
 *   transposed products to a slow loop, and tfjs' own matMul gradient uses transpose flags, so
 *   `matMul2d` carries a gradient that transposes explicitly first;
 * - no Gelu, Einsum, Where or gather kernels (missing or gradient-less on wasm).
 */
import * as tf from '@tensorflow/tfjs-core';

/** tf.customGrad with the (inputs..., save) signature spelled out. */
type GradFn<T extends tf.Tensor> = (...args: (tf.Tensor | tf.GradSaveFunc)[]) => { value: T; gradFunc: (dy: T, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[] };

const matMul2dGrad = tf.customGrad(((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
    // Backward temporaries live until the whole backward pass ends unless freed here (tfjs keeps what
    // a custom gradient creates), so each gradient body runs in its own tidy.
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
      tf.tidy(() => {
        const [sa, sb] = saved as [tf.Tensor2D, tf.Tensor2D];
        return [tf.matMul(dy as tf.Tensor2D, tf.transpose(sb)), tf.matMul(tf.transpose(sa), dy as tf.Tensor2D)];
      }),
  };
}) as GradFn<tf.Tensor2D>) as (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;

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
  return tf.reshape(y, [...shape.slice(0, -1), w.shape[1]!] as number[] as tf.ShapeMap[R]) as tf.Tensor<R>;
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
 * How attention splits its work. 'blocks': one plain 2-D matMul per (batch, head), the fast path of the
 * wasm and cpu backends, whose batched matMul is a slow loop; the blocks are cut on the host, because
 * their Slice/Split/Unpack/Gather kernels copy the whole input, or run element by element, for every
 * block. 'batched': one batched matMul, for backends that run it natively (tfjs-node, GPUs).
 * 'auto' picks by backend. Both compute the same numbers.
 */
export type AttentionStrategy = 'auto' | 'blocks' | 'batched';
let strategy: AttentionStrategy = 'auto';

export function setAttentionStrategy(s: AttentionStrategy): void {
  strategy = s;
}

function useBlocks(): boolean {
  if (strategy !== 'auto') return strategy === 'blocks';
  const b = tf.getBackend();
  return b === 'wasm' || b === 'cpu';
}

/** Row blocks [from, from+count) of x [n, a, b] as tensors [a, b], cut from one host copy of x. */
function blocks(x: tf.Tensor3D, from = 0, count = x.shape[0] - from): tf.Tensor2D[] {
  const [, a, b] = x.shape;
  const data = x.dataSync() as Float32Array;
  const out: tf.Tensor2D[] = [];
  for (let i = from; i < from + count; i++) out.push(tf.tensor2d(data.subarray(i * a * b, (i + 1) * a * b), [a, b]));
  return out;
}

/** Per-block 2-D products x_i @ y_i of two lists, stacked. */
function matMulEach(xs: tf.Tensor2D[], ys: tf.Tensor2D[]): tf.Tensor3D {
  return tf.stack(xs.map((x, i) => tf.matMul(x, ys[i]))) as tf.Tensor3D;
}

const transposeEach = (xs: tf.Tensor2D[]): tf.Tensor2D[] => xs.map((x) => tf.transpose(x));

/** Batched products a @ b with optional transposes, by strategy. */
function bmm(a: tf.Tensor3D | tf.Tensor2D[], b: tf.Tensor3D | tf.Tensor2D[], ta = false, tb = false): tf.Tensor3D {
  if (Array.isArray(a) && Array.isArray(b)) return matMulEach(ta ? transposeEach(a) : a, tb ? transposeEach(b) : b);
  return tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D, ta, tb);
}

/**
 * Multi-head scaled dot-product attention, softmax(q k^T * scale) v, on the stacked projections
 * qkv [3, B*H, N, hd] (the layout a qkv Linear gives after one transpose). Every (batch, head) pair is
 * two plain 2-D products, and the gradient is written out by hand in the same form:
 *   dV = A^T dO,  dA = dO V^T,  dS = A * (dA - rowsum(dA * A)),  dQ = scale * dS K,  dK = scale * dS^T Q.
 * Returns the output [B*H, N, hd]; `attn`, when given, receives the softmax attention [B*H, N, N]
 * (kept out of any tidy by the caller).
 */
export function multiHeadAttention(qkv: tf.Tensor4D, scale: number, sink?: { attn?: tf.Tensor3D }): tf.Tensor3D {
  const split = useBlocks();
  const op = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
    const [, BH, N, hd] = (x as tf.Tensor4D).shape;
    const parts = (t: tf.Tensor): tf.Tensor3D[] | tf.Tensor2D[][] => {
      const all = tf.reshape(t, [3 * BH, N, hd]) as tf.Tensor3D;
      if (split) return [blocks(all, 0, BH), blocks(all, BH, BH), blocks(all, 2 * BH, BH)];
      return tf.split(all, 3, 0) as tf.Tensor3D[];
    };
    const [q, k, v] = parts(x);
    const attn = tf.softmax(tf.mul(bmm(q, k, false, true), scale)) as tf.Tensor3D;
    const out = bmm(split ? blocks(attn) : attn, v);
    save([x, attn]);
    if (sink) sink.attn = tf.keep(attn);
    return {
      value: out,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.tidy(() => {
        const [sx, a] = saved as [tf.Tensor4D, tf.Tensor3D];
        const [qs, ks, vs] = parts(sx);
        const dO = split ? blocks(dy as tf.Tensor3D) : (dy as tf.Tensor3D);
        const as = split ? blocks(a) : a;
        const dV = bmm(as, dO, true, false);
        const dA = bmm(dO, vs, false, true);
        const dS = tf.mul(tf.mul(a, tf.sub(dA, tf.sum(tf.mul(dA, a), -1, true))), scale) as tf.Tensor3D;
        const dSs = split ? blocks(dS) : dS;
        const dQ = bmm(dSs, ks);
        const dK = bmm(dSs, qs, true, false);
        return [tf.reshape(tf.concat([dQ, dK, dV], 0), sx.shape)];
      }),
    };
  }) as GradFn<tf.Tensor3D>);
  return op(qkv) as tf.Tensor3D;
}
