/**
 * The core of the training graphs' differentiator (autodiff.ts): values with static shapes, the graph's
 * inputs and outputs, emitting nodes through @vitreg/registers' GraphBuilder, the tape of recorded ops
 * with their vector-Jacobian products, `gradients` (the backward pass appended to the same graph), and
 * the node order that ONNX Runtime's scheduler turns into a lean execution order. The ops themselves are
 * in autodiff.ts (shape, elementwise, reductions) and nn-ops.ts (the layers').
 */
import { GraphBuilder, type AttrValue } from '@vitreg/registers';

export type DType = 'float32' | 'int64';

/** A value of the graph: its name, static shape, element type, and whether a gradient flows back through it. */
export interface Value {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly grad: boolean;
}

/** A graph input or output as the engine binds it. */
export interface GraphIO {
  name: string;
  shape: number[];
  dtype: DType;
}

/** Gradients of an op's inputs (null: none) from the gradients of its outputs (null: that output got none). */
export type Vjp = (grads: (Value | null)[]) => (Value | null)[];

interface TapeEntry {
  outs: Value[];
  ins: Value[];
  vjp: Vjp;
}

export const numel = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);
export const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((v, i) => v === b[i]);

/** Numpy broadcasting of two shapes; throws naming `what` on a mismatch. */
export function broadcastShapes(a: readonly number[], b: readonly number[], what = 'broadcast'): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`${what}: shapes [${a}] and [${b}] do not broadcast`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

/** How a training graph is built (graphs.ts's builders take it through their options). */
export interface GraphBuildOptions {
  /**
   * Products as plain `MatMul` (with `Transpose` of a transposed operand and a `Mul` by a scale) instead of
   * `com.microsoft.FusedMatMul`: for execution providers without a FusedMatMul kernel (ONNX Runtime 1.30's
   * WebGPU provider, which would run those nodes on the CPU with copies around them). Same values.
   */
  plainMatMul?: boolean;
  /** Gradient branches added with a chain of `Add` nodes instead of one `Sum` (which that provider also lacks). Same values. */
  plainSum?: boolean;
}

export class GraphCore {
  readonly builder = new GraphBuilder('float32');
  readonly plainMatMul: boolean;
  readonly plainSum: boolean;
  readonly inputs: GraphIO[] = [];
  readonly outputs: GraphIO[] = [];
  private readonly tape: TapeEntry[] = [];
  private readonly scalars = new Map<number, Value>();
  /** False while the backward pass is appended: the rules' own ops are not recorded. */
  private recording = true;
  /** While the backward pass is appended: the values that depend on the loss's gradient. */
  private backward: Set<string> | null = null;
  /** Nodes before this index are the forward pass (and the values the backward pass recomputes from it). */
  private forwardEnd = 0;
  private scopes: string[] = [];

  constructor(opts: GraphBuildOptions = {}) {
    this.plainMatMul = !!opts.plainMatMul;
    this.plainSum = !!opts.plainSum;
  }

  // ---------------------------------------------------------------------------------------------
  // Values, inputs, outputs

  /** A graph input; `grad` for the values whose gradients can be asked for (parameters). */
  input(name: string, shape: readonly number[], opts: { grad?: boolean; dtype?: DType } = {}): Value {
    if (this.inputs.some((i) => i.name === name)) throw new Error(`training graph: input "${name}" declared twice`);
    this.builder.reserve(name);
    const dtype = opts.dtype ?? 'float32';
    this.inputs.push({ name, shape: [...shape], dtype });
    return { name, shape: [...shape], dtype, grad: !!opts.grad && dtype === 'float32' };
  }

  /** A float32 constant (stored in the graph). */
  constant(name: string, data: Float32Array | number[], shape: readonly number[]): Value {
    const d = data instanceof Float32Array ? data : Float32Array.from(data);
    if (d.length !== numel(shape)) throw new Error(`training graph: constant ${name} has ${d.length} values for shape [${shape}]`);
    return { name: this.builder.floats(this.scoped(name), d, [...shape]), shape: [...shape], dtype: 'float32', grad: false };
  }

