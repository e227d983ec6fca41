/**
 * One cell of a sweep, start to end: the command every scheduler runs (`vitreg sweep run-cell SWEEP.json
 * --cell I`) and what `vitreg sweep run` runs for each cell on this machine.
 *
 * A done cell with the same config hash is not run again; a folder holding another config's cell is
 * refused; a cell that failed more than `retries` times is reported, not run. Otherwise: cell.json and
 * config.json, running.json, the training (resumed from its newest checkpoint by vitreg itself), each
 * evaluation stage, results.json, then done.json (or failed.json with the attempt count). A stop signal
 * ends the cell after a checkpoint with the training's exit code (130 / 138 / 143) and no failure marked:
 * the same command continues it.
 *
 * How the training starts, by launcher:
 *   local  vitreg train (one process), or vitreg train --nodes P (a coordinator and P worker processes here)
 *   srun   inside a Slurm allocation: srun --ntasks=P runs vitreg train (P = 1) or vitreg-worker (P > 1)
 *   env    one process of a cluster job started by the scheduler (Kubernetes: one pod per rank): this
 *          process runs vitreg-worker with the launcher's rank; rank 0 then evaluates and writes the markers
 *
 * Retries: runCellRetrying runs a failing cell again at once while its failed attempts are <= `retries`
 * (`vitreg sweep run` for every cell, and `run-cell --launcher srun`: a Slurm array task retries its cell
 * inside its own allocation). On Kubernetes the Job does it (backoffLimitPerIndex: a new pod per attempt).
 */
