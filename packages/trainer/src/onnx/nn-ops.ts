/**
 * The layers' ops of the training graphs, each with its hand-written VJP (autodiff.ts's tape):
 * products (MatMul, or com.microsoft.FusedMatMul for transposed operands and a scale, so no backward
 * rule transposes a big tensor; plain MatMul + Transpose + Mul with GraphBuildOptions.plainMatMul), Softmax / LogSoftmax, LayerNormalization (its Mean and InvStdDev
 * outputs feed the backward), exact GELU (the forward pattern ONNX Runtime fuses into Gelu; the
 * derivative is recomputed from the kept input), QuickGELU, SwiGLU, an MLP's activation + second layer
 * as one op that recomputes the activation instead of keeping it, row gathers (the backward scatters
 * with ScatterND's add reduction) and L2 normalisation.
 */
import { numel, type TrainGraph, type Value } from './autodiff.js';

const ONNX_FLOAT = 1;

export interface MatMulOptions {
  transA?: boolean;
  transB?: boolean;
  /** A scale of the product (FusedMatMul's alpha). */
  alpha?: number;
}

/**
 * op(a) @ op(b) * alpha, op a transpose of the last two axes when asked. Batched operands have the same
 * shape but for the last two axes; a 2-D `b` against a batched `a` (a linear layer) is allowed without transA.
 */
export function matmul(t: TrainGraph, a: Value, b: Value, opts: MatMulOptions = {}): Value {
  const tA = !!opts.transA;
  const tB = !!opts.transB;
  const alpha = opts.alpha ?? 1;
  const ra = a.shape.length;
  const rb = b.shape.length;
  if (ra < 2 || rb < 2 || (rb !== ra && !(rb === 2 && !tA)))
    throw new Error(`matmul: shapes [${a.shape}] and [${b.shape}] are not supported`);
  if (rb === ra && a.shape.slice(0, -2).some((v, i) => v !== b.shape[i]))
    throw new Error(`matmul: batch shapes of [${a.shape}] and [${b.shape}] differ`);
  const [M, Ka] = tA ? [a.shape[ra - 1]!, a.shape[ra - 2]!] : [a.shape[ra - 2]!, a.shape[ra - 1]!];
  const [Kb, N] = tB ? [b.shape[rb - 1]!, b.shape[rb - 2]!] : [b.shape[rb - 2]!, b.shape[rb - 1]!];
  if (Ka !== Kb) throw new Error(`matmul: inner sizes ${Ka} and ${Kb} differ ([${a.shape}] x [${b.shape}])`);
  const shape = [...a.shape.slice(0, -2), M, N];
  const y = productNode(t, a, b, { transA: tA, transB: tB, alpha }, shape);
  return t.record1(y, [a, b], (g) => {
    let da: Value | null = null;
    let db: Value | null = null;
    if (a.grad) da = tA ? matmul(t, b, g, { transA: tB, transB: true, alpha }) : matmul(t, g, b, { transB: !tB, alpha });
    if (b.grad) {
      let aa = a;
      let gg = g;
      if (rb === 2 && ra > 2) {
        aa = t.reshape(a, [numel(a.shape.slice(0, -1)), a.shape[ra - 1]!]);
        gg = t.reshape(g, [numel(g.shape.slice(0, -1)), N]);
      }
      db = tB ? matmul(t, gg, aa, { transA: true, transB: tA, alpha }) : matmul(t, aa, gg, { transA: !tA, alpha });
    }
    return [da, db];
  });
}

/**
 * The product's node(s), not differentiated: MatMul, FusedMatMul for transposed operands or a scale, or with
 * `t.plainMatMul` (GraphBuildOptions) MatMul after a Transpose of the last two axes of a transposed
 * operand, then a Mul by the scale.
 */
export function productNode(t: TrainGraph, a: Value, b: Value, opts: MatMulOptions, shape: readonly number[]): Value {
  const tA = !!opts.transA;
  const tB = !!opts.transB;
  const alpha = opts.alpha ?? 1;
  if (!tA && !tB && alpha === 1) return t.emit('MatMul', [a, b], shape);
  if (!t.plainMatMul) {
    const attrs = { transA: tA ? 1 : 0, transB: tB ? 1 : 0, alpha: { float: alpha } };
    return t.emit('FusedMatMul', [a, b], shape, attrs, { domain: 'com.microsoft' });
  }
  const swapLast = (x: Value): Value => {
    const r = x.shape.length;
    const perm = x.shape.map((_, i) => (i === r - 2 ? r - 1 : i === r - 1 ? r - 2 : i));
    return t.emit(
      'Transpose',
      [x],
      perm.map((p) => x.shape[p]!),
      { perm },
    );
  };
  const y = t.emit('MatMul', [tA ? swapLast(a) : a, tB ? swapLast(b) : b], shape);
  return alpha === 1 ? y : t.emit('Mul', [y, t.scalar(alpha)], shape);
}

