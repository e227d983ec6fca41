/**
 * Test-time registers on the ONNX Runtime engine against the reference implementation
 * (nickjiang2378/test-time-registers, fixtures/ttr written by make_ttr_reference.py, as ttr.test.ts):
 * every block's output and the final normed tokens [CLS, registers, test-time register, patches] of the
 * reference's batch-1 forward, within numpy.allclose(atol=1e-4, rtol=1e-4), for OnnxEncoder at batch 1
 * and for the whole batch at once (per image), on the encoder's size-independent graph and on an .onnx
 * file written by exportOnnx; plus bad neurons refused by name, and the encoder's fingerprint accepting
 * a neurons file made on the tfjs model of the same weights and refusing it for other weights.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend, readSafetensors, toFloat32 } from '@vitreg/core';
import {
  exportOnnx,
  loadOnnxRuntime,
  loadWeights,
  OnnxEncoder,
  readWeights,
  testTimeRegisterNeurons,
  testTimeRegistersFile,
  type EncoderOutput,
  type ImageBatch,
} from '../src/index.ts';
import { allclose } from './helpers.ts';

const FIX = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'ttr');
const ref = JSON.parse(readFileSync(join(FIX, 'planted.reference.json'), 'utf8'));
const HEADS = { num_heads: ref.config.num_heads as number };
let tensors: Record<string, { shape: number[]; data: Float32Array }>;

before(async () => {
  await loadOnnxRuntime();
  const { tensors: t } = await readSafetensors(join(FIX, 'planted.reference.safetensors'));
  tensors = {};
  for (const [k, v] of Object.entries(t)) tensors[k] = { shape: v.shape, data: toFloat32(v) };
});

function close(name: string, actual: ArrayLike<number>, expected: ArrayLike<number>) {
  assert.equal(actual.length, expected.length, `${name}: length`);
  const err = allclose(actual, expected);
  assert.equal(err, null, `${name}: ${err}`);
}

function images(from: number, count: number): ImageBatch {
  const [, H, W] = tensors.images!.shape as [number, number, number, number];
  const n = H * W * 3;
  return { data: tensors.images!.data.slice(from * n, (from + count) * n), shape: [count, H, W, 3] };
}

/** Checks image `b` of an encode output against the reference's `key` (every block, normed tokens). */
function check(name: string, out: EncoderOutput, b: number, key: string) {
  const [, N, D] = out.prenorm.shape as [number, number, number];
  const row = (a: Float32Array, rows: number) => a.subarray(b * rows * D, (b + 1) * rows * D);
  const refLayers = tensors[`${key}.layers`]!;
  const per = refLayers.data.length / out.layers!.length;
  out.layers!.forEach((l, k) => close(`${name} block ${k}`, row(l.data, N), refLayers.data.subarray(k * per, (k + 1) * per)));
  const R = out.registers.shape[1]!;
  const normed = new Float32Array(N * D);
  normed.set(out.cls.data.subarray(b * D, (b + 1) * D), 0);
  normed.set(row(out.registers.data, R), D);
  normed.set(row(out.patches.data, N - 1 - R), (1 + R) * D);
  close(`${name} normed tokens`, normed, tensors[`${key}.normed`]!.data);
}

