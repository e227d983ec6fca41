/**
 * vitreg sweep run on this machine, for real: a 2 x 2 sweep of tiny cells (registers 0 / 2 x seeds 0 / 1,
 * 6 steps of 4 images, the outlier analysis on 2 images), 2 at once. One cell is killed (SIGKILL to its
 * run-cell and training) after its step-2 checkpoint; the sweep run then resumes it and it ends with the
 * weights of an uninterrupted training of the same config. A second run runs nothing; collect's table and
 * figure data match the cells' own result files. And a 2-process cell started as Kubernetes starts it (two
 * `run-cell --launcher env` processes with RANK 0 / 1): rank 0 evaluates and writes the markers. And one
 * 2-step cell evaluated by a class probe, a segmentation head and LOST on tiny synthetic sets, its
 * results.json checked against each stage's own files.
 * (About 30 CPU-seconds in all: 12 vitreg processes, each starting tfjs and ONNX Runtime.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN, nodeArgsOf, ROOT, vitreg } from './helpers.js';

export const TINY_SWEEP = {
  name: 'tiny-run',
  base: 'tiny-supervised',
  set: {
    'data.train_size': 32,
    'data.val_size': 8,
    'train.steps': 6,
    'train.batch_size': 4,
    'train.eval_every': 0,
    'train.checkpoint_every': 2,
  },
  axes: { 'model.num_register_tokens': [0, 2], 'train.seed': [0, 1] },
  evaluate: { outliers: { images: 'synthetic', count: 2, size: 32 } },
  resources: { processes: 1, threads: 1, time: '00:10:00' },
  max_concurrent: 2,
  retries: 1,
};

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test(
  'a 2x2 sweep runs here 2 at once; a killed cell resumes to the uninterrupted weights; collect matches the cells',
  { timeout: 600_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-sweep-run-'));
    try {
      const file = join(dir, 'sweep.json');
      writeFileSync(file, JSON.stringify(TINY_SWEEP));
      const out = join(dir, 'runs/sweep-tiny-run');
      const cellDir = (i: number) =>
        join(
          out,
          'cells',
          readdirSync(join(out, 'cells')).find((d) => d.startsWith(`${i}-`))!,
        );

      // Cell 3 alone, killed (its whole process group) once its step-2 checkpoint is written.
      const child = spawn(process.execPath, [...nodeArgsOf(MAIN), 'sweep', 'run-cell', file, '--cell', '3'], {
        detached: true,
        stdio: 'ignore',
      });
      const ckpt2 = join(out, 'cells/3-reg2-seed1/train/checkpoints/step-2/model.safetensors');
      for (const t0 = Date.now(); !existsSync(ckpt2); await sleep(50))
        assert.ok(Date.now() - t0 < 240_000, 'no step-2 checkpoint of cell 3');
      process.kill(-child.pid!, 'SIGKILL');
      await new Promise((r) => child.once('exit', r));
      assert.ok(!existsSync(join(cellDir(3), 'train/checkpoints/step-6')), 'killed before its last step');
      assert.ok(!existsSync(join(cellDir(3), 'done.json')));

      // The whole sweep, 2 at once: cell 3 continues from its checkpoint.
      const r = await vitreg(['sweep', 'run', file, '--concurrency', '2']);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').pop()!), { out, cells: 4, done: 4, skipped: 0, failed: 0, interrupted: 0 });
      assert.match(readFileSync(join(cellDir(3), 'logs/train.log'), 'utf8'), /resuming from step [24] of 6/);
      for (const i of [0, 1, 2, 3]) assert.ok(existsSync(join(cellDir(i), 'done.json')), `cell ${i} done`);

      // The same config trained without a stop: the same weights.
      const ref = join(dir, 'ref');
      const t = await vitreg(['train', '--config', join(cellDir(3), 'config.json'), '--out', ref, '--no-progress']);
      assert.equal(t.code, 0, t.stderr);
      const results = [0, 1, 2, 3].map((i) => JSON.parse(readFileSync(join(cellDir(i), 'results.json'), 'utf8')));
      assert.equal(results[3].weights_sha256, sha256(join(ref, 'checkpoints/step-6/model.safetensors')), 'resumed = uninterrupted weights');
      assert.notEqual(results[2].weights_sha256, results[3].weights_sha256, 'seeds differ');

      // Done cells are not run again.
      const trainLog = readFileSync(join(cellDir(0), 'logs/train.log'), 'utf8');
      const again = await vitreg(['sweep', 'run', file]);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(JSON.parse(again.stdout.trim().split('\n').pop()!).skipped, 4);
      assert.equal(readFileSync(join(cellDir(0), 'logs/train.log'), 'utf8'), trainLog);

      // collect: the table and the figure data from the cells' own results.
      const c = await vitreg(['sweep', 'collect', file]);
      assert.equal(c.code, 0, c.stderr);
      const [head, ...rows] = readFileSync(join(out, 'results.csv'), 'utf8').trim().split('\n');
      const cols = head!.split(',');
      for (const m of ['train.val_accuracy', 'train.loss', 'outliers.fraction', 'outliers.median_norm', 'outliers.max_norm'])
        assert.ok(cols.includes(m), `${m} in ${cols}`);
      assert.equal(rows.length, 4);
      rows.forEach((line, i) => {
        const row = Object.fromEntries(line.split(',').map((v, k) => [cols[k], v]));
        assert.equal(row.cell, results[i].name);
        assert.equal(row.status, 'done');
        for (const [k, v] of Object.entries(results[i].measurements)) assert.equal(row[k], v === null ? '' : String(v), `${row.cell} ${k}`);
      });
      const fig = JSON.parse(readFileSync(join(out, 'figures/figures.json'), 'utf8'));
      for (const [x, cells] of [
        [0, [0, 1]],
        [2, [2, 3]],
      ] as const) {
        const p = fig.metrics['outliers.median_norm'][0].points.find((q: { x: number }) => q.x === x);
        const vals = cells.map((i) => results[i].measurements['outliers.median_norm']);
        assert.ok(Math.abs(p.mean - (vals[0] + vals[1]) / 2) < 1e-9, `mean at ${x}`);
        assert.equal(p.n, 2);
      }
      const norms = JSON.parse(readFileSync(join(cellDir(0), 'eval/outliers/norms.json'), 'utf8'));
      assert.equal(norms.values.length, 2 * 16, '2 images of 4 x 4 patches');
      assert.ok(existsSync(join(out, 'figures/norm-histograms.png')) && existsSync(join(out, 'report.html')));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'a multi-process cell as the scheduler starts it (launcher env, 2 ranks as 2 pods): rank 0 evaluates and marks it done',
  { timeout: 300_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-sweep-env-'));
    try {
      const file = join(dir, 'sweep.json');
      const sweep = {
        ...TINY_SWEEP,
        name: 'env',
        set: { ...TINY_SWEEP.set, 'train.steps': 4 },
        axes: { 'train.seed': [0] },
        evaluate: {},
        resources: { processes: 2 },
      };
      writeFileSync(file, JSON.stringify(sweep));
      const { createServer } = await import('node:net');
      const port = await new Promise<number>((res) => {
        const srv = createServer().listen(0, '127.0.0.1', () => {
          const p = (srv.address() as { port: number }).port;
          srv.close(() => res(p));
        });
      });
      const worker = [process.execPath, ...nodeArgsOf(join(ROOT, 'apps/worker/src/main.ts'))].join(' ');
      const rank = (r: number) =>
        new Promise<{ code: number | null; err: string }>((res) => {
          const env = {
            ...process.env,
            RANK: String(r),
            WORLD_SIZE: '2',
            MASTER_ADDR: '127.0.0.1',
            MASTER_PORT: String(port),
            VITREG_TOKEN: 'sweep-test',
            VITREG_SWEEP_WORKER: worker,
          };
          const child = spawn(process.execPath, [...nodeArgsOf(MAIN), 'sweep', 'run-cell', file, '--cell', '0', '--launcher', 'env'], {
            cwd: ROOT,
            env,
            stdio: ['ignore', 'ignore', 'pipe'],
          });
          let err = '';
          child.stderr.on('data', (d) => (err += d));
          child.on('close', (code) => res({ code, err }));
        });
      const [r0, r1] = await Promise.all([rank(0), rank(1)]);
      assert.equal(r0.code, 0, r0.err);
      assert.equal(r1.code, 0, r1.err);
      assert.match(r1.err, /rank 1 finished its training/);
      const cell = join(dir, 'runs/sweep-env/cells/0-seed0');
      const metrics = readFileSync(join(cell, 'train/metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.deepEqual(
        metrics.map((m) => m.world_size),
        [2, 2, 2, 2],
      );
      const results = JSON.parse(readFileSync(join(cell, 'results.json'), 'utf8'));
      assert.equal(results.weights_sha256, sha256(join(cell, 'train/checkpoints/step-4/model.safetensors')));
      assert.ok(existsSync(join(cell, 'done.json')));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'a cell evaluated by probe (class), dense (segmentation) and LOST: results.json holds what each stage wrote',
  { timeout: 300_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-sweep-eval-'));
    try {
      const file = join(dir, 'sweep.json');
      const small = ['--synthetic-size', '32', '--size', '32', '--backend', 'wasm'];
      writeFileSync(
        file,
        JSON.stringify({
          ...TINY_SWEEP,
          name: 'eval',
          set: { ...TINY_SWEEP.set, 'train.steps': 2, 'train.checkpoint_every': 0 },
          axes: { 'model.num_register_tokens': [2] },
          evaluate: {
            probe: { tasks: ['class'], data: 'synthetic', args: ['--count', '12', '--test-count', '6', '--steps', '20', ...small] },
            dense: { tasks: ['segmentation'], data: 'synthetic', args: ['--count', '6', '--test-count', '3', '--steps', '20', ...small] },
            lost: { data: 'synthetic', args: ['--count', '3', ...small] },
          },
        }),
      );
      const r = await vitreg(['sweep', 'run', file]);
      assert.equal(r.code, 0, r.stderr);
      const cell = join(dir, 'runs/sweep-eval/cells/0-reg2');
      const m = JSON.parse(readFileSync(join(cell, 'results.json'), 'utf8')).measurements;
      const probe = JSON.parse(readFileSync(join(cell, 'eval/probe/results.json'), 'utf8'));
      assert.equal(probe.task, 'class');
      assert.equal(m['class.accuracy'], probe.accuracy);
      assert.equal(m['class.knn_top1'], probe.knn.top1);
      const dense = JSON.parse(readFileSync(join(cell, 'eval/dense/results.json'), 'utf8'));
      assert.equal(dense.task, 'segmentation');
      assert.equal(m['segmentation.miou'], dense.segmentation.miou);
      assert.equal(m['segmentation.pixel_accuracy'], dense.segmentation.accuracy);
      const corloc = JSON.parse(readFileSync(join(cell, 'eval/lost/corloc.json'), 'utf8'));
      assert.equal(typeof corloc.corloc, 'number');
      assert.equal(m['lost.corloc'], corloc.corloc);
      for (const k of ['class.accuracy', 'class.knn_top1', 'segmentation.miou', 'lost.corloc'])
        assert.ok(m[k] >= 0 && m[k] <= 1, `${k} = ${m[k]}`);
      for (const log of ['probe', 'dense', 'lost']) assert.ok(existsSync(join(cell, 'logs', `${log}.log`)), `logs/${log}.log`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
