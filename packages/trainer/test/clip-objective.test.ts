/**
 * Objective clip through `train()` (clip-loop.ts) on a shrunken tiny-clip: the config refusals name their
 * field, the engine options pass (an unknown engine factory is refused), a run writes a checkpoint
 * holding the whole two-tower model (open_clip names), a run stopped after step 2 and resumed ends with the
 * weights of an uninterrupted run, and 2 ranks of half the batch equal 1 rank of the whole (threads).
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend, readSafetensors, toFloat32 } from '@vitreg/core';
import { CLIP_ONNX_REFUSAL } from '../src/clip-setup.js';
import { validateTrainConfig } from '../src/config-validate.js';
import type { TrainConfig } from '../src/config.js';
import { train } from '../src/loop.js';
import { trainThreads } from '../src/threads.js';
import type { EngineFactory } from '../src/engine.js';
import { onnxRuntimeEngine } from '../src/onnx/engine.js';

before(async () => {
  await initBackend('wasm', { log: () => {} });
});

/** tiny-clip at test size: 48 pairs, 16 val images, batch 8, 4 steps. */
function tinyClip(extra: Record<string, unknown> = {}): TrainConfig {
  return validateTrainConfig({
    preset: 'tiny-clip',
    data: { train_size: 48, val_size: 16 },
    train: { steps: 4, batch_size: 8, checkpoint_every: 2, log_every: 1 },
    optim: { warmup_steps: 1 },
    ...extra,
  });
}

test('clip config: every bad field is named', () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ clip: { loss: 'infonce' } }, /field "clip\.loss" must be one of "clip", "siglip", got "infonce"/],
    [{ clip: { text_heads: 3 } }, /field "clip\.text_width" \(64\) must be a multiple of clip\.text_heads \(3\)/],
    [{ clip: { loss: 'siglip' } }, /field "clip\.init_logit_bias" must be a number for clip\.loss "siglip"/],
    [{ clip: { init_logit_bias: 'x' } }, /field "clip\.init_logit_bias" must be a number or null, got "x"/],
    [{ clip: { text_act_layer: 'relu' } }, /field "clip\.text_act_layer" must be one of "gelu", "quick_gelu"/],
    [{ clip: { csv_img_key: '' } }, /field "clip\.csv_img_key" must be a string, got ""/],
    [{ clip: { vocab: 3 } }, /unknown field "clip\.vocab"/],
    [{ data: { source: 'pairs.csv' } }, /field "clip\.tokenizer" must name CLIP's BPE vocabulary/],
    [{ optim: { optimizer: 'lamb' } }, /field "optim\.optimizer" must be "adamw" for objective clip/],
  ];
  for (const [fields, message] of bad) assert.throws(() => validateTrainConfig({ preset: 'tiny-clip', ...fields }), message);
  // The paper presets need --data, and take open_clip's params.py defaults.
  const p = validateTrainConfig({ preset: 'openclip-b16-reg4' });
  assert.equal(p.data.source, '');
  assert.deepEqual([p.optim.beta2, p.optim.eps, p.optim.weight_decay, p.model.num_register_tokens], [0.98, 1e-6, 0.2, 4]);
  assert.equal(validateTrainConfig({ preset: 'openclip-b16' }).model.num_register_tokens, 0);
});

