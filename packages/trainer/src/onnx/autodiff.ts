/**
 * Reverse-mode differentiation of ONNX graphs built in TypeScript. A `TrainGraph` wraps
 * @vitreg/registers' GraphBuilder: every differentiable op it emits is recorded on a tape with its
 * vector-Jacobian product (VJP), written by hand as standard ONNX operators, and `gradients(loss, wrt)`
 * appends the backward pass to the same graph. ONNX Runtime's release builds have no gradient operators,
 * so every rule is made of ops every build has (the products use com.microsoft.FusedMatMul for transposed
 * operands, nn-ops.ts).
 *
 * Shapes are static (one graph per batch and crop size): the rules need them to undo broadcasting, and
 * ONNX Runtime plans memory better with them. Values carry their shape, dtype and whether a gradient
 * flows back through them; ops on values that need no gradient are emitted without a tape entry.
 *
 * graph-core.ts holds the tape, the inputs and outputs and the backward pass; this file the generic ops
 * (shape, elementwise, reductions) and nn-ops.ts the layers' ops (products, softmax, LayerNorm, GELU, gathers).
 */
import { broadcastShapes, GraphCore, numel, sameShape, type Value } from './graph-core.js';

export { broadcastShapes, numel, sameShape, type DType, type GraphBuildOptions, type GraphIO, type Value, type Vjp } from './graph-core.js';

const ONNX_FLOAT = 1;

export class TrainGraph extends GraphCore {
  // ---------------------------------------------------------------------------------------------
  // Shape ops

  private axis(x: Value, axis: number): number {
    const ax = axis < 0 ? x.shape.length + axis : axis;
    if (!(ax >= 0 && ax < x.shape.length)) throw new Error(`axis ${axis} is out of range for shape [${x.shape}]`);
    return ax;
  }

  reshape(x: Value, shape: readonly number[]): Value {
    if (numel(shape) !== numel(x.shape)) throw new Error(`reshape [${x.shape}] -> [${shape}]: sizes differ`);
    if (sameShape(shape, x.shape)) return x;
    const y = this.emit('Reshape', [x, this.int64([...shape])], shape, {}, { dtype: x.dtype });
    return this.record1(y, [x], (g) => [this.reshape(g, x.shape)]);
  }

  transpose(x: Value, perm: number[]): Value {
    if (perm.every((p, i) => p === i)) return x;
    const y = this.emit(
      'Transpose',
      [x],
      perm.map((p) => x.shape[p]!),
      { perm },
    );
    const inv = perm.map((_, i) => perm.indexOf(i));
    return this.record1(y, [x], (g) => [this.transpose(g, inv)]);
  }

  /** x[..., start:end, ...] along `axis`; the gradient pads with zeros. */
  slice(x: Value, axis: number, start: number, end: number): Value {
    const ax = this.axis(x, axis);
    if (start === 0 && end === x.shape[ax]) return x;
    if (!(start >= 0 && end > start && end <= x.shape[ax]!)) throw new Error(`slice ${start}:${end} of axis ${ax} of [${x.shape}]`);
    const shape = [...x.shape];
    shape[ax] = end - start;
    const y = this.emit('Slice', [x, this.int64([start]), this.int64([end]), this.int64([ax])], shape, {}, { dtype: x.dtype });
    return this.record1(y, [x], (g) => {
      const pads = new Array<number>(2 * x.shape.length).fill(0);
      pads[ax] = start;
      pads[x.shape.length + ax] = x.shape[ax]! - end;
      return [this.emit('Pad', [g, this.int64(pads)], x.shape)];
    });
  }

