/**
 * Shared pieces of the ONNX Runtime engine tests: small run configs, a factory wrapper that keeps an
 * engine's final state (the loop disposes engines), and the comparison of two states and two metric logs
 * with the worst entry named.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { validateTrainConfig } from '../src/config-validate.js';
import type { PartialTrainConfig, TrainConfig } from '../src/config.js';
import type { EngineFactory, EngineState } from '../src/engine.js';

/** A CPU preset cut to a 10-step run of 8 images (no evaluation before the end, no periodic checkpoint). */
export function tinyRun(preset: string, extra: PartialTrainConfig = {}): TrainConfig {
  return validateTrainConfig({
    ...extra,
    preset,
    data: { source: 'synthetic', train_size: 64, val_size: 16 },
    train: { steps: 10, batch_size: 8, eval_every: 0, checkpoint_every: 0, knn_train_size: 16, ...extra.train },
  } as PartialTrainConfig);
}

/** `factory`, whose engines leave a copy of their state in `into.state` when the loop disposes them. */
export function keepingState(factory: EngineFactory, into: { state?: EngineState }): EngineFactory {
  return (ctx) => {
    const engine = factory(ctx);
    const dispose = engine.dispose.bind(engine);
    engine.dispose = () => {
      const s = engine.exportState();
      const tensors: Record<string, Float32Array> = {};
      for (const [k, v] of Object.entries(s.tensors)) tensors[k] = Float32Array.from(v);
      into.state = { tensors, optimizerStep: s.optimizerStep };
      dispose();
    };
    return engine;
  };
}

export interface StateDiff {
  /** Largest |a - b| over the student and teacher weights and the centres. */
  weights: number;
  /** Largest |a - b| over the optimiser moments. */
  moments: number;
  /** The tensor of the largest weight difference. */
  worst: string;
  /** Names present in one state only. */
  missing: string[];
}

/** Element-wise differences of two states with the same names. */
export function stateDiff(a: EngineState, b: EngineState): StateDiff {
  const out: StateDiff = { weights: 0, moments: 0, worst: '', missing: [] };
  for (const k of new Set([...Object.keys(a.tensors), ...Object.keys(b.tensors)])) {
    const x = a.tensors[k];
    const y = b.tensors[k];
    if (!x || !y || x.length !== y.length) {
      out.missing.push(k);
      continue;
    }
    let d = 0;
    for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i]! - y[i]!));
    if (Number.isNaN(d)) d = Infinity;
    if (k.startsWith('optimizer.')) out.moments = Math.max(out.moments, d);
    else if (d >= out.weights) {
      out.weights = d;
      out.worst = k;
    }
  }
  if (a.optimizerStep !== b.optimizerStep) out.missing.push(`optimizerStep ${a.optimizerStep} vs ${b.optimizerStep}`);
  return out;
}

/** Timing and memory metrics, which differ between engines by design. */
const VARYING = /per_s|seconds|_s$|rss|tf_/;

/** The metric lines of a run folder. */
export async function metricLines(dir: string): Promise<Record<string, unknown>[]> {
  return (await readFile(join(dir, 'metrics.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/**
 * The largest relative difference (|a - b| / max(|a|, 1e-3)) of every loss and metric of two metric logs,
 * line by line, by metric name; keys present in one log only are reported as Infinity.
 */
export function metricDiffs(a: Record<string, unknown>[], b: Record<string, unknown>[]): Record<string, number> {
  const out: Record<string, number> = {};
  if (a.length !== b.length) out.lines = Infinity;
  const flat = (line: Record<string, unknown>): Record<string, number> => {
    const eval_ = line.eval as Record<string, number> | undefined;
    const src = eval_ ? Object.fromEntries(Object.entries(eval_).map(([k, v]) => [`eval.${k}`, v])) : line;
    return Object.fromEntries(Object.entries(src).filter(([k, v]) => typeof v === 'number' && !VARYING.test(k))) as Record<string, number>;
  };
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = flat(a[i]!);
    const y = flat(b[i]!);
    for (const k of new Set([...Object.keys(x), ...Object.keys(y)])) {
      const d = x[k] === undefined || y[k] === undefined ? Infinity : Math.abs(x[k]! - y[k]!) / Math.max(Math.abs(x[k]!), 1e-3);
      out[k] = Math.max(out[k] ?? 0, d);
    }
  }
  return out;
}
