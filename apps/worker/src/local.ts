/**
 * `vitreg train --nodes N`: a whole cluster job on this machine, over loopback, through the same
 * code as on a cluster: a coordinator process and N worker processes (vitreg-coordinator and
 * vitreg-worker), a fresh random job token, the run folder shared. Worker 0's stderr (progress) is
 * passed through; every process also logs to <out>/logs/. With --min-workers 1 (the default here)
 * the job goes on when a worker process dies.
 *
 * Signals: the processes run in process groups of their own, so a terminal's Ctrl-C reaches this
 * process only; the first of `stopSignals` is passed on to every worker once (each asks the job for a
 * checkpoint at the next committed step and stops, all after the same step), a second one too (the
 * workers exit at once) and the coordinator is then stopped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childNodeArgs, withMallocTunables } from '@vitreg/core';

export interface LocalJobOptions {
  /** Worker processes. */
  nodes: number;
  /** Training arguments passed to every worker (--preset/--config, --steps, ..., --out). */
  trainArgs: string[];
  outDir: string;
  threads?: number;
  minWorkers?: number;
  transport?: 'tcp' | 'grpc';
  heartbeatMs?: number;
  workerTimeoutMs?: number;
  coordinatorTimeoutMs?: number;
  /** Extra arguments for every worker (tests: --log-samples, --checksum). */
  workerArgs?: string[];
  /** Pass worker 0's stderr through (default true). */
  passThrough?: boolean;
  /** Rendezvous: start with >= minWorkers this long after the coordinator started (default 120 s). */
  joinTimeoutMs?: number;
  /** Start worker i once this resolves (a late joiner); undefined: at once. */
  startWhen?: (i: number) => Promise<void> | undefined;
  /** TLS files for every process (with ca: mutual TLS). */
  tls?: { cert: string; key: string; ca?: string };
  /** The job token (default: 32 random bytes, hex). */
  token?: string;
  /** Called with each started process (tests kill them). */
  onSpawn?: (what: 'coordinator' | number, child: ChildProcess) => void;
  /** Signals passed on to the workers (default SIGINT, SIGTERM, SIGUSR1; [] leaves this process's defaults). */
  stopSignals?: readonly NodeJS.Signals[];
  /** Called on the first of those signals. */
  onStop?: (signal: NodeJS.Signals) => void;
  /** Called on a second one, after every process of the job was killed (the caller exits at once). */
  onSecondSignal?: (signal: NodeJS.Signals) => void;
}

export interface LocalJobResult {
  /** The job finished (the coordinator exited 0). */
  finished: boolean;
  coordinatorCode: number | null;
  workerCodes: (number | null)[];
  /** Signals that ended processes, if any. */
  workerSignals: (NodeJS.Signals | null)[];
  /** Rank 0's result line (parsed), when it printed one. */
  result?: Record<string, unknown>;
}

/** The entry script of a bin next to `moduleUrl`'s file (main.ts from the sources, main.js from dist). */
function entryBeside(file: string): string {
  const ext = extname(file);
  return join(dirname(file), ext === '.ts' ? 'main.ts' : 'main.js');
}

function workerEntry(): string {
  return entryBeside(fileURLToPath(import.meta.url));
}

function coordinatorEntry(): string {
  return entryBeside(createRequire(import.meta.url).resolve('@vitreg/coordinator'));
}