  /** Parts of `sizes` along `axis` (one Split node); the gradient concatenates, with zeros for parts without one. */
  split(x: Value, axis: number, sizes: number[]): Value[] {
    const ax = this.axis(x, axis);
    if (sizes.reduce((a, b) => a + b, 0) !== x.shape[ax]) throw new Error(`split [${sizes}] of axis ${ax} of [${x.shape}]`);
    const shapes = sizes.map((s) => x.shape.map((v, i) => (i === ax ? s : v)));
    const outs = this.emitMany('Split', [x, this.int64(sizes)], shapes, { axis: ax });
    return this.record(outs, [x], (gs) => [
      this.concat(
        gs.map((g, i) => g ?? this.zeros(shapes[i]!)),
        ax,
      ),
    ]);
  }

  concat(xs: Value[], axis: number): Value {
    if (xs.length === 1) return xs[0]!;
    const ax = this.axis(xs[0]!, axis);
    const shape = [...xs[0]!.shape];
    shape[ax] = xs.reduce((s, x) => s + x.shape[ax]!, 0);
    const y = this.emit('Concat', xs, shape, { axis: ax });
    return this.record1(y, xs, (g) => {
      const parts = this.split(
        g,
        ax,
        xs.map((x) => x.shape[ax]!),
      );
      return parts.map((p, i) => (xs[i]!.grad ? p : null));
    });
  }

  /** x broadcast to `shape` (Expand); the gradient sums over the broadcast axes. */
  expand(x: Value, shape: readonly number[]): Value {
    const full = broadcastShapes(x.shape, shape, 'expand');
    if (sameShape(full, x.shape)) return x;
    const y = this.emit('Expand', [x, this.int64(full)], full);
    return this.record1(y, [x], (g) => [this.unbroadcast(g, x.shape)]);
  }

  /** Zeros of `shape` (a scalar 0 expanded). */
  zeros(shape: readonly number[]): Value {
    return shape.length === 0 ? this.scalar(0) : this.emit('Expand', [this.scalar(0), this.int64([...shape])], shape);
  }

  /** The gradient `g` of a broadcast result, summed back to the operand's `shape`. */
  unbroadcast(g: Value, shape: readonly number[]): Value {
    if (sameShape(g.shape, shape)) return g;
    const n = g.shape.length;
    const axes: number[] = [];
    for (let i = 0; i < n; i++) {
      const s = shape[shape.length - n + i] ?? 1;
      if (s === 1 && g.shape[i] !== 1) axes.push(i);
    }
    const kept = g.shape.map((v, i) => (axes.includes(i) ? 1 : v));
    const r = axes.length ? this.emit('ReduceSum', [g, this.int64(axes)], kept, { keepdims: 1 }) : g;
    return sameShape(r.shape, shape) ? r : this.emit('Reshape', [r, this.int64([...shape])], shape);
  }

  // ---------------------------------------------------------------------------------------------
  // Elementwise

  private binary(op: string, a: Value, b: Value, vjp: (g: Value, y: Value) => (Value | null)[]): Value {
    const y = this.emit(op, [a, b], broadcastShapes(a.shape, b.shape, op));
    return this.record1(y, [a, b], (g) => vjp(g, y));
  }

  add(a: Value, b: Value): Value {
    return this.binary('Add', a, b, (g) => [a.grad ? this.unbroadcast(g, a.shape) : null, b.grad ? this.unbroadcast(g, b.shape) : null]);
  }

  sub(a: Value, b: Value): Value {
    return this.binary('Sub', a, b, (g) => [
      a.grad ? this.unbroadcast(g, a.shape) : null,
      b.grad ? this.unbroadcast(this.neg(g), b.shape) : null,
    ]);
  }

  mul(a: Value, b: Value): Value {
    return this.binary('Mul', a, b, (g) => [
      a.grad ? this.unbroadcast(this.mul(g, b), a.shape) : null,
      b.grad ? this.unbroadcast(this.mul(g, a), b.shape) : null,
    ]);
  }

  div(a: Value, b: Value): Value {
    return this.binary('Div', a, b, (g, y) => [
      a.grad ? this.unbroadcast(this.div(g, b), a.shape) : null,
      b.grad ? this.unbroadcast(this.neg(this.div(this.mul(g, y), b)), b.shape) : null,
    ]);
  }

