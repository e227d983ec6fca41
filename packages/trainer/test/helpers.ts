/** Test setup: the wasm backend (the one this machine runs), loaded once per test file. */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { ensureGradients } from '@vitreg/core';
import { listCheckpoints } from '../src/checkpoint.js';
import type { EngineFactory } from '../src/engine.js';

export async function useWasm(): Promise<void> {
  if (tf.getBackend() !== 'wasm') await tf.setBackend('wasm');
  await tf.ready();
  await ensureGradients();
}

/** The engine the commands default to (auto: onnxruntime, 1 thread, where onnxruntime-node loads; else tfjs). */
export async function defaultEngine(): Promise<EngineFactory> {
  // imported here, so the files that only want useWasm do not load the engine modules
  const { resolveTrainEngine } = await import('../src/onnx/engine-select.js');
  return (await resolveTrainEngine({ engine: 'auto', threads: 1 }, { log: () => {} })).factory;
}

/** Plain-JS log-softmax of one row, the reference for the loss tests. */
export function logSoftmaxRow(row: number[]): number[] {
  const m = Math.max(...row);
  const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
  return row.map((v) => v - lse);
}

export function softmaxRow(row: number[]): number[] {
  return logSoftmaxRow(row).map(Math.exp);
}

export function assertClose(actual: number, expected: number, tol = 1e-5, what = 'value'): void {
  if (!(Math.abs(actual - expected) <= tol * Math.max(1, Math.abs(expected)))) {
    throw new Error(`${what}: expected ${expected}, got ${actual}`);
  }
}

/** Every file of the final checkpoint, byte for byte (state.json and safetensors). */
export async function checkpointBytes(run: string): Promise<Record<string, Buffer>> {
  const [last] = (await listCheckpoints(run)).slice(-1);
  assert.ok(last, `no checkpoint in ${run}`);
  const out: Record<string, Buffer> = {};
  for (const f of (await readdir(last.dir)).sort()) out[f] = await readFile(join(last.dir, f));
  return out;
}
