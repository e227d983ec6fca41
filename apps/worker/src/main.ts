#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:${GLIBC_TUNABLES} node
/**
 * vitreg-worker: one process of a cluster training job (one per GPU). The cluster's launcher starts
 * it (torchrun, srun, a Kubernetes Indexed Job) with the same arguments on every machine; see
 * USAGE. Exits 0 when the job finished, 1 when it stopped (lost coordinator, removed, a failure),
 * 2 on a bad flag, 128 + the signal's number when a stop signal (to this or another worker, or the
 * coordinator) stopped the job after a step with a checkpoint. The first line starts Node with
 * @vitreg/core's MALLOC_TUNABLES, as the vitreg bin's does.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { BACKEND_NAMES, FlagError, Flags, type BackendName } from '@vitreg/core';
import {
  assertDataSource,
  checkThreadsOnDevice,
  checkTrainEngineOptions,
  openDataAsync,
  resolveTrainConfig,
  type TrainEngineOptions,
} from '@vitreg/trainer';
import { clipTokenizer, openCaptionData } from '@vitreg/trainer';
import { startCoordinator, type CoordinatorHandle } from '@vitreg/coordinator';
import { resumePoint, RunMismatchError, parseStopSignals, signalExitCode, STOP_SIGNALS, stopOnSignals } from '@vitreg/trainer';
import { runWorker } from './agent.js';
import { launchInfo, selectDevice } from './env.js';

export const USAGE = `Usage: vitreg-worker (--preset NAME | --config FILE.json) [training options] [cluster options]

One process of a data-parallel training job across processes and machines: it joins the job's
coordinator, trains its share of every step in --threads training threads, and all-reduces the
gradients with its ring neighbours. The launcher starts one per GPU with the same arguments.

Training (as vitreg train): --preset NAME | --config FILE.json, --data DIR|FILE-LIST|synthetic,
  --rebuild-index, --registers N, --steps N, --seed N, --batch-size N (per rank), --out DIR (default
  runs/train-<preset>), --resume,
  --backend auto|tensorflow-gpu|webgpu|tensorflow|wasm|cpu, --engine auto|tfjs|onnxruntime (the step engine,
  $VITREG_ENGINE; auto = onnxruntime where onnxruntime-node loads), --device cpu|cuda|webgpu (onnxruntime's execution
  provider; cuda is the GPU of --local-rank / --gpu), --engine-threads N (onnxruntime's intra-op threads
  per training thread), --tokenizer FILE, --csv-img-key K, --csv-caption-key K, --csv-separator S (objective
  clip, as vitreg train), --no-progress, --log-samples (per-rank files
  list the (epoch, index) of every image trained on), --checksum (rank 0 prints a weights SHA-256)

Cluster:
  --coordinator HOST:PORT   an external vitreg-coordinator; without it the process with launcher
                            rank 0 hosts the coordinator on MASTER_PORT (like torch's rendezvous
                            store) and every process connects to MASTER_ADDR:MASTER_PORT
  --token T | --token-file F  the job's shared secret ($VITREG_TOKEN, $VITREG_TOKEN_FILE); required
  --job-id ID               ($VITREG_JOB_ID, else $TORCHELASTIC_RUN_ID, $SLURM_JOB_ID, else "vitreg")
  --name NAME               this worker's name in logs and files (default worker-<launcher rank>, else host-pid)
  --rank N                  launcher rank (default $RANK, $SLURM_PROCID, $JOB_COMPLETION_INDEX)
  --world-size N            processes of the job (default $WORLD_SIZE, $SLURM_NTASKS)
  --local-rank N            GPU index on this machine (default $LOCAL_RANK, $SLURM_LOCALID): sets
                            CUDA_VISIBLE_DEVICES before the GPU backend loads, and the WebGPU adapter
                            ($VITREG_GPU: the chosen device's index) unless $VITREG_GPU is set
  --gpu N                   this process's GPU outright: CUDA device N and WebGPU adapter N
  --threads N               training threads (ranks) in this process, reduced in shared memory
                            before the ring (default 1; only 1 with --device webgpu: one WebGPU context
                            per process)
  --transport tcp|grpc      data plane of a hosted coordinator's job (default tcp)
  --grad-compression none|bf16  gradients on the ring as exact float32 (none, the default) or as
                            bfloat16 rounded to nearest even (half the bytes, as DDP's bf16 hook);
                            every worker of a job must give the same
  --advertise HOST          host the other workers reach this one at (default: this host's name,
                            127.0.0.1 when the coordinator is on loopback)
  --bind HOST               address the Peer service and data links listen on (default 0.0.0.0)
  --min-workers N --max-workers N   a hosted coordinator's elastic bounds (default: --world-size)
  --join-timeout-ms MS --heartbeat-ms MS --worker-timeout-ms MS   a hosted coordinator's timings
  --coordinator-timeout-ms MS  exit non-zero after this long without the coordinator (default 30000)
  --collective-timeout-ms MS  the longest a gradient all-reduce or state broadcast waits for the ring
                            predecessor's next frame (default 600000, as PyTorch's NCCL timeout); past
                            it that neighbour is reported unreachable and the coordinator removes one
  --tls-cert F --tls-key F [--tls-ca F]  TLS on every connection; with --tls-ca, mutual TLS
  --stop-signals LIST       signals that stop the job cleanly (default INT,TERM,USR1; "none"): the
                            first, to any worker, makes every worker stop after the next committed
                            step with a checkpoint and exit 128 + its number (143 for SIGTERM),
                            saying "interrupted at step N"; a second exits at once. The same
                            command (or --resume) continues the run. Slurm: sbatch --signal=TERM@120;
                            Kubernetes: terminationGracePeriodSeconds longer than a step
  --verbose                 the backend line says why the faster backends were skipped

Resume: a run folder holding checkpoints of the same config is continued (as with --resume); one of
another config is refused, naming the first differing field.
`;

/** A bad flag or input: one line on stderr, exit 2 (@vitreg/core's FlagError, as Flags.done() throws). */
class UsageError extends FlagError {}