  /** x times a constant. */
  scale(x: Value, s: number): Value {
    return s === 1 ? x : this.mul(x, this.scalar(s));
  }

  private unary(op: string, x: Value, vjp: (g: Value, y: Value) => Value): Value {
    const y = this.emit(op, [x], x.shape);
    return this.record1(y, [x], (g) => [vjp(g, y)]);
  }

  neg(x: Value): Value {
    return this.unary('Neg', x, (g) => this.neg(g));
  }

  exp(x: Value): Value {
    return this.unary('Exp', x, (g, y) => this.mul(g, y));
  }

  log(x: Value): Value {
    return this.unary('Log', x, (g) => this.div(g, x));
  }

  sqrt(x: Value): Value {
    return this.unary('Sqrt', x, (g, y) => this.div(this.scale(g, 0.5), y));
  }

  sigmoid(x: Value): Value {
    return this.unary('Sigmoid', x, (g, y) => this.mul(g, this.mul(y, this.sub(this.scalar(1), y))));
  }

  /** 1 where x > 0, else 0 (no gradient). */
  positive(x: Value): Value {
    return this.emit('Cast', [this.emit('Greater', [x, this.scalar(0)], x.shape)], x.shape, { to: ONNX_FLOAT });
  }

  relu(x: Value): Value {
    return this.unary('Relu', x, (g) => this.mul(g, this.positive(x)));
  }

  /** |x|; the gradient is sign(x) (0 at 0, as torch). */
  abs(x: Value): Value {
    return this.unary('Abs', x, (g) => this.mul(g, this.emit('Sign', [x], x.shape)));
  }

  /** max(x, c) for a constant c: the gradient goes where x >= c (as tfjs' maximum and torch's clamp_min). */
  maxScalar(x: Value, c: number): Value {
    const cs = this.scalar(c);
    const y = this.emit('Max', [x, cs], x.shape);
    return this.record1(y, [x], (g) => [
      this.mul(g, this.emit('Cast', [this.emit('GreaterOrEqual', [x, cs], x.shape)], x.shape, { to: ONNX_FLOAT })),
    ]);
  }

  // ---------------------------------------------------------------------------------------------
  // Reductions

  private axes(x: Value, axes: number[]): number[] {
    return axes.map((a) => this.axis(x, a));
  }

  private reducedShape(x: Value, ax: number[], keepdims: boolean): number[] {
    return x.shape.flatMap((s, i) => (ax.includes(i) ? (keepdims ? [1] : []) : [s]));
  }

  /** The gradient of a reduction: g (reduced shape) back to x's shape, times `factor`. */
  private spread(g: Value, x: Value, ax: number[], keepdims: boolean, factor: number): Value {
    const kept = keepdims ? g : this.reshape(g, this.reducedShape(x, ax, true));
    return this.emit('Expand', [factor === 1 ? kept : this.scale(kept, factor), this.int64([...x.shape])], x.shape);
  }

  reduceSum(x: Value, axes: number[], keepdims = false): Value {
    const ax = this.axes(x, axes);
    const y = this.emit('ReduceSum', [x, this.int64(ax)], this.reducedShape(x, ax, keepdims), { keepdims: keepdims ? 1 : 0 });
    return this.record1(y, [x], (g) => [this.spread(g, x, ax, keepdims, 1)]);
  }

  reduceMean(x: Value, axes: number[], keepdims = false): Value {
    const ax = this.axes(x, axes);
    const n = ax.reduce((p, a) => p * x.shape[a]!, 1);
    const y = this.emit('ReduceMean', [x], this.reducedShape(x, ax, keepdims), { axes: ax, keepdims: keepdims ? 1 : 0 });
    return this.record1(y, [x], (g) => [this.spread(g, x, ax, keepdims, 1 / n)]);
  }
}