/** A linear layer in the model layout: x [..., in] @ w [in, out] (+ bias [out]). */
export function linear(t: TrainGraph, x: Value, w: Value, bias?: Value | null): Value {
  const y = matmul(t, x, w);
  return bias ? t.add(y, bias) : y;
}

/** Softmax along `axis`; the gradient keeps the output: dx = y (g - sum(g y)). */
export function softmax(t: TrainGraph, x: Value, axis = -1): Value {
  const ax = axis < 0 ? x.shape.length + axis : axis;
  const y = t.emit('Softmax', [x], x.shape, { axis: ax });
  const stat = x.shape.map((v, i) => (i === ax ? 1 : v));
  return t.record1(y, [x], (g) => {
    const gy = t.emit('Mul', [g, y], x.shape);
    const s = t.emit('ReduceSum', [gy, t.int64([ax])], stat, { keepdims: 1 });
    return [t.emit('Sub', [gy, t.emit('Mul', [y, s], x.shape)], x.shape)];
  });
}

/** LogSoftmax along `axis`; dx = g - exp(y) sum(g). */
export function logSoftmax(t: TrainGraph, x: Value, axis = -1): Value {
  const ax = axis < 0 ? x.shape.length + axis : axis;
  const y = t.emit('LogSoftmax', [x], x.shape, { axis: ax });
  const stat = x.shape.map((v, i) => (i === ax ? 1 : v));
  return t.record1(y, [x], (g) => {
    const s = t.emit('ReduceSum', [g, t.int64([ax])], stat, { keepdims: 1 });
    return [t.emit('Sub', [g, t.emit('Mul', [t.emit('Exp', [y], x.shape), s], x.shape)], x.shape)];
  });
}

/**
 * LayerNorm over the last axis (LayerNormalization, opset 17; biased variance as torch.nn.LayerNorm).
 * The backward recomputes x^ = (x - mean) rstd from the kept input and the op's Mean / InvStdDev:
 * dx = rstd (g w - mean(g w) - x^ mean(g w x^)), dw = sum g x^, db = sum g.
 */
export function layerNorm(t: TrainGraph, x: Value, w: Value, bias: Value, eps: number): Value {
  const D = x.shape[x.shape.length - 1]!;
  const last = x.shape.length - 1;
  const stat = [...x.shape.slice(0, -1), 1];
  const [y, mean, inv] = t.emitMany('LayerNormalization', [x, w, bias], [x.shape, stat, stat], { axis: -1, epsilon: { float: eps } });
  return t.record([y!], [x, w, bias], ([g]) => {
    const gg = g!;
    const xhat = t.emit('Mul', [t.emit('Sub', [x, mean!], x.shape), inv!], x.shape);
    const lead = t.int64(x.shape.slice(0, -1).map((_, i) => i));
    const dw = w.grad ? t.emit('ReduceSum', [t.emit('Mul', [gg, xhat], x.shape), lead], [D], { keepdims: 0 }) : null;
    const db = bias.grad ? t.emit('ReduceSum', [gg, lead], [D], { keepdims: 0 }) : null;
    let dx: Value | null = null;
    if (x.grad) {
      const gw = t.emit('Mul', [gg, w], x.shape);
      const m1 = t.emit('ReduceMean', [gw], stat, { axes: [last], keepdims: 1 });
      const m2 = t.emit('ReduceMean', [t.emit('Mul', [gw, xhat], x.shape)], stat, { axes: [last], keepdims: 1 });
      const inner = t.emit('Sub', [t.emit('Sub', [gw, m1], x.shape), t.emit('Mul', [xhat, m2], x.shape)], x.shape);
      dx = t.emit('Mul', [inner, inv!], x.shape);
    }
    return [dx, dw, db];
  })[0]!;
}

/**
 * 2 Φ(x) = 1 + erf(u) and 2 GELU'(x) = 2 Φ(x) + 2 x φ(x) = 1 + erf(u) + u exp(ln(2 / sqrt pi) - u^2), u = x / sqrt 2,
 * recomputed from x for GELU's backward in 8 elementwise passes (the halves fold into the products' alpha).
 */
