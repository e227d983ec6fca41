/**
 * The clip objective on ONNX Runtime checks that a run fits the host before it opens the data or builds
 * the model (memory-check.ts's checkClipTrainingFits), as the supervised and DINO engines do: open_clip's
 * ViT-B-16 with its 12-block text tower at batch 64 under a 4 GB limit (VITREG_MEMORY_LIMIT stands for a
 * smaller machine) is refused with the estimate's parts, the limit and the ways out; the estimate counts
 * the parameters the model has; tiny-clip fits; a GPU device is not checked.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { InputError } from '@vitreg/core';
import { ClipModel } from '@vitreg/registers';
import { clipModelConfig, clipTokenizer } from '../src/clip-setup.js';
import { clipParamSpecs } from '../src/clip-train.js';
import { validateTrainConfig } from '../src/config-validate.js';
import { train } from '../src/loop.js';
import { checkClipTrainingFits, clipTrainingNeed } from '../src/memory-check.js';
import { onnxRuntimeEngine } from '../src/onnx/engine.js';
import { useWasm } from './helpers.js';

before(useWasm);

afterEach(() => {
  delete process.env.VITREG_MEMORY_LIMIT;
});

const openclip = () =>
  validateTrainConfig({
    preset: 'openclip-b16-reg4',
    data: { source: 'synthetic', train_size: 128, val_size: 8 },
    train: { steps: 1, checkpoint_every: 0, eval_every: 0 },
  });

test('open_clip ViT-B-16 at batch 64 on ONNX Runtime under a 4 GB limit is refused with the numbers, before the model is built', async () => {
  process.env.VITREG_MEMORY_LIMIT = String(4e9);
  const config = openclip();
  assert.equal(config.train.batch_size, 64);
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-clip-fit-'));
  const tensors = tf.memory().numTensors;
  try {
    await assert.rejects(train(config, { outDir: dir, engine: onnxRuntimeEngine(), progress: false }), (err: Error) => {
      assert.ok(err instanceof InputError, String(err));
      assert.match(
        err.message,
        /^training clip \(openclip_vitb16 \+ a 12-block text tower\) on ONNX Runtime \(149\.6M parameters, batch 64, training\) needs about [\d.]+ GiB \(weights 1\.67 GiB \+ gradients 571 MiB \+ optimiser state 1\.11 GiB \+ activations [\d.]+ GiB\)/,
      );
      assert.match(err.message, /more than VITREG_MEMORY_LIMIT of 3\.73 GiB; ways out: a smaller batch \(train\.batch_size/);
      assert.match(err.message, /a GPU \(--device cuda or webgpu\)/);
      return true;
    });
    assert.equal(tf.memory().numTensors, tensors, 'no model was built before the refusal');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the clip estimate counts the parameters of both towers; tiny-clip fits 4 GB; a GPU is not checked', async () => {
  process.env.VITREG_MEMORY_LIMIT = String(4e9);
  const config = validateTrainConfig({ preset: 'tiny-clip' });
  const clip = clipModelConfig(config, (await clipTokenizer(config)).vocabSize);
  const model = new ClipModel(clip, { seed: 1 });
  try {
    const params = clipParamSpecs(model).reduce((n, s) => n + s.variable.size, 0);
    const need = clipTrainingNeed(clip, config.train.batch_size);
    assert.equal(need.gradients, 4 * params, 'gradients: one float per parameter of both towers and the logit scale');
    assert.equal(need.optimizer, 8 * params);
    const fits = checkClipTrainingFits(clip, config.train.batch_size, { arch: config.model.arch });
    assert.ok(fits > 0 && fits < 4e9, `tiny-clip needs ${fits} bytes`);
    // Batch 64 needs more activations than batch 8, and the logits grow with the world size.
    const more = clipTrainingNeed(clip, 64, 4);
    assert.ok(more.activations > clipTrainingNeed(clip, 64, 1).activations && more.activations > need.activations);
  } finally {
    model.dispose();
  }
  const big = openclip();
  const bigClip = clipModelConfig(big, 49408);
  assert.equal(checkClipTrainingFits(bigClip, 64, { device: 'cuda' }), 0);
  assert.throws(() => checkClipTrainingFits(bigClip, 64), InputError);
});
