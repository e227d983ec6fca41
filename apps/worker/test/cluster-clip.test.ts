/**
 * A `clip` cluster job is not elastic (its WebDataset shards are split by world size, as open_clip's are):
 * a worker killed mid-run ends the job, every worker exiting non-zero with one message that says why and
 * how to continue, and the same job with --resume continues from the last checkpoint to the end.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { runLocalJob } from '../src/local.js';
import { jsonl, untilStep } from './run-files.js';

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vitreg-cluster-clip-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

test('clip: a worker killed mid-run ends the job with the reason and the way on; --resume continues from the last checkpoint', async () => {
  const config = join(root, 'clip.json');
  const steps = 16;
  await writeFile(
    config,
    JSON.stringify({
      preset: 'tiny-clip',
      data: { train_size: 32, val_size: 8 },
      train: { steps, batch_size: 4, eval_every: 0, checkpoint_every: 4, keep_checkpoints: 10 },
    }),
  );
  const outDir = join(root, 'run');
  const job = (workerArgs: string[], onSpawn?: (w: 'coordinator' | number, c: ChildProcess) => void) =>
    runLocalJob({
      nodes: 2,
      outDir,
      passThrough: false,
      trainArgs: ['--config', config, '--backend', 'wasm', '--no-progress'],
      workerArgs,
      heartbeatMs: 200,
      coordinatorTimeoutMs: 3000,
      ...(onSpawn ? { onSpawn } : {}),
    });
  let victim: ChildProcess | undefined;
  const running = job([], (w, c) => {
    if (w === 1) victim = c;
  });
  await untilStep(outDir, 5);
  victim!.kill('SIGKILL');
  const r = await running;
  assert.equal(r.finished, false, JSON.stringify(r));
  assert.equal(r.workerSignals[1], 'SIGKILL');
  assert.notEqual(r.workerCodes[0], 0, 'the survivor exits non-zero');
  const log = await readFile(join(outDir, 'logs', 'worker-0.log'), 'utf8');
  assert.match(
    log,
    /objective clip: the job's workers changed at step \d+ \(.*\); a clip job does not go on with other workers: .*--resume/,
  );
  const stoppedAt = Math.max(...(await jsonl(join(outDir, 'metrics.jsonl'))).map((l) => l.step));
  assert.ok(stoppedAt >= 5 && stoppedAt < steps, `stopped after step ${stoppedAt}`);

  // The same job again with --resume: from the last checkpoint (a multiple of 4 at or below where it stopped) to the end.
  const again = await job(['--resume']);
  assert.ok(again.finished, JSON.stringify(again));
  assert.equal(again.result!.step, steps);
  const from = Number(/resuming from step (\d+) of 16/.exec(await readFile(join(outDir, 'logs', 'worker-0.log'), 'utf8'))?.[1]);
  assert.ok(from % 4 === 0 && from >= 4 && from <= stoppedAt, `resumed from step ${from}, stopped after ${stoppedAt}`);
  const lines = await jsonl(join(outDir, 'metrics.jsonl'));
  assert.deepEqual(
    lines.map((l) => l.step),
    Array.from({ length: steps }, (_, i) => i + 1),
    'every step logged once',
  );
});
