/**
 * The launchers' test machinery (test/launchers.test.ts): finding executables, running a command in
 * its own process group with a deadline, a vitreg-worker executable over this clone's sources, a
 * launcher-free environment, and a one-node Slurm cluster (munge, slurmctld, slurmd) in a temporary
 * folder with its jobs' end states.
 */
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, chmodSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childNodeArgs } from '@vitreg/core';
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const WORKER_MAIN = join(ROOT, 'apps/worker/src/main.ts');
export const TSX = import.meta.resolve('tsx');
export const RUN_TIMEOUT_MS = 240_000;

/** Full path of an executable on PATH (or in the sbin folders, where Debian puts daemons), else null. */
export function which(cmd: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export function missing(cmds: string[]): string[] {
  return cmds.filter((c) => which(c) === null);
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '0.0.0.0', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolvePort(port));
    });
  });
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command in its own process group; past the timeout the whole group is killed. */
export function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = RUN_TIMEOUT_MS): Promise<RunResult> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(cmd, args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n[test] ${cmd} timed out after ${timeoutMs} ms; killing its process group\n`;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolveRun({ code, signal, stdout, stderr });
    });
  });
}

/** Output of a finished run, for assertion messages (noisy backend lines dropped, tail only). */
export function tail(r: RunResult, chars = 6000): string {
  const text = `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
  const lines = text.split('\n').filter((l) => !/^The kernel '.*' for backend '.*' is already registered$/.test(l));
  return lines.join('\n').slice(-chars);
}

/** The shell words that start `entry` (a bin's src/main.ts): from the sources, or dist (VITREG_CHILDREN_FROM_DIST). */
export function nodeCommand(entry: string): string {
  return [process.execPath, ...childNodeArgs(entry, ['--conditions=vitreg-source', '--import', TSX])]
    .map((a) => JSON.stringify(a))
    .join(' ');
}

/** A folder with an executable `vitreg-worker` that runs the worker from this clone's sources. */
export function workerBin(dir: string): string {
  const bin = join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  const path = join(bin, 'vitreg-worker');
  writeFileSync(path, `#!/bin/sh\nexec ${nodeCommand(WORKER_MAIN)} "$@"\n`);
  chmodSync(path, 0o755);
  return path;
}

/** The environment of a launched job: no launcher variables inherited from the test's own. */
export function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (
      /^(RANK|WORLD_SIZE|LOCAL_RANK|MASTER_ADDR|MASTER_PORT|JOB_COMPLETION_INDEX|VITREG_.*|SLURM_.*|TORCHELASTIC_.*|NODE_OPTIONS|NODE_TEST_CONTEXT)$/.test(
        k,
      )
    )
      continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

// ---------------------------------------------------------------------------------------------
// Slurm

const SLURM_TOOLS = ['slurmctld', 'slurmd', 'srun', 'sbatch', 'sinfo', 'scontrol', 'munged'];
export function slurmSkipReason(): string | false {
  const absent = missing(SLURM_TOOLS);
  if (absent.length) {
    return `${absent.join(', ')} not installed: apt-get install -y --no-install-recommends slurm-wlm munge (.ci/run does this)`;
  }
  if (process.getuid?.() !== 0) return 'a test Slurm cluster runs slurmd as root: run as root';
  return false;
}

export interface Cluster {
  dir: string;
  conf: string;
  env: NodeJS.ProcessEnv;
  pidFiles: string[];
}

