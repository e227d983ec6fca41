import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadWeights } from '@vitreg/registers';
import { validateTrainConfig } from '../src/config-validate.js';
import { loadCheckpoint } from '../src/checkpoint.js';
import { train } from '../src/loop.js';
import { checkpointBytes, useWasm } from './helpers.js';

before(useWasm);

async function stoppedAndResumed(raw: object, steps: number): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-resume-'));
  try {
    const cfg = validateTrainConfig(raw);
    assert.equal(cfg.train.steps, steps);
    const straight = join(root, 'straight');
    const resumed = join(root, 'resumed');
    const a = await train(cfg, { outDir: straight, progress: false });
    assert.equal(a.step, steps);
    const half = await train(cfg, { outDir: resumed, progress: false, stopAfter: steps / 2 });
    assert.equal(half.step, steps / 2);
    assert.equal(half.eval, undefined);
    const b = await train(cfg, { outDir: resumed, progress: false, resume: true });
    assert.equal(b.step, steps);
    const x = await checkpointBytes(straight);
    const y = await checkpointBytes(resumed);
    assert.deepEqual(Object.keys(x), Object.keys(y));
    for (const f of Object.keys(x)) assert.ok(x[f]!.equals(y[f]!), `${f} differs between the straight and the resumed run`);
    assert.deepEqual(b.eval, a.eval);
    // The metric lines of the resumed run are those of the straight one (timings aside).
    const strip = (t: string) =>
      t
        .trim()
        .split('\n')
        .map((l) => {
          const m = JSON.parse(l) as Record<string, unknown>;
          for (const k of ['images_per_s', 'step_seconds', 'allreduce_s', 'rss_mb', 'tf_tensors', 'tf_mb']) delete m[k];
          return m;
        });
    assert.deepEqual(
      strip(await readFile(join(resumed, 'metrics.jsonl'), 'utf8')),
      strip(await readFile(join(straight, 'metrics.jsonl'), 'utf8')),
    );
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const tiny = {
  preset: 'tiny-supervised',
  model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0.2 },
  data: { train_size: 24, val_size: 8 },
  train: { steps: 6, batch_size: 4, eval_every: 0, checkpoint_every: 0, knn_train_size: 8 },
  optim: { warmup_steps: 2 },
};

test('supervised with mixup/cutmix and drop path: stopped at N/2 and resumed equals N straight steps, bit for bit', async () => {
  await stoppedAndResumed({ ...tiny, objective: 'supervised', supervised: { mixup_alpha: 0.8, cutmix_alpha: 1.0 } }, 6);
});

test('DINO + iBOT + KoLeo with multi-crop, masks, EMA teacher and centres: resume is exact', async () => {
  await stoppedAndResumed(
    {
      ...tiny,
      preset: 'tiny-dino',
      objective: 'dino',
      dino: { head_n_prototypes: 32, head_hidden_dim: 32, head_bottleneck_dim: 16, warmup_teacher_temp_steps: 3 },
      crops: { local_crops_number: 2, local_crops_size: 16 },
      ibot: { mask_sample_probability: 1.0 },
      optim: { warmup_steps: 2, freeze_last_layer_steps: 2 },
    },
    6,
  );
});

test("micro-batches: gradients summed over the passes equal the whole batch's (up to float rounding)", async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-micro-'));
  try {
    const base = {
      ...tiny,
      objective: 'supervised',
      model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0 },
      train: { ...tiny.train, steps: 2 },
    };
    const whole = await train(validateTrainConfig(base), { outDir: join(root, 'whole'), progress: false });
    const micro = await train(validateTrainConfig({ ...base, train: { ...base.train, micro_batch_size: 3 } }), {
      outDir: join(root, 'micro'),
      progress: false,
    });
    const a = await loadWeights(join(whole.checkpoint, 'model.safetensors'));
    const b = await loadWeights(join(micro.checkpoint, 'model.safetensors'));
    let maxDiff = 0;
    let moved = 0;
    for (const [k, v] of Object.entries(a.params)) {
      const x = v.dataSync();
      const y = b.params[k]!.dataSync();
      for (let i = 0; i < x.length; i++) maxDiff = Math.max(maxDiff, Math.abs(x[i]! - y[i]!));
      moved += x.length;
    }
    assert.ok(moved > 0);
    assert.ok(maxDiff < 1e-4, `weights differ by ${maxDiff}`);
    const losses = async (dir: string) =>
      (await readFile(join(dir, 'metrics.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { loss: number }).loss);
    const [la, lb] = [await losses(join(root, 'whole')), await losses(join(root, 'micro'))];
    la.forEach((l, i) => assert.ok(Math.abs(l - lb[i]!) < 1e-4, `step ${i + 1}: loss ${l} vs ${lb[i]}`));
    assert.throws(
      () => validateTrainConfig({ objective: 'dino', train: { micro_batch_size: 2 } }),
      /"train.micro_batch_size" must be 0 for objective dino/,
    );
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('checkpoint layout: model.safetensors loads as a backbone with its config; state holds the loop state', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-ckpt-'));
  try {
    const cfg = validateTrainConfig({
      ...tiny,
      objective: 'supervised',
      model: { arch: 'vit_micro_patch8_reg4', num_register_tokens: 2 },
      train: { ...tiny.train, steps: 2, checkpoint_every: 1, keep_checkpoints: 1 },
    });
    await train(cfg, { outDir: root, progress: false });
    assert.deepEqual((await readdir(join(root, 'checkpoints'))).sort(), ['step-2']);
    const dir = join(root, 'checkpoints', 'step-2');
    assert.deepEqual((await readdir(dir)).sort(), ['heads.safetensors', 'model.safetensors', 'optimizer.safetensors', 'state.json']);
    const model = await loadWeights(join(dir, 'model.safetensors'));
    assert.equal(model.config.num_register_tokens, 2);
    assert.equal(model.config.embed_dim, 64);
    const ck = await loadCheckpoint(dir);
    assert.equal(ck.state.step, 2);
    assert.equal(ck.state.world_size, 1);
    // 2 steps x 4 images of 24: the sampler's global position is 8, still in epoch 0.
    assert.equal(ck.state.cursor, 8);
    assert.equal(ck.state.epoch, 0);
    assert.equal(ck.optimizer.step, 2);
    assert.ok(ck.optimizer.moments['backbone.blocks.0.attn.qkv.weight.exp_avg_sq']);
    assert.deepEqual(ck.heads['student.head.weight']!.shape, [64, 5]);
    const evalJson = JSON.parse(await readFile(join(root, 'eval.json'), 'utf8')) as Record<string, number>;
    assert.equal(evalJson.num_classes, 5);
    assert.ok(evalJson.val_accuracy! >= 0 && evalJson.val_accuracy! <= 1);
    // A checkpoint from another config is refused with the differing field named.
    // The run's config with only the seed changed (the first difference is reported in sorted-key order).
    const arch = { arch: 'vit_micro_patch8_reg4', num_register_tokens: 2 };
    const train5 = { ...tiny.train, steps: 2, checkpoint_every: 1, keep_checkpoints: 1, seed: 5 };
    const other = validateTrainConfig({ ...tiny, objective: 'supervised', model: arch, train: train5 });
    await assert.rejects(
      train(other, { outDir: root, progress: false, resume: true }),
      /field "train.seed" of the checkpoint's config differs/,
    );
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
