/**
 * The coordinator of one vitreg training job as a gRPC server (proto/vitreg/cluster/v1): a JobState
 * (job-state.ts: rendezvous, membership epochs, heartbeats, the step barrier, checkpoints, metrics)
 * served through the Coordinator service (grpc-service.ts), with the timers that drive it (the join
 * window, the heartbeat check), the JSONL event log, the listener (plaintext through
 * guarded-listener.ts: bounded connections, a preface deadline; or TLS through tls-listener.ts), with
 * bounded logging of refusals (log-limit.ts), and an orderly close.
 */
import { appendFileSync } from 'node:fs';
import type * as net from 'node:net';
import type * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorService } from '@vitreg/proto';
import type { JobOutcome } from './job-settings.js';
import { JobState } from './job-state.js';
import { coordinatorHandlers } from './grpc-service.js';
import { listenTls } from './tls-listener.js';
import { listenGuarded } from './guarded-listener.js';
import { LogLimiter } from './log-limit.js';

export interface CoordinatorOptions {
  /** Bind address, default '0.0.0.0'. */
  host?: string;
  /** TCP port; 0 = ephemeral. Default 0. */
  port?: number;
  jobId: string;
  /** The job's shared secret (metadata `x-vitreg-token`). */
  token: string;
  minWorkers: number;
  maxWorkers: number;
  /** Rendezvous: start with >= minWorkers once this long has passed since start (default 60000). */
  joinTimeoutMs?: number;
  /** Told to workers in JoinReply (default 1000). */
  heartbeatMs?: number;
  /** A member with no heartbeat for this long is removed (default 30000). */
  workerTimeoutMs?: number;
  /** Data plane of the job (default 'tcp'), sent in every Membership. */
  transport?: 'tcp' | 'grpc';
  /** TLS; with ca: mutual TLS (client certificates required and checked against ca). */
  tls?: { cert: Buffer; key: Buffer; ca?: Buffer };
  /** One line per event (join, refusal, membership, removal, commit, checkpoint, finish). */
  log?: (line: string) => void;
  /** JSONL event log, appended: {time, event, ...}. */
  eventsPath?: string;
  /** Connections open at once (plaintext; default 4 x maxWorkers + 64): more are closed at once, with a log line. */
  maxConnections?: number;
  /** A new connection's HTTP/2 preface must arrive within this (plaintext; default 10000): else it is closed, with a log line. */
  prefaceTimeoutMs?: number;
}

export interface CoordinatorHandle {
  /** host:port actually bound (host 127.0.0.1 when bound to 0.0.0.0, [::1] when bound to ::). */
  address: string;
  port: number;
  /** Resolves when the job stops: finished (every member left finished) or not (too few workers, close(), interrupted). */
  done: Promise<JobOutcome>;
  /**
   * Stop on request (the coordinator's process got `code`, a signal's number): every worker stops after
   * the next committed step with a checkpoint. False when there is nothing to stop (no step runs yet, or
   * the job ended): then close() instead.
   */
  requestStop(code: number): boolean;
  close(): Promise<void>;
}

/** Server options: explicit message size limits and keepalive, so dead connections are noticed. */
export const SERVER_OPTIONS: grpc.ServerOptions = {
  'grpc.max_receive_message_length': 4 * 1024 * 1024,
  'grpc.max_send_message_length': 4 * 1024 * 1024,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.http2.min_ping_interval_without_data_ms': 5_000,
  'grpc.http2.max_ping_strikes': 0,
};

/**
 * SERVER_OPTIONS for a job whose worker timeout is `workerTimeoutMs`: a keepalive ping may wait that
 * long (at least 5 s) for its answer. A worker's event loop busy for seconds on a loaded host leaves the
 * ping unanswered; grpc-js would then close the connection, ending the worker's membership watch, which
 * removes the worker: a tighter limit than the heartbeats the job gives a silent worker.
 */
export function serverOptions(workerTimeoutMs: number): grpc.ServerOptions {
  return { ...SERVER_OPTIONS, 'grpc.keepalive_timeout_ms': Math.max(5_000, Math.round(workerTimeoutMs)) };
}

/** Appends {time, event, ...} lines to `path`; after a failed write, says so once and writes no more. */
function eventWriter(path: string | undefined, log: (line: string) => void): (name: string, fields?: Record<string, unknown>) => void {
  let failed = false;
  return (name, fields = {}) => {
    if (!path || failed) return;
    try {
      appendFileSync(path, JSON.stringify({ time: new Date().toISOString(), event: name, ...fields }) + '\n');
    } catch (e) {
      failed = true;
      log(`cannot write the event log ${path}: ${(e as Error).message}; events are no longer written`);
    }
  };
}