/** This worker's log file once known (a fatal error is written there too). */
let logFile: string | null = null;

/** The flags of vitreg-worker (see USAGE). */
const OPTIONS = {
  preset: { type: 'string' },
  config: { type: 'string' },
  data: { type: 'string' },
  registers: { type: 'string' },
  steps: { type: 'string' },
  seed: { type: 'string' },
  'batch-size': { type: 'string' },
  out: { type: 'string' },
  resume: { type: 'boolean' },
  backend: { type: 'string' },
  engine: { type: 'string' },
  device: { type: 'string' },
  'engine-threads': { type: 'string' },
  tokenizer: { type: 'string' },
  'csv-img-key': { type: 'string' },
  'csv-caption-key': { type: 'string' },
  'csv-separator': { type: 'string' },
  'no-progress': { type: 'boolean' },
  'log-samples': { type: 'boolean' },
  checksum: { type: 'boolean' },
  'rebuild-index': { type: 'boolean' },
  coordinator: { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  'job-id': { type: 'string' },
  name: { type: 'string' },
  rank: { type: 'string' },
  'world-size': { type: 'string' },
  'local-rank': { type: 'string' },
  gpu: { type: 'string' },
  threads: { type: 'string' },
  transport: { type: 'string' },
  'grad-compression': { type: 'string' },
  advertise: { type: 'string' },
  bind: { type: 'string' },
  'min-workers': { type: 'string' },
  'max-workers': { type: 'string' },
  'join-timeout-ms': { type: 'string' },
  'heartbeat-ms': { type: 'string' },
  'worker-timeout-ms': { type: 'string' },
  'coordinator-timeout-ms': { type: 'string' },
  'collective-timeout-ms': { type: 'string' },
  'stop-signals': { type: 'string' },
  verbose: { type: 'boolean' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
} as const;

async function main(argv: string[]): Promise<number> {
  // Every flag problem is recorded and reported together (f.done()) before the data opens or the job is joined.
  const f = new Flags('vitreg-worker', argv, OPTIONS);
  const { values } = f;
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  f.noPositionals();
  /** fn(), or fallback with the message of what it threw recorded (as it would have been thrown alone). */
  const record = <T>(fn: () => T, fallback: T, edit = (m: string) => m): T => {
    try {
      return fn();
    } catch (e) {
      f.fail(edit((e as Error).message));
      return fallback;
    }
  };
  const readFile = (flag: string, path: string): Buffer | undefined =>
    record(
      () => readFileSync(path),
      undefined,
      (m) => `${flag}: cannot read ${path}: ${/^(E[A-Z]+)/.exec(m)?.[1] ?? m}`,
    );
  const env = launchInfo();
  const rank = f.optionalInt('rank', 0) ?? env.rank;
  const worldSize = f.optionalInt('world-size', 1) ?? (env.worldSize || undefined);
  const localRank = f.optionalInt('local-rank', 0) ?? env.localRank;
  const gpu = f.optionalInt('gpu', 0);
  const threads = f.optionalInt('threads', 1) ?? 1;
  const transport = (values.transport ?? 'tcp') as 'tcp' | 'grpc';
  const gradCompression = (values['grad-compression'] ?? 'none') as 'none' | 'bf16';
  if (gradCompression !== 'none' && gradCompression !== 'bf16')
    f.fail(`--grad-compression: expected none or bf16, got "${gradCompression}"`);
  if (transport !== 'tcp' && transport !== 'grpc') f.fail(`--transport: expected tcp or grpc, got "${transport}"`);
  const backend = (values.backend ?? process.env.VITREG_BACKEND ?? 'auto') as BackendName;
  if (!BACKEND_NAMES.includes(backend)) f.fail(`--backend: expected one of ${BACKEND_NAMES.join(', ')}, got "${backend}"`);
  const engine = {
    engine: values.engine ?? process.env.VITREG_ENGINE,
    device: values.device,
    threads: f.optionalInt('engine-threads', 1),
  } as TrainEngineOptions;
  const engineOk = record(
    () => (checkTrainEngineOptions(engine), true),
    false,
    (m) => m.replace('--threads', '--engine-threads'),
  );
  if (engineOk)
    record(
      () => checkThreadsOnDevice(engine, threads, '--threads'),
      undefined,
      (m) => m.replace('vitreg train --nodes N', 'one vitreg-worker per GPU'),
    );
  let token = values.token ?? process.env.VITREG_TOKEN;
  const tokenFile = values['token-file'] ?? process.env.VITREG_TOKEN_FILE;
  let tokenUnread = false;
  if (token === undefined && tokenFile) {
    token = readFile('--token-file', tokenFile)?.toString('utf8').trim();
    tokenUnread = token === undefined;
  }
  if (!token && !tokenUnread)
    f.fail('no job token: give --token, --token-file, $VITREG_TOKEN or $VITREG_TOKEN_FILE (the same secret on every worker)');
  const jobId = values['job-id'] ?? process.env.VITREG_JOB_ID ?? (env.jobId || 'vitreg');
  const tlsCert = values['tls-cert'];
  const tlsKey = values['tls-key'];
  if ((tlsCert === undefined) !== (tlsKey === undefined)) f.fail('--tls-cert and --tls-key go together');
  if (values['tls-ca'] !== undefined && tlsCert === undefined) f.fail('--tls-ca needs --tls-cert and --tls-key');
  const tls =
    tlsCert && tlsKey
      ? {
          cert: readFile('--tls-cert', tlsCert)!,
          key: readFile('--tls-key', tlsKey)!,
          ca: values['tls-ca'] ? readFile('--tls-ca', values['tls-ca']) : undefined,
        }
      : undefined;
  const stopSignals = record(
    () => parseStopSignals(values['stop-signals'] ?? STOP_SIGNALS.join(',')),
    [] as NodeJS.Signals[],
    (m) => `--stop-signals: ${m}`,
  );
  const hostTimings = {
    maxWorkers: f.optionalInt('max-workers', 1),
    minWorkers: f.optionalInt('min-workers', 1),
    joinTimeoutMs: f.optionalInt('join-timeout-ms', 1),
    heartbeatMs: f.optionalInt('heartbeat-ms', 1),
    workerTimeoutMs: f.optionalInt('worker-timeout-ms', 1),
  };
  const coordinatorTimeoutMs = f.optionalInt('coordinator-timeout-ms', 1) ?? 30_000;
  const collectiveTimeoutMs = f.optionalInt('collective-timeout-ms', 1);
  if (values.coordinator === undefined && !env.masterAddr && rank !== 0)
    f.fail('no coordinator: give --coordinator HOST:PORT, or set MASTER_ADDR (and MASTER_PORT) as torchrun does');
  if (values.coordinator === undefined && rank === 0 && !worldSize)
    f.fail('the worker hosting the coordinator needs the job size: --world-size or $WORLD_SIZE / $SLURM_NTASKS');
  f.path('config', 'file');
  f.path('tokenizer', 'file');
  f.path('data', 'any', (v) => v === 'synthetic');
  const out = resolve(values.out ?? `runs/train-${values.preset ?? 'config'}`);
  const resolved = record(
    () =>
      resolveTrainConfig({
        configFile: values.config,
        preset: values.preset,
        resumeDir: values.resume ? out : undefined,
        data: values.data,
        registers: f.optionalInt('registers', 0),
        steps: f.optionalInt('steps', 1),
        seed: f.optionalInt('seed', 0),
        batchSize: f.optionalInt('batch-size', 2),
        tokenizer: values.tokenizer === undefined ? undefined : resolve(values.tokenizer),
        csvImgKey: values['csv-img-key'],
        csvCaptionKey: values['csv-caption-key'],
        csvSeparator: values['csv-separator'] === '\\t' ? '\t' : values['csv-separator'],
        warn: (message) => process.stderr.write(`vitreg-worker: warning: ${message}\n`),
      }),
    undefined,
  );
  if (resolved) record(() => assertDataSource(resolved), undefined);
  f.done();
  const config = resolved!;
  try {
    // Objective clip: a caption table or WebDataset shards (its tokenizer checked too), as vitreg train opens them.
    if (config.objective === 'clip') await Promise.all([clipTokenizer(config), openCaptionData(config)]);
    else await openDataAsync(config, { rebuildIndex: values['rebuild-index'] ?? false });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }

  // The same command continues the same run; a folder of another run is refused before joining.
  try {
    await resumePoint(out, config);
  } catch (e) {
    if (!(e instanceof RunMismatchError)) throw e;
    throw new UsageError(`${e.message}; continue that run with its own config, or give another --out`);
  }
  // A stop signal: every training thread reports it with its next step; the job stops after that step.
  const signals = stopOnSignals(stopSignals, {
    onFirst: (signal) =>
      process.stderr.write(
        `vitreg-worker: ${signal}: the job stops after its next committed step, with a checkpoint (again: exit at once)\n`,
      ),
  });

  // The coordinator: given, or hosted by launcher rank 0 on MASTER_PORT.
  let coordinator = values.coordinator;
  let hosted: CoordinatorHandle | null = null;
  const log = (line: string) => process.stderr.write(line + '\n');
  if (coordinator === undefined) {
    const addr = env.masterAddr || '127.0.0.1';
    coordinator = `${addr.includes(':') ? `[${addr}]` : addr}:${env.masterPort}`;
    if (rank === 0) {
      const maxWorkers = hostTimings.maxWorkers ?? worldSize!;
      hosted = await startCoordinator({
        host: values.bind ?? '0.0.0.0',
        port: env.masterPort,
        jobId,
        token: token!,
        transport,
        tls,
        minWorkers: hostTimings.minWorkers ?? maxWorkers,
        maxWorkers,
        joinTimeoutMs: hostTimings.joinTimeoutMs,
        heartbeatMs: hostTimings.heartbeatMs,
        workerTimeoutMs: hostTimings.workerTimeoutMs,
        log: (line) => log(`[coordinator] ${line}`),
      });
      log(`[coordinator] job "${jobId}" listening on port ${hosted.port} for ${maxWorkers} workers`);
    }
  }
  const loopback = /^(127\.|localhost|\[?::1\]?)/.test(coordinator);
  const device = selectDevice(localRank, process.env, gpu);
  const name = values.name ?? (rank >= 0 ? `worker-${rank}` : `${hostname()}-${process.pid}`);
  logFile = `${out}/logs/${name}.log`;
  try {
    const r = await runWorker({
      coordinator,
      token: token!,
      jobId,
      name,
      launcherRank: rank,
      localRank,
      device,
      threads,
      transport,
      gradCompression,
      advertise: values.advertise ?? (loopback ? '127.0.0.1' : hostname()),
      bindHost: values.bind ?? (loopback ? '127.0.0.1' : '0.0.0.0'),
      peerPort: 0,
      tls,
      config,
      outDir: out,
      resume: values.resume ? true : 'auto',
      backend,
      verbose: values.verbose ?? false,
      stopFlag: signals.stop.flag,
      engine,
      progress: !values['no-progress'],
      logSamples: values['log-samples'] ?? false,
      checksum: values.checksum ?? false,
      coordinatorTimeoutMs,
      collectiveTimeoutMs,
    });
    if (r.rank0 && r.result) {
      const res = r.result;
      process.stdout.write(
        JSON.stringify({
          out,
          step: res.step,
          checkpoint: res.checkpoint,
          ...(res.interrupted ? { interrupted: res.interrupted } : {}),
          ...(res.checksum ? { checksum: res.checksum } : {}),
          ...res.eval,
        }) + '\n',
      );
    }
    if (hosted) await hosted.done;
    if (r.interrupted) {
      const line = `interrupted at step ${r.interrupted.step}; checkpoint written; run the same command to continue`;
      process.stderr.write(`vitreg-worker: ${line}\n`);
      return signalExitCode(r.interrupted.signal);
    }
    return r.finished ? 0 : 1;
  } finally {
    await hosted?.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Lingering handles (gRPC channels, worker threads) must not keep a finished worker alive.
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (err: Error) => {
    process.stderr.write(`vitreg-worker: ${err.message}\n`);
    if (logFile) {
      try {
        appendFileSync(logFile, `${new Date().toISOString()} vitreg-worker: exiting: ${err.message}\n`);
      } catch {
        // stderr above is the record
      }
    }
    if (process.env.VITREG_DEBUG && !(err instanceof FlagError)) process.stderr.write(`${err.stack ?? ''}\n`);
    process.exit(err instanceof FlagError ? 2 : 1);
  },
);
