/**
 * The worker process of a cluster job. Its main thread is the agent: it joins the coordinator and
 * follows the membership (coordinator-link.ts), serves the Peer service and the ring's data links
 * (peer-server.ts), opens the link to its ring successor for each membership epoch (epoch.ts), and
 * runs the collectives (collectives.ts) of its training threads (thread-pool.ts, thread.ts): each
 * thread is one rank running @vitreg/trainer's `train` with a `GrpcRingSync`, so heartbeats and
 * network I/O go on while a thread computes.
 *
 * Membership epochs: when the coordinator publishes a new membership (a worker died, hung past the
 * deadline, left or joined), every collective of the old epoch is aborted (the threads get
 * MembershipChanged, drop the step and re-sync from the new rank 0), the old links are closed and
 * new ones opened to the new ring neighbours.
 *
 * The agent logs every time its event loop was held up for over 2 s (`the event loop was held up for
 * N ms`): meanwhile no heartbeat left and no keepalive ping was answered, so on a loaded machine this is
 * where a worker's silence comes from.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { hostname, loadavg } from 'node:os';
import { join } from 'node:path';
import type { Membership } from '@vitreg/proto';
import type { BackendName } from '@vitreg/core';
import type { TrainConfig, TrainEngineOptions, TrainResult } from '@vitreg/trainer';
import { DEFAULT_CHUNK_BYTES, EpochEnded } from './frames.js';
import { linkLiveness, type TlsFiles } from './links.js';
import { DEFAULT_BUCKET_BYTES } from './ring.js';
import { connectSuccessor, endEpoch, openEpoch, watchIncoming, type EpochState } from './epoch.js';
import { CoordinatorLink } from './coordinator-link.js';
import { PeerServer } from './peer-server.js';
import { Collectives } from './collectives.js';
import { ThreadPool } from './thread-pool.js';
import { Fatal } from './fatal.js';
import type { ThreadData } from './messages.js';

export interface WorkerOptions {
  /** host:port of the coordinator. */
  coordinator: string;
  token: string;
  jobId: string;
  /** Stable name (logs, per-rank files): worker-<launcher rank>, or host-pid. */
  name: string;
  launcherRank: number;
  localRank: number;
  /** Device this process was given ("cpu", "cuda:0"), for the coordinator's records. */
  device: string;
  /** Training threads (ranks) in this process. */
  threads: number;
  transport: 'tcp' | 'grpc';
  /** Host the other workers reach this one at. */
  advertise: string;
  bindHost: string;
  /** Port of the Peer service (0: any). */
  peerPort: number;
  tls?: TlsFiles;
  config: TrainConfig;
  outDir: string;
  /** true: --resume; 'auto': continue the same run's checkpoints when there are any (see train's `resume`). */
  resume: boolean | 'auto';
  backend: BackendName;
  /** The rank-0 thread's backend line says why the faster backends were skipped. */
  verbose?: boolean;
  /** The step engine of every training thread (default: auto). */
  engine?: TrainEngineOptions;
  progress: boolean;
  logSamples: boolean;
  checksum: boolean;
  /** A worker that cannot reach the coordinator for this long exits non-zero. */
  coordinatorTimeoutMs: number;
  /**
   * The longest a collective waits for its ring predecessor's next frame (default 600000, as
   * PyTorch's NCCL timeout): past it the predecessor is reported unreachable, as a broken link.
   */
  collectiveTimeoutMs?: number;
  /**
   * A stop request of this process (a SharedStop's flag, set by its signals): every training thread
   * puts it into its next step report, and the job stops after that step with a checkpoint.
   */
  stopFlag?: Int32Array;
  chunkBytes?: number;
  bucketBytes?: number;
  /** Gradients on the ring as bfloat16 ('bf16': half the bytes, rounded) or exact float32 ('none', the default). */
  gradCompression?: 'none' | 'bf16';
  /** Log lines (also appended to <outDir>/logs/<name>.log). */
  log?: (line: string) => void;
}

export interface WorkerResult {
  finished: boolean;
  /** The job stopped on request after this step (a signal to a worker or the coordinator), with a checkpoint. */
  interrupted?: { step: number; signal?: NodeJS.Signals };
  /** The result of the thread holding global rank 0 at the end (when this process had it). */
  result?: TrainResult;
  rank0: boolean;
}

