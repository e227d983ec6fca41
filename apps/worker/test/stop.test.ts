/**
 * A stop signal to one worker of a running cluster job (issue 23): the coordinator turns it into a
 * job-wide checkpoint at the next committed step, every worker exits with 128 + the signal's number
 * saying where it stopped, and the same job started again continues it to the weights of an
 * uninterrupted run (checksums). SIGTERM to the coordinator process does the same for the whole job.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runLocalJob, type LocalJobOptions } from '../src/local.js';

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vitreg-cluster-stop-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const STEPS = 24;
const CONFIG = {
  preset: 'tiny-supervised',
  model: { arch: 'vit_micro_patch8_reg4', drop_path_batch_subset: false },
  data: { train_size: 32, val_size: 8 },
  train: { steps: STEPS, batch_size: 4, eval_every: 0, checkpoint_every: 0, keep_checkpoints: 2 },
};

async function job(outDir: string, config: string, o: Partial<LocalJobOptions> = {}) {
  return runLocalJob({
    nodes: 2,
    outDir,
    passThrough: false,
    trainArgs: ['--config', config, '--backend', 'wasm', '--no-progress'],
    workerArgs: ['--checksum'],
    heartbeatMs: 200,
    ...o,
  });
}

/** Waits until rank 0's metrics.jsonl has `step` lines. */
async function untilStep(outDir: string, step: number): Promise<void> {
  const path = join(outDir, 'metrics.jsonl');
  for (const t0 = Date.now(); Date.now() - t0 < 120_000; await new Promise((r) => setTimeout(r, 50))) {
    if (existsSync(path) && (await readFile(path, 'utf8')).trim().split('\n').filter(Boolean).length >= step) return;
  }
  throw new Error(`no step ${step} in ${path}`);
}

/**
 * A job stopped by SIGTERM after step `at`: every worker and the coordinator exited 143, rank 0 wrote the
 * checkpoint of the step it stopped after, and every worker's log says so. Returns that step.
 */
async function assertStopped(r: Awaited<ReturnType<typeof runLocalJob>>, outDir: string, at: number, steps: number): Promise<number> {
  assert.equal(r.finished, false);
  assert.deepEqual(r.workerCodes, [143, 143], JSON.stringify(r));
  assert.equal(r.coordinatorCode, 143);
  const interrupted = r.result!.interrupted as { step: number; signal: string };
  assert.equal(interrupted.signal, 'SIGTERM');
  const n = interrupted.step;
  assert.ok(n >= at && n < steps, `stopped at ${n}, signalled after ${at}`);
  assert.equal(r.result!.checkpoint, join(outDir, 'checkpoints', `step-${n}`));
  assert.ok(existsSync(join(outDir, 'checkpoints', `step-${n}`, 'model.safetensors')));
  for (const w of [0, 1]) {
    const log = await readFile(join(outDir, 'logs', `worker-${w}.log`), 'utf8');
    assert.match(log, new RegExp(`interrupted at step ${n} \\(SIGTERM\\)`), `worker-${w}.log`);
  }
  return n;
}

test('SIGTERM to one worker: every worker stops after the same step with one checkpoint and exits 143; the same job again ends as an uninterrupted one', async () => {
  const config = join(root, 'job.json');
  await writeFile(config, JSON.stringify(CONFIG));
  const straight = await job(join(root, 'straight'), config);
  assert.ok(straight.finished, JSON.stringify(straight));
  const want = straight.result!.checksum as string;

  const outDir = join(root, 'stopped');
  const children: ChildProcess[] = [];
  const running = job(outDir, config, { onSpawn: (w, c) => void (typeof w === 'number' && (children[w] = c)) });
  const at = 2 + Math.floor(Math.random() * (STEPS / 2));
  await untilStep(outDir, at);
  children[1]!.kill('SIGTERM');
  const n = await assertStopped(await running, outDir, at, STEPS);
  const coord = await readFile(join(outDir, 'logs', 'coordinator.log'), 'utf8');
  assert.match(coord, /worker-1 asks to stop \(SIGTERM\)/);
  assert.match(coord, new RegExp(`job stopped: interrupted at step ${n} \\(SIGTERM to worker-1\\); checkpoint of step ${n}`));

  // The same job again: it continues from the checkpoint (no --resume needed) to the uninterrupted weights.
  const again = await job(outDir, config);
  assert.ok(again.finished, JSON.stringify(again));
  assert.equal(again.result!.step, STEPS);
  assert.equal(again.result!.checksum, want);
  assert.match(await readFile(join(outDir, 'logs', 'worker-0.log'), 'utf8'), new RegExp(`resuming from step ${n} of ${STEPS}`));
});

// What a scheduler does to the process that hosts the coordinator: it asks every worker to stop after the
// next committed step. 200 steps, so the job cannot end before the signal lands.
test('SIGTERM to the coordinator: every worker stops after the same step with a checkpoint; all exit 143', async () => {
  const config = join(root, 'long.json');
  await writeFile(config, JSON.stringify({ ...CONFIG, train: { ...CONFIG.train, steps: 200 } }));
  const outDir = join(root, 'coordinator-stopped');
  let coordinator: ChildProcess | undefined;
  const running = job(outDir, config, { onSpawn: (what, child) => void (what === 'coordinator' && (coordinator = child)) });
  const at = 2 + Math.floor(Math.random() * 4);
  await untilStep(outDir, at);
  coordinator!.kill('SIGTERM');
  await assertStopped(await running, outDir, at, 200);
});