import { randomBytes, createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { ensureDir, withMallocTunables, writeJsonAtomic } from '@vitreg/core';
import {
  checkCellHash,
  cellStatus,
  markerPath,
  readJson,
  removeMarker,
  writeMarker,
  type Cell,
  type DoneMarker,
  type FailedMarker,
} from './cells.js';
import { runLogged, setSignalForwarding, stopRequested, STOPPED_CODES, vitregCommand } from './child.js';
import { evaluateCell, finalCheckpoint, StageError, trainMeasurements } from './evaluate.js';
import type { SweepSpec } from './spec.js';

export type Launcher = 'local' | 'srun' | 'env';
export const LAUNCHERS: Launcher[] = ['local', 'srun', 'env'];

export interface CellOutcome {
  cell: Cell;
  /** done: finished now; skipped: done before; busy: running elsewhere; interrupted: stopped with a checkpoint; failed: this attempt failed; exhausted: failed too often before. */
  outcome: 'done' | 'skipped' | 'busy' | 'interrupted' | 'failed' | 'exhausted';
  /** The exit code the run-cell command ends with. */
  code: number;
  message: string;
}

/** What a cell's results.json holds: one row of the sweep's table. */
export interface CellResult {
  index: number;
  name: string;
  axes: Record<string, unknown>;
  hash: string;
  checkpoint: string;
  /** sha256 of the final model.safetensors. */
  weights_sha256: string;
  measurements: Record<string, number | null>;
  seconds: number;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** The launcher rank of this process (env launcher): RANK, SLURM_PROCID, JOB_COMPLETION_INDEX. */
function launcherRank(): number {
  const e = process.env;
  return Number(e.RANK ?? e.SLURM_PROCID ?? e.JOB_COMPLETION_INDEX ?? 0);
}

function trainCommand(spec: SweepSpec, cell: Cell, launcher: Launcher): { cmd: string[]; env: NodeJS.ProcessEnv } {
  const { processes: p, threads: t } = cell.resources;
  const config = join(cell.dir, 'config.json');
  const out = join(cell.dir, 'train');
  // The cell's node processes start with the bins' malloc settings also when `vitreg` runs from the sources.
  const env = withMallocTunables({ ...process.env });
  const worker = (process.env.VITREG_SWEEP_WORKER ?? 'vitreg-worker').split(' ').filter(Boolean);
  const workerArgs = [
    '--config',
    config,
    '--out',
    out,
    '--resume',
    '--no-progress',
    ...(t > 1 ? ['--threads', String(t)] : []),
    ...spec.train_args,
  ];
  const trainArgs = [
    'train',
    '--config',
    config,
    '--out',
    out,
    '--no-progress',
    ...(t > 1 ? ['--workers', String(t)] : []),
    ...spec.train_args,
  ];
  if (launcher === 'env') {
    if (process.env.POD_IP) workerArgs.push('--advertise', process.env.POD_IP);
    return { cmd: [...worker, ...workerArgs], env };
  }
  if (launcher === 'local') return { cmd: [...vitregCommand(), ...trainArgs, ...(p > 1 ? ['--nodes', String(p)] : [])], env };
  // srun: one job step of P tasks; a multi-process cell's rank 0 hosts the coordinator on the first node.
  const jobId = Number(process.env.SLURM_JOB_ID ?? process.pid);
  env.MASTER_PORT ??= String(20000 + (jobId % 20000));
  env.VITREG_TOKEN ??= randomBytes(16).toString('hex');
  // --kill-on-bad-exit=0: a stop ends every task with 138, and srun must not kill those still exiting.
  const srun = [process.env.VITREG_SWEEP_SRUN ?? 'srun', `--ntasks=${p}`, '--kill-on-bad-exit=0'];
  return { cmd: [...srun, ...(p > 1 ? [...worker, ...workerArgs] : [...vitregCommand(), ...trainArgs])], env };
}

/**
 * Runs cell `cell` of `spec` to its done marker (see the file's header). `retryFailed`: run it even when
 * it failed more than `retries` times before.
 */
export async function runCell(
  spec: SweepSpec,
  cell: Cell,
  opts: { launcher?: Launcher; retryFailed?: boolean; log?: (line: string) => void } = {},
): Promise<CellOutcome> {
  const launcher = opts.launcher ?? 'local';
  const say = opts.log ?? (() => {});
  setSignalForwarding(launcher === 'srun' ? 'none' : 'term');
  const lead = launcher !== 'env' || launcherRank() === 0;
  checkCellHash(cell, spec.file);
  const status = cellStatus(cell, spec.retries);
  // Under a scheduler (an array task, an indexed pod, srun) this is the one run of the cell: a running
  // marker is a preempted predecessor's. Here, another live run of the same cell is left alone.
  const scheduled = launcher !== 'local' || process.env.SLURM_ARRAY_TASK_ID !== undefined || process.env.JOB_COMPLETION_INDEX !== undefined;
  if (status.state === 'running' && !scheduled)
    return {
      cell,
      outcome: 'busy',
      code: 1,
      message: `cell ${cell.name}: already running (${status.detail}); not started again (if it is not, remove ${join(cell.dir, 'running.json')})`,
    };
  if (status.state === 'done') return { cell, outcome: 'skipped', code: 0, message: `cell ${cell.name}: done before (same config)` };
  if (status.state === 'failed' && !opts.retryFailed)
    return {
      cell,
      outcome: 'exhausted',
      code: 1,
      message: `cell ${cell.name}: failed ${status.attempts} times, not run again (${status.detail}); --retry-failed runs it again`,
    };
  const t0 = Date.now();
  // Evaluated before with other evaluation settings: the old outputs go (each stage refuses a folder of
  // other settings); the training is kept.
  const before = readJson<DoneMarker>(markerPath(cell, 'done'));
  if (lead && before && before.hash === cell.hash && before.eval_hash !== cell.evalHash) {
    await rm(join(cell.dir, 'eval'), { recursive: true, force: true });
    await removeMarker(cell, 'done');
    say(`cell ${cell.name}: the evaluation settings changed: evaluating again`);
  }
  if (lead) {
    await ensureDir(cell.dir);
    await writeMarker(cell, 'cell', { index: cell.index, name: cell.name, axes: cell.axes, hash: cell.hash, eval_hash: cell.evalHash });
    await writeJsonAtomic(join(cell.dir, 'config.json'), cell.config);
    const job = process.env.SLURM_ARRAY_JOB_ID
      ? `slurm ${process.env.SLURM_ARRAY_JOB_ID}_${process.env.SLURM_ARRAY_TASK_ID}`
      : process.env.HOSTNAME;
    await writeMarker(cell, 'running', {
      pid: process.pid,
      host: hostname(),
      started: new Date().toISOString(),
      attempt: status.attempts + 1,
      job,
    });
  }
  let stageName = 'train';
  let log = join(cell.dir, 'logs', 'train.log');
  try {
    // A training already at its last step (the evaluation failed or was stopped) is not started again.
    const trained = finalCheckpoint(join(cell.dir, 'train'));
    const finished = trained?.endsWith(`step-${cell.config.train.steps}`) && existsSync(join(cell.dir, 'train', 'eval.json'));
    const { cmd, env } = trainCommand(spec, cell, launcher);
    if (!finished) say(`cell ${cell.name}: training (${launcher})`);
    const r = finished ? { code: 0, signal: null, tail: '', stdout: '' } : await runLogged(cmd, log, { env });
    if (r.code !== 0) {
      if (STOPPED_CODES.includes(r.code ?? -1) || stopRequested()) {
        if (lead) await removeMarker(cell, 'running');
        const code = r.code && STOPPED_CODES.includes(r.code) ? r.code : 130;
        return {
          cell,
          outcome: 'interrupted',
          code,
          message: `cell ${cell.name}: stopped with a checkpoint; run again to continue (log ${log})`,
        };
      }
      throw new StageError('train', log, `training exited with ${r.code ?? r.signal}: ${r.tail.trim().split('\n').slice(-2).join(' | ')}`);
    }
    if (!lead) return { cell, outcome: 'done', code: 0, message: `cell ${cell.name}: rank ${launcherRank()} finished its training` };
    const checkpoint = finalCheckpoint(join(cell.dir, 'train'));
    const step = checkpoint ? Number(/step-(\d+)$/.exec(checkpoint)![1]) : 0;
    if (!checkpoint || step !== cell.config.train.steps)
      throw new StageError(
        'train',
        log,
        `the training ended without a checkpoint at step ${cell.config.train.steps} (newest: ${checkpoint ?? 'none'})`,
      );
    stageName = 'evaluate';
    log = join(cell.dir, 'logs');
    say(`cell ${cell.name}: evaluating`);
    const measurements = { ...trainMeasurements(join(cell.dir, 'train')), ...(await evaluateCell(spec, cell, checkpoint)) };
    const result: CellResult = {
      index: cell.index,
      name: cell.name,
      axes: cell.axes,
      hash: cell.hash,
      checkpoint,
      weights_sha256: await sha256File(join(checkpoint, 'model.safetensors')),
      measurements,
      seconds: (Date.now() - t0) / 1000,
    };
    await writeMarker(cell, 'results', result);
    await writeMarker(cell, 'done', {
      hash: cell.hash,
      eval_hash: cell.evalHash,
      finished: new Date().toISOString(),
      seconds: result.seconds,
    });
    await removeMarker(cell, 'failed');
    await removeMarker(cell, 'running');
    return { cell, outcome: 'done', code: 0, message: `cell ${cell.name}: done in ${result.seconds.toFixed(1)} s` };
  } catch (err) {
    if (stopRequested()) {
      if (lead) await removeMarker(cell, 'running');
      return { cell, outcome: 'interrupted', code: 130, message: `cell ${cell.name}: stopped; run again to continue` };
    }
    if (!(err instanceof StageError) && (err as Error).name === 'InputError') throw err;
    const e = err instanceof StageError ? err : new StageError(stageName, log, (err as Error).message);
    if (lead) {
      const prev = readJson<FailedMarker>(join(cell.dir, 'failed.json'));
      const attempts = (prev && prev.hash === cell.hash ? prev.attempts : 0) + 1;
      await writeMarker(cell, 'failed', {
        hash: cell.hash,
        attempts,
        error: e.message,
        stage: e.stage,
        log: e.log,
        at: new Date().toISOString(),
      });
      await removeMarker(cell, 'running');
      return {
        cell,
        outcome: 'failed',
        code: 1,
        message: `cell ${cell.name}: ${e.stage} failed (attempt ${attempts}): ${e.message} (log ${e.log})`,
      };
    }
    return { cell, outcome: 'failed', code: 1, message: `cell ${cell.name}: ${e.message}` };
  }
}

/**
 * Runs the cell as runCell does, again while an attempt fails and its failed attempts are <= the sweep's
 * `retries` (runCell then reports it "exhausted"); a stop ends it at once. `retryFailed` lets the first
 * attempt run a cell that failed too often before. `onAttempt` sees every attempt's outcome.
 */
export async function runCellRetrying(
  spec: SweepSpec,
  cell: Cell,
  opts: { launcher?: Launcher; retryFailed?: boolean; log?: (line: string) => void; onAttempt?: (o: CellOutcome) => void } = {},
): Promise<CellOutcome> {
  let retryFailed = opts.retryFailed ?? false;
  for (;;) {
    const o = await runCell(spec, cell, { launcher: opts.launcher, retryFailed, log: opts.log });
    retryFailed = false;
    opts.onAttempt?.(o);
    if (o.outcome !== 'failed' || stopRequested()) return o;
  }
}