export async function startCoordinator(opts: CoordinatorOptions): Promise<CoordinatorHandle> {
  const host = opts.host ?? '0.0.0.0';
  if (!opts.jobId) throw new Error('jobId: must not be empty');
  if (!opts.token) throw new Error('token: must not be empty');
  const log = (line: string): void => opts.log?.(line);
  const event = eventWriter(opts.eventsPath, log);

  let resolveDone!: (r: JobOutcome) => void;
  const done = new Promise<JobOutcome>((r) => (resolveDone = r));
  const timers: { join?: NodeJS.Timeout; liveness?: NodeJS.Timeout } = {};
  const stopTimers = (): void => {
    clearTimeout(timers.join);
    clearInterval(timers.liveness);
  };
  const job = new JobState({
    ...opts,
    log,
    event,
    onFinish: (outcome) => {
      stopTimers();
      resolveDone(outcome);
    },
  });
  const { jobId, minWorkers, maxWorkers, joinTimeoutMs, heartbeatMs, workerTimeoutMs, transport } = job.settings;

  // The timer itself ends the join window: Node may fire it a millisecond before Date.now() agrees,
  // and a clock comparison would then never form the membership of workers already joined.
  timers.join = setTimeout(() => job.closeJoinWindow(), joinTimeoutMs);
  timers.liveness = setInterval(() => job.checkHeartbeats(), Math.max(5, Math.min(1000, Math.floor(workerTimeoutMs / 4))));

  const server = new grpc.Server(serverOptions(workerTimeoutMs));
  // Refusals and bad connections: at most 20 lines of a kind per 10 s, the rest summed up.
  const limiter = new LogLimiter(log);
  const handlers = coordinatorHandlers({ job, token: opts.token, log, event, limiter });
  server.addService(CoordinatorService, handlers as unknown as grpc.UntypedServiceImplementation);

  let port: number;
  let tlsServer: tls.Server | null = null;
  let netServer: net.Server | null = null;
  try {
    if (opts.tls) {
      ({ port, tlsServer } = await listenTls(server, host, opts.port ?? 0, opts.tls, (peer, why) => {
        if (limiter.line('refused TLS connections', `refused TLS connection from ${peer}: ${why}`))
          event('refused', { rpc: 'TLS', peer, message: why });
      }));
    } else {
      ({ port, netServer } = await listenGuarded(server, host, opts.port ?? 0, {
        maxConnections: opts.maxConnections ?? 4 * maxWorkers + 64,
        prefaceMs: opts.prefaceTimeoutMs,
        refused: (kind, peer, why) => {
          if (limiter.line(kind, `closed a connection from ${peer}: ${why}`)) event('refused', { rpc: 'connection', peer, message: why });
        },
      }));
    }
  } catch (e) {
    stopTimers();
    server.forceShutdown();
    throw new Error(`cannot listen on ${host}:${opts.port ?? 0}: ${(e as Error).message}`, { cause: e });
  }

  const shownHost = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  const address = `${shownHost}:${port}`;
  const security = opts.tls ? (opts.tls.ca ? 'mutual TLS' : 'TLS') : 'plaintext';
  log(
    `job ${jobId}: listening on ${host}:${port} (${security}), ` +
      `${minWorkers}..${maxWorkers} workers, join timeout ${joinTimeoutMs} ms, transport ${transport}`,
  );
  event('start', {
    job: jobId,
    address,
    minWorkers,
    maxWorkers,
    joinTimeoutMs,
    heartbeatMs,
    workerTimeoutMs,
    transport,
    tls: opts.tls ? (opts.tls.ca ? 'mutual' : 'server') : 'none',
  });

  let closed: Promise<void> | null = null;
  const close = (): Promise<void> => {
    if (closed) return closed;
    closed = (async () => {
      job.shutdown('coordinator closed');
      stopTimers();
      tlsServer?.close();
      netServer?.close();
      limiter.close();
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 500);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
      server.forceShutdown();
    })();
    return closed;
  };

  const requestStop = (code: number): boolean => job.epoch > 0 && job.requestStop(code, 'the coordinator');
  return { address, port, done, requestStop, close };
}
