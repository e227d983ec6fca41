/**
 * The tfjs engine checks that a run fits the backend before allocating anything: dinov2-l14-reg4 on wasm
 * (weights, gradients and AdamW's moments alone are 5.7 GiB, over the 4 GiB heap) is refused with the
 * numbers and the ways out, not "memory access out of bounds" in the middle of a step.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { InputError } from '@vitreg/core';
import { validateTrainConfig } from '../src/config-validate.js';
import { modelConfig } from '../src/config.js';
import { tfjsEngine } from '../src/tfjs-engine.js';
import { useWasm } from './helpers.js';

before(useWasm);

test('training dinov2-l14-reg4 on wasm is refused before anything is allocated', () => {
  const config = validateTrainConfig({
    preset: 'tiny-dino',
    model: { arch: 'dinov2_vitl14_reg', img_size: 224 },
    data: { source: 'synthetic', train_size: 16, val_size: 8 },
    train: { steps: 1, batch_size: 2 },
    crops: { global_crops_size: 224, local_crops_size: 98 },
  });
  const before = tf.memory().numBytes;
  assert.throws(
    () => tfjsEngine({ config, vit: modelConfig(config), numClasses: 10 }),
    (err: Error) => {
      assert.ok(err instanceof InputError);
      assert.match(
        err.message,
        /^training dinov2_vitl14_reg on tfjs \(303\.2M parameters, batch 2, training\) needs about [\d.]+ GiB \(weights 4\.52 GiB \+ gradients 1\.13 GiB \+ optimiser state 2\.26 GiB \+ activations [\d.]+ (GiB|MiB)\) on the wasm backend, more than/,
      );
      assert.match(err.message, /ways out: the ONNX Runtime engine/);
      return true;
    },
  );
  assert.equal(tf.memory().numBytes, before, 'nothing allocated');
});

test('a tiny run fits and builds', () => {
  const config = validateTrainConfig({
    preset: 'tiny-dino',
    model: { arch: 'vit_micro_patch8_reg4', depth: 2 },
    data: { source: 'synthetic', train_size: 16, val_size: 8 },
    train: { steps: 1, batch_size: 4 },
  });
  const engine = tfjsEngine({ config, vit: modelConfig(config), numClasses: 10 });
  assert.ok(engine.parameters.length > 0);
});
