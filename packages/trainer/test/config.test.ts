import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { getConfig } from '@vitreg/registers';
import { DEFAULT_CONFIG, modelConfig, type TrainConfig } from '../src/config.js';
import { PRESET_ALIASES, PRESET_NAMES, isPaperPreset } from '../src/config-presets.js';
import { presetConfig, resolveTrainConfig, validateTrainConfig } from '../src/config-validate.js';

/** ssl_default_config.yaml and vitl14.yaml as the official repository holds them (fixtures/make_dinov2_reference.py). */
const official = JSON.parse(readFileSync(new URL('./fixtures/dinov2_reference.json', import.meta.url), 'utf8')).configs;
const EPOCH = official.default.train.OFFICIAL_EPOCH_LENGTH as number;

/**
 * Every field of the official DINOv2 config that has a counterpart here: [official path, value here].
 * Epoch counts are steps here (epochs x OFFICIAL_EPOCH_LENGTH).
 */
function dinov2Fields(y: Record<string, Record<string, unknown>>, c: TrainConfig): [string, unknown, unknown][] {
  const vit = modelConfig(c);
  const arch = { vit_large: [1024, 24, 16], vit_giant2: [1536, 40, 24] }[y.student!.arch as string]!;
  const ffn = { mlp: 'mlp', swiglufused: 'swiglu', swiglu: 'swiglu' }[y.student!.ffn_layer as string];
  const rows: [string, unknown, unknown][] = [
    ['dino.loss_weight', y.dino!.loss_weight, c.dino.loss_weight],
    ['dino.head_n_prototypes', y.dino!.head_n_prototypes, c.dino.head_n_prototypes],
    ['dino.head_bottleneck_dim', y.dino!.head_bottleneck_dim, c.dino.head_bottleneck_dim],
    ['dino.head_nlayers', y.dino!.head_nlayers, c.dino.head_nlayers],
    ['dino.head_hidden_dim', y.dino!.head_hidden_dim, c.dino.head_hidden_dim],
    ['dino.koleo_loss_weight', y.dino!.koleo_loss_weight, c.dino.koleo_loss_weight],
    ['ibot.loss_weight', y.ibot!.loss_weight, c.ibot.loss_weight],
    ['ibot.mask_sample_probability', y.ibot!.mask_sample_probability, c.ibot.mask_sample_probability],
    ['ibot.mask_ratio_min_max', y.ibot!.mask_ratio_min_max, c.ibot.mask_ratio_min_max],
    ['ibot.separate_head', y.ibot!.separate_head, c.ibot.separate_head],
    ['ibot.head_n_prototypes', y.ibot!.head_n_prototypes, c.ibot.head_n_prototypes],
    ['ibot.head_bottleneck_dim', y.ibot!.head_bottleneck_dim, c.ibot.head_bottleneck_dim],
    ['ibot.head_nlayers', y.ibot!.head_nlayers, c.ibot.head_nlayers],
    ['ibot.head_hidden_dim', y.ibot!.head_hidden_dim, c.ibot.head_hidden_dim],
    ['train.batch_size_per_gpu', y.train!.batch_size_per_gpu, c.train.batch_size],
    ['train.seed', y.train!.seed, c.train.seed],
    ['train.saveckp_freq (epochs)', (y.train!.saveckp_freq as number) * EPOCH, c.train.checkpoint_every],
    ['train.centering', y.train!.centering, c.train.centering],
    ['student.arch', arch, [vit.embed_dim, vit.depth, vit.num_heads]],
    ['student.patch_size', y.student!.patch_size, vit.patch_size],
    ['student.drop_path_rate', y.student!.drop_path_rate, vit.drop_path_rate],
    ['student.layerscale', y.student!.layerscale, vit.layerscale_init],
    ['student.drop_path_uniform', y.student!.drop_path_uniform, vit.drop_path_uniform],
    ['student.ffn_layer', ffn, vit.ffn_layer],
    ['student.qkv_bias', y.student!.qkv_bias, vit.qkv_bias],
    ['student.proj_bias', y.student!.proj_bias, vit.proj_bias],
    ['student.ffn_bias', y.student!.ffn_bias, vit.ffn_bias],
    ['student.interpolate_antialias', y.student!.interpolate_antialias, vit.interpolate_antialias],
    ['student.interpolate_offset', y.student!.interpolate_offset, vit.interpolate_offset],
    ['img_size = crops.global_crops_size', y.crops!.global_crops_size, vit.img_size],
    ['teacher.momentum_teacher', y.teacher!.momentum_teacher, c.dino.momentum_teacher],
    ['teacher.final_momentum_teacher', y.teacher!.final_momentum_teacher, c.dino.final_momentum_teacher],
    ['teacher.warmup_teacher_temp', y.teacher!.warmup_teacher_temp, c.dino.warmup_teacher_temp],
    ['teacher.teacher_temp', y.teacher!.teacher_temp, c.dino.teacher_temp],
    ['teacher.warmup_teacher_temp_epochs', (y.teacher!.warmup_teacher_temp_epochs as number) * EPOCH, c.dino.warmup_teacher_temp_steps],
    ['optim.epochs', (y.optim!.epochs as number) * EPOCH, c.train.steps],
    ['optim.weight_decay', y.optim!.weight_decay, c.optim.weight_decay],
    ['optim.weight_decay_end', y.optim!.weight_decay_end, c.optim.weight_decay_end],
    ['optim.base_lr', y.optim!.base_lr, c.optim.base_lr],
    ['optim.warmup_epochs', (y.optim!.warmup_epochs as number) * EPOCH, c.optim.warmup_steps],
    ['optim.min_lr', y.optim!.min_lr, c.optim.min_lr],
    ['optim.clip_grad', y.optim!.clip_grad, c.optim.clip_grad],
    ['optim.freeze_last_layer_epochs', (y.optim!.freeze_last_layer_epochs as number) * EPOCH, c.optim.freeze_last_layer_steps],
    ['optim.scaling_rule', y.optim!.scaling_rule, c.optim.scaling_rule],
    ['optim.patch_embed_lr_mult', y.optim!.patch_embed_lr_mult, c.optim.patch_embed_lr_mult],
    ['optim.layerwise_decay', y.optim!.layerwise_decay, c.optim.layerwise_decay],
    ['optim.adamw_beta1', y.optim!.adamw_beta1, c.optim.beta1],
    ['optim.adamw_beta2', y.optim!.adamw_beta2, c.optim.beta2],
    ['crops.global_crops_scale', y.crops!.global_crops_scale, c.crops.global_crops_scale],
    ['crops.local_crops_number', y.crops!.local_crops_number, c.crops.local_crops_number],
    ['crops.local_crops_scale', y.crops!.local_crops_scale, c.crops.local_crops_scale],
    ['crops.global_crops_size', y.crops!.global_crops_size, c.crops.global_crops_size],
    ['crops.local_crops_size', y.crops!.local_crops_size, c.crops.local_crops_size],
    ['evaluation.eval_period_iterations', (y.evaluation as Record<string, unknown>)?.eval_period_iterations, c.train.eval_every],
  ];
  return rows;
}

