/**
 * Every preset runs two steps at tiny width and depth (only size fields overridden: widths, depth,
 * resolutions, head sizes, batch, data size), through every loss and optimiser path it uses: Sinkhorn-Knopp
 * and the separate iBOT head (DINOv2 ViT-L/14), LAMB, BCE and repeated augmentation (DeiT-III), softmax
 * centering (tiny-dino).
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { RASampler } from '@vitreg/core';
import { modelConfig, type PartialTrainConfig } from '../src/config.js';
import { PRESET_NAMES } from '../src/config-presets.js';
import { presetConfig, validateTrainConfig } from '../src/config-validate.js';
import { AdamW, Lamb } from '../src/optim.js';
import { Trainer } from '../src/loop.js';
import type { TfjsEngine } from '../src/tfjs-engine.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

/** The tfjs engine of a Trainer (its models, heads, centres and optimiser). */
const tfjs = (t: Trainer) => t.engine as TfjsEngine;

/** The size fields of a preset, shrunk: everything else stays the preset's. */
function tiny(name: string): PartialTrainConfig {
  const p = presetConfig(name);
  const patch = modelConfig(p).patch_size;
  const heads = { head_n_prototypes: 64, head_hidden_dim: 32, head_bottleneck_dim: 16 };
  return {
    preset: name,
    model: { embed_dim: 32, depth: 2, num_heads: 2, img_size: 2 * patch },
    // 256 images: DeiT's RASampler counts epochs in multiples of 256.
    data: { source: 'synthetic', train_size: 256, val_size: 8, synthetic_size: 32 },
    train: { steps: 2, batch_size: 4, eval_every: 0, checkpoint_every: 0, knn_train_size: 8 },
    dino: heads,
    ibot: heads,
    crops: { global_crops_size: 2 * patch, local_crops_size: patch },
  };
}

async function twoSteps(name: string): Promise<{ trainer: Trainer; metrics: Record<string, number>[] }> {
  const trainer = new Trainer(validateTrainConfig(tiny(name), `preset ${name} at tiny size`));
  trainer.initTeacher();
  const before = await trainer.checksum();
  const metrics = [await trainer.trainStep(), await trainer.trainStep()];
  assert.notEqual(await trainer.checksum(), before, `${name}: the steps changed the weights`);
  for (const m of metrics) {
    for (const [k, v] of Object.entries(m)) assert.ok(Number.isFinite(v), `${name}: metric ${k} is ${v}`);
  }
  return { trainer, metrics };
}

test('the presets tested here are every preset', () => {
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
});

for (const name of ['dinov2-l14-reg4', 'dinov2-l14']) {
  test(`${name}: DINO + KoLeo + iBOT on its own head, Sinkhorn-Knopp targets (no centre), per-module clipping, AdamW`, async () => {
    const { trainer, metrics } = await twoSteps(name);
    assert.ok(tfjs(trainer).optimizer instanceof AdamW);
    assert.ok(tfjs(trainer).heads.ibot, 'a separate iBOT head');
    const all = Object.assign({}, ...metrics);
    for (const k of [
      'loss_dino_global',
      'loss_dino_local',
      'loss_koleo',
      'loss_ibot',
      'grad_norm_backbone',
      'grad_norm_dino_head',
      'grad_norm_ibot_head',
    ]) {
      assert.ok(k in all, `${name}: ${k} in the step metrics`);
    }
    // Sinkhorn-Knopp replaces the EMA centres: they never move from zero.
    for (const c of [tfjs(trainer).centers.dino!, tfjs(trainer).centers.ibot!]) assert.ok(c.value.every((v) => v === 0));
    // Sinkhorn-Knopp's equipartition: every one of the 64 prototypes gets the same total weight, so the mean
    // target is uniform (ln 64 nats); the teacher temperature warms up linearly from 0.04 to 0.07 over
    // teacher.warmup_teacher_temp_epochs (30 x 1250 steps).
    metrics.forEach((m, s) => {
      assertClose(m.teacher_batch_entropy!, Math.log(64), 1e-5, `${name}: step ${s + 1} teacher batch entropy`);
      assertClose(m.teacher_temp!, 0.04 + (0.03 * s) / (30 * 1250), 1e-9, `${name}: step ${s + 1} teacher temperature`);
    });
    assert.equal(modelConfig(trainer.config).ffn_layer, 'swiglu');
    trainer.dispose();
  });
}

for (const name of ['deit3-b16-in1k-reg4', 'deit3-b16-in1k']) {
  test(`${name}: LAMB, BCE on binarised mixup/cutmix targets, repeated augmentation`, async () => {
    const { trainer, metrics } = await twoSteps(name);
    assert.ok(tfjs(trainer).optimizer instanceof Lamb);
    assert.ok(trainer.sampler instanceof RASampler);
    // Three copies of each image, in a row of the epoch's positions: the first 4 are copies 0, 1, 2 of one image and copy 0 of the next.
    assert.deepEqual(
      [0, 1, 2, 3].map((p) => trainer.sampler.at(p).repeat),
      [0, 1, 2, 0],
    );
    assert.ok(metrics.every((m) => 'loss_bce' in m && !('loss_ce' in m)));
    assert.ok(metrics.every((m) => m.mix_lambda! >= 0 && m.mix_lambda! <= 1));
    trainer.dispose();
  });
}

for (const name of ['deit3-b16-in22k-reg4', 'deit3-b16-in22k']) {
  test(`${name}: LAMB, soft-target cross-entropy with label smoothing and CutMix, no repeated augmentation`, async () => {
    const { trainer, metrics } = await twoSteps(name);
    assert.ok(tfjs(trainer).optimizer instanceof Lamb);
    assert.ok(!(trainer.sampler instanceof RASampler));
    assert.ok(metrics.every((m) => 'loss_ce' in m && !('loss_bce' in m)));
    trainer.dispose();
  });
}

test('tiny-dino: DINO + KoLeo + iBOT through the DINO head, softmax centering (the centres move), AdamW', async () => {
  const { trainer, metrics } = await twoSteps('tiny-dino');
  assert.ok(tfjs(trainer).optimizer instanceof AdamW);
  assert.equal(tfjs(trainer).heads.ibot, undefined);
  assert.ok(
    tfjs(trainer).centers.dino!.value.some((v) => v !== 0),
    'the EMA centre moved',
  );
  assert.ok(metrics.some((m) => 'loss_ibot' in m));
  trainer.dispose();
});

test('tiny-supervised: cross-entropy, AdamW', async () => {
  const { trainer, metrics } = await twoSteps('tiny-supervised');
  assert.ok(tfjs(trainer).optimizer instanceof AdamW);
  assert.ok(metrics.every((m) => 'loss_ce' in m));
  trainer.dispose();
});
