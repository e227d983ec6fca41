/**
 * `trainThreads` on the ONNX Runtime engine (`engineOptions`, what `vitreg train --workers N --engine
 * onnxruntime` passes): every training thread resolves its own engine from the options, trains on ONNX
 * Runtime (its metrics count the engine's flat buffers, not tfjs tensors), and 2 threads x batch 3 train
 * the weights of 1 thread x batch 6 on the same engine; a device the threads cannot start fails naming
 * the rank and the device. The engine hands a sync its gradients and the teacher's batch means as
 * consecutive views of one buffer, which the syncs reduce as they are. Skipped with one line where
 * onnxruntime-node does not load.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadWeights } from '@vitreg/registers';
import { validateTrainConfig } from '../src/config-validate.js';
import { train } from '../src/loop.js';
import { onnxRuntimeEngine } from '../src/onnx/engine.js';
import { resolveTrainEngine } from '../src/onnx/engine-select.js';
import { trainThreads } from '../src/threads.js';
import { contiguousView, LocalGradientSync } from '../src/sync.js';
import { useWasm } from './helpers.js';
import { SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';

before(useWasm);

const tiny = {
  preset: 'tiny-supervised',
  objective: 'supervised',
  // Per-image drop path (not DINOv2's batch subset, which depends on the batch): W ranks x B = 1 rank x W*B.
  model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0.2, drop_path_batch_subset: false },
  data: { train_size: 24, val_size: 8 },
  train: { steps: 3, batch_size: 3, eval_every: 0, checkpoint_every: 0 },
  optim: { warmup_steps: 2 },
};

test('2 threads on onnxruntime (engineOptions) train the weights of 1 onnxruntime thread with the global batch', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const root = await mkdtemp(join(tmpdir(), 'vitreg-threads-onnx-'));
  try {
    const cfg = (batch: number) => validateTrainConfig({ ...tiny, train: { ...tiny.train, batch_size: batch } });
    const one = await train(cfg(6), { outDir: join(root, 'one'), progress: false, engine: onnxRuntimeEngine({ threads: 1 }) });
    const two = await trainThreads(cfg(3), {
      outDir: join(root, 'two'),
      progress: false,
      workers: 2,
      checksum: true,
      engineOptions: { engine: 'onnxruntime', threads: 1 },
    });
    assert.equal(two.checksums!.length, 2);
    assert.equal(two.checksums![0], two.checksums![1], 'the ranks end with different weights');
    // The ONNX Runtime engine's memory() counts its flat buffers (a handful); tfjs counts its tensors (hundreds).
    const metrics = (await readFile(join(root, 'two', 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    assert.equal(metrics.length, 3);
    for (const m of metrics) assert.ok(m.tf_tensors! <= 6, `step ${m.step}: ${m.tf_tensors} tensors: the threads trained on tfjs`);
    const a = (await loadWeights(join(one.checkpoint, 'model.safetensors'))).params;
    const b = (await loadWeights(join(two.checkpoint, 'model.safetensors'))).params;
    let maxDiff = 0;
    for (const [k, v] of Object.entries(a)) {
      const x = v.dataSync();
      const y = b[k]!.dataSync();
      for (let i = 0; i < x.length; i++) maxDiff = Math.max(maxDiff, Math.abs(x[i]! - y[i]!));
    }
    t.diagnostic(`max |weights difference| ${maxDiff.toExponential(2)}`);
    assert.ok(maxDiff < 1e-6, `2 threads differ from 1 thread by up to ${maxDiff}`);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('trainThreads: a device the threads cannot start fails naming the rank and the device', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const cuda = await resolveTrainEngine({ engine: 'onnxruntime', device: 'cuda' }).then(
    () => true,
    () => false,
  );
  if (cuda) return t.skip('this machine has the CUDA provider: no device to fail on');
  const root = await mkdtemp(join(tmpdir(), 'vitreg-threads-onnx-bad-'));
  try {
    const cfg = validateTrainConfig(tiny);
    await assert.rejects(
      trainThreads(cfg, { outDir: root, progress: false, workers: 2, engineOptions: { engine: 'onnxruntime', device: 'cuda' } }),
      /training thread rank \d: --device cuda: not available/,
    );
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('the onnxruntime engine hands the sync its gradients and batch means as consecutive views of one buffer', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const root = await mkdtemp(join(tmpdir(), 'vitreg-onnx-views-'));
  const seen: { buffers: number; values: number; view: Float32Array | null }[] = [];
  class Recording extends LocalGradientSync {
    override async allReduce(buffers: Float32Array[]): Promise<void> {
      seen.push({ buffers: buffers.length, values: buffers.reduce((n, b) => n + b.length, 0), view: contiguousView(buffers) });
    }
  }
  try {
    // tiny-dino: DINO and iBOT centres, so each step all-reduces the gradients and two batch means.
    const c = validateTrainConfig({
      preset: 'tiny-dino',
      data: { train_size: 8, val_size: 4 },
      train: { steps: 2, batch_size: 4, eval_every: 0, checkpoint_every: 0, knn_train_size: 4 },
    });
    let parameters = 0;
    await train(c, {
      outDir: root,
      progress: false,
      sync: new Recording(),
      engine: (ctx) => {
        const e = onnxRuntimeEngine({ threads: 1 })(ctx);
        parameters = e.parameters.length;
        return e;
      },
    });
    assert.equal(seen.length, 2);
    for (const s of seen) {
      assert.equal(s.buffers, parameters + 2, 'the gradients, then the DINO and iBOT means');
      assert.ok(s.view, 'consecutive views of one buffer');
      assert.equal(s.view.length, s.values);
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
