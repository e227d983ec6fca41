/**
 * The ONNX Runtime engine checks that a run fits the host before allocating anything: dinov2-l14-reg4 at
 * batch 2 under a 4 GB limit (VITREG_MEMORY_LIMIT stands for a smaller machine) is refused naming ONNX
 * Runtime, one copy of the student's and the EMA teacher's weights (2 x 1.13 GiB: 303.2M float32 backbone
 * parameters and tiny-dino's 0.4M of heads each) and the parts of the estimate; the same run without the
 * limit, and a tiny run, get past the check. What the engine adds to the backbone's estimate (its heads,
 * their logits, onnxruntime-node's copy of the gradients) for dinov2-l14-reg4, counted by hand.
 */
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { InputError } from '@vitreg/core';
import { parameterCount } from '@vitreg/registers';
import { onnxEngineExtraNeed } from '../src/memory-check.js';
import { validateTrainConfig } from '../src/config-validate.js';
import { modelConfig } from '../src/config.js';
import { onnxRuntimeEngine } from '../src/onnx/engine.js';

const large = () =>
  validateTrainConfig({
    preset: 'tiny-dino',
    model: { arch: 'dinov2_vitl14_reg', img_size: 224 },
    data: { source: 'synthetic', train_size: 16, val_size: 8 },
    train: { steps: 1, batch_size: 2 },
    crops: { global_crops_size: 224, local_crops_size: 98 },
  });

afterEach(() => {
  delete process.env.VITREG_MEMORY_LIMIT;
});

test('training dinov2-l14-reg4 on ONNX Runtime under a 4 GB limit is refused with the numbers', () => {
  process.env.VITREG_MEMORY_LIMIT = String(4e9);
  const config = large();
  assert.throws(
    () => onnxRuntimeEngine()({ config, vit: modelConfig(config), numClasses: 10 }),
    (err: Error) => {
      assert.ok(err instanceof InputError, String(err));
      assert.match(
        err.message,
        /^training dinov2_vitl14_reg on ONNX Runtime \(303\.6M parameters, batch 2, training\) needs about [\d.]+ GiB \(weights 2\.26 GiB \+ gradients 1\.13 GiB \+ optimiser state 2\.26 GiB \+ activations [\d.]+ (GiB|MiB)\)/,
      );
      assert.match(err.message, /more than VITREG_MEMORY_LIMIT of 3\.73 GiB; ways out: a smaller batch/);
      assert.doesNotMatch(err.message, /--engine onnxruntime/, 'no advice to use the engine it runs on');
      return true;
    },
  );
});

test('a tiny run on ONNX Runtime gets past the check', () => {
  process.env.VITREG_MEMORY_LIMIT = String(4e9);
  const config = validateTrainConfig({
    preset: 'tiny-dino',
    model: { arch: 'vit_micro_patch8_reg4', depth: 2 },
    data: { source: 'synthetic', train_size: 16, val_size: 8 },
    train: { steps: 1, batch_size: 4 },
  });
  const engine = onnxRuntimeEngine()({ config, vit: modelConfig(config), numClasses: 10 });
  assert.ok(engine.parameters.length > 0);
  engine.dispose();
});

test("the ONNX Runtime engine's own memory beside the backbone's, for dinov2-l14-reg4 at batch 2, counted by hand", () => {
  const config = validateTrainConfig({ preset: 'dinov2-l14-reg4', train: { batch_size: 2 }, data: { source: 'synthetic' } }, 'test');
  const vit = modelConfig(config);
  const need = onnxEngineExtraNeed({ config, vit, numClasses: 10 });
  // DINO head 1024 -> 2048 -> 2048 -> 384, weight-normalised last layer to 131072 prototypes (weight_g, weight_v);
  // the separate iBOT head the same with a 256 bottleneck.
  const dino = 1024 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 384 + 384 + 131072 + 384 * 131072;
  const ibot = 1024 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 256 + 256 + 131072 + 256 * 131072;
  const heads = dino + ibot;
  assert.equal(heads, 98_050_688);
  assert.equal(need.weights, 2 * heads * 4, 'student and teacher');
  assert.equal(need.gradients, heads * 4);
  assert.equal(need.optimizer, 2 * heads * 4, "AdamW's two moments");
  // Rows: the CLS of 2 x (2 global + 8 local) crops and the teacher's 2 x 2 global; iBOT: 2 x 2 x 0.5 = 2
  // masked crops of at most 0.5 x 16 x 16 = 128 patches (256 rows, a bucket of its own), student and teacher.
  const logits = 3 * (24 * 131072 + 2 * 256 * 131072);
  assert.equal(need.activations, (logits + parameterCount(vit) + heads) * 4, 'logits and the returned copy of every gradient');
});
