/**
 * A cluster job on the ONNX Runtime step engine (`--engine onnxruntime` on every vitreg-worker): 2 worker
 * processes over loopback train the weights of 1 process with the same global batch, and every rank ends
 * identical (as cluster.test.ts checks for the tfjs engine); Sinkhorn-Knopp's sums over every rank run
 * inside the engine's step, and EMA centring's batch means travel with the gradients. Skips with one line
 * where onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients } from '@vitreg/core';
import { loadWeights, onnxRuntimeAvailable } from '@vitreg/registers';
import { onnxRuntimeEngine, train, validateTrainConfig, type EngineFactory, type EngineState } from '@vitreg/trainer';
import { runLocalJob } from '../src/local.js';

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vitreg-cluster-onnx-'));
  await tf.setBackend('wasm');
  await ensureGradients();
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** As cluster.test.ts: per-image drop path, 24 images, so a global batch of 12 crosses epochs. */
const config = (batch: number) => ({
  preset: 'tiny-supervised',
  model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0.2, drop_path_batch_subset: false },
  data: { train_size: 24, val_size: 8 },
  train: { steps: 5, batch_size: batch, eval_every: 0, checkpoint_every: 0 },
  optim: { warmup_steps: 2 },
});

/** A 2-process job of `file` on onnxruntime (1 thread each) in `outDir`, and every rank's final checksum. */
async function twoProcesses(file: string, outDir: string) {
  const r = await runLocalJob({
    nodes: 2,
    outDir,
    passThrough: false,
    trainArgs: ['--config', file, '--backend', 'wasm', '--engine', 'onnxruntime', '--engine-threads', '1', '--no-progress'],
    workerArgs: ['--checksum'],
    heartbeatMs: 200,
    coordinatorTimeoutMs: 3000,
  });
  // The per-rank files' last lines.
  const sums = await Promise.all(
    ['worker-0', 'worker-1'].map(async (n) => {
      const lines = (await readFile(join(outDir, 'ranks', `${n}.jsonl`), 'utf8')).trim().split('\n');
      return (JSON.parse(lines[lines.length - 1]!) as { checksum: string }).checksum;
    }),
  );
  return { r, sums };
}

test('onnxruntime engine: 2 worker processes train the weights of 1 process with the same global batch; both ranks end identical', async (t) => {
  if (!(await onnxRuntimeAvailable())) return t.skip('onnxruntime-node does not load here');
  // One process, batch 12, in this process; its final student weights kept as the engine leaves them.
  let single: EngineState | undefined;
  const keep: EngineFactory = (ctx) => {
    const e = onnxRuntimeEngine({ threads: 1 })(ctx);
    const dispose = e.dispose.bind(e);
    e.dispose = () => {
      single = { ...e.exportState(), tensors: Object.fromEntries(Object.entries(e.exportState().tensors).map(([k, v]) => [k, v.slice()])) };
      dispose();
    };
    return e;
  };
  await train(validateTrainConfig(config(12)), { outDir: join(root, 'one'), engine: keep, progress: false, checksum: true });
  const file = join(root, 'b6.json');
  await writeFile(file, JSON.stringify(config(6)));
  const outDir = join(root, 'two');
  const { r, sums } = await twoProcesses(file, outDir);
  assert.ok(r.finished, `the job did not finish: ${JSON.stringify(r)}`);
  assert.deepEqual(r.workerCodes, [0, 0]);
  assert.match(await readFile(join(outDir, 'logs', 'worker-0.log'), 'utf8'), /engine: onnxruntime/);
  assert.equal(new Set(sums).size, 1, `ranks ended with different weights: ${sums.join(' ')}`);
  // The job's checkpoint (model layout through loadWeights) against the single process's weights.
  const m = await loadWeights(join(String(r.result!.checkpoint), 'model.safetensors'));
  let d = 0;
  for (const [k, v] of Object.entries(m.params)) {
    const own = single!.tensors[`student.backbone.${k}`]!;
    const got = v.dataSync();
    for (let i = 0; i < own.length; i++) d = Math.max(d, Math.abs(own[i]! - got[i]!));
  }
  m.dispose();
  t.diagnostic(`2 processes vs 1 process (onnxruntime): max |weight difference| = ${d.toExponential(2)}`);
  assert.ok(d < 1e-6, `weights differ from 1 process by ${d}`);
});

for (const [centering, what] of [
  ['sinkhorn_knopp', 'Sinkhorn-Knopp centering across 2 processes (its sums over both ranks inside the step, iBOT on a separate head)'],
  [
    'centering',
    'EMA centring across 2 processes (the DINO and iBOT batch means travel with the gradients through the stage and the ring; the centres themselves are checked in ibot-centre-ranks.test.ts)',
  ],
] as const)
  test(`onnxruntime engine: ${what}: both ranks end identical`, async (t) => {
    if (!(await onnxRuntimeAvailable())) return t.skip('onnxruntime-node does not load here');
    const heads = { head_n_prototypes: 32, head_hidden_dim: 32, head_bottleneck_dim: 16 };
    const file = join(root, `${centering}.json`);
    await writeFile(
      file,
      JSON.stringify({
        preset: 'tiny-dino',
        model: { arch: 'vit_micro_patch8_reg4' },
        data: { train_size: 24, val_size: 8 },
        train: { steps: 2, batch_size: 3, eval_every: 0, checkpoint_every: 0, knn_train_size: 8, centering },
        dino: heads,
        ibot: { ...heads, separate_head: true, mask_sample_probability: 1 },
        crops: { local_crops_number: 2 },
      }),
    );
    const outDir = join(root, centering);
    const { r, sums } = await twoProcesses(file, outDir);
    assert.ok(r.finished, JSON.stringify(r));
    assert.equal(new Set(sums).size, 1, `ranks ended with different weights: ${sums.join(' ')}`);
    const metrics = (await readFile(join(outDir, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    assert.deepEqual(
      metrics.map((m) => [m.step, m.world_size]),
      [
        [1, 2],
        [2, 2],
      ],
    );
    assert.ok(metrics.every((m) => Number.isFinite(m.loss_ibot) && Number.isFinite(m.loss_dino_global)));
  });
