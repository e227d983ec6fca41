/**
 * The coordinator of one vitreg training job: rendezvous, membership epochs, heartbeats, the step
 * barrier (two-phase commit), checkpoint commits and metrics, over gRPC (proto/vitreg/cluster/v1).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import {
  CoordinatorService,
  PROTOCOL_VERSION,
  METADATA_TOKEN,
  METADATA_JOB,
  type CoordinatorHandlers,
  type Membership,
  type Member,
  type RankValues,
  type StepCommit,
} from '@vitreg/proto';
import { firstDifference } from '@vitreg/core';

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
}

export interface CoordinatorHandle {
  /** host:port actually bound (host 127.0.0.1 when bound to 0.0.0.0, [::1] when bound to ::). */
  address: string;
  port: number;
  /** Resolves when the job stops: finished (every member left finished) or not (too few workers, close()). */
  done: Promise<{ finished: boolean; reason: string }>;
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

type Watcher = Parameters<CoordinatorHandlers['watchMembership']>[0];

type WorkerState = 'pending' | 'member' | 'removed' | 'left';

interface Worker {
  id: string;
  name: string;
  launcherRank: number;
  peerAddress: string;
  threads: number;
  joinOrder: number;
  lastSeen: number;
  state: WorkerState;
  finished: boolean;
  why?: string;
  watchers: Set<Watcher>;
}

interface Held {
  worker: Worker;
  step: number;
  ranks: RankValues[];
  reply: (r: StepCommit) => void;
}

class Refusal extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

const sha256 = (b: Buffer | string): Buffer => createHash('sha256').update(b).digest();

/** Ring order: launcher rank >= 0 ascending first, then the others in join order. */
function ringOrder(a: Worker, b: Worker): number {
  const ra = a.launcherRank >= 0 ? a.launcherRank : Infinity;
  const rb = b.launcherRank >= 0 ? b.launcherRank : Infinity;
  if (ra !== rb) return ra - rb;
  return a.joinOrder - b.joinOrder;
}

function peerOf(call: { getPeer(): string }): string {
  try {
    return call.getPeer();
  } catch {
    return 'unknown peer';
  }
}

