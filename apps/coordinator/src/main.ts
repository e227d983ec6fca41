#!/usr/bin/env node
/**
 * vitreg-coordinator: runs the coordinator of one training job until it finishes (exit 0) or stops
 * (exit 1). Prints one JSON line on stdout once listening: {"coordinator":"HOST:PORT","job":"..."}.
 */
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { FlagError, Flags, intFlag } from '@vitreg/core';
import { startCoordinator, type CoordinatorOptions } from './coordinator.js';

const USAGE = `Usage: vitreg-coordinator [options]

Runs the coordinator of one vitreg training job: admits workers, fixes the ring order, watches
heartbeats, runs the step barrier, records checkpoints and metrics. Exits 0 when every worker
finished, 1 when the job stopped (too few workers), 2 on a bad flag. SIGTERM or SIGINT: every worker
stops after the next committed step with a checkpoint, then this exits 128 + the signal's number
(as the workers do); a second signal (or one before training started) closes it at once.

Options:
  --host HOST               bind address (default 0.0.0.0)
  --port N                  TCP port, 0 = ephemeral (default $MASTER_PORT, else 29500)
  --job-id ID               job id (default $VITREG_JOB_ID, $TORCHELASTIC_RUN_ID, $SLURM_JOB_ID, else vitreg)
  --token SECRET            the job's shared token (or $VITREG_TOKEN)
  --token-file FILE         read the token from FILE (or $VITREG_TOKEN_FILE); surrounding whitespace is dropped
  --min-workers N           fewest workers the job runs with (default: --max-workers)
  --max-workers N           most workers (default $WORLD_SIZE, else $SLURM_NTASKS)
  --join-timeout-ms MS      start with >= --min-workers this long after start (default 60000)
  --heartbeat-ms MS         heartbeat interval told to workers (default 1000)
  --worker-timeout-ms MS    remove a worker silent this long (default 30000)
  --transport tcp|grpc      data plane of the job (default tcp)
  --tls-cert FILE           server certificate (PEM); with --tls-key enables TLS
  --tls-key FILE            server private key (PEM)
  --tls-ca FILE             CA of client certificates (PEM): mutual TLS, client certificates required
  --events FILE             append a JSONL event log to FILE
  --exit-with-stdin         exit when stdin closes (a launcher's pipe: the coordinator dies with it)
  --help                    this text
`;

