/**
 * vitreg sweep on a real one-node Slurm (munge, slurmctld, slurmd started in a temporary folder as
 * test/launchers.test.ts does): a 2 x 2 sweep of tiny cells (registers 0 / 2 x seeds 0 / 1), the last
 * cell a 2-process cluster job (resources.overrides), planned with `vitreg sweep plan` and submitted as
 * the plan's one sbatch job array. Every array task runs its cell (srun starts `vitreg train`, or two
 * vitreg-worker tasks for the 2-process cell), writes a %A_%a log, and the collected table equals the one
 * of the same sweep run on this machine (`vitreg sweep run`), weights included. And an array task signalled
 * as Slurm does before a time limit (scancel --signal=USR1) writes a checkpoint, requeues itself and
 * continues to its done marker. And a cell whose first training attempt fails (a stand-in srun that fails
 * once) is run again inside its array task (retries) and ends done. Skipped with one line where
 * Slurm or munge is absent (CI installs them) or not root.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import {
  cleanEnv,
  ROOT,
  run,
  sh,
  sleep,
  slurmSkipReason,
  startCluster,
  stopDaemons,
  waitForStepsGone,
  tail,
  nodeCommand,
  which,
  workerBin,
  type Cluster,
} from './launcher-helpers.js';

const SWEEP = {
  name: 'tiny-slurm',
  base: 'tiny-supervised',
  set: {
    'data.train_size': 32,
    'data.val_size': 8,
    'train.steps': 4,
    'train.batch_size': 4,
    'train.eval_every': 0,
    'train.checkpoint_every': 2,
  },
  axes: { 'model.num_register_tokens': [0, 2], 'train.seed': [0, 1] },
  resources: {
    processes: 1,
    time: '00:10:00',
    overrides: [{ where: { 'model.num_register_tokens': 2, 'train.seed': 1 }, processes: 2 }],
  },
  max_concurrent: 2,
  retries: 0,
};

/** A folder with executables `vitreg` and `vitreg-worker` that run this clone's sources. */
function bins(dir: string): string {
  workerBin(dir);
  const path = join(dir, 'bin', 'vitreg');
  const main = join(ROOT, 'apps/cli/src/main.ts');
  writeFileSync(path, `#!/bin/sh\nexec ${nodeCommand(main)} "$@"\n`);
  chmodSync(path, 0o755);
  return join(dir, 'bin');
}

/** `vitreg sweep plan FILE --out OUT`, then the plan's sbatch job array submitted; returns the array's job id. */
async function planAndSubmit(bin: string, dir: string, file: string, out: string, env: NodeJS.ProcessEnv): Promise<string> {
  const plan = await run(join(bin, 'vitreg'), ['sweep', 'plan', file, '--out', out, '--vitreg', join(bin, 'vitreg')], env);
  assert.equal(plan.code, 0, tail(plan));
  const submit = await run(
    which('sbatch')!,
    ['--parsable', '--overcommit', '--chdir', dir, join(out, 'plan/slurm/sweep.sbatch')],
    env,
    30_000,
  );
  assert.equal(submit.code, 0, tail(submit));
  return submit.stdout.trim().split(';')[0]!;
}

const slurmSkip = slurmSkipReason();

