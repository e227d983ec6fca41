/**
 * Shared pieces of the ONNX training-graph tests: loading onnxruntime-node (the tests skip with one line
 * where it does not load), running a built graph, seeded values, allclose with the worst element named,
 * and `checkVjp`: an op's graph and its tfjs twin, value and input gradients compared.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { loadOnnxRuntime } from '@vitreg/registers';
import { TrainGraph, type GraphIO, type Value } from '../src/onnx/autodiff.js';

type Ort = typeof import('onnxruntime-node');

let ort: Ort | null | undefined;

/** onnxruntime-node, or null where it does not load (the caller skips). */
export async function tryOrt(): Promise<Ort | null> {
  if (ort === undefined) ort = await loadOnnxRuntime().catch(() => null);
  return ort;
}

export const SKIP_NO_ORT = 'onnxruntime-node does not load here';

export type Feed = Float32Array | BigInt64Array;

/** Runs a model once on `feeds` (by input name); returns every output as a Float32Array (int64 ones converted). */
export async function runModel(
  o: Ort,
  bytes: Uint8Array,
  inputs: GraphIO[],
  feeds: Record<string, Feed>,
  threads = 1,
): Promise<Record<string, Float32Array>> {
  const session: InferenceSession = await o.InferenceSession.create(bytes, {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  try {
    const t: Record<string, Tensor> = {};
    for (const i of inputs) {
      const v = feeds[i.name];
      if (!v) throw new Error(`no feed for graph input "${i.name}"`);
      t[i.name] =
        i.dtype === 'int64' ? new o.Tensor('int64', v as BigInt64Array, i.shape) : new o.Tensor('float32', v as Float32Array, i.shape);
    }
    const r = await session.run(t);
    const out: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(r))
      out[k] = v.type === 'int64' ? Float32Array.from(v.data as BigInt64Array, Number) : (v.data as Float32Array);
    return out;
  } finally {
    await session.release();
  }
}

/** Deterministic values in [-scale, scale) (a small LCG; the same on every run). */
export function seeded(n: number, seed: number, scale = 1, offset = 0): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 2654435761 + 12345) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = offset + ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

export interface Closeness {
  maxAbs: number;
  maxRel: number;
  /** Whether |a - e| <= atol + rtol |e| everywhere (numpy's allclose). */
  ok: boolean;
  worst: string;
}

/** numpy-style allclose of `actual` against `expected`, with the largest differences. */
export function closeness(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): Closeness {
  if (actual.length !== expected.length)
    return { maxAbs: Infinity, maxRel: Infinity, ok: false, worst: `length ${actual.length} vs ${expected.length}` };
  let maxAbs = 0;
  let maxRel = 0;
  let ok = true;
  let worst = '';
  let worstExcess = -Infinity;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const d = Math.abs(a - e);
    if (!(d <= atol + rtol * Math.abs(e))) ok = false;
    if (!Number.isFinite(d)) ok = false;
    maxAbs = Math.max(maxAbs, d);
    if (Math.abs(e) > atol) maxRel = Math.max(maxRel, d / Math.abs(e));
    const excess = d - (atol + rtol * Math.abs(e));
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = `[${i}] ${a} vs ${e}`;
    }
  }
  return { maxAbs, maxRel, ok, worst };
}

/** The float32 tensors of a safetensors file (the fixtures' format), by name. */
export async function readF32Safetensors(path: string): Promise<Record<string, { shape: number[]; data: Float32Array }>> {
  const { readFile } = await import('node:fs/promises');
  const b = await readFile(path);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, e] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    if (e.dtype !== 'F32') throw new Error(`${path}: tensor ${k} is ${e.dtype}, expected F32`);
    const [a, c] = e.data_offsets;
    const bytes = b.subarray(8 + n + a, 8 + n + c);
    out[k] = { shape: e.shape, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
  }
  return out;
}

export interface Spec {
  shape: number[];
  /** Values in [offset - scale, offset + scale). */
  scale?: number;
  offset?: number;
  /** Gets a gradient (default true). */
  grad?: boolean;
  /** Integer values (an int64 graph input, int32 in tfjs). */
  ints?: number[];
  /** Fixed values. */
  values?: number[];
}