function nodeArgs(entry: string): string[] {
  // From the sources the children need the same loader and export conditions as this process (or the
  // built packages: VITREG_CHILDREN_FROM_DIST, @vitreg/core's childNodeArgs).
  return childNodeArgs(entry);
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    else child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/**
 * The environment of a local job's processes: this one's, with the job's token, without a launcher's
 * RANK / WORLD_SIZE, and with the bins' malloc settings (@vitreg/core's MALLOC_TUNABLES) also when this
 * process runs from the sources or a user's script.
 */
export function localJobEnv(token: string, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env = withMallocTunables({ ...base, VITREG_TOKEN: token });
  delete env.RANK;
  delete env.WORLD_SIZE;
  return env;
}

export async function runLocalJob(o: LocalJobOptions): Promise<LocalJobResult> {
  const logs = join(o.outDir, 'logs');
  mkdirSync(logs, { recursive: true });
  const token = o.token ?? randomBytes(32).toString('hex');
  const env = localJobEnv(token);
  const jobId = `local-${randomBytes(4).toString('hex')}`;
  const tlsArgs = o.tls ? ['--tls-cert', o.tls.cert, '--tls-key', o.tls.key, ...(o.tls.ca ? ['--tls-ca', o.tls.ca] : [])] : [];
  const coordArgs = [
    '--host',
    '127.0.0.1',
    '--port',
    '0',
    '--job-id',
    jobId,
    '--max-workers',
    String(o.nodes),
    '--min-workers',
    String(o.minWorkers ?? 1),
    '--transport',
    o.transport ?? 'tcp',
    '--events',
    join(logs, 'coordinator.jsonl'),
    '--exit-with-stdin',
    '--join-timeout-ms',
    String(o.joinTimeoutMs ?? 120_000),
    ...(o.heartbeatMs ? ['--heartbeat-ms', String(o.heartbeatMs)] : []),
    ...(o.workerTimeoutMs ? ['--worker-timeout-ms', String(o.workerTimeoutMs)] : []),
    ...tlsArgs,
  ];
  const coordinator = spawn(process.execPath, [...nodeArgs(coordinatorEntry()), ...coordArgs], {
    env,
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  o.onSpawn?.('coordinator', coordinator);
  coordinator.stderr!.pipe(createWriteStream(join(logs, 'coordinator.log'), { flags: 'a' }));
  const address = await new Promise<string>((resolve, reject) => {
    let buf = '';
    const onData = (b: Buffer) => {
      buf += b.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      coordinator.stdout!.off('data', onData);
      try {
        resolve((JSON.parse(buf.slice(0, nl)) as { coordinator: string }).coordinator);
      } catch {
        reject(new Error(`the coordinator printed "${buf.slice(0, nl)}" instead of its address`));
      }
    };
    coordinator.stdout!.on('data', onData);
    coordinator.once('exit', (code) =>
      reject(new Error(`the coordinator exited with code ${code} before listening (see ${join(logs, 'coordinator.log')})`)),
    );
  });
  const start = (i: number) => {
    const args = [
      ...nodeArgs(workerEntry()),
      ...o.trainArgs,
      '--out',
      o.outDir,
      '--coordinator',
      address,
      '--job-id',
      jobId,
      '--name',
      `worker-${i}`,
      '--rank',
      String(i),
      '--threads',
      String(o.threads ?? 1),
      ...(o.coordinatorTimeoutMs ? ['--coordinator-timeout-ms', String(o.coordinatorTimeoutMs)] : []),
      ...(i === 0 ? [] : ['--no-progress']),
      ...tlsArgs,
      ...(o.workerArgs ?? []),
    ];
    const w = spawn(process.execPath, args, {
      env,
      stdio: ['pipe', 'pipe', i === 0 && o.passThrough !== false ? 'inherit' : 'pipe'],
      detached: true,
    });
    w.stdout!.on('data', (b: Buffer) => {
      outputs[i] += b.toString('utf8');
    });
    if (w.stderr) w.stderr.resume();
    workers[i] = w;
    o.onSpawn?.(i, w);
    return exitOf(w);
  };
  const workers: ChildProcess[] = [];
  const outputs: string[] = Array.from({ length: o.nodes }, () => '');
  const exits = Array.from({ length: o.nodes }, (_, i) => {
    const when = o.startWhen?.(i);
    return when ? when.then(() => start(i)) : start(i);
  });
  const live = (p: ChildProcess) => p.exitCode === null && p.signalCode === null;
  const stop = () => {
    for (const p of [...workers, coordinator]) if (live(p)) p.kill('SIGTERM');
  };
  // The first signal: every worker gets it once and the job stops after the same step, with a checkpoint;
  // a second: every process of the job is killed at once and the caller is told (it exits, as a shell expects).
  let signals = 0;
  const forward = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals === 1) {
      o.onStop?.(signal);
      for (const w of workers) if (w && live(w)) w.kill(signal);
      return;
    }
    for (const p of [...workers, coordinator]) if (p && live(p)) p.kill('SIGKILL');
    o.onSecondSignal?.(signal);
  };
  const stopSignals = o.stopSignals ?? (['SIGINT', 'SIGTERM', 'SIGUSR1'] as const);
  for (const s of stopSignals) process.on(s, forward);
  try {
    const ends = await Promise.all(exits);
    // Workers are gone: the coordinator ends when its stdin closes (it may already have).
    coordinator.stdin!.end();
    const c = await exitOf(coordinator);
    let result: Record<string, unknown> | undefined;
    for (const text of outputs) {
      const line = text.trim().split('\n').filter(Boolean).pop();
      if (!line) continue;
      try {
        result = JSON.parse(line) as Record<string, unknown>;
      } catch {
        // not a result line
      }
    }
    return {
      finished: c.code === 0,
      coordinatorCode: c.code,
      workerCodes: ends.map((e) => e.code),
      workerSignals: ends.map((e) => e.signal),
      result,
    };
  } finally {
    for (const s of stopSignals) process.off(s, forward);
    stop();
  }
}