/** A collective's frame deadline unless --collective-timeout-ms says otherwise: PyTorch's NCCL default, 10 minutes. */
export const DEFAULT_COLLECTIVE_TIMEOUT_MS = 600_000;

export class WorkerAgent {
  private readonly o: WorkerOptions;
  private readonly logPath: string;
  private readonly peers: PeerServer;
  private readonly threads: ThreadPool;
  private readonly collectives: Collectives;
  private link: CoordinatorLink | null = null;
  private current: EpochState | null = null;
  private everMember = false;
  private epochWaiters: { epoch: number; resolve: () => void }[] = [];
  /** The furthest step a thread reached (heartbeats report it). */
  private step = 0;
  private settle!: (r: WorkerResult | Error) => void;
  private readonly done: Promise<WorkerResult | Error>;
  private finished = false;
  /** Leaving after an interrupted step: the job's closing membership is expected, not a failure. */
  private leaving = false;
  /** CommitCheckpoint calls in flight (Leave waits for them, so the record precedes the end). */
  private checkpoints: Promise<unknown>[] = [];
  /** Resolves with the job's closing membership (an interrupted worker waits for it before exiting). */
  private jobEnded!: () => void;
  private readonly ended = new Promise<void>((resolve) => (this.jobEnded = resolve));
  private stallWatch: NodeJS.Timeout | null = null;

  constructor(opts: WorkerOptions) {
    this.o = opts;
    this.done = new Promise((resolve) => {
      this.settle = resolve;
    });
    mkdirSync(join(opts.outDir, 'logs'), { recursive: true });
    this.logPath = join(opts.outDir, 'logs', `${opts.name}.log`);
    const log = (line: string) => this.log(line);
    const over = () => this.finished;
    const current = () => this.current;
    const waitForEpoch = (epoch: number, timeoutMs: number) => this.waitForEpoch(epoch, timeoutMs);
    const fail = (err: Error) => this.fail(err);
    const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    const bucketBytes = opts.bucketBytes ?? DEFAULT_BUCKET_BYTES;
    const { token, jobId, tls, bindHost, peerPort } = opts;
    const bf16 = opts.gradCompression === 'bf16';
    const collectiveMs = opts.collectiveTimeoutMs ?? DEFAULT_COLLECTIVE_TIMEOUT_MS;
    const liveness = () => (this.link ? linkLiveness(this.link.workerTimeoutMs, collectiveMs) : undefined);
    this.peers = new PeerServer(
      { token, jobId, tls, bindHost, peerPort, chunkBytes, valueBytes: bf16 ? 2 : 4 },
      { current, waitForEpoch, log, liveness },
    );
    this.threads = new ThreadPool({
      over,
      log,
      fail,
      checkpoint: (step, path) => {
        const call = this.link?.commitCheckpoint(step, path).catch((err: Error & { details?: string }) => {
          this.log(`CommitCheckpoint of step ${step} failed: ${err.details ?? err.message}`);
        });
        if (call) this.checkpoints.push(call);
      },
      collective: (t, m) => this.collectives.request(t, m),
      finished: (results) => void this.finish(results),
    });
    this.collectives = new Collectives(
      {
        threads: opts.threads,
        coordinatorTimeoutMs: opts.coordinatorTimeoutMs,
        current,
        post: (t, msg, transfer) => this.threads.post(t, msg, transfer),
        commitStep: (epoch, step, ranks) => this.link!.commitStep(epoch, step, ranks),
        waitForEpoch,
        membershipWaitMs: () => (this.link?.workerTimeoutMs ?? 30_000) + 5000,
        reached: (step) => {
          this.step = Math.max(this.step, step);
        },
        fail,
        log,
      },
      { chunkBytes, bucketBytes, wire: bf16 ? 'bf16' : 'f32', frameTimeoutMs: collectiveMs },
    );
  }