test('clip: an engine factory neither tfjs nor resolveTrainEngine made is refused', async () => {
  const other: EngineFactory = () => {
    throw new Error('not reached');
  };
  await assert.rejects(train(tinyClip(), { outDir: join(tmpdir(), 'never'), engine: other, progress: false }), {
    message: CLIP_ONNX_REFUSAL,
  });
  // a library user's own onnxRuntimeEngine(...) factory trains clip (it registers its settings)
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-clip-own-'));
  try {
    const own = tinyClip({ train: { steps: 1, batch_size: 8, checkpoint_every: 0, log_every: 1 } });
    const r = await train(own, { outDir: dir, engine: onnxRuntimeEngine({ threads: 1 }), progress: false, log: () => {} });
    assert.equal(r.step, 1);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('clip: checkpoints hold both towers; stopped after step 2 and resumed = uninterrupted; 2 threads = 1 rank', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-clip-'));
  try {
    const c = tinyClip();
    const whole = await train(c, { outDir: join(dir, 'whole'), progress: false, checksum: true });
    assert.equal(whole.step, 4);
    const ev = whole.eval as unknown as { zeroshot_top1: number };
    assert.ok(ev.zeroshot_top1 >= 0 && ev.zeroshot_top1 <= 1);
    const st = await readSafetensors(join(whole.checkpoint, 'model.safetensors'));
    for (const k of ['token_embedding.weight', 'text_projection', 'logit_scale', 'visual.proj', 'visual.conv1.weight'])
      assert.ok(k in st.tensors, `checkpoint has ${k}`);
    const scale = toFloat32(st.tensors.logit_scale!)[0]!;
    assert.ok(scale >= 0 && scale <= Math.log(100));
    const lines = (await readFile(join(dir, 'whole', 'metrics.jsonl'), 'utf8')).trim().split('\n');
    assert.equal(lines.length, 4);

    const part = join(dir, 'part');
    const first = await train(c, { outDir: part, progress: false, stopAfter: 2 });
    assert.equal(first.step, 2);
    const resumed = await train(c, { outDir: part, progress: false, resume: true, checksum: true });
    assert.equal(resumed.step, 4);
    assert.equal(resumed.checksum, whole.checksum, 'resumed weights equal the uninterrupted run');

    // Data parallel: 2 threads x 4 pairs against 1 x 8 (the same global batch and crops), weights to float rounding.
    const two = await trainThreads(tinyClip({ train: { steps: 2, batch_size: 4, checkpoint_every: 0 } }), {
      outDir: join(dir, 'two'),
      workers: 2,
      progress: false,
    });
    const one = await train(tinyClip({ train: { steps: 2, batch_size: 8, checkpoint_every: 0 } }), {
      outDir: join(dir, 'one'),
      progress: false,
    });
    const a = (await readSafetensors(join(two.checkpoint, 'model.safetensors'))).tensors;
    const b = (await readSafetensors(join(one.checkpoint, 'model.safetensors'))).tensors;
    let worst = 0;
    for (const k of Object.keys(b)) {
      const x = toFloat32(a[k]!);
      const y = toFloat32(b[k]!);
      for (let i = 0; i < y.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
    }
    assert.ok(worst < 1e-4, `2 ranks vs 1: largest weight difference ${worst}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('openclip-b16-reg4 and openclip-b16 at tiny width: two steps through train(), a checkpoint with registers where the preset has them', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-openclip-'));
  try {
    for (const preset of ['openclip-b16-reg4', 'openclip-b16']) {
      const c = validateTrainConfig({
        preset,
        model: {
          arch: 'openclip_vitb16',
          embed_dim: 32,
          depth: 1,
          num_heads: 2,
          img_size: 32,
          num_register_tokens: preset.endsWith('reg4') ? 4 : 0,
        },
        data: { source: 'synthetic', train_size: 16, val_size: 8, synthetic_size: 32 },
        train: { steps: 2, batch_size: 4, checkpoint_every: 0 },
        clip: { proj_dim: 16, text_context_length: 16, text_vocab_size: 0, text_width: 32, text_heads: 2, text_layers: 1 },
        crops: { global_crops_size: 32 },
      });
      const r = await train(c, { outDir: join(dir, preset), progress: false });
      assert.equal(r.step, 2);
      const st = (await readSafetensors(join(r.checkpoint, 'model.safetensors'))).tensors;
      assert.equal('visual.register_tokens' in st || Object.keys(st).some((k) => k.includes('register')), preset.endsWith('reg4'));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('clip: a run refused while it is built (fewer pairs than a batch) leaves no tensor behind', async () => {
  const tf = await import('@tensorflow/tfjs-core');
  const out = await mkdtemp(join(tmpdir(), 'vitreg-clip-few-'));
  try {
    const before = tf.memory().numTensors;
    await assert.rejects(
      train(tinyClip({ data: { train_size: 4, val_size: 16 } }), { outDir: out, progress: false }),
      /data: 4 pairs are fewer than one global batch of 8/,
    );
    assert.equal(tf.memory().numTensors, before, 'the model and the engine were disposed');
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
