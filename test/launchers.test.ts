/**
 * vitreg-worker under the real launchers it is written for: torchrun (Debian's python3-torch) and a
 * single-node Slurm cluster (slurm-wlm + munge) that this file starts in a temporary folder and
 * stops again. Each test runs a 2-worker, 4-step tiny-supervised job and checks the run folder:
 * exit 0, checkpoints/step-4, metrics with world_size 2, a log of rank 0 and of rank 1, and rank 0's
 * result line. Where a launcher is not installed the test is skipped with what to install
 * (.ci/run installs them).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import {
  cleanEnv,
  freePort,
  ROOT,
  run,
  RUN_TIMEOUT_MS,
  sh,
  sleep,
  slurmSkipReason,
  startCluster,
  stopDaemons,
  waitForStepsGone,
  tail,
  waitForJob,
  which,
  workerBin,
  type Cluster,
  type RunResult,
} from './launcher-helpers.js';

/** A small job: 48 synthetic images, 4 steps of 4 images per rank, checkpoints at steps 2 and 4. */
const SMALL_CONFIG = {
  preset: 'tiny-supervised',
  data: { train_size: 48, val_size: 16 },
  train: { steps: 4, batch_size: 4, eval_every: 0, checkpoint_every: 2 },
};

function writeSmallConfig(dir: string): string {
  const path = join(dir, 'small.json');
  writeFileSync(path, JSON.stringify(SMALL_CONFIG));
  return path;
}

/**
 * The run folder of a finished 2-worker, 4-step job: checkpoints at steps 2 and 4, one metrics line
 * per step from rank 0 with world_size 2, per-rank logs and metric files of ranks 0 and 1, and
 * rank 0's result line on stdout.
 */
function checkRun(out: string, stdout: string, r: RunResult): void {
  const why = tail(r);
  assert.ok(existsSync(join(out, 'checkpoints/step-4/model.safetensors')), `checkpoints/step-4/model.safetensors missing\n${why}`);
  assert.ok(existsSync(join(out, 'checkpoints/step-2/model.safetensors')), `checkpoints/step-2 missing\n${why}`);
  for (const f of ['config.json', 'eval.json']) assert.ok(existsSync(join(out, f)), `${f} missing\n${why}`);
  const metrics = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.deepEqual(
    metrics.map((m) => m.step),
    [1, 2, 3, 4],
    'one metrics line per step',
  );
  for (const m of metrics) assert.equal(m.world_size, 2, `world_size of step ${m.step}`);
  for (const rank of [0, 1]) {
    const log = readFileSync(join(out, 'logs', `worker-${rank}.log`), 'utf8');
    assert.match(log, new RegExp(`this worker is rank ${rank} of 2 processes`), `worker-${rank}.log`);
    assert.match(log, /finished/, `worker-${rank}.log`);
    const lines = readFileSync(join(out, 'ranks', `worker-${rank}.jsonl`), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => [l.step, l.rank, l.world_size]),
      [1, 2, 3, 4].map((s) => [s, rank, 2]),
      `ranks/worker-${rank}.jsonl`,
    );
  }
  const results = stdout.split('\n').filter((l) => l.includes('"checkpoint"'));
  assert.equal(results.length, 1, `exactly one result line (rank 0's) on stdout\n${why}`);
  const res = JSON.parse(results[0]!.slice(results[0]!.indexOf('{')));
  assert.equal(res.out, out);
  assert.equal(res.step, 4);
  assert.equal(res.checkpoint, join(out, 'checkpoints/step-4'));
}

// ---------------------------------------------------------------------------------------------
// torchrun

const torchrunSkip = which('torchrun')
  ? false
  : 'torchrun is not installed: apt-get install -y --no-install-recommends python3-torch (Debian ships torchrun with it; .ci/run does this)';

/**
 * Debian's torchrun (torch 1.13) on Python 3.11 crashes in Std.from_str unless given
 * --redirects/--tee/--log_dir (NOTES.md): --redirects 1 --tee 1 sends each rank's stdout to
 * LOGDIR/<run>/attempt_0/<rank>/stdout.log and to the console.
 */
function torchrunArgs(logDir: string): string[] {
  return ['--no_python', '--nnodes', '1', '--nproc_per_node', '2', '--redirects', '1', '--tee', '1', '--log_dir', logDir];
}