export function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  return execFileSync(cmd, args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A daemon that exited but was not reaped (no init reaping in containers) is gone too.
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One test Slurm cluster at a time on this machine (test/launchers.test.ts and test/sweep-slurm.test.ts
 * run side by side in the suite): two clusters of one host each requeueing jobs under load failed a
 * requeued launch. A folder made atomically holds the owner's pid; a dead owner's lock is taken over.
 */
const SLURM_LOCK = join(tmpdir(), 'vitreg-test-slurm.lock');
let slurmLockHeld = false;

async function acquireSlurmLock(timeoutMs = 900_000): Promise<void> {
  for (const t0 = Date.now(); ; await sleep(500)) {
    try {
      mkdirSync(SLURM_LOCK);
      writeFileSync(join(SLURM_LOCK, 'pid'), String(process.pid));
      slurmLockHeld = true;
      process.once('exit', releaseSlurmLock);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const owner = Number(existsSync(join(SLURM_LOCK, 'pid')) ? readFileSync(join(SLURM_LOCK, 'pid'), 'utf8') : NaN);
      if (Number.isInteger(owner) && owner > 1 && !alive(owner)) rmSync(SLURM_LOCK, { recursive: true, force: true });
      else if (Date.now() - t0 > timeoutMs)
        throw new Error(`${SLURM_LOCK}: another test's Slurm cluster (pid ${owner}) held it for ${timeoutMs / 1000} s`, { cause: e });
    }
  }
}

function releaseSlurmLock(): void {
  if (!slurmLockHeld) return;
  slurmLockHeld = false;
  rmSync(SLURM_LOCK, { recursive: true, force: true });
}

/** Stops the daemons whose pid files exist (TERM, then KILL after 10 s); a cluster's also frees the Slurm lock. */
export async function stopDaemons(pidFiles: string[]): Promise<void> {
  const pids: number[] = [];
  for (const f of pidFiles) {
    if (!existsSync(f)) continue;
    const pid = Number(readFileSync(f, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) continue;
    try {
      process.kill(pid, 'SIGTERM');
      pids.push(pid);
    } catch {
      /* already gone */
    }
  }
  const deadline = Date.now() + 10_000;
  while (pids.some(alive) && Date.now() < deadline) await sleep(100);
  for (const pid of pids.filter(alive)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  releaseSlurmLock();
}

/**
 * A one-node Slurm cluster in a temporary folder (NOTES.md): its own munged (own key and socket, so
 * a system munged is neither needed nor touched), slurmctld and slurmd on free ports, state, spool,
 * logs and pid files under the folder, and two fake GPUs (gres) so --gpus-per-task works.
 */
export async function startCluster(): Promise<Cluster> {
  await acquireSlurmLock();
  const dir = mkdtempSync(join(tmpdir(), 'vitreg-slurm-'));
  const pidFiles: string[] = [];
  const cluster: Cluster = { dir, conf: join(dir, 'slurm.conf'), env: {}, pidFiles };
  try {
    // munge: the key in a private folder; the socket folder must be searchable by all (munged checks).
    const keyDir = join(dir, 'munge-key');
    const sockDir = join(dir, 'munge');
    mkdirSync(keyDir, { mode: 0o700 });
    mkdirSync(sockDir, { mode: 0o711 });
    chmodSync(dir, 0o755);
    const key = join(keyDir, 'munge.key');
    writeFileSync(key, randomBytes(1024), { mode: 0o600 });
    const socket = join(sockDir, 'munge.socket');
    const mungePid = join(sockDir, 'munged.pid');
    pidFiles.push(mungePid);
    sh(which('munged')!, [
      `--socket=${socket}`,
      `--pid-file=${mungePid}`,
      `--log-file=${join(sockDir, 'munged.log')}`,
      `--seed-file=${join(keyDir, 'munged.seed')}`,
      `--key-file=${key}`,
    ]);

    const host = sh('hostname', ['-s']).trim();
    const [ctldPort, slurmdPort] = [await freePort(), await freePort()];
    for (const d of ['state', 'spool', 'log', 'run', 'dev']) mkdirSync(join(dir, d));
    for (const g of [0, 1]) writeFileSync(join(dir, 'dev', `nvidia${g}`), '');
    const cpus = sh('nproc', []).trim();
    writeFileSync(
      cluster.conf,
      [
        'ClusterName=vitregtest',
        `SlurmctldHost=${host}`,
        `SlurmctldPort=${ctldPort}`,
        `SlurmdPort=${slurmdPort}`,
        'SlurmUser=root',
        'SlurmdUser=root',
        'AuthType=auth/munge',
        `AuthInfo=socket=${socket}`,
        'ProctrackType=proctrack/linuxproc',
        'TaskPlugin=task/none',
        'SelectType=select/cons_tres',
        'SelectTypeParameters=CR_Core',
        'MpiDefault=none',
        'ReturnToService=2',
        'GresTypes=gpu',
        `StateSaveLocation=${join(dir, 'state')}`,
        `SlurmdSpoolDir=${join(dir, 'spool')}`,
        `SlurmctldLogFile=${join(dir, 'log/slurmctld.log')}`,
        `SlurmdLogFile=${join(dir, 'log/slurmd.log')}`,
        `SlurmctldPidFile=${join(dir, 'run/slurmctld.pid')}`,
        `SlurmdPidFile=${join(dir, 'run/slurmd.pid')}`,
        `NodeName=${host} CPUs=${cpus} Gres=gpu:2 State=UNKNOWN`,
        `PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP`,
        '',
      ].join('\n'),
    );
    writeFileSync(join(dir, 'gres.conf'), `AutoDetect=off\nNodeName=${host} Name=gpu File=${join(dir, 'dev')}/nvidia[0-1]\n`);
    cluster.env = { ...process.env, SLURM_CONF: cluster.conf };
    pidFiles.push(join(dir, 'run/slurmd.pid'), join(dir, 'run/slurmctld.pid'));
    sh(which('slurmctld')!, ['-f', cluster.conf], cluster.env);
    sh(which('slurmd')!, ['-f', cluster.conf], cluster.env);
    const deadline = Date.now() + 60_000;
    let state = '';
    while (Date.now() < deadline) {
      try {
        state = sh(which('sinfo')!, ['-h', '-o', '%T'], cluster.env).trim();
      } catch (e) {
        state = String((e as { stderr?: string }).stderr ?? e);
      }
      if (state === 'idle') return cluster;
      await sleep(250);
    }
    const logs = ['slurmctld.log', 'slurmd.log'].map((f) => {
      const p = join(dir, 'log', f);
      return existsSync(p) ? `--- ${f}\n${readFileSync(p, 'utf8').slice(-2000)}` : `--- ${f}: none`;
    });
    throw new Error(`the test Slurm node did not become idle in 60 s (sinfo: ${state})\n${logs.join('\n')}`);
  } catch (e) {
    await stopDaemons(pidFiles);
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Waits (at most 30 s) until no slurmstepd of job `jobId` (a number, an array task's own JobId) is left
 * on this host: a job that requeued itself from its batch script is PENDING while that script still
 * exits, and a requeued job started again before its old batch step is gone fails to launch (exit 1:0,
 * run time 0; seen under load).
 */
export async function waitForStepsGone(jobId: string): Promise<void> {
  const title = new RegExp(`^slurmstepd: \\[${jobId}\\.`);
  const stepds = () => {
    try {
      return execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => title.test(l.trim()));
    } catch {
      return [];
    }
  };
  for (const t0 = Date.now(); stepds().length > 0 && Date.now() - t0 < 30_000;) await sleep(200);
  await sleep(1000);
}

export const FINAL_JOB_STATES = /^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$/;

/** Waits for a batch job to end; its state and exit code from `scontrol show job` (exit code of the script). */
export async function waitForJob(
  jobId: string,
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<{ state: string; exitCode: number; line: string }> {
  const deadline = Date.now() + timeoutMs;
  let line = '';
  while (Date.now() < deadline) {
    line = sh(which('scontrol')!, ['show', 'job', '-o', jobId], env).trim();
    const state = /\bJobState=(\S+)/.exec(line)?.[1] ?? '';
    if (FINAL_JOB_STATES.test(state)) {
      const exitCode = Number(/\bExitCode=(\d+):\d+/.exec(line)?.[1] ?? NaN);
      return { state, exitCode, line };
    }
    await sleep(250);
  }
  throw new Error(`job ${jobId} did not end in ${timeoutMs} ms: ${line}`);
}
