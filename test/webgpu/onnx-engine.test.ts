/**
 * The ONNX Runtime step engine on its WebGPU execution provider (`--engine onnxruntime --device webgpu`):
 * 2 steps of the tiny presets (ViT-micro/8 with 4 registers, 32 px synthetic shapes, batch 8) end within
 * 1e-4 of the tfjs engine on wasm, every loss and metric within 1e-4 relative. On WebGPU the engine builds
 * its graphs with plain MatMul (GraphBuildOptions.plainMatMul): ONNX Runtime 1.30's WebGPU provider has no
 * com.microsoft.FusedMatMul kernel and would place those nodes on the CPU with copies around them. Run by
 * scripts/test-webgpu.sh; skips with one line where onnxruntime-node does not load or finds no WebGPU adapter.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { initBackend } from '@vitreg/core';
import { onnxRuntimeAvailable } from '@vitreg/registers';
import { onnxRuntimeEngine, resolveTrainEngine, tfjsEngine, train, validateTrainConfig, type EngineState } from '@vitreg/trainer';
import { keepingState } from '../../packages/trainer/test/onnx-engine-helpers.ts';

const NOT_NUMBERS = /seconds|_s$|per_s|rss|tf_mb|tf_tensors/;

for (const preset of ['tiny-supervised', 'tiny-dino']) {
  test(`${preset}: 2 steps on onnxruntime's WebGPU provider end within 1e-4 of the tfjs engine on wasm`, async (t) => {
    if (!(await onnxRuntimeAvailable())) return t.skip('onnxruntime-node does not load here');
    try {
      await resolveTrainEngine({ engine: 'onnxruntime', device: 'webgpu' });
    } catch (err) {
      return t.skip(`onnxruntime's WebGPU provider is not available: ${(err as Error).message.split('\n')[0]}`);
    }
    await initBackend('wasm', { log: () => {} });
    const config = validateTrainConfig({
      preset,
      data: { source: 'synthetic', train_size: 32, val_size: 8 },
      train: { steps: 2, batch_size: 8, eval_every: 0, checkpoint_every: 0, knn_train_size: 8 },
      optim: { warmup_steps: 0 },
    });
    const dir = await mkdtemp(join(tmpdir(), 'vitreg-onnx-webgpu-'));
    try {
      const runs: { state?: EngineState }[] = [{}, {}];
      const metrics: Record<string, number>[][] = [];
      for (const [i, factory] of [tfjsEngine, onnxRuntimeEngine({ device: 'webgpu' })].entries()) {
        const out = join(dir, String(i));
        await train(config, { outDir: out, engine: keepingState(factory, runs[i]!), progress: false });
        metrics.push(
          (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l) as Record<string, number>),
        );
      }
      metrics[0]!.forEach((m, step) => {
        for (const [k, v] of Object.entries(m)) {
          if (NOT_NUMBERS.test(k)) continue;
          const g = metrics[1]![step]![k]!;
          assert.ok(Math.abs(g - v) <= 1e-5 + 1e-4 * Math.abs(v), `step ${step + 1} ${k}: webgpu ${g} vs tfjs ${v}`);
        }
      });
      let worst = 0;
      for (const [k, v] of Object.entries(runs[0]!.state!.tensors)) {
        const w = runs[1]!.state!.tensors[k]!;
        assert.equal(w.length, v.length, k);
        for (let j = 0; j < v.length; j++) worst = Math.max(worst, Math.abs(w[j]! - v[j]!));
      }
      t.diagnostic(`max |state difference| ${worst.toExponential(2)}`);
      assert.ok(worst <= 1e-4, `the states differ by ${worst}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}