test('the defaults equal ssl_default_config.yaml field by field', () => {
  assert.equal(DEFAULT_CONFIG.optim.optimizer, 'adamw');
  const c = validateTrainConfig({});
  for (const [field, want, got] of dinov2Fields(official.default, c)) assert.deepEqual(got, want, field);
});

test('the dinov2-l14 presets equal dinov2/configs/train/vitl14.yaml (over the defaults) field by field, with and without registers', () => {
  for (const [name, registers] of [
    ['dinov2-l14-reg4', 4],
    ['dinov2-l14', 0],
  ] as const) {
    const c = presetConfig(name);
    for (const [field, want, got] of dinov2Fields(official.vitl14, c)) {
      // vitl14.yaml keeps the default checkpoint and evaluation periods.
      assert.deepEqual(got, want, `${name}: ${field}`);
    }
    assert.equal(modelConfig(c).num_register_tokens, registers);
  }
});

test('every preset validates; the register twins differ only in num_register_tokens; old names are aliases', () => {
  assert.deepEqual(PRESET_NAMES.slice().sort(), [
    'deit3-b16-in1k',
    'deit3-b16-in1k-reg4',
    'deit3-b16-in22k',
    'deit3-b16-in22k-reg4',
    'dinov2-l14',
    'dinov2-l14-reg4',
    'openclip-b16',
    'openclip-b16-reg4',
    'tiny-clip',
    'tiny-dino',
    'tiny-supervised',
  ]);
  for (const name of PRESET_NAMES) presetConfig(name);
  for (const [a, b] of [
    ['deit3-b16-in1k-reg4', 'deit3-b16-in1k'],
    ['deit3-b16-in22k-reg4', 'deit3-b16-in22k'],
    ['dinov2-l14-reg4', 'dinov2-l14'],
    ['openclip-b16-reg4', 'openclip-b16'],
  ] as const) {
    const x = presetConfig(a);
    const y = presetConfig(b);
    assert.equal(y.model.num_register_tokens, 0);
    assert.deepEqual({ ...x, model: { ...x.model, num_register_tokens: 0 } }, y);
  }
  assert.deepEqual(PRESET_ALIASES, { 'deit3-b16-reg4': 'deit3-b16-in1k-reg4', 'deit3-b16': 'deit3-b16-in1k' });
  assert.deepEqual(presetConfig('deit3-b16-reg4'), presetConfig('deit3-b16-in1k-reg4'));
  assert.ok(isPaperPreset('deit3-b16') && isPaperPreset('dinov2-l14') && !isPaperPreset('tiny-dino'));
  assert.ok(isPaperPreset('openclip-b16-reg4') && !isPaperPreset('tiny-clip'));
});