for (const variant of ['planted', 'planted_noattn']) {
  test(`${variant}: OnnxEncoder with test-time registers, batch 1 and the whole batch, every block and output`, async () => {
    const { config, stateDict } = await readWeights(join(FIX, `${variant}.safetensors`), { config: HEADS });
    const neurons = ref[variant].neurons as { layer: number; neuron: number }[];
    const enc = await OnnxEncoder.fromWeights(config, stateDict, { threads: 1, testTimeRegisters: { neurons } });
    try {
      assert.equal(enc.config.num_register_tokens, config.num_register_tokens + 1);
      const B = tensors.images!.shape[0]!;
      const all = await enc.encode(images(0, B), { layers: true });
      assert.deepEqual(all.registers.shape, [B, config.num_register_tokens + 1, config.embed_dim]);
      for (let i = 0; i < B; i++) {
        const one = await enc.encode(images(i, 1), { layers: true });
        check(`${variant} image ${i} (batch 1)`, one, 0, `${variant}.ttr.${i}`);
        check(`${variant} image ${i} (batch ${B})`, all, i, `${variant}.ttr.${i}`);
      }
      // The plain graph of the same weights still matches the reference's forward without registers.
      const plain = await OnnxEncoder.fromWeights(config, stateDict, { threads: 1 });
      const p = await plain.encode(images(0, B), { layers: true });
      for (let i = 0; i < B; i++) check(`${variant} image ${i} plain`, p, i, `${variant}.plain.${i}`);
      await plain.dispose();
    } finally {
      await enc.dispose();
    }
  });
}

test('an exported .onnx file with test-time registers (fixed size, batch > 1) matches the reference', async () => {
  const { config, stateDict } = await readWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  const neurons = ref.planted.neurons as { layer: number; neuron: number }[];
  const [B, H, W] = tensors.images!.shape as [number, number, number, number];
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-onnx-ttr-'));
  try {
    const file = join(dir, 'ttr.onnx');
    await exportOnnx(file, config, stateDict, {
      height: H,
      width: W,
      outputs: ['cls', 'registers', 'patches', 'prenorm', 'layers'],
      testTimeRegisters: { neurons },
    });
    const enc = await OnnxEncoder.fromFile(file, { threads: 1 });
    assert.equal(enc.config.num_register_tokens, config.num_register_tokens + 1);
    assert.match(enc.description, /test-time register \(3 neurons\)/);
    const out = await enc.encode(images(0, B), { layers: true });
    for (let i = 0; i < B; i++) check(`file image ${i}`, out, i, `planted.ttr.${i}`);
    await enc.dispose();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('neurons outside the model are refused by name', async () => {
  const { config, stateDict } = await readWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  await assert.rejects(
    OnnxEncoder.fromWeights(config, stateDict, { testTimeRegisters: { neurons: [{ layer: config.depth, neuron: 0 }] } }),
    /testTimeRegisters\.neurons\[0\]\.layer: expected an integer in \[0, \d+\]/,
  );
  await assert.rejects(
    OnnxEncoder.fromWeights(config, stateDict, { testTimeRegisters: { neurons: [{ layer: 0, neuron: 1e6 }] } }),
    /testTimeRegisters\.neurons\[0\]\.neuron: expected an integer in \[0, \d+\]/,
  );
});

test('the encoder fingerprint checks a neurons file as the tfjs model does (another model refused)', async () => {
  await initBackend('wasm', { log: () => {} });
  const model = await loadWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  const neurons = (ref.planted.neurons as { layer: number; neuron: number }[]).map((n) => ({ ...n, score: 1 }));
  const file = await testTimeRegistersFile(model, {
    neurons,
    ranking: neurons,
    images: { used: 1, skipped: 0 },
    settings: { layer: -2, threshold: 30, highestLayer: 2, topK: 3, sparsity: null },
  });
  model.dispose();
  const same = await readWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  const other = await readWeights(join(FIX, 'planted_noattn.safetensors'), { config: HEADS });
  const a = await OnnxEncoder.fromWeights(same.config, same.stateDict);
  const b = await OnnxEncoder.fromWeights(other.config, other.stateDict);
  assert.deepEqual(
    (await testTimeRegisterNeurons(file, a, 'n.json')).map((n) => [n.layer, n.neuron]),
    neurons.map((n) => [n.layer, n.neuron]),
  );
  await assert.rejects(testTimeRegisterNeurons(file, b, 'n.json'), /n\.json: made for another model/);
  const ttr = await a.withTestTimeRegisters(neurons);
  assert.equal(ttr.config.num_register_tokens, 1);
  await Promise.all([a.dispose(), b.dispose(), ttr.dispose()]);
});
