/**
 * The tfjs engine checks that a run fits the backend before allocating anything: dinov2-l14-reg4 on wasm
 * (weights, gradients and AdamW's moments alone are over 10 GiB, over the 4 GiB heap) is refused with the
 * numbers and the ways out, not "memory access out of bounds" in the middle of a step; the DINO heads
 * count (ViT-S/14 at batch 2 with DINOv2's 65536 prototypes died with "Aborted()" in its first step
 * when only the backbone was counted), and the optimiser updates one tensor at a time.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { InputError, Rng } from '@vitreg/core';
import { validateTrainConfig } from '../src/config-validate.js';
import { modelConfig } from '../src/config.js';
import { tfjsEngine } from '../src/tfjs-engine.js';
import { checkTrainingFits } from '../src/memory-check.js';
import { collateMasks, MaskingGenerator, maxMaskedPatches } from '../src/masking.js';
import { AdamW, Lamb } from '../src/optim.js';
import { useWasm } from './helpers.js';

before(useWasm);

// By hand: the backbone at 224 px has 303,233,024 parameters (304,372,736 at 518 px less 1113 positions x
// 1024), tiny-dino's DINO head (shared with iBOT) 348,800 (1024x256 + 256, 256x256 + 256, 256x64 + 64,
// weight_g 64, weight_v 64x64): 303.6M. Weights: 2 tfjs copies of the student and of the teacher, 16 bytes
// per parameter, 4.52 GiB; gradients 3 copies (the backward's, the update's, the clipped), 3.39 GiB;
// AdamW's two moments 2.26 GiB.
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
        /^training dinov2_vitl14_reg on tfjs \(303\.6M parameters, batch 2, training\) needs about [\d.]+ GiB \(weights 4\.52 GiB \+ gradients 3\.39 GiB \+ optimiser state 2\.26 GiB \+ activations [\d.]+ (GiB|MiB)\) on the wasm backend, more than/,
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

/** ViT-S/14 with registers, DINOv2's crops (2 x 224, 8 x 98) at batch 2, and DINO / iBOT heads of `K` prototypes. */
function vitsDino(K: number, hidden: number, bottleneck: number) {
  const heads = { head_n_prototypes: K, head_hidden_dim: hidden, head_bottleneck_dim: bottleneck };
  const config = validateTrainConfig({
    preset: 'tiny-dino',
    model: { arch: 'dinov2_vits14_reg', img_size: 224 },
    data: { source: 'synthetic', train_size: 16, val_size: 8 },
    train: { steps: 1, batch_size: 2 },
    dino: heads,
    ibot: heads,
    crops: { global_crops_size: 224, local_crops_size: 98, local_crops_number: 8 },
  });
  return { config, vit: modelConfig(config), numClasses: 10 };
}

test('the heads count: ViT-S/14 at batch 2 fits with small heads and is refused with 65536 prototypes', () => {
  // Measured on wasm: small heads train at batch 2 (2.52 GiB of heap after the step); 65536 prototypes ran out.
  assert.doesNotThrow(() => checkTrainingFits(vitsDino(64, 256, 64), 'tfjs'));
  assert.throws(
    () => checkTrainingFits(vitsDino(65536, 2048, 256), 'tfjs'),
    (err: Error) =>
      err instanceof InputError && /^training dinov2_vits14_reg on tfjs \(44\.0M parameters, batch 2, training\)/.test(err.message),
  );
});

test('maxMaskedPatches: the top of each masked crop ratio slice, and no draw of collateMasks exceeds it', () => {
  // 8 crops at probability 0.5: 4 masked, slices of [0.1, 0.5] ending at 0.2, 0.3, 0.4, 0.5 of 16 patches.
  assert.equal(maxMaskedPatches(8, 16, [0.1, 0.5], 0.5), 3 + 4 + 6 + 8);
  assert.equal(maxMaskedPatches(1, 16, [0.1, 0.5], 0.5), 0);
  const gen = new MaskingGenerator(4, 4);
  const rng = new Rng(3);
  let most = 0;
  for (let i = 0; i < 300; i++) most = Math.max(most, collateMasks(8, gen, [0.1, 0.5], 0.5, rng).indices.length);
  assert.ok(most <= 21, `a draw masked ${most} patches`);
  assert.ok(most >= 15, `the bound is near what draws reach: at most ${most} of 21`);
});

test('AdamW and LAMB update one tensor at a time: the peak is a few copies of one tensor, not of the model', async () => {
  const n = 1 << 16;
  const params = Array.from({ length: 8 }, (_, i) => ({
    name: `w${i}`,
    variable: tf.variable(tf.fill([n], 0.5)),
    lrMult: 1,
    wdMult: 1,
    isLastLayer: false,
  }));
  const grads = params.map(() => tf.fill([n], 0.1));
  try {
    for (const opt of [new AdamW(params), new Lamb(params)]) {
      const start = tf.memory().numBytes;
      const info = await tf.profile(() => opt.apply(grads, { lr: 1e-3, wd: 0.05 }));
      // One at a time: about 10 copies of one tensor (AdamW) or 20 (LAMB); one tidy over all 8 held 8 times that.
      const transient = info.peakBytes - start;
      assert.ok(transient <= 24 * n * 4, `${opt.constructor.name}: ${transient / (n * 4)} tensors' worth at once`);
      opt.dispose();
    }
  } finally {
    tf.dispose([...grads, ...params.map((p) => p.variable)]);
  }
});
