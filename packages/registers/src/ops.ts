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
type GradFn<T extends tf.Tensor> = (...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  value: T;
  gradFunc: (dy: T, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
};

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

/**
 * Memory: tfjs' tape keeps every tensor a built-in gradient saves until the whole backward pass ends
 * (tf.add and tf.mul keep both inputs, tf.reshape its input, the GELU formula four tensors). The ops
 * below are single custom gradients that keep only what their gradient needs; their forward arithmetic
 * is the plain formula's, op for op, so values are unchanged.
 */

/** Sums a gradient [..., n] over all leading axes -> [n] (the gradient of a broadcast [n] operand). */
function sumRows(t: tf.Tensor): tf.Tensor1D {
  const n = t.shape[t.rank - 1];
  return tf.sum(tf.reshape(t, [t.size / n, n]), 0);
}

/**
 * w^T of a weight matrix [m, n]. With both sides multiples of 8 it runs as the 3-D transpose
 * [m, n/8, 8] -> [n/8, 8, m] (the same data movement): the wasm backend's 2-D transpose is 3-5x slower
 * on such power-of-two-strided shapes (measured: 2.9 ms vs 0.5 ms for [1536, 384]).
 */
function transposeWeight(w: tf.Tensor2D): tf.Tensor2D {
  const [m, n] = w.shape;
  if (m % 8 !== 0 || n % 8 !== 0) return tf.transpose(w);
  return tf.reshape(tf.transpose(tf.reshape(w, [m, n / 8, 8]), [1, 2, 0]), [n, m]);
}

/** tf.reshape whose gradient keeps nothing alive (tfjs' keeps the input only to read its shape). */
export function reshape<R extends tf.Rank>(x: tf.Tensor, shape: tf.ShapeMap[R]): tf.Tensor<R> {
  const from = x.shape;
  const op = tf.customGrad(((t: tf.Tensor) => ({
    value: tf.reshape(t, shape),
    gradFunc: (dy: tf.Tensor) => tf.reshape(dy, from),
  })) as GradFn<tf.Tensor>);
  return op(x) as tf.Tensor<R>;
}

/**
 * LayerNorm over the last axis (biased variance, as torch.nn.LayerNorm), keeping x^ = (x - mean) rstd
 * and rstd: with g = dy weight, dx = rstd (g - mean(g) - x^ mean(g x^)), dweight = sum dy x^, dbias = sum dy.
 */
export function layerNorm<R extends tf.Rank>(x: tf.Tensor<R>, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor<R> {
  const axis = x.rank - 1;
  const op = tf.customGrad(((xi: tf.Tensor, wi: tf.Tensor, bi: tf.Tensor, save: tf.GradSaveFunc) => {
    const mean = tf.mean(xi, axis, true);
    const centered = tf.sub(xi, mean);
    const variance = tf.mean(tf.square(centered), axis, true);
    const rstd = tf.rsqrt(tf.add(variance, eps));
    const xhat = tf.mul(centered, rstd);
    save([xhat, rstd, wi]);
    return {
      value: tf.add(tf.mul(xhat, wi), bi),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [h, r, w] = saved;
          const g = tf.mul(dy, w);
          const inner = tf.sub(tf.sub(g, tf.mean(g, axis, true)), tf.mul(h, tf.mean(tf.mul(g, h), axis, true)));
          return [tf.mul(inner, r), sumRows(tf.mul(dy, h)), sumRows(dy)];
        }),
    };
  }) as GradFn<tf.Tensor>);
  return op(x, weight, bias) as tf.Tensor<R>;
}

/** 1 + erf(x / sqrt 2), the shared part of GELU and its derivative. */
const erfPlusOne = (x: tf.Tensor): tf.Tensor => tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1);

/** Exact GELU, x/2 (1 + erf(x / sqrt 2)), as torch.nn.GELU() (not the tanh approximation). */
const geluValue = (x: tf.Tensor, e = erfPlusOne(x)): tf.Tensor => tf.mul(tf.mul(x, 0.5), e);

/** GELU'(x) = (1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) / sqrt(2 pi). */
const geluDerivative = (x: tf.Tensor, e = erfPlusOne(x)): tf.Tensor =>
  tf.add(tf.mul(e, 0.5), tf.mul(x, tf.mul(tf.exp(tf.mul(tf.square(x), -0.5)), 1 / Math.sqrt(2 * Math.PI))));

/** Exact GELU as one op keeping only x: dx = dy GELU'(x). */
export function gelu<R extends tf.Rank>(x: tf.Tensor<R>): tf.Tensor<R> {
  const op = tf.customGrad(((xi: tf.Tensor, save: tf.GradSaveFunc) => {
    save([xi]);
    return {
      value: geluValue(xi),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.tidy(() => tf.mul(dy, geluDerivative(saved[0]))),
    };
  }) as GradFn<tf.Tensor>);
  return op(x) as tf.Tensor<R>;
}

