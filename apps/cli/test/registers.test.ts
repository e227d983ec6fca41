/**
 * `vitreg registers find` and `--test-time-registers` end to end on the planted model of
 * packages/registers/test/fixtures/ttr (reference outputs of nickjiang2378/test-time-registers, written
 * by make_ttr_reference.py): the neurons found are the reference's, features with the test-time
 * register reproduce the reference's output tokens (allclose 1e-4/1e-4), analyze shows original,
 * test-time and trained-register models side by side, and the errors are one line.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend, readSafetensors, toFloat32 } from '@vitreg/core';
import { discoverBatch } from '@vitreg/probe';
import { loadWeights, withTestTimeRegisters } from '@vitreg/registers';
import { lastLine, ROOT, vitreg } from './helpers.ts';

const FIX = join(ROOT, 'packages', 'registers', 'test', 'fixtures', 'ttr');
const REF = join(FIX, 'planted.reference.safetensors');
const WEIGHTS = join(FIX, 'planted.safetensors');
const OTHER = join(FIX, 'planted_noattn.safetensors');
const HEADS = '{"num_heads": 2}';
let dir: string;
let neurons: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-registers-'));
  neurons = join(dir, 'neurons.json');
});
after(async () => rm(dir, { recursive: true, force: true }));

function allclose(a: Float32Array, b: Float32Array, atol = 1e-4, rtol = 1e-4): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i] - b[i]) <= atol + rtol * Math.abs(b[i]))) return false;
  return true;
}

test('registers find: the reference ranking and selection, saved with the settings', async () => {
  const r = await vitreg([
    'registers',
    'find',
    '--weights',
    WEIGHTS,
    '--config',
    HEADS,
    '--tensor',
    `${REF}:images`,
    '--out',
    neurons,
    '--layer',
    '-2',
    '--threshold',
    '30',
    '--highest-layer',
    '2',
    '--top-k',
    '3',
    '--backend',
    'wasm',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const ref = JSON.parse(await readFile(join(FIX, 'planted.reference.json'), 'utf8'));
  const f = JSON.parse(await readFile(neurons, 'utf8'));
  assert.deepEqual(
    f.neurons.map((n: { layer: number; neuron: number }) => ({ layer: n.layer, neuron: n.neuron })),
    ref.planted.neurons,
  );
  assert.deepEqual(f.settings, { layer: -2, threshold: 30, highestLayer: 2, topK: 3, sparsity: null });
  assert.equal(f.ranking.length, 4 * 128);
  assert.deepEqual(f.images, { used: ref.planted.images_used, skipped: 5 - ref.planted.images_used });
  assert.match(r.stdout, /^layer\tneuron\tscore\n2\t100\t/);
});

test('features --test-time-registers reproduce the reference outputs; the neurons file refuses another model', async () => {
  const out = join(dir, 'f.safetensors');
  const [ok, onnx, other, topk] = await Promise.all([
    vitreg([
      'features',
      '--weights',
      WEIGHTS,
      '--config',
      HEADS,
      '--tensor',
      `${REF}:images`,
      '--out',
      out,
      '--test-time-registers',
      neurons,
      '--backend',
      'wasm',
    ]),
    vitreg([
      'features',
      '--weights',
      WEIGHTS,
      '--config',
      HEADS,
      '--tensor',
      `${REF}:images`,
      '--out',
      join(dir, 'x.safetensors'),
      '--test-time-registers',
      neurons,
      '--engine',
      'onnxruntime',
    ]),
    vitreg([
      'features',
      '--weights',
      OTHER,
      '--config',
      HEADS,
      '--tensor',
      `${REF}:images`,
      '--out',
      join(dir, 'y.safetensors'),
      '--test-time-registers',
      neurons,
      '--backend',
      'wasm',
    ]),
    vitreg([
      'features',
      '--weights',
      WEIGHTS,
      '--config',
      HEADS,
      '--tensor',
      `${REF}:images`,
      '--out',
      join(dir, 'z.safetensors'),
      '--ttr-top-k',
      '2',
    ]),
  ]);
  assert.equal(ok.code, 0, ok.stderr);
  const [{ tensors: got, metadata }, { tensors: ref }] = await Promise.all([readSafetensors(out), readSafetensors(REF)]);
  assert.deepEqual(got.registers.shape, [5, 1, 32]);
  assert.equal(metadata.vitreg_test_time_registers, neurons);
  const [cls, reg, patches] = ['cls', 'registers', 'patches'].map((k) => toFloat32(got[k]));
  for (let i = 0; i < 5; i++) {
    const normed = toFloat32(ref[`planted.ttr.${i}.normed`]); // [CLS, register, patches] x 32
    assert.ok(allclose(cls.subarray(i * 32, (i + 1) * 32), normed.subarray(0, 32)), `image ${i} cls`);
    assert.ok(allclose(reg.subarray(i * 32, (i + 1) * 32), normed.subarray(32, 64)), `image ${i} register`);
    assert.ok(allclose(patches.subarray(i * 36 * 32, (i + 1) * 36 * 32), normed.subarray(64)), `image ${i} patches`);
  }
  // ONNX Runtime adds the same register: its outputs equal the tfjs run's within the parity tolerance.
  assert.equal(onnx.code, 0, onnx.stderr);
  const { tensors: viaOnnx } = await readSafetensors(join(dir, 'x.safetensors'));
  for (const k of ['cls', 'registers', 'patches']) assert.ok(allclose(toFloat32(viaOnnx[k]), toFloat32(got[k])), `onnxruntime ${k}`);
  assert.equal(other.code, 2);
  assert.match(
    lastLine(other.stderr),
    /^vitreg features: --test-time-registers: .*neurons\.json: made for another model .*planted\.safetensors.*run vitreg registers find on it$/,
  );
  assert.equal(topk.code, 2);
  assert.equal(lastLine(topk.stderr), 'vitreg features: --ttr-top-k applies with --test-time-registers neurons.json');
});

test('analyze shows the original, the test-time register and a trained-register model side by side', async () => {
  const out = join(dir, 'an');
  // Model B is any other model of the same patch size: the reg4 fixture has patch 14, so B here is the
  // planted model without attention mixing (what matters is the three-way layout).
  const r = await vitreg([
    'analyze',
    '--weights',
    WEIGHTS,
    '--weights-b',
    OTHER,
    '--config',
    HEADS,
    '--tensor',
    `${REF}:images`,
    '--out',
    out,
    '--test-time-registers',
    neurons,
    '--threshold',
    '30',
    '--source',
    'prenorm',
    '--backend',
    'wasm',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(await readFile(join(out, 'summary.json'), 'utf8'));
  assert.deepEqual(
    s.models.map((m: { label: string }) => m.label),
    ['A', 'A+TTR', 'B'],
  );
  assert.match(s.models[1].engine, /test-time register \(3 neurons/);
  const ref = JSON.parse(await readFile(join(FIX, 'planted.reference.json'), 'utf8'));
  s.images.forEach((img: { models: { label: string; outliers: number }[] }, i: number) => {
    assert.equal(img.models[0]!.outliers, ref.backgrounds[i].length, `image ${i}: A's outliers are the background patches`);
    assert.equal(img.models[1]!.outliers, 0, `image ${i}: none with the test-time register`);
  });
  const stats = JSON.parse(await readFile(join(out, 'images-0', 'ttr', 'stats.json'), 'utf8'));
  assert.equal(stats.model, 'A+TTR');
  await readFile(join(out, 'images-0', 'b', 'stats.json'));
});

test('discover and probe run with the test-time register; discover equals LOST on the model with it', async () => {
  const [d, p] = await Promise.all([
    vitreg([
      'discover',
      '--weights',
      WEIGHTS,
      '--config',
      HEADS,
      '--tensor',
      `${REF}:images`,
      '--out',
      join(dir, 'd'),
      '--test-time-registers',
      neurons,
      '--k-patches',
      '5',
      '--backend',
      'wasm',
    ]),
    vitreg([
      'probe',
      '--weights',
      WEIGHTS,
      '--config',
      HEADS,
      '--data',
      'synthetic',
      '--count',
      '16',
      '--test-count',
      '8',
      '--synthetic-size',
      '24',
      '--size',
      '24',
      '--steps',
      '10',
      '--out',
      join(dir, 'p'),
      '--test-time-registers',
      neurons,
      '--ttr-top-k',
      '2',
      '--backend',
      'wasm',
    ]),
  ]);
  assert.equal(d.code, 0, d.stderr);
  assert.equal(p.code, 0, p.stderr);
  const probe = JSON.parse(await readFile(join(dir, 'p', 'results.json'), 'utf8'));
  assert.equal(JSON.stringify(probe).includes(`"testTimeRegisters":${JSON.stringify(neurons)}`), true);
  // LOST in this process on the model with the test-time register (the three neurons of neurons.json).
  await initBackend('wasm', { log: () => {} });
  const model = await loadWeights(WEIGHTS, { config: JSON.parse(HEADS) });
  const f = JSON.parse(await readFile(neurons, 'utf8'));
  const view = withTestTimeRegisters(model, f.neurons);
  const t = toFloat32((await readSafetensors(REF)).tensors.images!);
  const rows = (await readFile(join(dir, 'd', 'results.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.equal(rows.length, 5);
  for (let i = 0; i < 5; i++) {
    const input = {
      data: t.slice(i * 24 * 24 * 3, (i + 1) * 24 * 24 * 3),
      paddedHeight: 24,
      paddedWidth: 24,
      width: 24,
      height: 24,
      rgb: new Uint8Array(24 * 24 * 3),
      boxes: [],
      scale: [1, 1] as [number, number],
    };
    const [r] = discoverBatch(view, [input], { features: 'keys', kPatches: 5 });
    assert.deepEqual([rows[i].seed, rows[i].box], [r!.seed, r!.box], `image ${i}`);
  }
  model.dispose();
});
