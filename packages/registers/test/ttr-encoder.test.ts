/**
 * testTimeRegisterEncoder and TtrEncoder (ttr-encoder.ts) on the planted model of fixtures/ttr (see
 * ttr.test.ts): on a TfjsEncoder or a VisionTransformer its outputs equal withTestTimeRegisters' forward;
 * on ONNX Runtime it equals the tfjs one within numpy.allclose(1e-4, 1e-4); the neurons file is checked
 * against the weights (InputError naming the file); `owns` decides whether disposing frees the model.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend, InputError, readSafetensors, toFloat32 } from '@vitreg/core';
import {
  findRegisterNeurons,
  loadOnnxRuntime,
  loadWeights,
  OnnxEncoder,
  readRegisterNeurons,
  readWeights,
  saveTestTimeRegisters,
  testTimeRegisterEncoder,
  testTimeRegistersFile,
  TfjsEncoder,
  TtrEncoder,
  withTestTimeRegisters,
  type Encoder,
  type ImageBatch,
} from '../src/index.ts';
import * as tf from '@tensorflow/tfjs-core';
import { allclose } from './helpers.ts';

const FIX = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'ttr');
const ref = JSON.parse(readFileSync(join(FIX, 'planted.reference.json'), 'utf8'));
const HEADS = { num_heads: ref.config.num_heads as number };
const S = ref.settings as { layer: number; threshold: number; highest_layer: number; top_k: number };
let images: ImageBatch;
let dir: string;
let neuronsFile: string;

before(async () => {
  await initBackend('wasm');
  const { tensors } = await readSafetensors(join(FIX, 'planted.reference.safetensors'));
  images = { data: toFloat32(tensors.images!), shape: tensors.images!.shape as ImageBatch['shape'] };
  dir = await mkdtemp(join(tmpdir(), 'vitreg-ttr-encoder-'));
  const m = await loadWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  const x = tf.tensor4d(images.data, images.shape);
  const r = await findRegisterNeurons(m, x, { layer: S.layer, threshold: S.threshold, highestLayer: S.highest_layer, topK: S.top_k });
  neuronsFile = join(dir, 'neurons.json');
  await saveTestTimeRegisters(neuronsFile, await testTimeRegistersFile(m, r, 'planted.safetensors'));
  x.dispose();
  m.dispose();
  return () => rm(dir, { recursive: true, force: true });
});

test('on a TfjsEncoder and on a VisionTransformer: the outputs of withTestTimeRegisters, R + 1 registers, the file named', async () => {
  const m = await loadWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  const neurons = await readRegisterNeurons({ path: neuronsFile }, m);
  assert.equal(neurons.length, S.top_k);
  const want = await new TfjsEncoder(withTestTimeRegisters(m, neurons), false).encode(images, { layers: true });
  const base = new TfjsEncoder(m);
  const enc = await testTimeRegisterEncoder({ path: neuronsFile }, base);
  assert.ok(enc instanceof TtrEncoder);
  assert.match(enc.description, /test-time register \(3 neurons from .*neurons\.json\)/);
  assert.equal(enc.config.num_register_tokens, m.config.num_register_tokens + 1);
  const got = await enc.encode(images, { layers: true });
  assert.deepEqual(got.registers.shape, want.registers.shape);
  assert.deepEqual(got.patches.data, want.patches.data);
  assert.deepEqual(got.registers.data, want.registers.data);
  await enc.dispose();
  assert.ok(!m.param('norm.weight').isDisposed, 'a shared encoder keeps its model');
  const top1 = await testTimeRegisterEncoder({ path: neuronsFile, topK: 1 }, m, { owns: true });
  assert.match(top1.description, /1 neurons from/);
  await top1.dispose();
  assert.ok(m.param('norm.weight').isDisposed, 'an owned model is disposed with the encoder');
});

test('another model, a missing file and an encoder of another kind are InputErrors naming them', async () => {
  const other = await loadWeights(join(FIX, 'planted_noattn.safetensors'), { config: HEADS });
  const inputError = (re: RegExp) => (err: Error) => err instanceof InputError && re.test(err.message);
  await assert.rejects(testTimeRegisterEncoder({ path: neuronsFile }, other), inputError(/neurons\.json: made for another model/));
  await assert.rejects(readRegisterNeurons({ path: join(dir, 'missing.json') }, other), inputError(/missing\.json: cannot read/));
  const odd: Encoder = {
    engine: 'tfjs',
    config: other.config,
    description: 'a stand-in',
    encode: async () => {
      throw new Error('unused');
    },
    dispose: async () => {},
  };
  await assert.rejects(testTimeRegisterEncoder({ path: neuronsFile }, odd), inputError(/^not available on a stand-in$/));
  other.dispose();
});

test('on ONNX Runtime: an encoder on the same weights with the register, equal to tfjs within 1e-4', async (t) => {
  try {
    await loadOnnxRuntime();
  } catch {
    t.skip('onnxruntime-node does not load here');
    return;
  }
  const { config, stateDict } = await readWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  const base = await OnnxEncoder.fromWeights(config, stateDict);
  const enc = await testTimeRegisterEncoder({ path: neuronsFile }, base);
  assert.ok(enc instanceof OnnxEncoder && enc !== base);
  const m = await loadWeights(join(FIX, 'planted.safetensors'), { config: HEADS });
  const tfjs = await testTimeRegisterEncoder({ path: neuronsFile }, m, { owns: true });
  const [a, b] = [await enc.encode(images), await tfjs.encode(images)];
  assert.deepEqual(a.registers.shape, b.registers.shape);
  for (const k of ['cls', 'registers', 'patches'] as const) assert.equal(allclose(a[k].data, b[k].data), null, k);
  for (const e of [enc, base, tfjs]) await e.dispose();
});
