import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { validateTrainConfig } from '../src/config-validate.js';
import { loadCheckpoint } from '../src/checkpoint.js';
import { SharedMemorySync, trainThreads } from '../src/threads.js';
import { train } from '../src/loop.js';
import { loadWeights } from '@vitreg/registers';
import { checkpointBytes, useWasm } from './helpers.js';

before(useWasm);

type Op = 'allReduce' | 'broadcast' | 'gather' | 'fail';
type Arrays = { shape: number[]; data: number[] }[];

/** Runs test/sync-worker.ts on `arrays(rank)` in `worldSize` threads; resolves to each rank's answer or error. */
async function collective(op: Op, worldSize: number, arrays: (rank: number) => Arrays): Promise<PromiseSettledResult<unknown>[]> {
  // Small slots (1024 floats) so the arrays below go through in several chunks.
  const buffer = SharedMemorySync.createBuffer(worldSize, 1024);
  const tsx = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./sync-worker.ts', import.meta.url).href;
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`;
  const runs = Array.from(
    { length: worldSize },
    (_, rank) =>
      new Promise((resolve, reject) => {
        const w = new Worker(boot, { eval: true, workerData: { buffer, rank, worldSize, op, arrays: arrays(rank) } });
        w.on('message', resolve);
        w.on('error', (err) => {
          SharedMemorySync.abort(buffer);
          reject(err);
        });
      }),
  );
  return Promise.allSettled(runs);
}

function values(settled: PromiseSettledResult<unknown>[]): unknown[] {
  return settled.map((s, r) => {
    if (s.status === 'rejected') throw new Error(`rank ${r}: ${(s.reason as Error).message}`);
    return s.value;
  });
}

test('SharedMemorySync.allReduce over 3 threads: the mean in rank order, bit-identical on every rank, across chunks', async () => {
  const big = 2500; // 2506 floats in all: three chunks of the 1024-float slots
  const arrays = (r: number): Arrays => [
    { shape: [2, 3], data: [1, 2, 3, 4, 5, r * 0.1] },
    { shape: [big], data: Array.from({ length: big }, (_, i) => Math.fround(Math.sin(i * (r + 1)) * 1e3)) },
  ];
  const got = values(await collective('allReduce', 3, arrays)) as Arrays[];
  const expected = [0, 1].map((t) => {
    const inputs = [0, 1, 2].map((r) => arrays(r)[t]!.data.map(Math.fround));
    return inputs[0]!.map((_, i) => Math.fround((inputs[0]![i]! + inputs[1]![i]! + inputs[2]![i]!) / 3));
  });
  for (let r = 0; r < 3; r++) {
    assert.deepEqual(
      got[r]!.map((a) => a.shape),
      [[2, 3], [big]],
    );
    assert.deepEqual(got[r]![0]!.data, expected[0]);
    assert.deepEqual(got[r]![1]!.data, expected[1]);
  }
});

test("SharedMemorySync.broadcast: every rank gets rank 0's state; gather: every rank gets all values in rank order", async () => {
  const state = (r: number): Arrays => [
    { shape: [3], data: [r, r + 1, r + 2] },
    { shape: [2000], data: Array.from({ length: 2000 }, (_, i) => i + 10 * r) },
  ];
  const got = values(await collective('broadcast', 2, state)) as { meta: unknown; state: { name: string; data: number[] }[] }[];
  for (const g of got) {
    assert.deepEqual(g.state, [
      { name: 't0', data: state(0)[0]!.data },
      { name: 't1', data: state(0)[1]!.data },
    ]);
    assert.deepEqual(g.meta, { from: 0 });
  }

  const words = (r: number): Arrays => [{ shape: [2], data: [r * 7, 2 ** 32 - 1 - r] }];
  const gathered = values(await collective('gather', 3, words));
  const all = [0, 1, 2].map((r) => ({ rank: r, words: words(r)[0]!.data }));
  for (const g of gathered) assert.deepEqual(g, all);
});

test('SharedMemorySync: a failed rank wakes the ranks waiting in a barrier with an error', async () => {
  const settled = await collective('fail', 3, () => [{ shape: [4], data: [1, 2, 3, 4] }]);
  assert.equal(settled[0]!.status, 'rejected');
  assert.match(((settled[0] as PromiseRejectedResult).reason as Error).message, /rank 0 failed on purpose/);
  for (const s of settled.slice(1)) {
    assert.equal(s.status, 'rejected');
    assert.match(((s as PromiseRejectedResult).reason as Error).message, /aborted because another rank failed/);
  }
  assert.throws(() => new SharedMemorySync(SharedMemorySync.createBuffer(2, 1024), 2, 2), /rank must be an integer in \[0, 2\), got 2/);
});

const tiny = {
  preset: 'tiny-supervised',
  objective: 'supervised',
  // Per-image drop path (not DINOv2's batch subset, which depends on the batch): W ranks x B = 1 rank x W*B.
  model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0.2, drop_path_batch_subset: false },
  data: { train_size: 24, val_size: 8 },
  train: { steps: 4, batch_size: 3, eval_every: 0, checkpoint_every: 0 },
  optim: { warmup_steps: 2 },
};

const weightsOf = async (checkpoint: string) => (await loadWeights(join(checkpoint, 'model.safetensors'))).params;
/** The weights of `tiny` trained by 2 threads, kept from the first test for the W x B test (one run fewer). */
let twoThreadWeights: ReturnType<typeof weightsOf> | undefined;

test('2 threads: ranks end with identical weights, and a run stopped at N/2 and resumed equals N straight steps bit for bit', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-threads-'));
  try {
    const cfg = validateTrainConfig(tiny);
    const straight = join(root, 'straight');
    const resumed = join(root, 'resumed');
    const a = await trainThreads(cfg, { outDir: straight, progress: false, workers: 2, checksum: true });
    twoThreadWeights = weightsOf(a.checkpoint);
    await twoThreadWeights;
    assert.equal(a.step, 4);
    assert.ok(a.eval && a.eval.val_accuracy !== undefined);
    assert.equal(a.checksums!.length, 2);
    assert.equal(a.checksums![1], a.checksums![0], 'the ranks ended with different weights');
    assert.equal(a.checksum, a.checksums![0]);

    const half = await trainThreads(cfg, { outDir: resumed, progress: false, workers: 2, stopAfter: 2 });
    assert.equal(half.step, 2);
    // The checkpoint holds the job's sampler position: 2 steps x 2 ranks x 3 images.
    const ck = await loadCheckpoint(half.checkpoint);
    assert.equal(ck.state.world_size, 2);
    assert.equal(ck.state.cursor, 12);

    const b = await trainThreads(cfg, { outDir: resumed, progress: false, workers: 2, resume: true, checksum: true });
    assert.equal(b.step, 4);
    assert.deepEqual(b.checksums, a.checksums);
    const x = await checkpointBytes(straight);
    const y = await checkpointBytes(resumed);
    assert.deepEqual(Object.keys(x), Object.keys(y));
    for (const f of Object.keys(x)) assert.ok(x[f]!.equals(y[f]!), `${f} differs between the straight and the resumed run`);
    assert.deepEqual(b.eval, a.eval);
    // Only rank 0 writes metrics: one line per step.
    const lines = (await readFile(join(straight, 'metrics.jsonl'), 'utf8')).trim().split('\n');
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as { step: number }).step),
      [1, 2, 3, 4],
    );
    // Each rank logged its own steps (rank, world size, the images it trained on) in ranks/.
    const rankLines = await Promise.all(
      [0, 1].map(async (r) =>
        (await readFile(join(straight, 'ranks', `rank-${r}.jsonl`), 'utf8'))
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { step: number; rank: number; world_size: number; final?: boolean; checksum?: string }),
      ),
    );
    for (const [r, ls] of rankLines.entries()) {
      assert.deepEqual(
        ls.filter((l) => !l.final).map((l) => [l.step, l.rank, l.world_size]),
        [1, 2, 3, 4].map((st) => [st, r, 2]),
      );
      // With checksum: true, a last line with the rank's final weights checksum.
      assert.deepEqual(
        ls.filter((l) => l.final).map((l) => l.checksum),
        [a.checksums![r]],
      );
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('2 threads: the training loss falls when fitting 8 images with a global batch of 8', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-threads-fit-'));
  try {
    const cfg = validateTrainConfig({
      preset: 'tiny-supervised',
      objective: 'supervised',
      model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0 },
      data: { train_size: 8, val_size: 4 },
      train: { steps: 30, batch_size: 4, eval_every: 0, checkpoint_every: 0 },
      optim: { base_lr: 5e-3, warmup_steps: 3, weight_decay: 0, weight_decay_end: 0, clip_grad: 0 },
      supervised: { label_smoothing: 0, hflip: 0, three_augment: false, color_jitter: 0 },
      crops: { global_crops_scale: [1, 1] },
    });
    await trainThreads(cfg, { outDir: root, progress: false, workers: 2 });
    const losses = (await readFile(join(root, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { loss: number }).loss);
    assert.equal(losses.length, 30);
    const mean = (xs: number[]) => xs.reduce((s, v) => s + v, 0) / xs.length;
    assert.ok(mean(losses.slice(-5)) < 0.5 * mean(losses.slice(0, 5)), `loss did not fall: ${losses.map((l) => l.toFixed(3)).join(' ')}`);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('trainThreads: workers outside 1-64 are refused', async () => {
  const cfg = validateTrainConfig(tiny);
  await assert.rejects(trainThreads(cfg, { outDir: tmpdir(), workers: 0 }), /workers must be an integer in \[1, 64\], got 0/);
  await assert.rejects(trainThreads(cfg, { outDir: tmpdir(), workers: 1.5 }), /workers must be an integer in \[1, 64\], got 1.5/);
});

test('W threads x batch B train the weights of 1 thread x batch W*B (drop path, augmentation): max |diff| < 1e-6', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-threads-eq-'));
  try {
    // `tiny` (4 steps, batch 3 per thread) at W x B = 6 images a step; 2 threads x 3 is the first test's run.
    const cfg = (batch: number) => validateTrainConfig({ ...tiny, train: { ...tiny.train, batch_size: batch } });
    const weights = async (workers: number) => {
      if (workers === 2 && twoThreadWeights) return twoThreadWeights;
      const out = join(root, `w${workers}`);
      const r =
        workers === 1
          ? await train(cfg(6), { outDir: out, progress: false })
          : await trainThreads(cfg(6 / workers), { outDir: out, progress: false, workers });
      return weightsOf(r.checkpoint);
    };
    const one = await weights(1);
    for (const W of [2, 3]) {
      const many = await weights(W);
      let maxDiff = 0;
      let moved = 0;
      for (const [k, v] of Object.entries(one)) {
        const a = v.dataSync();
        const b = many[k]!.dataSync();
        for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
        moved += a.length;
      }
      assert.ok(moved > 0);
      assert.ok(maxDiff < 1e-6, `${W} threads: weights differ from 1 thread by up to ${maxDiff}`);
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
