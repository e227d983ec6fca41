/**
 * Stopping and resuming on purpose (issue 23): `train`'s `stop` ends a run after the step in progress
 * with a checkpoint and says so in `interrupted`; resuming ('auto') ends with the weights of an
 * uninterrupted run, byte for byte (also from a checkpoint saved before a config section existed); a folder of another run is refused naming the field; several ranks
 * (threads sharing a SharedStop) stop after the same step.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateTrainConfig } from '../src/config-validate.js';
import { RunMismatchError } from '../src/checkpoint.js';
import { train } from '../src/loop.js';
import { parseStopSignals, SharedStop, signalExitCode, stopCode } from '../src/stop.js';
import { LocalGradientSync } from '../src/sync.js';
import { trainThreads } from '../src/threads.js';
import { checkpointBytes, useWasm } from './helpers.js';

before(useWasm);

const STEPS = 8;
const raw = {
  preset: 'tiny-supervised',
  data: { train_size: 24, val_size: 8 },
  train: { steps: STEPS, batch_size: 4, eval_every: 0, checkpoint_every: 0, keep_checkpoints: 1, knn_train_size: 8 },
};

/** One rank that asks to stop (SIGINT) when step `at` is committed, as a signal arriving during that step would. */
class StopAt extends LocalGradientSync {
  readonly controller = new AbortController();
  constructor(private readonly at: number) {
    super();
  }
  override async commitStep(step: number, values: Record<string, number>): Promise<Record<string, number>[]> {
    if (step === this.at) this.controller.abort('SIGINT');
    return super.commitStep(step, values);
  }
}

test('a run stopped at a random step writes its checkpoint, says so, and the same call resumes it to the uninterrupted weights', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-stop-'));
  try {
    const cfg = validateTrainConfig(raw);
    const straight = await train(cfg, { outDir: join(root, 'straight'), progress: false, checksum: true });
    assert.equal(straight.interrupted, undefined);
    const at = 1 + Math.floor(Math.random() * (STEPS - 1)); // 1 .. STEPS-1
    const sync = new StopAt(at);
    const out = join(root, 'stopped');
    const stopped = await train(cfg, { outDir: out, progress: false, sync, stop: sync.controller.signal, resume: 'auto' });
    assert.deepEqual(stopped.interrupted, { step: at, signal: 'SIGINT' }, `stopped at step ${at}`);
    assert.equal(stopped.step, at);
    assert.equal(stopped.eval, undefined);
    assert.equal(stopped.checkpoint, join(out, 'checkpoints', `step-${at}`));
    assert.ok(existsSync(join(stopped.checkpoint, 'model.safetensors')));
    // A checkpoint written before the config had its clip section (vitreg before OpenCLIP training)
    // resumes the same: a section or field the saved config lacks counts as its default.
    const statePath = join(stopped.checkpoint, 'state.json');
    const saved = JSON.parse(await readFile(statePath, 'utf8')) as { config: Record<string, unknown> };
    assert.ok(saved.config.clip, 'the checkpoint saves the clip section');
    delete saved.config.clip;
    await writeFile(statePath, JSON.stringify(saved));
    const lines: string[] = [];
    const resumed = await train(cfg, { outDir: out, progress: false, resume: 'auto', checksum: true, log: (l) => lines.push(l) });
    assert.deepEqual(lines, [`resuming from step ${at} of ${STEPS} (checkpoint ${stopped.checkpoint})`]);
    assert.equal(resumed.step, STEPS);
    assert.equal(resumed.checksum, straight.checksum);
    const [x, y] = [await checkpointBytes(join(root, 'straight')), await checkpointBytes(out)];
    for (const f of Object.keys(x)) assert.ok(x[f]!.equals(y[f]!), `${f} differs from the uninterrupted run`);
    assert.deepEqual(resumed.eval, straight.eval);

    // A config that differs: refused before any work, naming the first differing field.
    const other = validateTrainConfig({ ...raw, train: { ...raw.train, seed: 3 } });
    await assert.rejects(train(other, { outDir: out, progress: false, resume: 'auto' }), (err: Error) => {
      assert.ok(err instanceof RunMismatchError);
      assert.equal(err.field, 'train.seed');
      assert.equal(err.there, '0');
      assert.equal(err.here, '3');
      assert.match(
        err.message,
        /holds the checkpoints of another run .*step-8\): field "train\.seed" is 0 there and 3 in this run's config/,
      );
      return true;
    });
    // resume: true on an empty folder starts fresh and says so; a stop before the first step writes nothing.
    const empty = join(root, 'empty');
    const said: string[] = [];
    const early = await train(cfg, {
      outDir: empty,
      progress: false,
      resume: true,
      stop: { aborted: true, reason: 'SIGTERM' },
      log: (l) => said.push(l),
    });
    assert.deepEqual(said, [`no checkpoint to resume from in ${join(empty, 'checkpoints')}: starting fresh`]);
    assert.deepEqual(early.interrupted, { step: 0, signal: 'SIGTERM' });
    assert.equal(existsSync(join(empty, 'checkpoints')), false);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('threads sharing a SharedStop stop after the same step, every rank with the same weights', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-stop-threads-'));
  try {
    const cfg = validateTrainConfig({ ...raw, train: { ...raw.train, steps: 40 } });
    const stop = new SharedStop();
    // Set from this thread while the training threads run: each rank sees it at its own moment, and
    // the step reports make them agree on one step.
    const timer = setInterval(() => {
      if (existsSync(join(root, 'run', 'metrics.jsonl'))) {
        stop.request(15);
        clearInterval(timer);
      }
    }, 50);
    const r = await trainThreads(cfg, { outDir: join(root, 'run'), progress: false, workers: 2, checksum: true, stop });
    clearInterval(timer);
    assert.equal(r.interrupted?.signal, 'SIGTERM');
    assert.ok(r.interrupted!.step < 40, `stopped early, at ${r.interrupted!.step}`);
    assert.equal(r.checksums![0], r.checksums![1], 'both ranks hold the same weights');
    assert.ok(existsSync(join(root, 'run', 'checkpoints', `step-${r.interrupted!.step}`)));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('stop helpers: signal lists, exit codes, a SharedStop as a thread receives it', () => {
  assert.deepEqual(parseStopSignals('INT, term,SIGUSR1'), ['SIGINT', 'SIGTERM', 'SIGUSR1']);
  assert.deepEqual(parseStopSignals('none'), []);
  assert.throws(() => parseStopSignals('INT,KILL'), /"KILL" is not a signal a process can catch/);
  assert.equal(signalExitCode('SIGINT'), 130);
  assert.equal(signalExitCode('SIGTERM'), 143);
  assert.equal(signalExitCode('SIGUSR1'), 138);
  const s = new SharedStop();
  assert.equal(stopCode({ flag: s.flag }), 0);
  s.request(10);
  s.request(15);
  assert.equal(stopCode({ flag: s.flag }), 10, 'the first request wins');
  assert.equal(s.reason, 'SIGUSR1');
  assert.equal(stopCode({ aborted: true }), -1);
});