test('the DeiT-III presets hold the README_revenge.md ViT-B commands (ImageNet-1k: line 412, ImageNet-22k: line 1648)', () => {
  const in1k = presetConfig('deit3-b16-in1k-reg4');
  const v1 = modelConfig(in1k);
  // --batch 256 on 8 GPUs --lr 3e-3 --unscale-lr --epochs 800 --weight-decay 0.05 --input-size 192 --eval-crop-ratio 1.0
  // --smoothing 0.0 --warmup-epochs 5 --opt fusedlamb --warmup-lr 1e-6 --mixup .8 --drop-path 0.2 --cutmix 1.0
  // --repeated-aug --bce-loss --color-jitter 0.3 --ThreeAugment; min-lr 1e-5 and LayerScale 1e-4 are defaults.
  assert.deepEqual(
    [
      in1k.train.batch_size * 8,
      in1k.optim.base_lr,
      in1k.optim.scaling_rule,
      in1k.train.steps,
      in1k.optim.weight_decay,
      in1k.crops.global_crops_size,
      in1k.crops.eval_crop_ratio,
    ],
    // 625 steps an epoch: RASampler keeps floor(1281167 / 256) * 256 / 8 images a GPU, 625 batches of 256 (drop_last).
    [2048, 3e-3, 'none', 800 * Math.floor((Math.floor(1281167 / 256) * 256) / 8 / 256), 0.05, 192, 1.0],
  );
  assert.deepEqual(
    [
      in1k.supervised.label_smoothing,
      in1k.optim.warmup_steps,
      in1k.optim.optimizer,
      in1k.optim.warmup_lr,
      in1k.optim.min_lr,
      in1k.supervised.mixup_alpha,
      in1k.supervised.cutmix_alpha,
    ],
    [0, 5 * 625, 'lamb', 1e-6, 1e-5, 0.8, 1.0],
  );
  assert.deepEqual(
    [v1.drop_path_rate, v1.drop_path_uniform, v1.drop_path_batch_subset, v1.layerscale_init, v1.img_size],
    [0.2, true, false, 1e-4, 192],
  );
  assert.deepEqual(
    [
      in1k.train.repeated_aug,
      in1k.supervised.bce_loss,
      in1k.supervised.color_jitter,
      in1k.supervised.three_augment,
      in1k.optim.weight_decay_rule,
    ],
    [true, true, 0.3, true, 'timm'],
  );
  const in22k = presetConfig('deit3-b16-in22k-reg4');
  const v22 = modelConfig(in22k);
  // --batch 64 on 32 GPUs --lr 0.001 --epochs 240 --weight-decay 0.02 --input-size 224 --smoothing 0.1 --mixup 0
  // --drop-path 0.1 --cutmix 1.0 --no-repeated-aug (no --bce-loss).
  assert.deepEqual(
    [
      in22k.train.batch_size * 32,
      in22k.optim.base_lr,
      in22k.optim.weight_decay,
      in22k.crops.global_crops_size,
      in22k.supervised.label_smoothing,
      in22k.supervised.mixup_alpha,
      in22k.supervised.cutmix_alpha,
      v22.drop_path_rate,
      in22k.train.repeated_aug,
      in22k.supervised.bce_loss,
    ],
    [2048, 1e-3, 0.02, 224, 0.1, 0, 1.0, 0.1, false, false],
  );
  assert.deepEqual(
    [in22k.optim.warmup_steps, in22k.optim.warmup_lr, in22k.optim.min_lr, in22k.optim.optimizer],
    [5 * Math.floor(14197122 / 2048), 1e-6, 1e-5, 'lamb'],
  );
  for (const c of [in1k, in22k]) {
    assert.deepEqual(
      [c.optim.eps, c.optim.clip_grad, c.optim.weight_decay_end, c.crops.eval_crop_ratio, modelConfig(c).layerscale_init],
      [1e-8, 0, c.optim.weight_decay, 1, 1e-4],
    );
  }
  assert.equal(in22k.supervised.simple_random_crop, true, '--src');
  assert.equal(in1k.supervised.simple_random_crop, false);
  assert.equal(in22k.train.steps, 240 * Math.floor(14197122 / 2048));
});

