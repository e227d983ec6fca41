/**
 * A training step of each objective on WebGPU equals the same steps on wasm: the tiny presets
 * (ViT-micro/8 with 4 registers, 32 px synthetic shapes) shortened to 2 steps with no warm-up, so both
 * steps move the weights. Checked: every metric of both steps (losses, their parts, gradient norms,
 * entropies) within 1e-5 + 1e-4 |wasm|; at least 99.9% of the student weights within 1e-6 of wasm's;
 * every weight within 3 x (sum of the steps' learning rates). AdamW divides by sqrt(v), so a gradient
 * element near zero whose rounding differs between backends can move its weight by up to lr per step
 * (measured on SwiftShader: 67 of 217,216 DINO weights beyond 1e-6, the largest 9e-5 with lr 6.25e-5);
 * wrong gradients would move most weights differently. Run by scripts/test-webgpu.sh.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend } from '@vitreg/core';
import { Trainer, validateTrainConfig, type TrainConfig } from '@vitreg/trainer';

async function run(backend: 'wasm' | 'webgpu', cfg: TrainConfig) {
  await initBackend(backend, { log: () => {} });
  const trainer = new Trainer(cfg);
  trainer.initTeacher();
  const metrics: Record<string, number>[] = [];
  for (let i = 0; i < cfg.train.steps; i++) metrics.push(await trainer.trainStep());
  const weights: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(trainer.engine.exportState().tensors))
    if (k.startsWith('student.')) weights[k.slice(8)] = Float32Array.from(v);
  trainer.dispose();
  return { metrics, weights };
}

/** Metrics that are timings, memory or tensor counts, not computed numbers. */
const NOT_NUMBERS = /seconds|_s$|per_s|rss|tf_mb|tf_tensors/;

function compare(wasm: Awaited<ReturnType<typeof run>>, gpu: Awaited<ReturnType<typeof run>>): void {
  let checked = 0;
  wasm.metrics.forEach((m, step) => {
    for (const [k, v] of Object.entries(m)) {
      if (NOT_NUMBERS.test(k)) continue;
      const g = gpu.metrics[step]![k]!;
      assert.ok(Math.abs(g - v) <= 1e-5 + 1e-4 * Math.abs(v), `step ${step + 1} ${k}: webgpu ${g} vs wasm ${v}`);
      checked++;
    }
  });
  assert.ok(checked >= 2 * 3, `only ${checked} metrics compared`);
  const bound = 3 * wasm.metrics.reduce((a, m) => a + m.lr!, 0);
  assert.ok(bound > 0, 'the learning rate was 0: the steps did not train');
  let total = 0;
  let beyond = 0;
  for (const [k, w] of Object.entries(wasm.weights)) {
    const g = gpu.weights[k]!;
    assert.equal(g.length, w.length, k);
    for (let i = 0; i < w.length; i++) {
      const d = Math.abs(g[i]! - w[i]!);
      assert.ok(d <= bound, `${k}[${i}]: webgpu ${g[i]} vs wasm ${w[i]} (bound ${bound})`);
      total++;
      if (d > 1e-6) beyond++;
    }
  }
  assert.ok(beyond <= total / 1000, `${beyond} of ${total} weights differ from wasm's by more than 1e-6`);
}

test('supervised (tiny-supervised, batch 8, clipping on): 2 steps on webgpu equal wasm', async () => {
  const cfg = validateTrainConfig({
    preset: 'tiny-supervised',
    data: { train_size: 16, val_size: 2 },
    train: { steps: 2, batch_size: 8, eval_every: 0, checkpoint_every: 0 },
    optim: { warmup_steps: 0, clip_grad: 1 },
  });
  compare(await run('wasm', cfg), await run('webgpu', cfg));
});

test('DINO + iBOT + KoLeo (tiny-dino, batch 4, 2 local crops): 2 steps on webgpu equal wasm', async () => {
  const cfg = validateTrainConfig({
    preset: 'tiny-dino',
    data: { train_size: 8, val_size: 2 },
    train: { steps: 2, batch_size: 4, eval_every: 0, checkpoint_every: 0, knn_train_size: 4 },
    optim: { warmup_steps: 0, freeze_last_layer_steps: 0 },
  });
  compare(await run('wasm', cfg), await run('webgpu', cfg));
});