describe('vitreg sweep on slurm', { skip: slurmSkip }, () => {
  let cluster: Cluster | undefined;
  before(async () => {
    cluster = await startCluster();
  });
  after(async () => {
    if (!cluster) return;
    await stopDaemons(cluster.pidFiles);
    rmSync(cluster.dir, { recursive: true, force: true });
  });

  test("the plan's job array runs every cell (one a 2-process job) to the same table as a run here", { timeout: 900_000 }, async () => {
    const c = cluster!;
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-sweep-slurm-'));
    try {
      const bin = bins(dir);
      const file = join(dir, 'sweep.json');
      writeFileSync(file, JSON.stringify(SWEEP));
      const env = cleanEnv({ SLURM_CONF: c.conf, PATH: `${bin}${delimiter}${process.env.PATH ?? ''}` });
      const vitreg = (args: string[]) => run(join(bin, 'vitreg'), args, env);

      // The plan, submitted as it is (sized to this node on the command line).
      const slurmOut = join(dir, 'slurm');
      const plan = await vitreg(['sweep', 'plan', file, '--out', slurmOut, '--vitreg', join(bin, 'vitreg')]);
      assert.equal(plan.code, 0, tail(plan));
      const script = join(slurmOut, 'plan/slurm/sweep.sbatch');
      mkdirSync(join(slurmOut, 'logs/slurm'), { recursive: true });
      const submit = await run(which('sbatch')!, ['--parsable', '--overcommit', '--cpus-per-task=1', '--chdir', dir, script], env, 30_000);
      assert.equal(submit.code, 0, tail(submit));
      const jobId = submit.stdout.trim().split(';')[0]!;

      // Meanwhile the same sweep here, 2 at once.
      const localOut = join(dir, 'local');
      const local = await vitreg(['sweep', 'run', file, '--out', localOut, '--concurrency', '2']);
      assert.equal(local.code, 0, tail(local));

      for (const t0 = Date.now(); ; await sleep(500)) {
        const queued = sh(which('squeue')!, ['-h', '-j', jobId, '-o', '%i %T'], env).trim();
        if (queued === '') break;
        assert.ok(Date.now() - t0 < 600_000, `array job ${jobId} still queued: ${queued}`);
      }
      const logs = readdirSync(join(slurmOut, 'logs/slurm'));
      const logText = logs.map((f) => `--- ${f}\n${readFileSync(join(slurmOut, 'logs/slurm', f), 'utf8')}`).join('\n');
      assert.deepEqual(
        logs.sort(),
        [0, 1, 2, 3].map((i) => `vitreg-sweep-tiny-slurm-${jobId}_${i}.out`),
        'a %A_%a log per array task',
      );
      const status = await vitreg(['sweep', 'status', file, '--out', slurmOut, '--json']);
      assert.equal(status.code, 0, tail(status));
      assert.deepEqual(
        JSON.parse(status.stdout).map((r: { state: string }) => r.state),
        ['done', 'done', 'done', 'done'],
        logText,
      );
      // The 2-process cell ran as a cluster job: two ranks under srun.
      const cell3 = join(slurmOut, 'cells/3-reg2-seed1/train');
      for (const rank of [0, 1])
        assert.match(readFileSync(join(cell3, 'logs', `worker-${rank}.log`), 'utf8'), /this worker is rank \d of 2 processes/);
      assert.ok(existsSync(join(slurmOut, 'cells/0-reg0-seed0/logs/train.log')));

      // Collected on both: the same table (measurements and weights).
      for (const out of [slurmOut, localOut]) {
        const col = await vitreg(['sweep', 'collect', file, '--out', out]);
        assert.equal(col.code, 0, tail(col));
      }
      const table = (out: string) => readFileSync(join(out, 'results.csv'), 'utf8');
      assert.equal(table(slurmOut), table(localOut), 'Slurm and this machine give the same results');
      assert.equal(table(localOut).trim().split('\n').length, 5);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a failing cell is retried inside its array task (retries) and ends done', { timeout: 600_000 }, async () => {
    const c = cluster!;
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-sweep-slurm-retry-'));
    try {
      const bin = bins(dir);
      const file = join(dir, 'sweep.json');
      writeFileSync(
        file,
        JSON.stringify({ ...SWEEP, name: 'retry', axes: { 'train.seed': [0] }, resources: { time: '00:10:00' }, retries: 1 }),
      );
      // The first srun of the task fails (as a crashed training would); the next one is the real srun.
      const srun = join(bin, 'srun-once');
      const mark = join(dir, 'failed-once');
      writeFileSync(
        srun,
        `#!/bin/sh\nif [ ! -e ${mark} ]; then touch ${mark}; echo "stand-in srun: failing once" >&2; exit 1; fi\nexec ${which('srun')} "$@"\n`,
      );
      chmodSync(srun, 0o755);
      const env = cleanEnv({ SLURM_CONF: c.conf, PATH: `${bin}${delimiter}${process.env.PATH ?? ''}`, VITREG_SWEEP_SRUN: srun });
      const out = join(dir, 'out');
      const jobId = await planAndSubmit(bin, dir, file, out, env);
      for (const t0 = Date.now(); sh(which('squeue')!, ['-h', '-j', jobId, '-o', '%i %T'], env).trim() !== ''; await sleep(500))
        assert.ok(Date.now() - t0 < 400_000, `array job ${jobId} still queued`);
      const log = readdirSync(join(out, 'logs/slurm'))
        .map((f) => readFileSync(join(out, 'logs/slurm', f), 'utf8'))
        .join('\n');
      assert.match(log, /cell 0-seed0: train failed \(attempt 1\)/, log);
      assert.match(log, /cell 0-seed0: done in/, log);
      assert.match(readFileSync(join(out, 'cells/0-seed0/logs/train.log'), 'utf8'), /stand-in srun: failing once/);
      assert.ok(existsSync(join(out, 'cells/0-seed0/done.json')), log);
      assert.ok(!existsSync(join(out, 'cells/0-seed0/failed.json')), 'a cell done after a retry has no failed marker');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(
    'scancel --signal=USR1 to an array task (as Slurm before the time limit): a checkpoint, exit 138, requeued, resumed, done',
    { timeout: 600_000 },
    async () => {
      const c = cluster!;
      const dir = mkdtempSync(join(tmpdir(), 'vitreg-sweep-slurm-stop-'));
      try {
        const bin = bins(dir);
        const file = join(dir, 'sweep.json');
        // Enough steps (about 25 ms each) that the signal, sent after step 3, lands before the cell ends.
        const steps = 200;
        const sweep = {
          ...SWEEP,
          name: 'stop',
          set: { ...SWEEP.set, 'train.steps': steps, 'train.checkpoint_every': 0 },
          axes: { 'train.seed': [0] },
          resources: { time: '00:10:00' },
        };
        writeFileSync(file, JSON.stringify(sweep));
        const env = cleanEnv({ SLURM_CONF: c.conf, PATH: `${bin}${delimiter}${process.env.PATH ?? ''}` });
        const out = join(dir, 'out');
        const task = `${await planAndSubmit(bin, dir, file, out, env)}_0`;
        const metrics = join(out, 'cells/0-seed0/train/metrics.jsonl');
        const at = 3;
        for (
          const t0 = Date.now();
          !(existsSync(metrics) && readFileSync(metrics, 'utf8').trim().split('\n').length >= at);
          await sleep(100)
        )
          assert.ok(Date.now() - t0 < 300_000, `no step ${at} in ${metrics}`);
        const scancel = await run(which('scancel')!, ['--signal=USR1', task], env, 30_000);
        assert.equal(scancel.code, 0, tail(scancel));
        let requeued = false;
        let line = '';
        for (const t0 = Date.now(); ; await sleep(250)) {
          line = sh(which('scontrol')!, ['show', 'job', '-o', task], env).trim();
          const state = /\bJobState=(\S+)/.exec(line)?.[1] ?? '';
          if (!requeued && state === 'PENDING' && Number(/\bRestarts=(\d+)/.exec(line)?.[1]) >= 1) {
            requeued = true;
            await waitForStepsGone(/\bJobId=(\d+)/.exec(line)![1]!);
            sh(which('scontrol')!, ['update', `JobId=${task}`, 'StartTime=now'], env);
          }
          if (/^(COMPLETED|FAILED|CANCELLED|TIMEOUT)$/.test(state)) break;
          assert.ok(Date.now() - t0 < 400_000, `${task} did not end: ${line}`);
        }
        const log = readdirSync(join(out, 'logs/slurm'))
          .map((f) => readFileSync(join(out, 'logs/slurm', f), 'utf8'))
          .join('\n');
        assert.ok(requeued, `the task was requeued\n${log}`);
        assert.match(log, /cell 0 stopped with a checkpoint before the time limit; requeueing/);
        assert.match(line, /JobState=COMPLETED/, log);
        const train = readFileSync(join(out, 'cells/0-seed0/logs/train.log'), 'utf8');
        const n = Number(new RegExp(`interrupted at step (\\d+) of ${steps}`).exec(train)?.[1]);
        assert.ok(n >= at && n < steps, `stopped after step ${at}: ${n}\n${train}`);
        assert.match(train, new RegExp(`resuming from step ${n} of ${steps}`));
        assert.ok(existsSync(join(out, 'cells/0-seed0/done.json')), train);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