  /** A float32 scalar constant, shared between uses of the same value. */
  scalar(v: number): Value {
    const known = this.scalars.get(v);
    if (known) return known;
    const s = {
      name: this.builder.floats(`scalar_${String(v).replace(/[^0-9a-z]/gi, '_')}`, Float32Array.of(v), []),
      shape: [],
      dtype: 'float32' as const,
      grad: false,
    };
    this.scalars.set(v, s);
    return s;
  }

  /** An int64 constant (shapes, axes, indices), shared between uses of the same values. */
  int64(values: number[], shape: readonly number[] = [values.length]): Value {
    return { name: this.builder.int64(values, [...shape]), shape: [...shape], dtype: 'int64', grad: false };
  }

  /** Makes `x` a graph output named `name` (an Identity node when the value has another name). */
  output(x: Value, name: string): Value {
    if (this.outputs.some((o) => o.name === name)) throw new Error(`training graph: output "${name}" declared twice`);
    if (x.name !== name) this.builder.node('Identity', [x.name], `=${name}`);
    this.outputs.push({ name, shape: [...x.shape], dtype: x.dtype });
    return { ...x, name };
  }

  /**
   * Moves the node that produces `x` (a sink such as a parameter's gradient) to the end of the node list.
   * ONNX Runtime's scheduler starts from the leaf with the highest node index: gradients output in the
   * forward pass's order of use (the last layer's last) then run layer by layer as the backward pass
   * reaches them, instead of all at the end, where every layer's output gradient would have to wait.
   */
  sinkToEnd(x: Value): void {
    const nodes = this.builder.nodes;
    const i = nodes.findIndex((n) => (n.output as string[]).includes(x.name));
    if (i < 0 || (nodes[i]!.output as string[]).length !== 1) return; // a graph input, a constant, or a node with other consumers
    nodes.push(...nodes.splice(i, 1));
  }

