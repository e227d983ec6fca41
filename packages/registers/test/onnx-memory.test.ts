/**
 * The ONNX Runtime forward checks each new batch shape against what the process can have (issue 21): a
 * batch too large for an injected limit (VITREG_MEMORY_LIMIT) is refused before ONNX Runtime runs it,
 * with the numbers and the largest batch that fits; that batch then runs.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { initBackend, InputError } from '@vitreg/core';
import { getConfig } from '../src/config.js';
import { largestFittingBatch, vitMemoryNeed } from '../src/memory-need.js';
import { VisionTransformer } from '../src/model.js';
import { OnnxEncoder } from '../src/onnx-encoder.js';
import { stateDictOf } from '../src/weights.js';

test('a batch that cannot fit is refused before it runs, naming the batch that fits', async (t) => {
  await initBackend('wasm', { verbose: false });
  const c = getConfig('vit_micro_patch8_reg4');
  const model = new VisionTransformer(c, { seed: 1, trainable: false });
  const sd = await stateDictOf(model);
  model.dispose();
  const enc = await OnnxEncoder.fromWeights(c, sd, { threads: 1 });
  t.after(() => enc.dispose());
  const images = (b: number) => ({ data: new Float32Array(b * 32 * 32 * 3), shape: [b, 32, 32, 3] as [number, number, number, number] });
  const saved = process.env.VITREG_MEMORY_LIMIT;
  t.after(() => (saved === undefined ? delete process.env.VITREG_MEMORY_LIMIT : (process.env.VITREG_MEMORY_LIMIT = saved)));

  // a limit that holds the weights and 4 images' activations, not 64
  const mem = { engine: 'onnxruntime' as const, imageSize: [32, 32] as [number, number] };
  const one = vitMemoryNeed(c, { ...mem, batch: 1 });
  const four = vitMemoryNeed(c, { ...mem, batch: 4 });
  const limit = four.weights + four.activations + (four.activations - one.activations) / 30; // a tenth of an image
  assert.equal(largestFittingBatch(c, limit, mem), 4);
  process.env.VITREG_MEMORY_LIMIT = String(Math.floor(limit));
  await assert.rejects(enc.encode(images(64)), (err: Error) => {
    assert.ok(err instanceof InputError);
    assert.match(
      err.message,
      /^the ONNX Runtime forward \(0\.\d+M parameters, batch 64 of 32x32 images\) needs about [\d.]+ [KM]iB \(weights [\d.]+ [KM]iB \+ activations [\d.]+ [KM]iB\) on the onnxruntime backend, more than VITREG_MEMORY_LIMIT of [\d.]+ [KM]iB; ways out: a smaller batch \(--batch-size 4 fits\)/,
    );
    return true;
  });
  const out = await enc.encode(images(4));
  assert.deepEqual(out.cls.shape, [4, c.embed_dim]);
  // every block's attention maps are outputs too: 4 images with attention 'all' do not fit
  await assert.rejects(enc.encode(images(4), { attention: 'all' }), /batch 4 of 32x32 images.*--batch-size [0-3] fits\).*--attention last/);
  // the weights fit, not one image: smaller images; the weights do not fit: fp16 weights
  process.env.VITREG_MEMORY_LIMIT = String(one.weights + 1000);
  await assert.rejects(enc.encode(images(2)), /ways out: smaller images \(not one 32x32 image fits\)/);
  process.env.VITREG_MEMORY_LIMIT = String(one.weights - 1000);
  await assert.rejects(enc.encode(images(2)), /ways out: fp16 weights \(vitreg export --dtype fp16/);
});