test('a partial config is merged over the defaults or a preset; a model section naming an arch replaces the base model', () => {
  const c = validateTrainConfig({ optim: { base_lr: 0.01 }, model: { num_register_tokens: 8 } });
  assert.equal(c.optim.base_lr, 0.01);
  assert.equal(c.optim.min_lr, DEFAULT_CONFIG.optim.min_lr);
  assert.equal(c.model.arch, DEFAULT_CONFIG.model.arch);
  assert.equal(c.model.patch_size, 16, 'the default model overrides stay');
  assert.equal(c.model.num_register_tokens, 8);
  const p = validateTrainConfig({ preset: 'tiny-dino', train: { steps: 70, eval_every: 0 } });
  assert.equal(p.objective, 'dino');
  assert.equal(p.train.steps, 70);
  assert.equal(p.dino.head_n_prototypes, presetConfig('tiny-dino').dino.head_n_prototypes);
  const other = validateTrainConfig({ preset: 'dinov2-l14-reg4', model: { arch: 'dinov2_vits14' } });
  assert.deepEqual(other.model, { arch: 'dinov2_vits14' });
  assert.deepEqual(modelConfig(other), getConfig('dinov2_vits14'));
});

test('a paper preset needs --data: no source by default, a warning for an explicit --data synthetic', () => {
  assert.equal(presetConfig('dinov2-l14-reg4').data.source, '');
  assert.equal(presetConfig('tiny-supervised').data.source, 'synthetic');
  const warnings: string[] = [];
  const cfg = resolveTrainConfig({ preset: 'deit3-b16-in1k-reg4', data: 'synthetic', warn: (m) => warnings.push(m) });
  assert.equal(cfg.data.source, 'synthetic');
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /preset deit3-b16-in1k-reg4 is a paper recipe .* trains on the built-in synthetic shapes/);
  resolveTrainConfig({ preset: 'tiny-supervised', data: 'synthetic', warn: (m) => warnings.push(m) });
  assert.equal(warnings.length, 1, 'no warning for a CPU preset');
});

test('bad configs name the field and the allowed values', () => {
  const bad: [unknown, RegExp][] = [
    [[], /expected a JSON object/],
    [{ objective: 'mae' }, /field "objective" must be one of supervised, dino, clip, got "mae"/],
    [{ optimizer: {} }, /unknown field "optimizer"; expected one of objective, model, preset, data/],
    [{ optim: { base_lr: -1 } }, /field "optim.base_lr" must be a number >= 0, got -1/],
    [{ optim: { lr: 1e-3 } }, /field "optim.lr" is now optim.base_lr/],
    [{ optim: { learning_rate: 1 } }, /unknown field "optim.learning_rate"; expected one of optim.optimizer, optim.base_lr/],
    [{ optim: { optimizer: 'sgd' } }, /field "optim.optimizer" must be one of "adamw", "lamb", got "sgd"/],
    [{ optim: { scaling_rule: 'linear' } }, /field "optim.scaling_rule" must be one of "sqrt_wrt_1024", "linear_wrt_512", "none"/],
    [{ train: { centering: 'softmax' } }, /field "train.centering" must be one of "centering", "sinkhorn_knopp", got "softmax"/],
    [{ train: { steps: 2.5 } }, /field "train.steps" must be an integer >= 1, got 2.5/],
    [{ data: { num_classes: 3 } }, /field "data.num_classes" must be an integer >= 5 and <= 8, got 3/],
    [
      { crops: { global_crops_scale: [0.9, 0.2] } },
      /field "crops.global_crops_scale" must be a pair \[min, max\] with 0 <= min <= max <= 1/,
    ],
    [{ crops: { eval_crop_ratio: 0 } }, /field "crops.eval_crop_ratio" must be a number > 0 and <= 1, got 0/],
    [{ ibot: { separate_head: 'yes' } }, /field "ibot.separate_head" must be true or false, got "yes"/],
    [{ dino: { student_temp: 0 } }, /field "dino.student_temp" must be a number > 0, got 0/],
    [{ model: { arch: 'resnet50' } }, /field "model.arch" must be one of .*vit_micro_patch8_reg4.*got "resnet50"/],
    [{ model: { depthh: 3 } }, /unknown field "model.depthh"; expected model.arch or one of model.embed_dim/],
    [{ model: { num_register_tokens: 17 } }, /num_register_tokens.*between 0 and 16/],
    [{ preset: 'tiny' }, /field "preset" must be one of tiny-supervised, tiny-dino/],
    [
      { preset: 'tiny-supervised', crops: { global_crops_size: 36 } },
      /"crops.global_crops_size" \(36\) must be a multiple of the patch size 8/,
    ],
    [{ objective: 'dino', dino: { loss_weight: 0 }, ibot: { loss_weight: 0 } }, /cannot both be 0/],
  ];
  for (const [raw, re] of bad)
    assert.throws(
      () => validateTrainConfig(raw, 'run.json'),
      (err: Error) => re.test(err.message) && err.message.startsWith('run.json'),
      JSON.stringify(raw),
    );
});
