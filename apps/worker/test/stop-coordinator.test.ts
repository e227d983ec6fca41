/**
 * SIGTERM to the coordinator process of a cluster job (issue 23; what a scheduler does to the process
 * that hosts it): the coordinator asks every worker to stop after the next committed step, rank 0 writes
 * a checkpoint of that step, every worker and the coordinator exit 143, and the job's logs say where it
 * stopped. A tiny 2-worker job (vitreg-coordinator and two vitreg-worker processes, as `vitreg train
 * --nodes 2` starts them).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runLocalJob } from '../src/local.js';

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vitreg-coordinator-stop-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const STEPS = 200;

test('SIGTERM to the coordinator: every worker stops after the same step with a checkpoint; all exit 143', async () => {
  const config = join(root, 'job.json');
  await writeFile(
    config,
    JSON.stringify({
      preset: 'tiny-supervised',
      model: { arch: 'vit_micro_patch8_reg4', drop_path_batch_subset: false },
      data: { train_size: 32, val_size: 8 },
      train: { steps: STEPS, batch_size: 4, eval_every: 0, checkpoint_every: 0 },
    }),
  );
  const outDir = join(root, 'job');
  let coordinator: ChildProcess | undefined;
  const running = runLocalJob({
    nodes: 2,
    outDir,
    passThrough: false,
    trainArgs: ['--config', config, '--backend', 'wasm', '--no-progress'],
    heartbeatMs: 200,
    onSpawn: (what, child) => void (what === 'coordinator' && (coordinator = child)),
  });
  const metrics = join(outDir, 'metrics.jsonl');
  const at = 2 + Math.floor(Math.random() * 4);
  for (const t0 = Date.now(); ; await new Promise((r) => setTimeout(r, 50))) {
    if (existsSync(metrics) && (await readFile(metrics, 'utf8')).trim().split('\n').filter(Boolean).length >= at) break;
    assert.ok(Date.now() - t0 < 120_000, `no step ${at} in ${metrics}`);
  }
  coordinator!.kill('SIGTERM');
  const r = await running;
  assert.equal(r.finished, false);
  assert.deepEqual(r.workerCodes, [143, 143], JSON.stringify(r));
  assert.equal(r.coordinatorCode, 143);
  const interrupted = r.result!.interrupted as { step: number; signal: string };
  assert.equal(interrupted.signal, 'SIGTERM');
  const n = interrupted.step;
  assert.ok(n >= at && n < STEPS, `stopped at ${n}, signalled after ${at}`);
  assert.equal(r.result!.checkpoint, join(outDir, 'checkpoints', `step-${n}`));
  assert.ok(existsSync(join(outDir, 'checkpoints', `step-${n}`, 'model.safetensors')));
  for (const w of [0, 1]) {
    const log = await readFile(join(outDir, 'logs', `worker-${w}.log`), 'utf8');
    assert.match(log, new RegExp(`interrupted at step ${n} \\(SIGTERM\\)`), `worker-${w}.log`);
  }
});