/** The per-rank stdout logs torchrun wrote: {rank: text}. */
function torchrunLogs(logDir: string): Map<number, string> {
  const logs = new Map<number, string>();
  for (const runDir of readdirSync(logDir)) {
    const attempt = join(logDir, runDir, 'attempt_0');
    if (!existsSync(attempt)) continue;
    for (const rank of readdirSync(attempt)) logs.set(Number(rank), readFileSync(join(attempt, rank, 'stdout.log'), 'utf8'));
  }
  return logs;
}

describe('torchrun', () => {
  test(
    'torchrun (c10d rendezvous) runs a 2-worker vitreg-worker job to its step-4 checkpoint',
    { skip: torchrunSkip, timeout: RUN_TIMEOUT_MS + 30_000 },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'vitreg-torchrun-'));
      try {
        const bin = workerBin(dir);
        const out = join(dir, 'run');
        const logDir = join(dir, 'torchrun-logs');
        // With a c10d rendezvous torchrun's own store listens on the rendezvous port, and each worker
        // gets MASTER_PORT = a free port that torchrun does not hold: rank 0 hosts the coordinator there.
        const rdzvPort = await freePort();
        const r = await run(
          which('torchrun')!,
          [
            ...torchrunArgs(logDir),
            '--rdzv_backend',
            'c10d',
            '--rdzv_endpoint',
            `127.0.0.1:${rdzvPort}`,
            '--rdzv_id',
            'vitreg-launcher-test',
            bin,
            '--config',
            writeSmallConfig(dir),
            '--out',
            out,
            '--no-progress',
          ],
          cleanEnv({ VITREG_TOKEN: 'launcher-test-token', OMP_NUM_THREADS: '1' }),
        );
        assert.equal(r.code, 0, tail(r));
        checkRun(out, r.stdout, r);
        const logs = torchrunLogs(logDir);
        assert.deepEqual([...logs.keys()].sort(), [0, 1], 'torchrun started ranks 0 and 1');
        assert.match(logs.get(0)!, /"step":4/, "rank 0's stdout log holds the result line");
        assert.match(
          readFileSync(join(out, 'logs/worker-0.log'), 'utf8'),
          /joined job "vitreg-launcher-test"/,
          'job id from TORCHELASTIC_RUN_ID',
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  test(
    "torchrun's default static rendezvous (--master_port P) runs a 2-worker vitreg-worker job",
    {
      skip: torchrunSkip,
      // With the static rendezvous torchrun's agent keeps its own store on MASTER_PORT
      // (TORCHELASTIC_USE_AGENT_STORE=True): vitreg's coordinator takes MASTER_PORT + 1.
      timeout: RUN_TIMEOUT_MS + 30_000,
    },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'vitreg-torchrun-static-'));
      try {
        const bin = workerBin(dir);
        const out = join(dir, 'run');
        const port = await freePort();
        const r = await run(
          which('torchrun')!,
          [
            ...torchrunArgs(join(dir, 'torchrun-logs')),
            '--master_port',
            String(port),
            bin,
            '--config',
            writeSmallConfig(dir),
            '--out',
            out,
            '--no-progress',
          ],
          cleanEnv({ VITREG_TOKEN: 'launcher-test-token', OMP_NUM_THREADS: '1' }),
        );
        assert.equal(r.code, 0, tail(r));
        checkRun(out, r.stdout, r);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

const slurmSkip = slurmSkipReason();

describe('slurm', { skip: slurmSkip }, () => {
  let cluster: Cluster | undefined;
  before(async () => {
    cluster = await startCluster();
  });
  after(async () => {
    if (!cluster) return;
    await stopDaemons(cluster.pidFiles);
    rmSync(cluster.dir, { recursive: true, force: true });
  });

  test('srun -n 2 runs a 2-worker vitreg-worker job to its step-4 checkpoint', { timeout: RUN_TIMEOUT_MS + 30_000 }, async () => {
    const c = cluster!;
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-srun-'));
    try {
      const bin = workerBin(dir);
      const out = join(dir, 'run');
      // Rank 0 (SLURM_PROCID 0) hosts the coordinator on the first node of SLURM_JOB_NODELIST at MASTER_PORT.
      const r = await run(
        which('srun')!,
        [
          '-n',
          '2',
          '--ntasks-per-node',
          '2',
          '--overcommit',
          '--kill-on-bad-exit=1',
          '--time',
          '10',
          bin,
          '--config',
          writeSmallConfig(dir),
          '--out',
          out,
          '--no-progress',
        ],
        cleanEnv({ SLURM_CONF: c.conf, MASTER_PORT: String(await freePort()), VITREG_TOKEN: 'launcher-test-token' }),
      );
      assert.equal(r.code, 0, tail(r));
      checkRun(out, r.stdout, r);
      assert.match(readFileSync(join(out, 'logs/worker-1.log'), 'utf8'), /joined job "\d+"/, 'job id from SLURM_JOB_ID');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(
    'sbatch deploy/slurm/vitreg-train.sbatch runs a 2-worker job to its step-4 checkpoint',
    { timeout: RUN_TIMEOUT_MS + 30_000 },
    async () => {
      const c = cluster!;
      const dir = mkdtempSync(join(tmpdir(), 'vitreg-sbatch-'));
      try {
        const bin = workerBin(dir);
        const out = join(dir, 'run');
        const slurmOut = join(dir, 'slurm-%j.out');
        // The script's own #SBATCH lines ask for 2 nodes x 8 GPUs; the command line sizes it to this node.
        // No VITREG_TOKEN and no MASTER_PORT: the script makes both.
        const env = cleanEnv({ SLURM_CONF: c.conf, VITREG_RUN_DIR: out, PATH: `${dirname(bin)}${delimiter}${process.env.PATH ?? ''}` });
        const submit = await run(
          which('sbatch')!,
          [
            '--parsable',
            '--nodes=1',
            '--ntasks-per-node=2',
            '--cpus-per-task=1',
            '--gpus-per-task=1',
            '--overcommit',
            '--time=10',
            '--no-requeue',
            `--output=${slurmOut}`,
            '--chdir',
            dir,
            join(ROOT, 'deploy/slurm/vitreg-train.sbatch'),
            '--config',
            writeSmallConfig(dir),
          ],
          env,
          30_000,
        );
        assert.equal(submit.code, 0, tail(submit));
        const jobId = submit.stdout.trim().split(';')[0]!;
        // sbatch --wait polls with growing pauses (~30 s lost on a 10 s job): ask scontrol every 250 ms.
        const job = await waitForJob(jobId, env, RUN_TIMEOUT_MS);
        const r: RunResult = { code: job.exitCode, signal: null, stdout: submit.stdout, stderr: `job ${jobId}: ${job.line}` };
        const jobOut = readdirSync(dir)
          .filter((f) => /^slurm-\d+\.out$/.test(f))
          .map((f) => readFileSync(join(dir, f), 'utf8'))
          .join('\n');
        const result = { ...r, stdout: `${r.stdout}\n${jobOut}` };
        assert.equal(job.state, 'COMPLETED', tail(result));
        assert.equal(r.code, 0, tail(result));
        assert.match(jobOut, /vitreg-train: 2 workers on \S+, coordinator port \d+/, tail(result));
        checkRun(out, jobOut, result);
        // No token was in the environment (cleanEnv drops VITREG_*): the workers ran with the script's own.
        assert.match(readFileSync(join(out, 'logs/worker-0.log'), 'utf8'), /this worker is rank 0 of 2 processes/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  test(
    'scancel --signal=USR1 to the sbatch job: a job-wide checkpoint, the message, exit 138, requeued; the same job ends with the uninterrupted weights',
    { timeout: 3 * RUN_TIMEOUT_MS + 30_000 },
    async () => {
      const c = cluster!;
      const dir = mkdtempSync(join(tmpdir(), 'vitreg-sbatch-stop-'));
      try {
        const bin = workerBin(dir);
        const config = join(dir, 'stop.json');
        // Steps enough that the signal, sent after a step in 3-22, lands well before the job ends.
        const steps = 60;
        writeFileSync(
          config,
          JSON.stringify({
            ...SMALL_CONFIG,
            data: { train_size: 32, val_size: 8 },
            train: { ...SMALL_CONFIG.train, steps, checkpoint_every: 0 },
          }),
        );
        const PATH = `${dirname(bin)}${delimiter}${process.env.PATH ?? ''}`;
        /** Submits the script into run folder `out` (its output appended over requeues); returns the job id. */
        const submit = async (out: string): Promise<string> => {
          const env = cleanEnv({ SLURM_CONF: c.conf, VITREG_RUN_DIR: out, PATH });
          const args = ['--parsable', '--nodes=1', '--ntasks-per-node=2', '--cpus-per-task=1', '--gpus-per-task=1', '--overcommit'];
          const s = await run(
            which('sbatch')!,
            [...args, '--time=10', '--open-mode=append', `--output=${join(dir, 'slurm-%j.out')}`, '--chdir', dir].concat([
              join(ROOT, 'deploy/slurm/vitreg-train.sbatch'),
              '--config',
              config,
              '--checksum',
            ]),
            env,
            30_000,
          );
          assert.equal(s.code, 0, tail(s));
          return s.stdout.trim().split(';')[0]!;
        };
        const env = cleanEnv({ SLURM_CONF: c.conf });
        const output = (jobId: string) => {
          const f = join(dir, `slurm-${jobId}.out`);
          return existsSync(f) ? readFileSync(f, 'utf8') : '';
        };
        const checksums = (text: string) => [...text.matchAll(/"checksum":"([0-9a-f]{64})"/g)].map((m) => m[1]);

        // The weights of an uninterrupted run of the script.
        const straightId = await submit(join(dir, 'straight'));
        const straight = await waitForJob(straightId, env, RUN_TIMEOUT_MS);
        assert.equal(straight.state, 'COMPLETED', output(straightId));
        const [want] = checksums(output(straightId));
        assert.ok(want, output(straightId));

        // The same job, signalled at a random step as Slurm does before a time limit (--signal=USR1@180).
        const out = join(dir, 'run');
        const jobId = await submit(out);
        const at = 3 + Math.floor(Math.random() * 20);
        const metrics = join(out, 'metrics.jsonl');
        for (const t0 = Date.now(); ; await sleep(100)) {
          if (existsSync(metrics) && readFileSync(metrics, 'utf8').trim().split('\n').filter(Boolean).length >= at) break;
          assert.ok(Date.now() - t0 < RUN_TIMEOUT_MS, `no step ${at} in ${metrics}: ${output(jobId)}`);
        }
        const scancel = await run(which('scancel')!, ['--signal=USR1', jobId], env, 30_000);
        assert.equal(scancel.code, 0, tail(scancel));
        // Both workers stop after the same step with one checkpoint, exit 138, and the script requeues the
        // job; Slurm holds a requeued job for a while: the test lets it start again at once.
        let requeued = false;
        const end = await (async () => {
          for (const t0 = Date.now(); Date.now() - t0 < 2 * RUN_TIMEOUT_MS; await sleep(250)) {
            const line = sh(which('scontrol')!, ['show', 'job', '-o', jobId], env).trim();
            const state = /\bJobState=(\S+)/.exec(line)?.[1] ?? '';
            if (!requeued && state === 'PENDING' && Number(/\bRestarts=(\d+)/.exec(line)?.[1]) >= 1) {
              requeued = true;
              await waitForStepsGone(jobId);
              sh(which('scontrol')!, ['update', `JobId=${jobId}`, 'StartTime=now'], env);
            }
            if (/^(COMPLETED|FAILED|CANCELLED|TIMEOUT)$/.test(state)) return { state, line };
          }
          throw new Error(`job ${jobId} did not end: ${output(jobId)}`);
        })();
        const text = output(jobId);
        const lines = [
          ...text.matchAll(/^vitreg-worker: interrupted at step (\d+); checkpoint written; run the same command to continue$/gm),
        ];
        assert.equal(lines.length, 2, `both workers say where they stopped:\n${text}`);
        const n = Number(lines[0]![1]);
        assert.equal(Number(lines[1]![1]), n, 'both after the same step');
        assert.ok(n >= at && n < steps, `stopped at ${n}, signalled after ${at}`);
        assert.match(
          text,
          new RegExp(`^vitreg-train: stopped with a checkpoint before the time limit; requeueing job ${jobId} to continue$`, 'm'),
        );
        assert.ok(requeued, 'the job was requeued');
        // The requeued job continued from that checkpoint to the weights of the uninterrupted run.
        assert.equal(end.state, 'COMPLETED', `${end.line}\n${text}`);
        assert.equal(checksums(text).pop(), want, 'the same weights as the uninterrupted run');
        assert.match(readFileSync(join(out, 'logs/worker-0.log'), 'utf8'), new RegExp(`resuming from step ${n} of ${steps}`));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