  log(line: string): void {
    const text = `[${this.o.name}] ${line}`;
    try {
      appendFileSync(this.logPath, `${new Date().toISOString()} ${text}\n`);
    } catch {
      // the log file is a convenience; stderr below is the record
    }
    (this.o.log ?? ((l: string) => process.stderr.write(l + '\n')))(text);
  }

  /** Joins, trains in the threads, leaves; resolves when the job finished or this worker must exit. */
  async run(): Promise<WorkerResult> {
    const o = this.o;
    this.stallWatch = watchStalls(2000, (ms) =>
      this.log(
        `the event loop was held up for ${ms} ms (load average ${loadavg()[0]!.toFixed(1)}): no heartbeat or keepalive answer meanwhile`,
      ),
    );
    try {
      await this.peers.start();
      const link = new CoordinatorLink(o, {
        over: () => this.finished,
        progress: () => ({ epoch: this.current?.epoch ?? 0, step: this.step, unreachablePeer: this.current?.unreachable ?? '' }),
        membership: (m) => this.onMembership(m),
        notMember: () => {
          if (this.leaving) return; // the job ended after this worker left
          const why = 'the coordinator removed this worker from the job (it missed heartbeats or its connection dropped); exiting';
          if (this.everMember) this.fail(new Fatal(why));
        },
        fatal: (err) => this.fail(err),
      });
      this.link = link;
      const peerAddress = `${o.advertise}:${this.peers.peerPort}`;
      await link.join({
        name: o.name,
        launcherRank: o.launcherRank,
        peerAddress,
        capabilities: {
          backend: o.backend,
          device: o.device,
          hostname: hostname(),
          pid: process.pid,
          localRank: o.localRank,
          threads: o.threads,
          transports: ['tcp', 'grpc'],
        },
        // Every worker of a job must agree on the wire format too: the coordinator compares this.
        configJson: JSON.stringify(o.gradCompression === 'bf16' ? { ...o.config, grad_compression: 'bf16' } : o.config),
      });
      const threads = `${o.threads} thread${o.threads > 1 ? 's' : ''}`;
      const collective = `collective timeout ${(o.collectiveTimeoutMs ?? DEFAULT_COLLECTIVE_TIMEOUT_MS) / 1000} s`;
      this.log(`joined job "${o.jobId}" at ${o.coordinator} as ${link.workerId} (${threads}, peer ${peerAddress}, ${collective})`);
      link.start();
      const r = await this.done;
      if (r instanceof Error) throw r;
      return r;
    } finally {
      await this.shutdown();
    }
  }