export async function startCoordinator(opts: CoordinatorOptions): Promise<CoordinatorHandle> {
  const host = opts.host ?? '0.0.0.0';
  const joinTimeoutMs = opts.joinTimeoutMs ?? 60_000;
  const heartbeatMs = opts.heartbeatMs ?? 1000;
  const workerTimeoutMs = opts.workerTimeoutMs ?? 30_000;
  const transport = opts.transport ?? 'tcp';
  const { jobId, minWorkers, maxWorkers } = opts;
  if (!jobId) throw new Error('jobId: must not be empty');
  if (!opts.token) throw new Error('token: must not be empty');
  if (!Number.isInteger(minWorkers) || minWorkers < 1) throw new Error(`minWorkers: expected an integer >= 1, got ${minWorkers}`);
  if (!Number.isInteger(maxWorkers) || maxWorkers < minWorkers)
    throw new Error(`maxWorkers: expected an integer >= minWorkers (${minWorkers}), got ${maxWorkers}`);
  if (transport !== 'tcp' && transport !== 'grpc') throw new Error(`transport: expected "tcp" or "grpc", got ${JSON.stringify(transport)}`);
  for (const [k, v] of [
    ['joinTimeoutMs', joinTimeoutMs],
    ['heartbeatMs', heartbeatMs],
    ['workerTimeoutMs', workerTimeoutMs],
  ] as const) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${k}: expected an integer >= 0, got ${v}`);
  }

  const tokenDigest = sha256(opts.token);
  let eventsFailed = false;

  const log = (line: string): void => opts.log?.(line);
  const event = (name: string, fields: Record<string, unknown> = {}): void => {
    if (!opts.eventsPath || eventsFailed) return;
    try {
      appendFileSync(opts.eventsPath, JSON.stringify({ time: new Date().toISOString(), event: name, ...fields }) + '\n');
    } catch (e) {
      eventsFailed = true;
      log(`cannot write the event log ${opts.eventsPath}: ${(e as Error).message}; events are no longer written`);
    }
  };

  // ---- job state ----
  const workers = new Map<string, Worker>();
  let joinCount = 0;
  let refConfig: unknown = undefined;
  let hasRefConfig = false;
  let members: Worker[] = [];
  let pending: Worker[] = [];
  let epoch = 0;
  let membership: Membership | null = null;
  let committedStep = 0;
  let lastCheckpointStep = 0;
  let held = new Map<string, Held>();
  let stopped = false;
  let closing = false;

  let resolveDone!: (r: { finished: boolean; reason: string }) => void;
  const done = new Promise<{ finished: boolean; reason: string }>((r) => (resolveDone = r));

  const refuse = (rpc: string, call: { getPeer(): string }, who: string, err: Refusal): never => {
    log(`refused ${rpc} from ${peerOf(call)}${who ? ` (${who})` : ''}: ${err.message}`);
    event('refused', { rpc, peer: peerOf(call), who: who || undefined, code: grpc.status[err.code], message: err.message });
    throw err;
  };

  /** Checks the job token (constant time) and job id of a call's metadata. */
  const authenticate = (metadata: grpc.Metadata): void => {
    const token = metadata.get(METADATA_TOKEN)[0];
    const given = sha256(token === undefined ? '' : typeof token === 'string' ? token : Buffer.from(token));
    if (token === undefined || !timingSafeEqual(given, tokenDigest)) throw new Refusal(grpc.status.UNAUTHENTICATED, 'wrong job token');
    const job = metadata.get(METADATA_JOB)[0];
    const jobText = job === undefined ? '' : job.toString();
    if (jobText !== jobId)
      throw new Refusal(grpc.status.PERMISSION_DENIED, `job id ${JSON.stringify(jobText)} is not this coordinator's job ${JSON.stringify(jobId)}`);
  };

  const workerFor = (id: string): Worker => {
    const w = workers.get(id);
    if (!w) throw new Refusal(grpc.status.NOT_FOUND, `unknown worker id ${JSON.stringify(id)}`);
    return w;
  };

  const memberMessage = (): Membership['members'] => {
    let first = 0;
    return members.map((w, rank): Member => {
      const m: Member = { workerId: w.id, name: w.name, rank, firstRank: first, threads: w.threads, peerAddress: w.peerAddress };
      first += w.threads;
      return m;
    });
  };

  /** Sends a membership to every watcher of every worker in `audience`, then ends the streams of those in `endFor`. */
  const broadcast = (m: Membership | null, audience: Iterable<Worker>, endFor: Iterable<Worker> = []): void => {
    if (m) for (const w of audience) {
      for (const s of w.watchers) {
        try {
          s.write(m);
        } catch {
          /* the stream is gone; its close handler removes it */
        }
      }
    }
    for (const w of endFor) {
      for (const s of [...w.watchers]) {
        w.watchers.delete(s);
        try {
          s.end();
        } catch {
          /* already closed */
        }
      }
    }
  };

  /** Answers every held CommitStep with committed = false (the membership changed). */
  const releaseHeld = (): void => {
    const calls = [...held.values()];
    held = new Map();
    for (const h of calls) h.reply({ committed: false, epoch, ranks: [] });
  };

  /**
   * Publishes the next membership epoch: `members` (already in ring order) renumbered. `gone` are
   * workers that just stopped being members: they get this membership too (they are not in it), then
   * their streams end.
   */
  const publish = (reason: string, gone: Worker[] = [], stop = false, finished = false): void => {
    epoch += 1;
    const ms = memberMessage();
    membership = {
      epoch,
      members: ms,
      worldSize: ms.reduce((s, m) => s + m.threads, 0),
      reason,
      stop,
      finished,
      transport,
      committedStep,
    };
    const ring = ms.map((m) => `${m.name}=${m.rank}@${m.firstRank}`).join(' ');
    log(
      `membership epoch ${epoch}${stop ? (finished ? ' (stop, finished)' : ' (stop)') : ''}: ${reason}; ` +
        `${ms.length} workers, world size ${membership.worldSize}, committed step ${committedStep}${ring ? `; ring ${ring}` : ''}`,
    );
    event('membership', { epoch, reason, stop, finished, worldSize: membership.worldSize, committedStep, transport, members: ms });
    releaseHeld();
    const audience = new Set<Worker>([...members, ...gone, ...(stop ? pending : [])]);
    broadcast(membership, audience, stop ? [...audience] : gone);
    if (stop) {
      for (const w of pending) {
        w.state = 'removed';
        w.why = reason;
      }
      pending = [];
    }
  };

  const finish = (finished: boolean, reason: string): void => {
    if (stopped) return;
    stopped = true;
    clearTimeout(joinTimer);
    clearInterval(livenessTimer);
    log(`job ${finished ? 'finished' : 'stopped'}: ${reason}`);
    event('finish', { finished, reason, committedStep, lastCheckpointStep });
    resolveDone({ finished, reason });
  };

  /** Forms the first membership when the rendezvous condition holds. */
  const maybeRendezvous = (): void => {
    if (stopped || epoch > 0) return;
    if (pending.length >= maxWorkers || (joinWindowOver && pending.length >= minWorkers)) {
      members = [...pending].sort(ringOrder);
      pending = [];
      for (const w of members) w.state = 'member';
      publish('rendezvous');
    }
  };

  /** Admits the pending joiners into a new membership (after a commit). */
  const admitPending = (): void => {
    if (stopped || epoch === 0 || pending.length === 0) return;
    const joiners = [...pending].sort(ringOrder);
    pending = [];
    for (const w of joiners) w.state = 'member';
    members = [...members, ...joiners];
    publish(`${joiners.map((w) => w.name).join(', ')} joined`);
  };

  /** Removes a worker (failure, timeout, disconnect, or leaving unfinished). */
  const remove = (w: Worker, why: string, state: WorkerState = 'removed'): void => {
    if (stopped) return;
    if (w.state === 'pending') {
      pending = pending.filter((p) => p !== w);
      w.state = state;
      w.why = why;
      log(`removed pending ${w.name} (${w.id}): ${why}`);
      event('removed', { worker: w.id, name: w.name, reason: why, pending: true });
      broadcast(null, [], [w]);
      return;
    }
    if (w.state !== 'member') return;
    w.state = state;
    w.why = why;
    members = members.filter((m) => m !== w);
    log(`removed ${w.name} (${w.id}): ${why}`);
    event('removed', { worker: w.id, name: w.name, reason: why, epoch });
    const survivors = members.length + pending.length;
    if (survivors < minWorkers) {
      const reason = `${survivors} workers left, fewer than --min-workers ${minWorkers}`;
      members = [...members, ...[...pending].sort(ringOrder)];
      pending = [];
      publish(reason, [w], true, false);
      finish(false, `${why}; ${reason}`);
      return;
    }
    const joiners = [...pending].sort(ringOrder);
    pending = [];
    for (const j of joiners) j.state = 'member';
    members = [...members, ...joiners];
    publish(why, [w]);
    maybeAllFinished();
  };

  const maybeAllFinished = (): void => {
    if (stopped || epoch === 0 || members.length === 0) return;
    if (members.every((m) => m.finished)) {
      publish('every worker finished', [], true, true);
      finish(true, 'every worker finished');
    }
  };

  /** Completes the barrier when every unfinished member of the epoch reported. */
  const maybeCommit = (): void => {
    const active = members.filter((m) => !m.finished);
    if (active.length === 0 || !active.every((m) => held.has(m.id))) return;
    const calls = [...held.values()];
    held = new Map();
    const step = calls[0].step;
    const ranks = calls.flatMap((h) => h.ranks).sort((a, b) => a.rank - b.rank);
    committedStep = step;
    log(`step ${step} committed (epoch ${epoch}, ${ranks.length} ranks)`);
    event('commit', { step, epoch, ranks: ranks.map((r) => ({ rank: r.rank, values: r.values })) });
    for (const h of calls) h.reply({ committed: true, epoch, ranks });
    admitPending();
  };

  // ---- timers ----
  // The timer itself marks the window as over: Node may fire it a millisecond before Date.now() agrees,
  // and a clock comparison here would then never form the membership of workers already joined.
  let joinWindowOver = false;
  const joinTimer = setTimeout(() => {
    joinWindowOver = true;
    maybeRendezvous();
  }, joinTimeoutMs);
  const livenessTimer = setInterval(
    () => {
      const now = Date.now();
      for (const w of [...members, ...pending]) {
        if (w.finished) continue;
        const silent = now - w.lastSeen;
        if (silent >= workerTimeoutMs) remove(w, `${w.name} missed heartbeats for ${silent} ms`);
      }
    },
    Math.max(5, Math.min(1000, Math.floor(workerTimeoutMs / 4))),
  );

  // ---- handlers ----
  /** Wraps a unary handler: auth, refusals logged and sent as status errors. */
  function unary<Req, Res>(
    rpc: string,
    who: (req: Req) => string,
    body: (req: Req, call: grpc.ServerUnaryCall<Req, Res>, reply: (r: Res) => void) => void,
  ): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      let answered = false;
      const reply = (r: Res): void => {
        if (answered) return;
        answered = true;
        callback(null, r);
      };
      try {
        try {
          authenticate(call.metadata);
          body(call.request, call, reply);
        } catch (e) {
          if (e instanceof Refusal) refuse(rpc, call, who(call.request), e);
          throw e;
        }
      } catch (e) {
        answered = true;
        if (e instanceof Refusal) callback({ code: e.code, details: e.message });
        else {
          log(`internal error in ${rpc}: ${(e as Error).stack ?? e}`);
          callback({ code: grpc.status.INTERNAL, details: `coordinator error: ${(e as Error).message}` });
        }
      }
    };
  }

  const nameOf = (id: string): string => {
    const w = workers.get(id);
    return w ? `${w.name}, ${id}` : id;
  };

  const handlers: CoordinatorHandlers = {
    join: unary('Join', (r) => r.name, (req, call, reply) => {
      if (req.protocolVersion !== PROTOCOL_VERSION)
        throw new Refusal(
          grpc.status.FAILED_PRECONDITION,
          `protocol version ${req.protocolVersion}; this coordinator speaks ${PROTOCOL_VERSION}`,
        );
      if (req.jobId !== jobId)
        throw new Refusal(grpc.status.PERMISSION_DENIED, `job id ${JSON.stringify(req.jobId)} is not this coordinator's job ${JSON.stringify(jobId)}`);
      if (!req.name) throw new Refusal(grpc.status.INVALID_ARGUMENT, 'name: must not be empty');
      if (stopped) throw new Refusal(grpc.status.FAILED_PRECONDITION, 'the job has ended');
      const caps = req.capabilities;
      const threads = caps?.threads ?? 0;
      if (threads < 1) throw new Refusal(grpc.status.INVALID_ARGUMENT, `capabilities.threads must be >= 1, got ${threads}`);
      const transports = caps?.transports ?? [];
      if (!transports.includes(transport))
        throw new Refusal(
          grpc.status.FAILED_PRECONDITION,
          `the job's data plane is "${transport}"; this worker serves ${transports.length ? transports.map((t) => `"${t}"`).join(', ') : 'none'}`,
        );
      let config: unknown;
      try {
        config = JSON.parse(req.configJson);
      } catch (e) {
        throw new Refusal(grpc.status.INVALID_ARGUMENT, `config_json is not JSON: ${(e as Error).message}`);
      }
      if (hasRefConfig) {
        const d = firstDifference(config, refConfig);
        if (d)
          throw new Refusal(
            grpc.status.FAILED_PRECONDITION,
            d.path ? `field "${d.path}" differs: ${d.here} here, ${d.job} in the job` : `the config differs: ${d.here} here, ${d.job} in the job`,
          );
      }
      const holder = [...members, ...pending].find((w) => w.name === req.name);
      if (holder) throw new Refusal(grpc.status.ALREADY_EXISTS, `the name "${req.name}" is held by live worker ${holder.id}`);
      if (members.length + pending.length >= maxWorkers)
        throw new Refusal(grpc.status.RESOURCE_EXHAUSTED, `the job is full: ${members.length + pending.length} of --max-workers ${maxWorkers}`);

      if (!hasRefConfig) {
        refConfig = config;
        hasRefConfig = true;
      }
      joinCount += 1;
      const w: Worker = {
        id: `w${joinCount}-${req.name}`,
        name: req.name,
        launcherRank: req.launcherRank,
        peerAddress: req.peerAddress,
        threads,
        joinOrder: joinCount,
        lastSeen: Date.now(),
        state: 'pending',
        finished: false,
        watchers: new Set(),
      };
      workers.set(w.id, w);
      pending.push(w);
      const info = `${caps?.hostname || '?'} pid ${caps?.pid ?? '?'}, ${threads} threads, ${caps?.backend || '?'} on ${caps?.device || '?'}`;
      log(`join ${w.name} (${w.id}) from ${peerOf(call)}: launcher rank ${w.launcherRank}, peer ${w.peerAddress}, ${info}${epoch > 0 ? '; pending until the next commit' : ''}`);
      event('join', { worker: w.id, name: w.name, peer: peerOf(call), launcherRank: w.launcherRank, peerAddress: w.peerAddress, capabilities: caps, pending: epoch > 0 });
      reply({ workerId: w.id, heartbeatMs, workerTimeoutMs });
      maybeRendezvous();
    }),

    heartbeat: unary('Heartbeat', (r) => nameOf(r.workerId), (req, _call, reply) => {
      const w = workerFor(req.workerId);
      const live = w.state === 'member' || w.state === 'pending';
      if (live) w.lastSeen = Date.now();
      reply({ epoch, member: live && !stopped });
    }),

    watchMembership: (call) => {
      let w: Worker;
      try {
        try {
          authenticate(call.metadata);
          w = workerFor(call.request.workerId);
          if (w.state === 'removed' || w.state === 'left')
            throw new Refusal(grpc.status.FAILED_PRECONDITION, `${w.name} is no longer a member: ${w.why ?? 'removed'}`);
        } catch (e) {
          if (e instanceof Refusal) refuse('WatchMembership', call, nameOf(call.request?.workerId ?? ''), e);
          throw e;
        }
      } catch (e) {
        const r = e instanceof Refusal ? e : new Refusal(grpc.status.INTERNAL, (e as Error).message);
        call.emit('error', { code: r.code, details: r.message });
        return;
      }
      if (stopped) {
        if (membership) call.write(membership);
        call.end();
        return;
      }
      w.lastSeen = Date.now();
      w.watchers.add(call);
      let over = false;
      const gone = (how: string): void => {
        if (over) return;
        over = true;
        const ours = w.watchers.delete(call);
        // Ended by us (removed, stopped) or by the worker after Leave: nothing to do.
        if (!ours || stopped || closing || w.finished) return;
        if (w.state === 'member' || w.state === 'pending') remove(w, `${w.name} disconnected (${how})`);
      };
      call.on('cancelled', () => gone('watch stream cancelled'));
      call.on('error', (e: Error) => gone(`watch stream error: ${e.message}`));
      call.on('close', () => gone('watch stream closed'));
      if (w.state === 'member' && membership) call.write(membership);
    },

    commitStep: unary('CommitStep', (r) => nameOf(r.workerId), (req, call, reply) => {
      const w = workerFor(req.workerId);
      if (w.state !== 'member')
        throw new Refusal(
          grpc.status.FAILED_PRECONDITION,
          w.state === 'pending' ? `${w.name} is not a member yet (it enters after the next commit)` : `${w.name} is not a member: ${w.why ?? w.state}`,
        );
      w.lastSeen = Date.now();
      if (stopped || req.epoch !== epoch) {
        reply({ committed: false, epoch, ranks: [] });
        return;
      }
      if (req.step <= committedStep)
        throw new Refusal(grpc.status.INVALID_ARGUMENT, `step ${req.step} is not after the committed step ${committedStep}`);
      for (const h of held.values()) {
        if (h.worker !== w && h.step !== req.step)
          throw new Refusal(
            grpc.status.INVALID_ARGUMENT,
            `step ${req.step} reported, but ${h.worker.name} reported step ${h.step} in epoch ${epoch}`,
          );
      }
      held.get(w.id)?.reply({ committed: false, epoch, ranks: [] }); // superseded by this report
      const entry: Held = { worker: w, step: req.step, ranks: req.ranks, reply };
      held.set(w.id, entry);
      call.on('cancelled', () => {
        if (held.get(w.id) === entry) held.delete(w.id);
      });
      maybeCommit();
    }),

    commitCheckpoint: unary('CommitCheckpoint', (r) => nameOf(r.workerId), (req, _call, reply) => {
      const w = workerFor(req.workerId);
      if (w.state !== 'member') throw new Refusal(grpc.status.FAILED_PRECONDITION, `${w.name} is not a member`);
      if (req.step > committedStep)
        throw new Refusal(grpc.status.FAILED_PRECONDITION, `checkpoint of step ${req.step}, but the last committed step is ${committedStep}`);
      lastCheckpointStep = Math.max(lastCheckpointStep, req.step);
      log(`checkpoint of step ${req.step} by ${w.name}: ${req.path}`);
      event('checkpoint', { worker: w.id, name: w.name, step: req.step, path: req.path });
      reply({ lastCheckpointStep });
    }),

    reportMetrics: unary('ReportMetrics', (r) => nameOf(r.workerId), (req, _call, reply) => {
      const w = workerFor(req.workerId);
      let metrics: unknown;
      try {
        metrics = JSON.parse(req.json);
      } catch (e) {
        throw new Refusal(grpc.status.INVALID_ARGUMENT, `metrics json is not JSON: ${(e as Error).message}`);
      }
      event('metrics', { worker: w.id, name: w.name, step: req.step, metrics });
      reply({});
    }),

    leave: unary('Leave', (r) => nameOf(r.workerId), (req, _call, reply) => {
      const w = workerFor(req.workerId);
      event('leave', { worker: w.id, name: w.name, finished: req.finished, reason: req.reason });
      if (w.state !== 'member' && w.state !== 'pending') {
        reply({});
        return;
      }
      if (req.finished && w.state === 'member') {
        w.finished = true;
        log(`${w.name} (${w.id}) finished${req.reason ? `: ${req.reason}` : ''}`);
        reply({});
        maybeAllFinished();
        // Its barrier share is no longer needed: the others may now complete a held step.
        if (!stopped) maybeCommit();
        return;
      }
      reply({});
      remove(w, `${w.name} left${req.reason ? `: ${req.reason}` : ''}`, 'left');
    }),
  };

  // ---- server ----
  const server = new grpc.Server(SERVER_OPTIONS);
  server.addService(CoordinatorService, handlers as unknown as grpc.UntypedServiceImplementation);

  let port: number;
  let tlsServer: tls.Server | null = null;
  try {
    if (opts.tls) {
      ({ port, tlsServer } = await listenTls(server, host, opts.port ?? 0, opts.tls, (peer, why) => {
        log(`refused TLS connection from ${peer}: ${why}`);
        event('refused', { rpc: 'TLS', peer, message: why });
      }));
    } else {
      port = await new Promise<number>((resolve, reject) =>
        server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${opts.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
          err ? reject(err) : resolve(p),
        ),
      );
    }
  } catch (e) {
    clearTimeout(joinTimer);
    clearInterval(livenessTimer);
    server.forceShutdown();
    throw new Error(`cannot listen on ${host}:${opts.port ?? 0}: ${(e as Error).message}`);
  }

  const shownHost = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  const address = `${shownHost}:${port}`;
  log(
    `job ${jobId}: listening on ${host}:${port} (${opts.tls ? (opts.tls.ca ? 'mutual TLS' : 'TLS') : 'plaintext'}), ` +
      `${minWorkers}..${maxWorkers} workers, join timeout ${joinTimeoutMs} ms, transport ${transport}`,
  );
  event('start', { job: jobId, address, minWorkers, maxWorkers, joinTimeoutMs, heartbeatMs, workerTimeoutMs, transport, tls: opts.tls ? (opts.tls.ca ? 'mutual' : 'server') : 'none' });

  let closed: Promise<void> | null = null;
  const close = (): Promise<void> => {
    if (closed) return closed;
    closing = true;
    closed = (async () => {
      if (!stopped) finish(false, 'coordinator closed');
      clearTimeout(joinTimer);
      clearInterval(livenessTimer);
      releaseHeld();
      broadcast(null, [], workers.values());
      tlsServer?.close();
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

  return { address, port, done, close };
}

/**
 * TLS through Node's tls server, handed to grpc-js as decrypted connections
 * (Server.createConnectionInjector): grpc-js' own TLS listener (bindAsync with
 * ServerCredentials.createSsl) drops failed handshakes without any event its users can see, while
 * tls.Server reports them ('tlsClientError') and lets us check the client certificate ourselves.
 * Same settings as ServerCredentials.createSsl(ca, [{ private_key, cert_chain }], !!ca).
 */
async function listenTls(
  server: grpc.Server,
  host: string,
  port: number,
  creds: { cert: Buffer; key: Buffer; ca?: Buffer },
  refused: (peer: string, why: string) => void,
): Promise<{ port: number; tlsServer: tls.Server }> {
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const tlsServer = tls.createServer({
    cert: creds.cert,
    key: creds.key,
    ca: creds.ca,
    requestCert: !!creds.ca,
    // Checked below, so that a refused client certificate is logged (Node would drop it silently).
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    ciphers: process.env.GRPC_SSL_CIPHER_SUITES,
  });
  const peer = (s: { remoteAddress?: string; remotePort?: number }): string =>
    s.remoteAddress ? `${s.remoteAddress.includes(':') ? `[${s.remoteAddress}]` : s.remoteAddress}:${s.remotePort}` : 'unknown peer';
  tlsServer.on('tlsClientError', (err, socket) => {
    refused(peer(socket), `TLS handshake failed: ${err.message.split('\n')[0]}`);
  });
  tlsServer.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.on('error', () => {
      /* the HTTP/2 session sees the same failure and closes */
    });
    if (creds.ca && !socket.authorized) {
      const cert = socket.getPeerCertificate();
      const none = !cert || Object.keys(cert).length === 0;
      refused(
        peer(socket),
        none
          ? 'client certificate refused: the client sent none (mutual TLS)'
          : `client certificate refused: ${socket.authorizationError ?? 'not authorized'} (subject CN=${cert.subject?.CN ?? '?'})`,
      );
      socket.destroy();
      return;
    }
    if (socket.alpnProtocol !== 'h2') {
      refused(peer(socket), `client did not negotiate HTTP/2 (ALPN ${JSON.stringify(socket.alpnProtocol)})`);
      socket.destroy();
      return;
    }
    injector.injectConnection(socket);
  });
  const bound = await new Promise<number>((resolve, reject) => {
    tlsServer.once('error', reject);
    tlsServer.listen(port, host, () => {
      tlsServer.removeListener('error', reject);
      resolve((tlsServer.address() as AddressInfo).port);
    });
  });
  tlsServer.on('close', () => injector.destroy());
  return { port: bound, tlsServer };
}
