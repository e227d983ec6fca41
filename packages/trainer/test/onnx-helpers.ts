/**
 * Shared pieces of the ONNX training-graph tests: loading onnxruntime-node (the tests skip with one line
 * where it does not load), running a built graph, seeded values, and allclose with the worst element named.
 */
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { loadOnnxRuntime } from '@vitreg/registers';
import type { GraphIO } from '../src/onnx/autodiff.js';

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
