/**
 * The processes a sweep cell starts: the vitreg command itself (train, probe, discover, analyze), or
 * vitreg-worker / srun for a cell that is a cluster job; each with its output appended to a log file, and
 * stop signals passed on once.
 *
 * Signals: a terminal's Ctrl-C (SIGINT) reaches the whole process group, children included, so it is not
 * passed on again (a second signal stops a training at once, without a checkpoint). SIGTERM and SIGUSR1
 * sent to this process alone (Kubernetes to a pod's first process, `kill PID`) are passed to the running
 * children once. Under srun, Slurm signals the job steps itself: nothing is passed on.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childNodeArgs } from '@vitreg/core';

/** The command line that runs the vitreg command: $VITREG_SWEEP_CLI, else this installation's own main. */
export function vitregCommand(): string[] {
  const override = process.env.VITREG_SWEEP_CLI;
  if (override) return override.split(' ').filter(Boolean);
  let here: string;
  try {
    here = fileURLToPath(import.meta.url);
  } catch {
    here = process.argv[1] ?? '';
  }
  if (here.endsWith('.ts')) {
    const main = join(dirname(here), '..', 'main.ts');
    let tsx = 'tsx';
    try {
      tsx = import.meta.resolve('tsx');
    } catch {
      /* resolved by node from the working folder */
    }
    return [process.execPath, ...childNodeArgs(main, ['--conditions=vitreg-source', '--import', tsx])];
  }
  // The built command: dist/main.js beside the bundle this code is in.
  const main = join(dirname(here), 'main.js');
  return [process.execPath, existsSync(main) ? main : (process.argv[1] ?? main)];
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last lines of its output (for the failure message). */
  tail: string;
  /** Its stdout (results lines). */
  stdout: string;
}

const active = new Set<import('node:child_process').ChildProcess>();
let forwarding: 'none' | 'term' = 'term';
let stopping: NodeJS.Signals | null = null;
let installed = false;

/** How stop signals are passed on: 'term' (SIGTERM, SIGUSR1 to the children), 'none' (under srun). */
export function setSignalForwarding(mode: 'none' | 'term'): void {
  forwarding = mode;
}

/** The first stop signal this process received (no new work starts after it), else null. */
export function stopRequested(): NodeJS.Signals | null {
  return stopping;
}

/** Installs the handlers once: the first signal marks the sweep as stopping and is passed on per the mode. */
export function installStopHandlers(onStop?: (signal: NodeJS.Signals) => void): void {
  if (installed) return;
  installed = true;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGUSR1'] as const) {
    process.on(signal, () => {
      const first = stopping === null;
      stopping ??= signal;
      if (first) onStop?.(signal);
      if (forwarding === 'term' && signal !== 'SIGINT') for (const c of active) c.kill(signal);
      if (!first && signal === 'SIGINT') process.exit(130);
    });
  }
}

/** Runs `cmd args`, its stdout and stderr appended to `log`; resolves with its exit. */
export function runLogged(cmd: string[], log: string, opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<ChildResult> {
  mkdirSync(dirname(log), { recursive: true });
  const fd = openSync(log, 'a');
  writeSync(fd, `\n[sweep ${new Date().toISOString()}] ${cmd.map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(' ')}\n`);
  return new Promise((resolveRun, reject) => {
    let open = true;
    const finish = () => {
      if (open) closeSync(fd);
      open = false;
    };
    const child = spawn(cmd[0]!, cmd.slice(1), { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    active.add(child);
    let tail = '';
    let stdout = '';
    const keep = (d: Buffer) => {
      if (open) writeSync(fd, d);
      tail = (tail + d.toString('utf8')).slice(-4000);
    };
    child.stdout.on('data', (d: Buffer) => {
      keep(d);
      stdout += d.toString('utf8');
    });
    child.stderr.on('data', keep);
    // 'error' (it could not start) may come alone or before 'close': the first one settles.
    child.on('error', (err) => {
      active.delete(child);
      finish();
      reject(new Error(`${cmd[0]}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      active.delete(child);
      if (open) writeSync(fd, `[sweep] exit ${code ?? signal}\n`);
      finish();
      resolveRun({ code, signal, tail, stdout });
    });
  });
}

/** Exit codes of a run stopped on request after a checkpoint: 128 + SIGINT, SIGUSR1, SIGTERM. */
export const STOPPED_CODES = [130, 138, 143];