/**
 * x [..., in] @ w [in, out] + b [out], on gelu(x) instead of x when `withGelu`, as one op keeping only
 * x and w: dx = dy w^T (times GELU'(x)), dw = x^T dy (gelu(x) recomputed), db = sum of dy over rows,
 * all plain 2-D products on explicit transposes.
 */
function linearOp<R extends tf.Rank>(x: tf.Tensor<R>, w: tf.Tensor, b: tf.Tensor | null | undefined, withGelu: boolean): tf.Tensor<R> {
  const shape = x.shape;
  const [inDim, outDim] = w.shape as [number, number];
  const rows = x.size / inDim;
  const op = tf.customGrad(((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xi, wi, bi] = args as tf.Tensor2D[];
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const x2 = tf.reshape(xi, [rows, inDim]) as tf.Tensor2D;
    let y: tf.Tensor = tf.matMul((withGelu ? geluValue(x2) : x2) as tf.Tensor2D, wi);
    if (b) y = tf.add(y, bi);
    save([x2, wi]);
    return {
      value: tf.reshape(y, [...shape.slice(0, -1), outDim] as number[]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [sx, sw] = saved as tf.Tensor2D[];
          const g = tf.reshape(dy, [rows, outDim]) as tf.Tensor2D;
          const e = withGelu ? erfPlusOne(sx) : undefined;
          let dx: tf.Tensor = tf.matMul(g, transposeWeight(sw));
          if (e) dx = tf.mul(dx, geluDerivative(sx, e));
          const input = (e ? geluValue(sx, e) : sx) as tf.Tensor2D;
          const grads = [tf.reshape(dx, shape), tf.matMul(tf.transpose(input), g)];
          return b ? [...grads, tf.sum(g, 0)] : grads;
        }),
    };
  }) as GradFn<tf.Tensor>);
  return (b ? op(x, w, b) : op(x, w)) as tf.Tensor<R>;
}

/** A Linear layer on the last axis: x [..., in] @ w [in, out] + b [out]. */
export function linear<R extends tf.Rank>(x: tf.Tensor<R>, w: tf.Tensor, b?: tf.Tensor | null): tf.Tensor<R> {
  return linearOp(x, w, b, false);
}

/**
 * linear(gelu(x), w, b): an MLP's second layer on its first layer's output x, keeping x only (gelu(x),
 * as big, is recomputed in the backward pass).
 */
export function geluLinear<R extends tf.Rank>(x: tf.Tensor<R>, w: tf.Tensor, b?: tf.Tensor | null): tf.Tensor<R> {
  return linearOp(x, w, b, true);
}

/**
 * A residual connection with optional LayerScale `gamma` [D] and per-sample drop-path factors `keep`
 * [B, 1, 1] (not differentiated): x + (branch gamma) keep, as one op keeping only branch, gamma, keep.
 */
export function residual<R extends tf.Rank>(
  x: tf.Tensor<R>,
  branch: tf.Tensor<R>,
  gamma?: tf.Tensor | null,
  keep?: tf.Tensor | null,
): tf.Tensor<R> {
  const op = tf.customGrad(((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xi, bi, gi] = args as tf.Tensor[];
    const save = args[args.length - 1] as tf.GradSaveFunc;
    let y = bi;
    if (gamma) y = tf.mul(y, gi);
    if (keep) y = tf.mul(y, keep);
    save([...(gamma ? [bi, gi] : []), ...(keep ? [keep] : [])]);
    return {
      value: tf.add(xi, y),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [sb, sg] = gamma ? saved : [];
          const sk = keep ? saved[saved.length - 1] : undefined;
          const dx = tf.reshape(dy, dy.shape); // a new handle on dy's data, no copy
          const g = sk ? tf.mul(dy, sk) : tf.reshape(dy, dy.shape);
          return gamma ? [dx, tf.mul(g, sg), sumRows(tf.mul(g, sb))] : [dx, g];
        }),
    };
  }) as GradFn<tf.Tensor>);
  return (gamma ? op(x, branch, gamma) : op(x, branch)) as tf.Tensor<R>;
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

/** The row blocks of x [n, a, b] as n tensors [a, b], cut from one host copy of x. */
function blocks(x: tf.Tensor3D): tf.Tensor2D[] {
  const [n, a, b] = x.shape;
  const data = x.dataSync() as Float32Array;
  const out: tf.Tensor2D[] = [];
  for (let i = 0; i < n; i++) out.push(tf.tensor2d(data.subarray(i * a * b, (i + 1) * a * b), [a, b]));
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
      if (split) {
        const all3 = blocks(all); // one host read for q, k and v
        return [all3.slice(0, BH), all3.slice(BH, 2 * BH), all3.slice(2 * BH)];
      }
      return tf.split(all, 3, 0) as tf.Tensor3D[];
    };
    const [q, k, v] = parts(x);
    const attn = tf.softmax(tf.mul(bmm(q, k, false, true), scale)) as tf.Tensor3D;
    const out = bmm(split ? blocks(attn) : attn, v);
    save([x, attn]);
    if (sink) sink.attn = tf.keep(attn);
    return {
      value: out,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
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