/** The flags of vitreg-coordinator (see USAGE). */
const OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'job-id': { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  'min-workers': { type: 'string' },
  'max-workers': { type: 'string' },
  'join-timeout-ms': { type: 'string' },
  'heartbeat-ms': { type: 'string' },
  'worker-timeout-ms': { type: 'string' },
  transport: { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
  events: { type: 'string' },
  'exit-with-stdin': { type: 'boolean' },
} as const;

/**
 * Options from argv and the environment. Every flag problem is recorded and thrown together as one
 * FlagError (exit 2) before the coordinator starts.
 */
export function parseCommandLine(argv: string[], env: NodeJS.ProcessEnv): (CoordinatorOptions & { exitWithStdin: boolean }) | 'help' {
  const f = new Flags('vitreg-coordinator', argv, OPTIONS);
  const { values } = f;
  if (values.help) return 'help';
  f.noPositionals();
  const integer = (flag: string, text: string | undefined, min: number): number | undefined =>
    text === undefined ? undefined : f.check(() => intFlag(flag, text, 0, min), NaN);
  const readFlagFile = (flag: string, path: string): Buffer | undefined => {
    try {
      return readFileSync(path);
    } catch (e) {
      f.fail(`${flag}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      return undefined;
    }
  };

  const port = integer('port', values.port ?? env.MASTER_PORT ?? '29500', 0)!;
  if (port > 65535) f.fail(`--port: expected 0..65535, got ${port}`);
  const jobId = values['job-id'] ?? env.VITREG_JOB_ID ?? env.TORCHELASTIC_RUN_ID ?? env.SLURM_JOB_ID ?? 'vitreg';
  if (!jobId) f.fail('--job-id: must not be empty');

  let token: string | undefined;
  let unread = false;
  const readToken = (flag: string, path: string): string | undefined => {
    const text = readFlagFile(flag, path)?.toString('utf8').trim();
    unread = text === undefined;
    return text;
  };
  if (values.token !== undefined) token = values.token;
  else if (values['token-file'] !== undefined) token = readToken('--token-file', values['token-file']);
  else if (env.VITREG_TOKEN) token = env.VITREG_TOKEN;
  else if (env.VITREG_TOKEN_FILE) token = readToken('$VITREG_TOKEN_FILE', env.VITREG_TOKEN_FILE);
  if (!token && !unread)
    f.fail('--token: the job token is required (--token, --token-file, $VITREG_TOKEN or $VITREG_TOKEN_FILE) and must not be empty');

  const maxText = values['max-workers'] ?? env.WORLD_SIZE ?? env.SLURM_NTASKS;
  if (maxText === undefined) f.fail('--max-workers: required (or $WORLD_SIZE / $SLURM_NTASKS)');
  const maxWorkers =
    maxText === undefined
      ? NaN
      : integer(values['max-workers'] !== undefined ? 'max-workers' : 'max-workers (from the environment)', maxText, 1)!;
  const minWorkers = integer('min-workers', values['min-workers'], 1) ?? maxWorkers;
  if (minWorkers > maxWorkers) f.fail(`--min-workers: ${minWorkers} is more than --max-workers ${maxWorkers}`);

  const transport = (values.transport ?? 'tcp') as 'tcp' | 'grpc';
  if (transport !== 'tcp' && transport !== 'grpc') f.fail(`--transport: expected tcp or grpc, got ${JSON.stringify(transport)}`);

  let tls: CoordinatorOptions['tls'];
  const cert = values['tls-cert'];
  const key = values['tls-key'];
  if ((cert === undefined) !== (key === undefined))
    f.fail(cert === undefined ? '--tls-cert: required with --tls-key' : '--tls-key: required with --tls-cert');
  if (cert !== undefined && key !== undefined) {
    tls = { cert: readFlagFile('--tls-cert', cert)!, key: readFlagFile('--tls-key', key)! };
    if (values['tls-ca'] !== undefined) tls.ca = readFlagFile('--tls-ca', values['tls-ca']);
  } else if (values['tls-ca'] !== undefined) f.fail('--tls-ca: needs --tls-cert and --tls-key');

  const joinTimeoutMs = integer('join-timeout-ms', values['join-timeout-ms'], 0);
  const heartbeatMs = integer('heartbeat-ms', values['heartbeat-ms'], 1);
  const workerTimeoutMs = integer('worker-timeout-ms', values['worker-timeout-ms'], 1);
  f.done();
  return {
    host: values.host ?? '0.0.0.0',
    port,
    jobId,
    token: token!,
    minWorkers,
    maxWorkers,
    joinTimeoutMs,
    heartbeatMs,
    workerTimeoutMs,
    transport,
    tls,
    eventsPath: values.events,
    exitWithStdin: values['exit-with-stdin'] ?? false,
  };
}

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseCommandLine(process.argv.slice(2), process.env);
  } catch (e) {
    if (e instanceof FlagError) {
      process.stderr.write(`vitreg-coordinator: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (parsed === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  const { exitWithStdin, ...opts } = parsed;
  const handle = await startCoordinator({ ...opts, log: (line) => process.stderr.write(`[coordinator] ${line}\n`) });
  process.stdout.write(JSON.stringify({ coordinator: handle.address, job: opts.jobId }) + '\n');

  let signalled = false;
  const stop = (why: string): void => {
    if (signalled) return;
    signalled = true;
    process.stderr.write(`[coordinator] ${why}: closing\n`);
    void handle.close();
  };
  // The first signal asks the job to stop after its next step with a checkpoint; a second closes at once.
  let asked = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (!asked && handle.requestStop(constants.signals[signal])) {
      asked = true;
      process.stderr.write(`[coordinator] ${signal}: the job stops after its next committed step (again: close at once)\n`);
      return;
    }
    stop(signal);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  if (exitWithStdin) {
    process.stdin.on('end', () => stop('stdin closed'));
    process.stdin.on('close', () => stop('stdin closed'));
    process.stdin.on('error', () => stop('stdin closed'));
    process.stdin.resume();
  }
  const result = await handle.done;
  await handle.close();
  if (result.interrupted) return 128 + (constants.signals[result.interrupted.signal as NodeJS.Signals] ?? -127);
  return result.finished ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
    // The gRPC server and stdin are closed; exit even if a client still holds a socket open.
    setTimeout(() => process.exit(code), 100).unref();
  },
  (e: Error) => {
    process.stderr.write(`vitreg-coordinator: ${e.message}\n`);
    process.exit(1);
  },
);