  private fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.settle(err);
  }

  private async shutdown(): Promise<void> {
    if (this.stallWatch) clearInterval(this.stallWatch);
    this.link?.stop();
    this.endEpoch(new EpochEnded(-1, 'the worker is stopping'));
    await this.threads.terminate();
    this.link?.close();
    await this.peers.close();
  }

  private onMembership(m: Membership): void {
    if (m.stop) {
      this.jobEnded();
      if (m.finished || this.leaving) {
        if (!this.finished) this.log(`the job ${m.finished ? 'finished' : 'stopped'} (${m.reason})`);
        return;
      }
      this.fail(new Fatal(`the coordinator stopped the job: ${m.reason}`));
      return;
    }
    const link = this.link!;
    const me = m.members.find((x) => x.workerId === link.workerId);
    if (!me) {
      if (this.everMember) this.fail(new Fatal(`removed from the job at membership ${m.epoch}: ${m.reason}`));
      return;
    }
    if (this.current && m.epoch <= this.current.epoch) return;
    this.everMember = true;
    const names = m.members.map((x) => x.name).join(' -> ');
    const ranks = `ranks ${me.firstRank}..${me.firstRank + me.threads - 1} of ${m.worldSize}`;
    this.log(
      `membership ${m.epoch}: ${m.reason}; ring ${names}; this worker is rank ${me.rank} of ${m.members.length} processes, ${ranks}; ` +
        `transport ${m.transport}`,
    );
    this.endEpoch(new EpochEnded(m.epoch, `membership changed to epoch ${m.epoch}: ${m.reason}`));
    const st = openEpoch(m, me);
    this.current = st;
    this.step = Math.max(this.step, m.committedStep);
    if (m.members.length > 1) {
      const { token, tls } = this.o;
      const log = (l: string) => this.log(l);
      const liveness = linkLiveness(link.workerTimeoutMs, this.o.collectiveTimeoutMs ?? DEFAULT_COLLECTIVE_TIMEOUT_MS);
      st.out = connectSuccessor(st, { workerId: link.workerId, token, metadata: link.metadata, tls, log, liveness });
      watchIncoming(st, liveness.timeoutMs, log);
      // An unhandled rejection here would end the process; the collectives see the error.
      st.out.catch(() => undefined);
    }
    for (const w of this.epochWaiters.filter((x) => x.epoch <= m.epoch)) w.resolve();
    this.epochWaiters = this.epochWaiters.filter((x) => x.epoch > m.epoch);
    if (!this.threads.started) this.threads.start(this.threadData(st));
  }

  /** Aborts the epoch in hand: its collectives fail with `reason`, its links close. */
  private endEpoch(reason: EpochEnded): void {
    const st = this.current;
    if (!st || !endEpoch(st, reason)) return;
    this.collectives.abortEpoch(st.epoch);
  }

  private waitForEpoch(epoch: number, timeoutMs: number): Promise<void> {
    if (this.current && this.current.epoch >= epoch) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const late = () => reject(new Error(`this worker has not reached membership epoch ${epoch} within ${timeoutMs} ms`));
      const timer = setTimeout(late, timeoutMs);
      this.epochWaiters.push({
        epoch,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }

  /** What each training thread starts with, in epoch `st`. */
  private threadData(st: EpochState): ThreadData[] {
    const o = this.o;
    return Array.from({ length: o.threads }, (_, t): ThreadData => {
      const rank = st.firstRank + t;
      return {
        config: o.config,
        outDir: o.outDir,
        resume: o.resume,
        backend: o.backend,
        verbose: o.verbose ?? false,
        engine: o.engine,
        thread: t,
        rank,
        worldSize: st.m.worldSize,
        membership: st.epoch,
        rankName: o.threads > 1 ? `${o.name}.t${t}` : o.name,
        logSamples: o.logSamples,
        progress: o.progress && rank === 0,
        checksum: o.checksum,
        stopFlag: o.stopFlag,
      };
    });
  }

  private async finish(results: TrainResult[]): Promise<void> {
    const st = this.current;
    const rank0 = !!st && st.position === 0;
    // Every thread stopped after the same step when the job was interrupted (their reports said so).
    const interrupted = results[0]?.interrupted;
    const how = interrupted ? `interrupted at step ${interrupted.step}${interrupted.signal ? ` (${interrupted.signal})` : ''}` : 'finished';
    this.leaving = true;
    await Promise.all(this.checkpoints);
    try {
      await this.link!.leave(how, !interrupted);
    } catch (err) {
      this.log(`Leave failed (the job had finished here): ${(err as Error & { details?: string }).details ?? (err as Error).message}`);
    }
    // Interrupted: exit only once every worker left (rank 0 after its checkpoint), so that a launcher that
    // stops a job when one process exits non-zero (srun --kill-on-bad-exit=1) cannot cut the checkpoint short
    // (vitreg's own scripts use --kill-on-bad-exit=0: the other processes still print their last lines).
    if (interrupted) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.ended, new Promise((r) => (timer = setTimeout(r, this.o.coordinatorTimeoutMs)))]);
      clearTimeout(timer);
    }
    if (this.finished) return;
    this.finished = true;
    this.log(how);
    this.settle({ finished: !interrupted, rank0, result: rank0 ? results[0] : undefined, ...(interrupted ? { interrupted } : {}) });
  }
}

/** Calls `report(ms)` whenever a 250 ms timer fires over `overMs` late: the event loop was held up that long. */
function watchStalls(overMs: number, report: (ms: number) => void): NodeJS.Timeout {
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    const late = Math.round(now - last - 250);
    last = now;
    if (late > overMs) report(late);
  }, 250);
  timer.unref();
  return timer;
}

/** Runs one worker process to its end (see WorkerAgent). */
export async function runWorker(opts: WorkerOptions): Promise<WorkerResult> {
  return new WorkerAgent(opts).run();
}
