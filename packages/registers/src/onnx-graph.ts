/**
 * A small builder of ONNX graphs: named nodes with attributes, float initializers stored as float32 or
 * float16 (float16 ones are cast to float32 by a Cast node that ONNX Runtime folds at load time), int64
 * constants, and the ModelProto around it (opset 17, IR version 8), or its encoded bytes (`encode`).
 * The inference export (onnx-export.ts) and @vitreg/trainer's training graphs are built with it.
 */
import { fromFloat32 } from '@vitreg/core';
import { encodeModel, ONNX_ATTR, ONNX_DTYPE, type ModelProtoObject } from './onnx-proto.js';

export const ONNX_OPSET = 17;
export const ONNX_IR_VERSION = 8;

export type AttrValue = number | number[] | string | { float: number } | { floats: number[] };

/** One initializer: its raw little-endian bytes and how it is stored. */
export interface Initializer {
  name: string;
  dims: number[];
  dataType: number;
  bytes: Uint8Array;
}

/** A tensor input or output of the graph; dims are numbers or symbolic names such as "batch". */
export interface GraphValue {
  name: string;
  dims: (number | string)[];
  /** Element type (default float32). */
  dtype?: 'float32' | 'int64';
}

function attribute(name: string, v: AttrValue): Record<string, unknown> {
  if (typeof v === 'string') return { name, type: ONNX_ATTR.STRING, s: new TextEncoder().encode(v) };
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new Error(`ONNX attribute ${name}: ${v} is not an integer (use { float })`);
    return { name, type: ONNX_ATTR.INT, i: v };
  }
  if (Array.isArray(v)) return { name, type: ONNX_ATTR.INTS, ints: v };
  if ('float' in v) return { name, type: ONNX_ATTR.FLOAT, f: v.float };
  return { name, type: ONNX_ATTR.FLOATS, floats: v.floats };
}

function valueInfo(v: GraphValue): Record<string, unknown> {
  const dim = v.dims.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d }));
  const elem_type = v.dtype === 'int64' ? ONNX_DTYPE.INT64 : ONNX_DTYPE.FLOAT;
  return { name: v.name, type: { tensor_type: { elem_type, shape: { dim } } } };
}

export class GraphBuilder {
  readonly nodes: Record<string, unknown>[] = [];
  readonly initializers: Initializer[] = [];
  private used = new Set<string>();
  private ints = new Map<string, string>();

  /** @param weightType storage of float weights: float32, or float16 cast back to float32 in the graph. */
  constructor(readonly weightType: 'float32' | 'float16' = 'float32') {}

  /** A fresh value name starting with `base`. */
  name(base: string): string {
    let n = base;
    for (let k = 1; this.used.has(n); k++) n = `${base}_${k}`;
    this.used.add(n);
    return n;
  }

  /** Adds a node; returns its output names (fresh names from `outputs`, or the given ones verbatim with '='). */
  node(op: string, inputs: string[], outputs: string[] | string, attrs: Record<string, AttrValue> = {}, domain?: string): string[] {
    const outs = (Array.isArray(outputs) ? outputs : [outputs]).map((o) => (o.startsWith('=') ? this.claim(o.slice(1)) : this.name(o)));
    const attribute_ = Object.entries(attrs).map(([k, v]) => attribute(k, v));
    this.nodes.push({
      op_type: op,
      input: inputs,
      output: outs,
      name: this.name(`${op}_${outs[0]}`),
      attribute: attribute_,
      ...(domain ? { domain } : {}),
    });
    return outs;
  }

  /** A single-output node. */
  op(op: string, inputs: string[], output: string, attrs: Record<string, AttrValue> = {}): string {
    return this.node(op, inputs, output, attrs)[0]!;
  }

  private claim(name: string): string {
    if (this.used.has(name)) throw new Error(`ONNX graph: value name "${name}" is used twice`);
    this.used.add(name);
    return name;
  }

  /** A float weight (given in float32) stored as float32 or float16; returns the float32 value's name. */
  weight(name: string, data: Float32Array, dims: number[]): string {
    const n = this.claim(name);
    if (this.weightType === 'float32') {
      this.initializers.push({ name: n, dims, dataType: ONNX_DTYPE.FLOAT, bytes: fromFloat32(data, dims).data });
      return n;
    }
    this.initializers.push({ name: n, dims, dataType: ONNX_DTYPE.FLOAT16, bytes: fromFloat32(data, dims, 'F16').data });
    return this.op('Cast', [n], `${name}.f32`, { to: ONNX_DTYPE.FLOAT });
  }

  /** A float32 constant that stays float32 whatever the weight type (computed values such as scales). */
  floats(name: string, data: Float32Array, dims: number[]): string {
    const n = this.name(name);
    this.initializers.push({ name: n, dims, dataType: ONNX_DTYPE.FLOAT, bytes: fromFloat32(data, dims).data });
    return n;
  }

  /** An int64 constant (shapes, axes, indices), shared between uses of the same values. */
  int64(values: number[], dims: number[] = [values.length]): string {
    const key = `${dims.join('x')}:${values.join(',')}`;
    const known = this.ints.get(key);
    if (known) return known;
    const n = this.name(`const_i64_${values.join('_').replace(/-/g, 'm').slice(0, 40)}`);
    const bytes = new Uint8Array(values.length * 8);
    const view = new DataView(bytes.buffer);
    values.forEach((v, i) => view.setBigInt64(i * 8, BigInt(v), true));
    this.initializers.push({ name: n, dims, dataType: ONNX_DTYPE.INT64, bytes });
    this.ints.set(key, n);
    return n;
  }

  /** Marks `name` as taken (a graph input's name), so that no node output reuses it. */
  reserve(name: string): string {
    return this.claim(name);
  }

  /** Total bytes of all initializers. */
  weightBytes(): number {
    return this.initializers.reduce((s, t) => s + t.bytes.length, 0);
  }

  /**
   * The ModelProto. With `external`, initializers of at least 1 KiB are written by the caller to one
   * data file: `external(t)` returns the offset it placed the bytes at, and the tensor records it.
   */
  model(
    inputs: GraphValue[],
    outputs: GraphValue[],
    metadata: Record<string, string>,
    external?: { location: string; place: (t: Initializer) => number },
  ): ModelProtoObject {
    const initializer = this.initializers.map((t) => {
      const base = { name: t.name, dims: t.dims, data_type: t.dataType };
      if (!external || t.bytes.length < 1024) return { ...base, raw_data: t.bytes };
      const offset = external.place(t);
      return {
        ...base,
        data_location: 1,
        external_data: [
          { key: 'location', value: external.location },
          { key: 'offset', value: String(offset) },
          { key: 'length', value: String(t.bytes.length) },
        ],
      };
    });
    return {
      ir_version: ONNX_IR_VERSION,
      producer_name: 'vitreg',
      producer_version: '0.1.0',
      opset_import: [
        { domain: '', version: ONNX_OPSET },
        ...(this.nodes.some((n) => n.domain === 'com.microsoft') ? [{ domain: 'com.microsoft', version: 1 }] : []),
      ],
      graph: { name: 'vitreg_vit', node: this.nodes, initializer, input: inputs.map(valueInfo), output: outputs.map(valueInfo) },
      metadata_props: Object.entries(metadata).map(([key, value]) => ({ key, value })),
    };
  }

  /** The encoded ModelProto (initializers inside; protobuf limits it to 2 GiB). */
  encode(inputs: GraphValue[], outputs: GraphValue[], metadata: Record<string, string> = {}): Uint8Array {
    return encodeModel(this.model(inputs, outputs, metadata));
  }
}