export interface VjpCase {
  inputs: Record<string, Spec>;
  graph: (t: TrainGraph, x: Record<string, Value>) => Value;
  tfjs: (x: Record<string, tf.Tensor>) => tf.Tensor;
  /** allclose tolerances (default atol 1e-5, rtol 1e-4). */
  atol?: number;
  rtol?: number;
}

const size = (s: number[]) => s.reduce((a, b) => a * b, 1);

/** Builds and runs the case's graph and its tfjs twin; returns the names that disagree (empty when all agree). */
export async function checkVjp(c: VjpCase, seed: number): Promise<string[]> {
  const o = await tryOrt();
  if (!o) return [];
  const values: Record<string, Float32Array> = {};
  Object.entries(c.inputs).forEach(([k, s], i) => {
    values[k] = s.values
      ? Float32Array.from(s.values)
      : s.ints
        ? Float32Array.from(s.ints)
        : seeded(size(s.shape), seed * 31 + i, s.scale ?? 1, s.offset ?? 0);
  });
  const t = new TrainGraph();
  const x: Record<string, Value> = {};
  for (const [k, s] of Object.entries(c.inputs))
    x[k] = t.input(k, s.shape, { grad: !s.ints && s.grad !== false, dtype: s.ints ? 'int64' : 'float32' });
  const y = c.graph(t, x);
  const r = t.input('r', y.shape);
  values.r = seeded(size([...y.shape]), seed * 31 + 99);
  const all = y.shape.map((_, i) => i);
  const loss = all.length ? t.reduceSum(t.mul(y, r), all) : t.mul(y, r);
  t.output(y, 'y');
  const wrt = Object.values(x).filter((v) => v.grad);
  t.gradients(loss, wrt).forEach((g, i) => t.output(g ?? t.zeros(wrt[i]!.shape), `grad.${wrt[i]!.name}`));
  const feeds: Record<string, Feed> = {};
  for (const i of t.inputs) feeds[i.name] = i.dtype === 'int64' ? BigInt64Array.from(values[i.name]!, (v) => BigInt(v)) : values[i.name]!;
  const got = await runModel(o, t.encode(), t.inputs, feeds);

  const names = Object.keys(c.inputs).filter((k) => x[k]!.grad);
  const tensors = (vals: tf.Tensor[]) => {
    const m: Record<string, tf.Tensor> = {};
    let j = 0;
    for (const [k, s] of Object.entries(c.inputs))
      m[k] = s.ints ? tf.tensor(s.ints, s.shape, 'int32') : x[k]!.grad ? vals[j++]! : tf.tensor(values[k]!, s.shape);
    return m;
  };
  const rT = tf.tensor(values.r, [...y.shape]);
  const f = (...vals: tf.Tensor[]) => tf.sum(tf.mul(c.tfjs(tensors(vals)), rT));
  const gradInputs = names.map((k) => tf.tensor(values[k]!, c.inputs[k]!.shape));
  const yRef = c.tfjs(tensors(gradInputs)).dataSync();
  const grads = names.length
    ? tf
        .grads(f)(gradInputs)
        .map((g) => g.dataSync())
    : [];
  const bad: string[] = [];
  const atol = c.atol ?? 1e-5;
  const rtol = c.rtol ?? 1e-4;
  const cmp = (what: string, a: Float32Array, e: ArrayLike<number>) => {
    const r2 = closeness(a, e, atol, rtol);
    if (!r2.ok) bad.push(`${what}: max abs ${r2.maxAbs.toExponential(2)}, worst ${r2.worst}`);
  };
  cmp('value', got.y!, yRef);
  names.forEach((k, i) => cmp(`grad ${k}`, got[`grad.${k}`]!, grads[i]!));
  return bad;
}

/** Rows of probabilities [n, k] (softmax of seeded values). */
export function probRows(n: number, k: number, seed: number): number[] {
  const v = seeded(n * k, seed, 2);
  const out: number[] = [];
  for (let r = 0; r < n; r++) {
    const row = Array.from(v.subarray(r * k, (r + 1) * k));
    const m = Math.max(...row);
    const e = row.map((x) => Math.exp(x - m));
    const s = e.reduce((a, b) => a + b, 0);
    out.push(...e.map((x) => x / s));
  }
  return out;
}
