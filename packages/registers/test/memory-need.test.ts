import assert from 'node:assert/strict';
import { test } from 'node:test';
import { initBackend, InputError, WASM_HEAP_BYTES } from '@vitreg/core';
import { getConfig } from '../src/config.js';
import { TfjsEncoder } from '../src/encoder.js';
import { checkVitFits, parameterCount, vitMemoryNeed } from '../src/memory-need.js';
import { VisionTransformer } from '../src/model.js';
import { modelFromStateDict, stateDictOf } from '../src/weights.js';

const GiB = 2 ** 30;
const l14 = getConfig('dinov2_vitl14_reg');

test('dinov2-l14-reg4 cannot run on wasm at its 518 px: the clear error, not "memory access out of bounds"', () => {
  assert.equal(parameterCount(l14), 304_372_736);
  assert.throws(
    () => checkVitFits(l14, { batch: 8, backend: 'wasm', what: 'dinov2_vitl14_reg' }),
    (err: Error) => {
      assert.ok(err instanceof InputError);
      assert.match(
        err.message,
        /^dinov2_vitl14_reg \(304\.4M parameters, batch 8\) needs about [\d.]+ GiB \(weights 2\.27 GiB \+ activations [\d.]+ GiB\) on the wasm backend/,
      );
      assert.match(err.message, /(4 GiB heap|free memory|cgroup)/);
      assert.match(err.message, /ways out: the ONNX Runtime engine .*tfjs-node .*fp16 weights/);
      return true;
    },
  );
  // training never fits the 4 GiB heap: weights (2 copies), gradients (3 on tfjs) and AdamW's moments alone are 7.9 GiB
  const train = vitMemoryNeed(l14, { batch: 1, imageSize: 224, training: {} });
  assert.ok(train.weights + train.gradients + train.optimizer > WASM_HEAP_BYTES);
  // a small model at 224 fits
  assert.ok(checkVitFits(getConfig('dinov2_vits14_reg'), { batch: 8, imageSize: 224, backend: 'wasm' }) < GiB);
});

test('per backend: WebGPU refuses a tensor over maxStorageBufferBindingSize; tensorflow-gpu is not checked', async () => {
  // The attention scores of 8 images at 518 px are 922 MiB: over a 128 MiB binding limit (SwiftShader's default).
  const { backendBudget, checkMemoryFit } = await import('@vitreg/core');
  const need = vitMemoryNeed(l14, { batch: 8 });
  assert.throws(
    () =>
      checkMemoryFit(
        'l14',
        need,
        backendBudget('webgpu', { webgpuLimits: { maxStorageBufferBindingSize: 128 * 2 ** 20, maxBufferSize: GiB } }),
      ),
    /makes a tensor of 922 MiB on the webgpu backend, more than the WebGPU device's maxStorageBufferBindingSize of 128 MiB/,
  );
  assert.throws(
    () => checkMemoryFit('l14', need, backendBudget('tensorflow', { host: { available: 4 * GiB, source: 'free memory' } })),
    /on the tensorflow backend, more than free memory of 4\.00 GiB/,
  );
  assert.ok(checkVitFits(l14, { batch: 8, backend: 'tensorflow-gpu' }) > 4 * GiB);
});

test('the check runs where models are built from weights and before each new batch shape of a tfjs forward', async (t) => {
  await initBackend('wasm', { verbose: false });
  const c = getConfig('vit_micro_patch8_reg4');
  const model = new VisionTransformer(c, { seed: 1, trainable: false });
  t.after(() => model.dispose());
  const sd = await stateDictOf(model);
  const enc = new TfjsEncoder(model, false);
  const images = (b: number) => ({ data: new Float32Array(b * 32 * 32 * 3), shape: [b, 32, 32, 3] as [number, number, number, number] });
  await enc.encode(images(1));
  const saved = process.env.VITREG_MEMORY_LIMIT;
  t.after(() => (saved === undefined ? delete process.env.VITREG_MEMORY_LIMIT : (process.env.VITREG_MEMORY_LIMIT = saved)));
  process.env.VITREG_MEMORY_LIMIT = String(100_000); // bytes: less than the micro model's weights
  assert.throws(() => modelFromStateDict(sd, c), /the model \(0\.\d+M parameters, batch 1\) needs about .* more than VITREG_MEMORY_LIMIT/);
  await assert.rejects(enc.encode(images(64)), /the tfjs forward \(0\.\d+M parameters, batch 64\) needs about/);
});

test('ONNX Runtime: one copy of the weights against the host memory', () => {
  const tfjs = vitMemoryNeed(l14, { batch: 1 });
  const ort = vitMemoryNeed(l14, { batch: 1, engine: 'onnxruntime' });
  assert.equal(ort.weights * 2, tfjs.weights);
  const saved = process.env.VITREG_MEMORY_LIMIT;
  process.env.VITREG_MEMORY_LIMIT = String(GiB);
  try {
    assert.throws(
      () => checkVitFits(l14, { backend: 'onnxruntime', engine: 'onnxruntime' }),
      /needs about [\d.]+ GiB \(weights 1\.13 GiB \+ activations .*\) on the onnxruntime backend, more than VITREG_MEMORY_LIMIT of 1\.00 GiB/,
    );
  } finally {
    if (saved === undefined) delete process.env.VITREG_MEMORY_LIMIT;
    else process.env.VITREG_MEMORY_LIMIT = saved;
  }
});