function geluParts(t: TrainGraph, x: Value): { cdf2: Value; slope2: Value } {
  const s = x.shape;
  const u = t.emit('Mul', [x, t.scalar(Math.SQRT1_2)], s);
  const cdf2 = t.emit('Add', [t.emit('Erf', [u], s), t.scalar(1)], s);
  const bump = t.emit('Exp', [t.emit('Sub', [t.scalar(Math.log(2 / Math.sqrt(Math.PI))), t.emit('Mul', [u, u], s)], s)], s);
  return { cdf2, slope2: t.emit('Add', [cdf2, t.emit('Mul', [u, bump], s)], s) };
}

/** Exact GELU as the pattern ONNX Runtime fuses into one Gelu node (Div, Erf, Add, Mul, Mul; BiasGelu after MatMul + Add). */
function geluValue(t: TrainGraph, x: Value): Value {
  const s = x.shape;
  const erf = t.emit('Erf', [t.emit('Div', [x, t.scalar(Math.SQRT2)], s)], s);
  return t.emit('Mul', [t.emit('Mul', [x, t.emit('Add', [erf, t.scalar(1)], s)], s), t.scalar(0.5)], s);
}

/**
 * Exact GELU x Φ(x), as torch.nn.GELU(). Only x is kept: the backward recomputes GELU'(x) from it
 * (`geluParts`; see `activationLinear` for an MLP, which keeps less still).
 */
export function gelu(t: TrainGraph, x: Value): Value {
  const y = geluValue(t, x);
  return t.record1(y, [x], (g) => [t.emit('Mul', [t.emit('Mul', [g, t.scalar(0.5)], x.shape), geluParts(t, x).slope2], x.shape)]);
}

/** QuickGELU x sigmoid(1.702 x) (OpenAI CLIP); the backward recomputes s = sigmoid(1.702 x): dx = g (s + 1.702 x s (1 - s)). */
export function quickGelu(t: TrainGraph, x: Value): Value {
  return t.record1(quickGeluValue(t, x), [x], (g) => [t.emit('Mul', [g, quickGeluParts(t, x).slope], x.shape)]);
}

function quickGeluValue(t: TrainGraph, x: Value): Value {
  return t.emit('Mul', [x, t.emit('Sigmoid', [t.emit('Mul', [x, t.scalar(1.702)], x.shape)], x.shape)], x.shape);
}

function quickGeluParts(t: TrainGraph, x: Value): { value: Value; slope: Value } {
  const s = x.shape;
  const kx = t.emit('Mul', [x, t.scalar(1.702)], s);
  const sig = t.emit('Sigmoid', [kx], s);
  const slope = t.emit('Add', [sig, t.emit('Mul', [t.emit('Mul', [kx, sig], s), t.emit('Sub', [t.scalar(1), sig], s)], s)], s);
  return { value: t.emit('Mul', [x, sig], s), slope };
}

/** SwiGLU's halves x1, x2 of x12 [..., 2h] (one Split node). */
function halves(t: TrainGraph, x12: Value): [Value, Value] {
  const h = x12.shape[x12.shape.length - 1]! / 2;
  const s = [...x12.shape.slice(0, -1), h];
  const [x1, x2] = t.emitMany('Split', [x12, t.int64([h, h])], [s, s], { axis: x12.shape.length - 1 });
  return [x1!, x2!];
}

/** silu(x1) x2 of SwiGLU. */
function swigluValue(t: TrainGraph, x1: Value, x2: Value): Value {
  return t.emit('Mul', [t.emit('Mul', [x1, t.emit('Sigmoid', [x1], x1.shape)], x1.shape), x2], x1.shape);
}

/** SwiGLU's input gradient [dx1, dx2] concatenated, from the output gradient g: dx1 = g x2 s (1 + x1 (1 - s)), dx2 = g silu(x1). */
function swigluInputGrad(t: TrainGraph, x12: Value, x1: Value, x2: Value, g: Value): Value {
  const s = x1.shape;
  const sig = t.emit('Sigmoid', [x1], s);
  const silu = t.emit('Mul', [x1, sig], s);
  const slope = t.emit('Mul', [sig, t.emit('Add', [t.scalar(1), t.emit('Mul', [x1, t.emit('Sub', [t.scalar(1), sig], s)], s)], s)], s);
  const dx1 = t.emit('Mul', [t.emit('Mul', [g, x2], s), slope], s);
  return t.emit('Concat', [dx1, t.emit('Mul', [g, silu], s)], x12.shape, { axis: x12.shape.length - 1 });
}

/**
 * SwiGLU's gate on the first linear layer's output x12 [..., 2h] (DINOv2's SwiGLUFFN: x1, x2 = chunk(2);
 * silu(x1) x2) -> [..., h]. The backward recomputes sigmoid(x1) from the kept halves.
 */
