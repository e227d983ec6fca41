/**
 * A cluster's rank 0 killed between a step's commit and that step's metrics line (the flaky "kill -9 of
 * rank 0" cluster test, made deterministic): the step is committed, and the rank that becomes rank 0
 * writes its line from its own copy of the step's metrics, once; metrics.jsonl holds every committed
 * step. A fake GradientSync plays the cluster: this process is rank 1 of 2 while "rank 0" (the fake)
 * writes the lines, then the fake's rank 0 dies after committing step KILLED, with or without its line.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateTrainConfig } from '../src/config-validate.js';
import { train } from '../src/loop.js';
import { restoreMetricsLine } from '../src/metrics-file.js';
import { MembershipChanged, type GradientSync } from '../src/sync.js';
import { useWasm } from './helpers.js';

before(useWasm);

const STEPS = 4;
const KILLED = 2;
const cfg = validateTrainConfig({
  preset: 'tiny-supervised',
  model: { arch: 'vit_micro_patch8_reg4' },
  data: { train_size: 8, val_size: 4 },
  train: { steps: STEPS, batch_size: 2, eval_every: 0, checkpoint_every: 0, keep_checkpoints: 1, knn_train_size: 4 },
});

/**
 * This process starts as rank 0 (it sets the run up), is rank 1 of 2 for steps 1..KILLED (the fake's
 * rank 0 writes each committed step's line, but KILLED's only when `lineWritten`), and when step
 * KILLED + 1 all-reduces, rank 0 is gone: MembershipChanged, and this process is rank 0 of 1.
 */
class RankZeroDies implements GradientSync {
  rank = 0;
  worldSize = 2;
  membership = 1;
  private started = false;
  private committed = 0;
  constructor(
    private readonly metricsPath: string,
    private readonly lineWritten: boolean,
  ) {}
  async allReduce(): Promise<void> {
    if (this.membership === 1 && this.rank === 1 && this.committed === KILLED) {
      [this.rank, this.worldSize, this.membership] = [0, 1, 2];
      throw new MembershipChanged('rank 0 left', 2);
    }
  }
  async broadcast(state: Record<string, Float32Array>, meta?: unknown) {
    // The first broadcast: this process set the run up as rank 0; it then plays rank 1.
    if (!this.started) [this.started, this.rank] = [true, 1];
    return { state, meta };
  }
  async commitStep(step: number, values: Record<string, number>): Promise<Record<string, number>[]> {
    this.committed = step;
    if (this.rank === 1 && (step < KILLED || this.lineWritten))
      await appendFile(this.metricsPath, JSON.stringify({ step, loss: values.loss, written_by: 'old rank 0' }) + '\n');
    return [values, values];
  }
}

async function run(lineWritten: boolean) {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-failover-'));
  try {
    const notes: string[] = [];
    const result = await train(cfg, {
      outDir: root,
      progress: false,
      sync: new RankZeroDies(join(root, 'metrics.jsonl'), lineWritten),
      log: (l) => notes.push(l),
    });
    const lines = (await readFile(join(root, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number | string>);
    const own = (await readFile(join(root, 'ranks', 'rank-1.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    return { result, lines, own, notes };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

test('rank 0 killed after committing a step but before its metrics line: the new rank 0 writes the line; metrics.jsonl holds every step once', async () => {
  const { result, lines, own, notes } = await run(false);
  assert.equal(result.step, STEPS);
  assert.deepEqual(
    lines.map((l) => l.step),
    Array.from({ length: STEPS }, (_, i) => i + 1),
    'every committed step has one line',
  );
  const restored = lines[KILLED - 1]!;
  assert.equal(restored.written_by, undefined, 'written by the new rank 0');
  // The step's global loss (the mean of both ranks' reports), from the new rank 0's own copy.
  assert.equal(restored.loss, Number(own.find((l) => l.step === KILLED)!.loss!.toPrecision(6)));
  assert.equal(restored.membership, 1, 'the membership the step was committed in');
  assert.equal(restored.world_size, 2);
  assert.ok(
    notes.some((n) => n === `step ${KILLED}: its metrics line written by the new rank 0`),
    notes.join('\n'),
  );
});

test('rank 0 killed after its metrics line: the line is not written twice', async () => {
  const { lines, notes } = await run(true);
  assert.deepEqual(
    lines.map((l) => l.step),
    Array.from({ length: STEPS }, (_, i) => i + 1),
  );
  assert.equal(lines[KILLED - 1]!.written_by, 'old rank 0');
  assert.ok(!notes.some((n) => n.includes('its metrics line')), notes.join('\n'));
});

test('restoreMetricsLine: an eval line of the step does not count, a line cut short is dropped', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-failover-'));
  try {
    const path = join(root, 'metrics.jsonl');
    await appendFile(path, '{"step":1,"loss":2}\n{"step":2,"eval":{"acc":0.5}}\n{"step":3,"lo');
    assert.equal(await restoreMetricsLine(path, { step: 2, loss: 1.5 }), true);
    assert.equal(await readFile(path, 'utf8'), '{"step":1,"loss":2}\n{"step":2,"eval":{"acc":0.5}}\n{"step":2,"loss":1.5}\n');
    assert.equal(await restoreMetricsLine(path, { step: 2, loss: 9 }), false);
    assert.equal(await restoreMetricsLine(join(root, 'none.jsonl'), { step: 1, loss: 1 }), true);
    assert.equal(await readFile(join(root, 'none.jsonl'), 'utf8'), '{"step":1,"loss":1}\n');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
