/**
 * `vitreg probe` on both engines: the same checkpoint probed with --engine tfjs and --engine onnxruntime
 * gives the same results within the ONNX parity tolerance (numpy.allclose(atol=1e-4, rtol=1e-4) on the
 * class probe's weight-decay sweep and k-NN, identical accuracy), here reading the test-time register
 * (--test-time-registers with the reference's neurons of the planted model of packages/registers/test/
 * fixtures/ttr), and --engine auto extracts on ONNX Runtime. On these synthetic images the planted neurons
 * barely fire, so this checks the plumbing and the agreement; the test-time register's values are tested
 * against the reference in packages/registers/test/onnx-ttr.test.ts, and the probes' features per engine
 * in packages/probe/test/probe-engines.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '@vitreg/core';
import { loadWeights, saveTestTimeRegisters, testTimeRegistersFile } from '@vitreg/registers';
import { ROOT, vitreg } from './helpers.ts';

const FIX = join(ROOT, 'packages', 'registers', 'test', 'fixtures', 'ttr');
const WEIGHTS = join(FIX, 'planted.safetensors');
const HEADS = '{"num_heads": 2}';
let dir: string;
let neurons: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-probe-engines-'));
  await initBackend('wasm', { log: () => {} });
  const ref = JSON.parse(await readFile(join(FIX, 'planted.reference.json'), 'utf8'));
  const model = await loadWeights(WEIGHTS, { config: { num_heads: 2 } });
  const chosen = (ref.planted.neurons as { layer: number; neuron: number }[]).map((n, i) => ({ ...n, score: 10 - i }));
  neurons = join(dir, 'neurons.json');
  await saveTestTimeRegisters(
    neurons,
    await testTimeRegistersFile(
      model,
      {
        neurons: chosen,
        ranking: chosen,
        images: { used: 1, skipped: 0 },
        settings: { layer: -2, threshold: 30, highestLayer: 2, topK: 3, sparsity: null },
      },
      WEIGHTS,
    ),
  );
  model.dispose();
});
after(async () => rm(dir, { recursive: true, force: true }));

function allclose(a: number[], b: number[], atol = 1e-4, rtol = 1e-4): string | null {
  if (a.length !== b.length) return `length ${a.length} != ${b.length}`;
  for (let i = 0; i < a.length; i++)
    if (!(Math.abs(a[i]! - b[i]!) <= atol + rtol * Math.abs(b[i]!))) return `element ${i}: ${a[i]} vs ${b[i]}`;
  return null;
}

test('probe --test-time-registers --token register: onnxruntime equals tfjs within 1e-4; auto runs onnxruntime', async () => {
  const common = [
    '--weights',
    WEIGHTS,
    '--config',
    HEADS,
    '--data',
    'synthetic',
    '--count',
    '12',
    '--test-count',
    '6',
    '--synthetic-size',
    '24',
    '--size',
    '24',
    '--steps',
    '30',
    '--batch-size',
    '5',
    '--task',
    'class',
  ];
  const ttr = ['--test-time-registers', neurons, '--token', 'register'];
  const [t, o, auto] = await Promise.all([
    vitreg(['probe', ...common, ...ttr, '--engine', 'tfjs', '--backend', 'wasm', '--out', join(dir, 'tfjs')]),
    vitreg(['probe', ...common, ...ttr, '--engine', 'onnxruntime', '--threads', '1', '--out', join(dir, 'onnx')]),
    vitreg(['probe', ...common, '--token', 'cls', '--backend', 'wasm', '--out', join(dir, 'auto')]),
  ]);
  for (const r of [t, o, auto]) assert.equal(r.code, 0, r.stderr);
  assert.match(t.stderr, /probe features: tfjs wasm/);
  assert.match(o.stderr, /probe features: onnxruntime .*cpu, 1 thread, test-time register \(3 neurons\)/);
  assert.match(auto.stderr, /probe features: onnxruntime /);
  const [a, b] = await Promise.all(['tfjs', 'onnx'].map(async (k) => JSON.parse(await readFile(join(dir, k, 'results.json'), 'utf8'))));
  assert.equal(a.config.num_register_tokens, 1, 'the test-time register is counted');
  assert.equal(b.config.num_register_tokens, 1);
  assert.equal(b.featureDim, 32);
  const nums = (r: { sweep: object[]; knn: { top1: number; top5: number } }) => [
    ...r.sweep.flatMap((s) => Object.values(s) as number[]),
    r.knn.top1,
    r.knn.top5,
  ];
  assert.equal(nums(a).length, 2 * 4 + 2);
  assert.equal(allclose(nums(b), nums(a)), null);
  assert.equal(b.accuracy, a.accuracy);
});