  /** Runs `fn` with node names prefixed by `scope` (readable names in profiles and errors). */
  scope<T>(scope: string, fn: () => T): T {
    this.scopes.push(scope);
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  private scoped(base: string): string {
    return this.scopes.length ? `${this.scopes.join('/')}/${base}` : base;
  }

  /** Nodes emitted so far. */
  get nodeCount(): number {
    return this.builder.nodes.length;
  }

  /** The encoded ModelProto with the declared inputs and outputs. */
  encode(metadata: Record<string, string> = {}): Uint8Array {
    const io = (v: GraphIO) => ({ name: v.name, dims: v.shape, dtype: v.dtype });
    return this.builder.encode(this.inputs.map(io), this.outputs.map(io), metadata);
  }

  // ---------------------------------------------------------------------------------------------
  // Emitting and recording

  /**
   * One node, not differentiated: its outputs need no gradient (the backward pass's own ops, integer
   * ops, values of inputs without gradients). Differentiable ops wrap it with `record`.
   */
  emit(
    op: string,
    ins: Value[],
    shape: readonly number[],
    attrs: Record<string, AttrValue> = {},
    opts: { domain?: string; dtype?: DType } = {},
  ): Value {
    const [n] = this.builder.node(
      op,
      ins.map((s) => s.name),
      this.scoped(op.toLowerCase()),
      attrs,
      opts.domain,
    );
    this.place(ins, [n!]);
    return { name: n!, shape: [...shape], dtype: opts.dtype ?? 'float32', grad: false };
  }

  /** A node with several outputs, not differentiated (see `emit`). */
  emitMany(
    op: string,
    ins: Value[],
    shapes: (readonly number[])[],
    attrs: Record<string, AttrValue> = {},
    opts: { domain?: string } = {},
  ): Value[] {
    const names = shapes.map((_, i) => this.scoped(`${op.toLowerCase()}_${i}`));
    const outs = this.builder.node(
      op,
      ins.map((s) => s.name),
      names,
      attrs,
      opts.domain,
    );
    this.place(ins, outs);
    return outs.map((n, i) => ({ name: n, shape: [...shapes[i]!], dtype: 'float32' as const, grad: false }));
  }

  /**
   * Orders the node just emitted for ONNX Runtime's scheduler, which runs the nodes in the post-order of a
   * depth-first search from the graph's leaves that follows a node's inputs highest node index first.
   * During the backward pass, a node that reads no gradient (a value recomputed from kept forward values:
   * LayerNorm's x^, GELU's derivative, zeros) moves to the end of the forward nodes: with an index below
   * every gradient node's, it runs just before its first consumer rather than in the forward pass, where
   * its result would stay alive until the backward pass reached it.
   */
  private place(ins: Value[], outs: string[]): void {
    const backward = this.backward;
    if (!backward) return;
    if (ins.some((v) => backward.has(v.name))) {
      for (const o of outs) backward.add(o);
      return;
    }
    const node = this.builder.nodes.pop()!;
    this.builder.nodes.splice(this.forwardEnd++, 0, node);
  }

  /**
   * Records `outs` (values just emitted from `ins`) with their VJP. They need a gradient when an input
   * does; nothing is recorded otherwise, nor while the backward pass is appended.
   */
  record(outs: Value[], ins: Value[], vjp: Vjp): Value[] {
    const grad = this.recording && ins.some((s) => s.grad);
    const marked = outs.map((o) => ({ ...o, grad: grad && o.dtype === 'float32' }));
    if (grad) this.tape.push({ outs: marked, ins, vjp });
    return marked;
  }

  /** `record` for an op with one output and a VJP of its one output gradient. */
  record1(out: Value, ins: Value[], vjp: (g: Value) => (Value | null)[]): Value {
    return this.record([out], ins, (gs) => vjp(gs[0]!))[0]!;
  }

  // ---------------------------------------------------------------------------------------------
  // Backward

  /**
   * Appends the backward pass of the scalar `loss` (its gradient `seed`, 1 by default) and returns the
   * gradient of each of `wrt`, or null where no path leads from it to the loss. Call once per graph.
   */
  gradients(loss: Value, wrt: Value[], seed?: Value): (Value | null)[] {
    if (loss.shape.length !== 0) throw new Error(`gradients: the loss must be a scalar, got shape [${loss.shape}]`);
    if (!this.recording) throw new Error('gradients: the backward pass is already appended');
    this.recording = false;
    const dloss = seed ?? this.constant('dloss', [1], []);
    this.backward = new Set([dloss.name]);
    this.forwardEnd = this.builder.nodes.length;
    const pending = new Map<string, Value[]>();
    pending.set(loss.name, [dloss]);
    const total = (s: Value): Value | null => {
      const parts = pending.get(s.name);
      if (!parts || parts.length === 0) return null;
      if (parts.length === 1) return parts[0]!;
      const sum = this.plainSum
        ? parts.slice(1).reduce((acc, p) => this.emit('Add', [acc, p], s.shape), parts[0]!)
        : this.emit('Sum', parts, s.shape);
      pending.set(s.name, [sum]);
      return sum;
    };
    for (let i = this.tape.length - 1; i >= 0; i--) {
      const e = this.tape[i]!;
      const gs = e.outs.map(total);
      if (gs.every((g) => g === null)) continue;
      const grads = this.scope(`grad(${e.outs[0]!.name})`, () => e.vjp(gs));
      e.ins.forEach((inp, k) => {
        const gi = grads[k];
        if (!gi || !inp.grad) return;
        if (!sameShape(gi.shape, inp.shape))
          throw new Error(`gradients: the gradient of ${inp.name} has shape [${gi.shape}], the value [${inp.shape}]`);
        const list = pending.get(inp.name) ?? [];
        list.push(gi);
        pending.set(inp.name, list);
      });
      for (const o of e.outs) pending.delete(o.name);
    }
    const out = wrt.map((w) => total(w));
    this.backward = null;
    return out;
  }
}
