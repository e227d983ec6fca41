import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_CONFIG, PRESET_NAMES, presetConfig, validateTrainConfig } from '../src/config.js';

test('every preset validates, and the register twins differ only in num_register_tokens', () => {
  assert.deepEqual(PRESET_NAMES.slice().sort(), ['deit3-b16', 'deit3-b16-reg4', 'dinov2-l14', 'dinov2-l14-reg4', 'tiny-dino', 'tiny-supervised']);
  for (const name of PRESET_NAMES) presetConfig(name);
  for (const [a, b] of [['deit3-b16-reg4', 'deit3-b16'], ['dinov2-l14-reg4', 'dinov2-l14']] as const) {
    const x = presetConfig(a);
    const y = presetConfig(b);
    assert.equal(y.model.num_register_tokens, 0);
    assert.deepEqual({ ...x, model: { ...x.model, num_register_tokens: 0 } }, y);
  }
  assert.equal(presetConfig('tiny-dino').objective, 'dino');
  const dino = presetConfig('dinov2-l14-reg4');
  assert.deepEqual([dino.dino.loss_weight, dino.ibot.loss_weight, dino.dino.koleo_loss_weight], [1, 1, 0.1]);
  assert.deepEqual([dino.dino.warmup_teacher_temp, dino.dino.teacher_temp, dino.dino.student_temp, dino.dino.center_momentum], [0.04, 0.07, 0.1, 0.9]);
});

test('a partial config is merged over the defaults or a preset', () => {
  const c = validateTrainConfig({ optim: { lr: 0.01 }, model: { num_register_tokens: 8 } });
  assert.equal(c.optim.lr, 0.01);
  assert.equal(c.optim.min_lr, DEFAULT_CONFIG.optim.min_lr);
  assert.equal(c.model.arch, DEFAULT_CONFIG.model.arch);
  assert.equal(c.model.num_register_tokens, 8);
  const p = validateTrainConfig({ preset: 'tiny-dino', train: { steps: 70, eval_every: 0 } });
  assert.equal(p.objective, 'dino');
  assert.equal(p.train.steps, 70);
  assert.equal(p.dino.head_n_prototypes, presetConfig('tiny-dino').dino.head_n_prototypes);
});

test('bad configs name the field and the allowed values', () => {
  const bad: [unknown, RegExp][] = [
    [[], /expected a JSON object/],
    [{ objective: 'mae' }, /field "objective" must be one of supervised, dino, got "mae"/],
    [{ optimizer: {} }, /unknown field "optimizer"; expected one of objective, model, preset, data/],
    [{ optim: { lr: -1 } }, /field "optim.lr" must be a number >= 0, got -1/],
    [{ optim: { learning_rate: 1 } }, /unknown field "optim.learning_rate"; expected one of optim.lr, optim.min_lr/],
    [{ train: { steps: 2.5 } }, /field "train.steps" must be an integer >= 1, got 2.5/],
    [{ data: { num_classes: 3 } }, /field "data.num_classes" must be an integer >= 5 and <= 8, got 3/],
    [{ crops: { global_crops_scale: [0.9, 0.2] } }, /field "crops.global_crops_scale" must be a pair \[min, max\] with 0 <= min <= max <= 1/],
    [{ ibot: { separate_head: 'yes' } }, /field "ibot.separate_head" must be true or false, got "yes"/],
    [{ dino: { student_temp: 0 } }, /field "dino.student_temp" must be a number > 0, got 0/],
    [{ model: { arch: 'resnet50' } }, /field "model.arch" must be one of .*vit_micro_patch8_reg4.*got "resnet50"/],
    [{ model: { depthh: 3 } }, /unknown field "model.depthh"; expected model.arch or one of model.embed_dim/],
    [{ model: { num_register_tokens: 17 } }, /num_register_tokens.*between 0 and 16/],
    [{ preset: 'tiny' }, /field "preset" must be one of tiny-supervised, tiny-dino/],
    [{ crops: { global_crops_size: 36 } }, /"crops.global_crops_size" \(36\) must be a multiple of the patch size 8/],
    [{ objective: 'dino', dino: { loss_weight: 0 }, ibot: { loss_weight: 0 } }, /cannot both be 0/],
  ];
  for (const [raw, re] of bad) assert.throws(() => validateTrainConfig(raw, 'run.json'), (err: Error) => re.test(err.message) && err.message.startsWith('run.json'), JSON.stringify(raw));
});