export function swiglu(t: TrainGraph, x12: Value): Value {
  const [x1, x2] = halves(t, x12);
  return t.record1(swigluValue(t, x1, x2), [x12], (g) => [swigluInputGrad(t, x12, x1, x2, g)]);
}

export type Activation = 'gelu' | 'quick_gelu' | 'swiglu';

/**
 * An MLP's second layer on its activation: act(h) @ w [+ bias] (GELU, QuickGELU, or SwiGLU on h = x12),
 * as ONE op that keeps only h, w and bias. The activation act(h), as big as h (4 D wide), is not kept
 * for w's gradient but recomputed in the backward pass with the activation's derivative (PyTorch keeps
 * both): dw = act(h)^T g, dbias = sum g, dh = (g w^T) act'(h).
 */
export function activationLinear(t: TrainGraph, h: Value, act: Activation, w: Value, bias?: Value | null): Value {
  const [inDim, outDim] = w.shape as [number, number];
  const rows = numel(h.shape.slice(0, -1));
  const hs = act === 'swiglu' ? [...h.shape.slice(0, -1), inDim] : h.shape;
  const parts = act === 'swiglu' ? halves(t, h) : null;
  const a = parts ? swigluValue(t, parts[0], parts[1]) : act === 'gelu' ? geluValue(t, h) : quickGeluValue(t, h);
  const mm = t.emit('MatMul', [a, w], [...hs.slice(0, -1), outDim]);
  const y = bias ? t.emit('Add', [mm, bias], mm.shape) : mm;
  const ins = bias ? [h, w, bias] : [h, w];
  return t.record1(y, ins, (g) => {
    const g2 = t.emit('Reshape', [g, t.int64([rows, outDim])], [rows, outDim]);
    let value: Value;
    let dh: Value | null = null;
    // GELU: the recomputed value and derivative are both doubled (geluParts); the products halve them.
    const half = act === 'gelu' ? 0.5 : 1;
    const da = h.grad ? matmul(t, g, w, { transB: true, alpha: half }) : null;
    if (act === 'gelu') {
      const { cdf2, slope2 } = geluParts(t, h);
      value = t.emit('Mul', [h, cdf2], h.shape);
      if (da) dh = t.emit('Mul', [da, slope2], h.shape);
    } else if (act === 'quick_gelu') {
      const q = quickGeluParts(t, h);
      value = q.value;
      if (da) dh = t.emit('Mul', [da, q.slope], h.shape);
    } else {
      const [x1, x2] = parts!;
      value = swigluValue(t, x1, x2);
      if (da) dh = swigluInputGrad(t, h, x1, x2, da);
    }
    const a2 = t.emit('Reshape', [value, t.int64([rows, inDim])], [rows, inDim]);
    const dw = w.grad ? matmul(t, a2, g2, { transA: true, alpha: half }) : null;
    const db = bias?.grad ? t.emit('ReduceSum', [g2, t.int64([0])], [outDim], { keepdims: 0 }) : null;
    return bias ? [dh, dw, db] : [dh, dw];
  });
}

/**
 * Rows `index` (int64 [m], values in [0, n)) of x [n, ...]: Gather on axis 0. The backward adds each
 * row's gradient into its source row (ScatterND, reduction add), so repeated indices accumulate.
 */
export function gatherRows(t: TrainGraph, x: Value, index: Value): Value {
  if (index.dtype !== 'int64' || index.shape.length !== 1)
    throw new Error(`gatherRows: index must be int64 [m], got ${index.dtype} [${index.shape}]`);
  const shape = [index.shape[0]!, ...x.shape.slice(1)];
  const y = t.emit('Gather', [x, index], shape, { axis: 0 });
  return t.record1(y, [x], (g) => {
    const idx = t.emit('Reshape', [index, t.int64([index.shape[0]!, 1])], [index.shape[0]!, 1], {}, { dtype: 'int64' });
    return [t.emit('ScatterND', [t.zeros(x.shape), idx, g], x.shape, { reduction: 'add' })];
  });
}

/** x / max(||x||, eps) along the last axis (F.normalize; the gradient flows through the norm). */
export function l2Normalize(t: TrainGraph, x: Value, eps: number): Value {
  const norm = t.sqrt(t.reduceSum(t.mul(x, x), [-1], true));
  return t.div(x, t.maxScalar(norm, eps));
}

/** 1 - m for a value without gradient (masks). */
export function oneMinus(t: TrainGraph, m: Value): Value {
  return t.emit('Sub', [t.scalar(1), m], m.shape);
}

/** A float cast of a boolean comparison result (no gradient). */
export function asFloat(t: TrainGraph, x: Value): Value {
  return t.emit('Cast', [x], x.shape, { to: ONNX_FLOAT });
}
