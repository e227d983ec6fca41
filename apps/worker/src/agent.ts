/**
 * The worker process of a cluster job. Its main thread is the agent: it joins the coordinator,
 * sends heartbeats, follows the membership, serves the Peer service and the ring's data links, and
 * runs the collectives; the training itself runs in `threads` worker threads (thread.ts), each one
 * rank running @vitreg/trainer's `train` with a `GrpcRingSync`, so heartbeats and network I/O go on
 * while a thread computes.
 *
 * A collective of the threads (all-reduce, broadcast, step commit) is hierarchical: the agent waits
 * for all of its threads' requests, sums their tensors in thread order (shared memory), runs the
 * ring across processes, divides by the world size and hands the same result to every thread.
 *
 * Membership epochs: when the coordinator publishes a new membership (a worker died, hung past the
 * deadline, left or joined), every collective of the old epoch is aborted (the threads get
 * MembershipChanged, drop the step and re-sync from the new rank 0), the old links are closed and
 * new ones opened to the new ring neighbours.
 */
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Worker } from 'node:worker_threads';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorClient, METADATA_JOB, METADATA_TOKEN, PeerClient, PeerService, PROTOCOL_VERSION, type Chunk, type Membership, type PeerHandlers, type StepCommit } from '@vitreg/proto';
import { startThread, type BackendName } from '@vitreg/core';
import type { TrainConfig, TrainResult } from '@vitreg/trainer';
import { alignedCopy, DEFAULT_CHUNK_BYTES, EpochEnded, FrameParser, Inbox, ProtocolError, type Frame, type OutLink } from './frames.js';
import { connectTcpLink, encodeHello, GrpcOutLink, linkMac, macEquals, readHello, type TlsFiles } from './links.js';
import { DEFAULT_BUCKET_BYTES, ringAllReduce, ringBroadcast, type RingIO } from './ring.js';
import { tokenMatches } from './auth.js';
import type { AgentToThread, ThreadToAgent, ThreadData } from './messages.js';

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
  resume: boolean;
  backend: BackendName;
  progress: boolean;
  logSamples: boolean;
  checksum: boolean;
  /** A worker that cannot reach the coordinator for this long exits non-zero. */
  coordinatorTimeoutMs: number;
  chunkBytes?: number;
  bucketBytes?: number;
  /** Log lines (also appended to <outDir>/logs/<name>.log). */
  log?: (line: string) => void;
}

export interface WorkerResult {
  finished: boolean;
  /** The result of the thread holding global rank 0 at the end (when this process had it). */
  result?: TrainResult;
  rank0: boolean;
}

/** Metadata of a PushChunks stream: `<nonce hex>:<HMAC hex>` from OpenLink (see checkLinkProof). */
export const METADATA_LINK = 'x-vitreg-link';

const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': 8 << 20,
  'grpc.max_send_message_length': 8 << 20,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 2_000,
};

interface PendingOp {
  kind: 'allReduce' | 'broadcast' | 'commit';
  seq: number;
  epoch: number;
  msgs: (ThreadToAgent & { kind: PendingOp['kind'] })[];
}

interface EpochState {
  m: Membership;
  epoch: number;
  position: number;
  firstRank: number;
  inbox: Inbox;
  /** Incoming link attached (one per epoch). */
  incoming: boolean;
  out: Promise<OutLink> | null;
  aborted: EpochEnded | null;
  closers: (() => void)[];
}

class Fatal extends Error {}

export class WorkerAgent {
  private readonly o: WorkerOptions;
  private readonly chunkBytes: number;
  private readonly bucketBytes: number;
  private readonly metadata = new grpc.Metadata();
  private coordinator!: grpc.Client;
  private peerServer: grpc.Server | null = null;
  private tcpServer: net.Server | null = null;
  private tcpPort = 0;
  private workerId = '';
  private heartbeatMs = 1000;
  private workerTimeoutMs = 30_000;
  private lastContact = Date.now();
  private timers: NodeJS.Timeout[] = [];
  private watch: grpc.ClientReadableStream<Membership> | null = null;
  private current: EpochState | null = null;
  private everMember = false;
  private epochWaiters: { epoch: number; resolve: () => void }[] = [];
  private nonces = new Map<string, { epoch: number; workerId: string; expires: number }>();
  private threads: Worker[] = [];
  private ops = new Map<string, PendingOp>();
  private results: (TrainResult | undefined)[] = [];
  private step = 0;
  private settle!: (r: WorkerResult | Error) => void;
  private readonly done: Promise<WorkerResult | Error>;
  private finished = false;
  private logPath: string;

  constructor(opts: WorkerOptions) {
    this.o = opts;
    this.chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    this.bucketBytes = opts.bucketBytes ?? DEFAULT_BUCKET_BYTES;
    this.metadata.set(METADATA_TOKEN, opts.token);
    this.metadata.set(METADATA_JOB, opts.jobId);
    this.done = new Promise((resolve) => { this.settle = resolve; });
    mkdirSync(join(opts.outDir, 'logs'), { recursive: true });
    this.logPath = join(opts.outDir, 'logs', `${opts.name}.log`);
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

  private credentials(): grpc.ChannelCredentials {
    const t = this.o.tls;
    return t ? grpc.credentials.createSsl(t.ca ?? null, t.key, t.cert, { checkServerIdentity: () => undefined }) : grpc.credentials.createInsecure();
  }

  private deadline(ms: number): Date {
    return new Date(Date.now() + ms);
  }

  /** Joins, trains in the threads, leaves; resolves when the job finished or this worker must exit. */
  async run(): Promise<WorkerResult> {
    try {
      await this.startPeerServers();
      this.coordinator = new CoordinatorClient(this.o.coordinator, this.credentials(), CHANNEL_OPTIONS);
      await this.join();
      this.openWatch();
      this.timers.push(setInterval(() => this.heartbeat(), this.heartbeatMs));
      this.timers.push(setInterval(() => {
        const silent = Date.now() - this.lastContact;
        if (silent > this.o.coordinatorTimeoutMs) this.fail(new Fatal(`lost the coordinator at ${this.o.coordinator}: no answer for ${silent} ms (--coordinator-timeout-ms ${this.o.coordinatorTimeoutMs}); exiting so the launcher can restart the job, which resumes from the last checkpoint`));
      }, 250));
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
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.endEpoch(new EpochEnded(-1, 'the worker is stopping'));
    this.watch?.cancel();
    await Promise.all(this.threads.map((t) => t.terminate().catch(() => undefined)));
    this.coordinator?.close();
    this.tcpServer?.close();
    const s = this.peerServer;
    if (s) await new Promise<void>((r) => s.tryShutdown(() => r()));
  }

  // -----------------------------------------------------------------------------------------------
  // Coordinator

  private unary<Req, Res>(method: string, req: Req, timeoutMs: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      const fn = (this.coordinator as unknown as Record<string, (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: Res) => void) => void>)[method]!;
      fn.call(this.coordinator, req, this.metadata, { deadline: this.deadline(timeoutMs) }, (err, value) => {
        if (err) reject(err);
        else {
          this.lastContact = Date.now();
          resolve(value);
        }
      });
    });
  }

  private async join(): Promise<void> {
    const start = Date.now();
    for (;;) {
      try {
        const reply = await this.unary<object, { workerId: string; heartbeatMs: number; workerTimeoutMs: number }>('join', {
          jobId: this.o.jobId, protocolVersion: PROTOCOL_VERSION, name: this.o.name, launcherRank: this.o.launcherRank,
          peerAddress: `${this.o.advertise}:${this.peerPort}`,
          capabilities: {
            backend: this.o.backend, device: this.o.device, hostname: hostname(), pid: process.pid, localRank: this.o.localRank,
            threads: this.o.threads, transports: ['tcp', 'grpc'],
          },
          configJson: JSON.stringify(this.o.config),
        }, 10_000);
        this.workerId = reply.workerId;
        this.heartbeatMs = Math.max(100, reply.heartbeatMs || 1000);
        this.workerTimeoutMs = reply.workerTimeoutMs || 30_000;
        this.log(`joined job "${this.o.jobId}" at ${this.o.coordinator} as ${this.workerId} (${this.o.threads} thread${this.o.threads > 1 ? 's' : ''}, peer ${this.o.advertise}:${this.peerPort})`);
        return;
      } catch (err) {
        const e = err as grpc.ServiceError;
        const waited = Date.now() - start;
        if ((e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED) && waited < this.o.coordinatorTimeoutMs) {
          await new Promise((r) => setTimeout(r, 500));
          continue;
        }
        const why = e.code === grpc.status.UNAVAILABLE ? `cannot reach it for ${waited} ms (${e.details}; is it running, and with TLS on both sides or neither?)` : e.details;
        throw new Fatal(`coordinator ${this.o.coordinator} refused to admit this worker: ${grpc.status[e.code] ?? e.code}: ${why}`);
      }
    }
  }

  private heartbeat(): void {
    if (!this.workerId || this.finished) return;
    this.unary<object, { epoch: number; member: boolean }>('heartbeat', { workerId: this.workerId, epoch: this.current?.epoch ?? 0, step: this.step }, Math.max(2000, this.heartbeatMs * 3))
      .then((r) => {
        if (!r.member && this.everMember) this.fail(new Fatal('the coordinator removed this worker from the job (it missed heartbeats or its connection dropped); exiting'));
      })
      .catch((err: grpc.ServiceError) => {
        if (err.code === grpc.status.NOT_FOUND || err.code === grpc.status.FAILED_PRECONDITION) this.fail(new Fatal(`the coordinator no longer knows this worker: ${err.details}`));
      });
  }

  private openWatch(): void {
    const call = (this.coordinator as unknown as { watchMembership(r: object, m: grpc.Metadata): grpc.ClientReadableStream<Membership> }).watchMembership({ workerId: this.workerId }, this.metadata);
    this.watch = call;
    call.on('data', (m: Membership) => {
      this.lastContact = Date.now();
      try {
        this.onMembership(m);
      } catch (err) {
        this.fail(err as Error);
      }
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (this.finished || err.code === grpc.status.CANCELLED) return;
      if (err.code === grpc.status.FAILED_PRECONDITION || err.code === grpc.status.NOT_FOUND) {
        this.fail(new Fatal(`the coordinator ended this worker's membership: ${err.details}`));
        return;
      }
      // The coordinator may be restarting or gone: retry; the watchdog ends this worker if it stays away.
      setTimeout(() => { if (!this.finished) this.openWatch(); }, 500);
    });
  }

  private onMembership(m: Membership): void {
    if (m.stop) {
      if (m.finished) {
        if (!this.finished) this.log(`the job finished (${m.reason})`);
        return;
      }
      this.fail(new Fatal(`the coordinator stopped the job: ${m.reason}`));
      return;
    }
    const me = m.members.find((x) => x.workerId === this.workerId);
    if (!me) {
      if (this.everMember) this.fail(new Fatal(`removed from the job at membership ${m.epoch}: ${m.reason}`));
      return;
    }
    if (this.current && m.epoch <= this.current.epoch) return;
    this.everMember = true;
    const names = m.members.map((x) => x.name).join(' -> ');
    this.log(`membership ${m.epoch}: ${m.reason}; ring ${names}; this worker is rank ${me.rank} of ${m.members.length} processes, ranks ${me.firstRank}..${me.firstRank + me.threads - 1} of ${m.worldSize}; transport ${m.transport}`);
    this.endEpoch(new EpochEnded(m.epoch, `membership changed to epoch ${m.epoch}: ${m.reason}`));
    const inbox = new Inbox(256 << 20, 64 << 20);
    const st: EpochState = { m, epoch: m.epoch, position: me.rank, firstRank: me.firstRank, inbox, incoming: false, out: null, aborted: null, closers: [] };
    this.current = st;
    this.step = Math.max(this.step, m.committedStep);
    if (m.members.length > 1) {
      st.out = this.connectOut(st);
      // An unhandled rejection here would end the process; the collectives see the error.
      st.out.catch(() => undefined);
    }
    for (const w of this.epochWaiters.filter((x) => x.epoch <= m.epoch)) w.resolve();
    this.epochWaiters = this.epochWaiters.filter((x) => x.epoch > m.epoch);
    if (this.threads.length === 0) this.startThreads(st);
  }

  /** Aborts the epoch in hand: its collectives fail with `reason`, its links close. */
  private endEpoch(reason: EpochEnded): void {
    const st = this.current;
    if (!st || st.aborted) return;
    st.aborted = reason;
    st.inbox.fail(reason);
    for (const c of st.closers) c();
    st.out?.then((l) => l.close(), () => undefined);
    for (const [key, op] of this.ops) {
      if (op.epoch === st.epoch) {
        this.ops.delete(key);
        for (const msg of op.msgs) if (msg) this.abortThread(msg.thread, msg.seq);
      }
    }
  }

  private abortThread(thread: number, seq: number): void {
    const st = this.current;
    const info = st && !st.aborted ? { membership: st.epoch, rank: st.firstRank + thread, worldSize: st.m.worldSize } : null;
    this.post(thread, { kind: 'aborted', seq, reason: st?.aborted?.message ?? `membership changed to epoch ${st?.epoch}`, next: info });
  }

  private waitForEpoch(epoch: number, timeoutMs: number): Promise<void> {
    if (this.current && this.current.epoch >= epoch) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`this worker has not reached membership epoch ${epoch} within ${timeoutMs} ms`)), timeoutMs);
      this.epochWaiters.push({ epoch, resolve: () => { clearTimeout(timer); resolve(); } });
    });
  }

  // -----------------------------------------------------------------------------------------------
  // Peer service and data links

  private peerPort = 0;

  private checkAuth(metadata: grpc.Metadata): { code: grpc.status; details: string } | null {
    const token = metadata.get(METADATA_TOKEN)[0];
    if (typeof token !== 'string' || !tokenMatches(token, this.o.token)) return { code: grpc.status.UNAUTHENTICATED, details: 'wrong job token' };
    const job = metadata.get(METADATA_JOB)[0];
    if (job !== this.o.jobId) return { code: grpc.status.PERMISSION_DENIED, details: `job id "${String(job ?? '')}" is not this worker's job "${this.o.jobId}"` };
    return null;
  }

  /** The predecessor of this worker in epoch `st`. */
  private predecessor(st: EpochState): string {
    const n = st.m.members.length;
    return st.m.members[(st.position - 1 + n) % n]!.workerId;
  }

  /**
   * Checks a chunk on arrival against the epoch in hand; a refusal names what was expected. The
   * first chunk of a link is the epoch's first collective (rank 0's state broadcast), which carries
   * the step the membership started at; later chunks are checked exactly (op, step, phase, index,
   * size) by the ring as it consumes them.
   */
  private validateChunk(st: EpochState, c: { epoch: number; step: number; data: Uint8Array }, first: boolean): { code: grpc.status; details: string } | null {
    if (c.epoch !== st.epoch) return { code: grpc.status.FAILED_PRECONDITION, details: `chunk of membership epoch ${c.epoch}; this worker is in epoch ${st.epoch}` };
    if (c.data.byteLength % 4 !== 0 || c.data.byteLength > this.chunkBytes) {
      return { code: grpc.status.INVALID_ARGUMENT, details: `chunk of ${c.data.byteLength} bytes; expected a multiple of 4 up to ${this.chunkBytes}` };
    }
    if (first && c.step !== st.m.committedStep) return { code: grpc.status.FAILED_PRECONDITION, details: `chunk for step ${c.step}; epoch ${st.epoch} starts at step ${st.m.committedStep}` };
    return null;
  }

  /**
   * Checks a link's proof: a nonce this worker issued through OpenLink for (epoch, sender) and not
   * used yet, and HMAC-SHA256(token, nonce | epoch | sender). Returns why it fails, or null.
   */
  private checkLinkProof(epoch: number, workerId: string, nonceHex: string, macHex: string): string | null {
    const issued = this.nonces.get(nonceHex);
    this.nonces.delete(nonceHex);
    if (!issued || issued.expires < Date.now()) return 'unknown or expired link nonce (a link starts with OpenLink)';
    if (issued.epoch !== epoch || issued.workerId !== workerId) return 'the link does not match the nonce it was issued for';
    const mac = linkMac(this.o.token, Buffer.from(nonceHex, 'hex'), epoch, workerId);
    if (!macEquals(mac, Buffer.from(macHex, 'hex'))) return 'bad link MAC (wrong job token?)';
    return null;
  }

  private async startPeerServers(): Promise<void> {
    const handlers: PeerHandlers = {
      openLink: (call, callback) => {
        const bad = this.checkAuth(call.metadata);
        if (bad) {
          this.log(`refused OpenLink from ${call.getPeer()}: ${bad.details}`);
          return callback(bad);
        }
        const { workerId, epoch } = call.request;
        this.waitForEpoch(epoch, 15_000).then(() => {
          const st = this.current!;
          if (st.epoch !== epoch) return callback({ code: grpc.status.FAILED_PRECONDITION, details: `link for membership epoch ${epoch}; this worker is in epoch ${st.epoch}` });
          if (workerId !== this.predecessor(st)) return callback({ code: grpc.status.PERMISSION_DENIED, details: `worker ${workerId} is not this worker's ring predecessor in epoch ${epoch}` });
          const nonce = randomBytes(32);
          this.nonces.set(nonce.toString('hex'), { epoch, workerId, expires: Date.now() + 30_000 });
          callback(null, { port: this.tcpPort, nonce });
        }, (err: Error) => callback({ code: grpc.status.FAILED_PRECONDITION, details: err.message }));
      },
      pushChunks: (call, callback) => {
        const refuse = (e: { code: grpc.status; details: string }) => {
          this.log(`refused chunks from ${call.getPeer()}: ${grpc.status[e.code]}: ${e.details}`);
          callback(e);
          call.destroy();
        };
        const bad = this.checkAuth(call.metadata);
        if (bad) return refuse(bad);
        let st: EpochState | null = null;
        let n = 0;
        let ended = false;
        const onChunk = (c: Chunk) => {
          if (ended) return;
          if (!st) {
            const cur = this.current;
            if (!cur) return refuse({ code: grpc.status.FAILED_PRECONDITION, details: 'this worker has no membership yet' });
            if (c.epoch === cur.epoch && c.workerId !== this.predecessor(cur)) {
              return refuse({ code: grpc.status.PERMISSION_DENIED, details: `worker "${c.workerId}" is not this worker's ring predecessor in epoch ${cur.epoch}` });
            }
            const v = this.validateChunk(cur, c, true);
            if (v) return refuse(v);
            const [nonce = '', mac = ''] = String(call.metadata.get(METADATA_LINK)[0] ?? '').split(':');
            const proof = this.checkLinkProof(c.epoch, c.workerId, nonce, mac);
            if (proof) return refuse({ code: grpc.status.PERMISSION_DENIED, details: `the link of worker "${c.workerId}" was refused: ${proof}` });
            if (cur.incoming) return refuse({ code: grpc.status.ALREADY_EXISTS, details: `epoch ${cur.epoch} already has its incoming link` });
            st = cur;
            cur.incoming = true;
            cur.inbox.pause = () => call.pause();
            cur.inbox.resume = () => call.resume();
            cur.closers.push(() => {
              ended = true;
              callback(null, { chunks: n });
            });
          } else {
            if (st.aborted) return;
            const v = this.validateChunk(st, c, false);
            if (v) {
              st.inbox.fail(new ProtocolError(v.details));
              return refuse(v);
            }
          }
          n++;
          st.inbox.push({ epoch: c.epoch, op: c.op, step: c.step, phase: c.phase, index: c.index, offset: c.offset, data: alignedCopy(c.data) });
        };
        call.on('data', onChunk);
        call.on('error', () => st?.inbox.fail(new ProtocolError('the incoming gRPC link broke')));
        call.on('end', () => {
          if (!ended) {
            ended = true;
            callback(null, { chunks: n });
          }
        });
      },
    };
    const server = new grpc.Server({ 'grpc.max_receive_message_length': this.chunkBytes + 4096, 'grpc.max_send_message_length': 1 << 20, 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 });
    server.addService(PeerService, handlers);
    const creds = this.o.tls
      ? grpc.ServerCredentials.createSsl(this.o.tls.ca ?? null, [{ private_key: this.o.tls.key, cert_chain: this.o.tls.cert }], !!this.o.tls.ca)
      : grpc.ServerCredentials.createInsecure();
    this.peerPort = await new Promise<number>((resolve, reject) => {
      server.bindAsync(`${this.o.bindHost}:${this.o.peerPort}`, creds, (err, port) => (err ? reject(new Fatal(`cannot serve the Peer service on ${this.o.bindHost}:${this.o.peerPort}: ${err.message}`)) : resolve(port)));
    });
    this.peerServer = server;
    // The raw data links: TLS with the same certificates when TLS is on.
    const onSocket = (socket: net.Socket) => { this.acceptTcp(socket).catch(() => undefined); };
    const t = this.o.tls;
    const tcp = t ? tls.createServer({ cert: t.cert, key: t.key, ca: t.ca, requestCert: !!t.ca, rejectUnauthorized: !!t.ca }, onSocket) : net.createServer(onSocket);
    tcp.on('tlsClientError', (err: Error, s: net.Socket) => this.log(`refused a data link from ${s.remoteAddress}: TLS: ${err.message}`));
    this.tcpPort = await new Promise<number>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(0, this.o.bindHost, () => resolve((tcp.address() as net.AddressInfo).port));
    });
    this.tcpServer = tcp;
  }

  private async acceptTcp(socket: net.Socket): Promise<void> {
    socket.setNoDelay(true);
    const who = `${socket.remoteAddress}:${socket.remotePort}`;
    try {
      const { hello, rest } = await readHello(socket, 10_000);
      const proof = this.checkLinkProof(hello.epoch, hello.worker_id, hello.nonce, hello.mac);
      if (proof) throw new ProtocolError(proof);
      const st = this.current;
      if (!st || st.epoch !== hello.epoch || st.aborted) throw new ProtocolError(`link for epoch ${hello.epoch}; this worker is in epoch ${st?.epoch}`);
      if (st.incoming) throw new ProtocolError(`epoch ${st.epoch} already has its incoming link`);
      st.incoming = true;
      socket.write(Buffer.from([1]));
      st.inbox.pause = () => socket.pause();
      st.inbox.resume = () => socket.resume();
      st.closers.push(() => socket.destroy());
      let first = true;
      const parser = new FrameParser((f: Frame) => {
        const v = this.validateChunk(st, f, first);
        first = false;
        if (v) throw new ProtocolError(v.details);
        st.inbox.push(f);
      }, this.chunkBytes);
      const feed = (b: Buffer) => {
        try {
          parser.push(b);
        } catch (err) {
          this.log(`data link from ${who} broke the protocol: ${(err as Error).message}; closing it`);
          st.inbox.fail(err as Error);
          socket.destroy();
        }
      };
      socket.on('data', feed);
      socket.on('close', () => st.inbox.fail(st.aborted ?? new ProtocolError(`the data link from ${who} closed`)));
      socket.on('error', () => undefined);
      if (rest.length) feed(rest);
      socket.resume();
    } catch (err) {
      this.log(`refused a data link from ${who}: ${(err as Error).message}`);
      socket.destroy();
    }
  }

  /** Opens the link to this epoch's successor (TCP through OpenLink, or a PushChunks stream). */
  private async connectOut(st: EpochState): Promise<OutLink> {
    const n = st.m.members.length;
    const next = st.m.members[(st.position + 1) % n]!;
    const peer = new PeerClient(next.peerAddress, this.credentials(), CHANNEL_OPTIONS);
    st.closers.push(() => peer.close());
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (st.aborted) throw st.aborted;
      try {
        // Both data planes start with OpenLink: a one-time nonce whose MAC proves the job token.
        const reply = await new Promise<{ port: number; nonce: Uint8Array }>((resolve, reject) => {
          (peer as unknown as { openLink(r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: { port: number; nonce: Uint8Array }) => void): void })
            .openLink({ workerId: this.workerId, epoch: st.epoch }, this.metadata, { deadline: this.deadline(20_000) }, (err, v) => (err ? reject(err) : resolve(v)));
        });
        const mac = linkMac(this.o.token, reply.nonce, st.epoch, this.workerId);
        if (st.m.transport === 'grpc') {
          const md = this.metadata.clone();
          md.set(METADATA_LINK, `${Buffer.from(reply.nonce).toString('hex')}:${mac.toString('hex')}`);
          const call = (peer as unknown as { pushChunks(m: grpc.Metadata, cb: (e: grpc.ServiceError | null) => void): grpc.ClientWritableStream<unknown> })
            .pushChunks(md, (err) => { if (err && !st.aborted) this.log(`link to ${next.name} ended: ${err.details}`); });
          const link = new GrpcOutLink(call, this.workerId);
          st.closers.push(() => link.close());
          return link;
        }
        const host = next.peerAddress.slice(0, next.peerAddress.lastIndexOf(':')).replace(/^\[|\]$/g, '');
        const hello = encodeHello(this.workerId, st.epoch, reply.nonce, mac);
        const link = await connectTcpLink(host, reply.port, hello, this.o.tls, 10_000);
        st.closers.push(() => link.close());
        if (st.aborted) link.close();
        return link;
      } catch (err) {
        if (st.aborted) throw st.aborted;
        if (Date.now() > deadline) throw new Fatal(`cannot open the data link to ${next.name} at ${next.peerAddress}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 300));
      }
    }
  }

  private async ringIO(st: EpochState): Promise<RingIO> {
    const out = st.out ? await st.out : undefined;
    return { out, inbox: st.inbox, epoch: st.epoch, position: st.position, size: st.m.members.length };
  }

  // -----------------------------------------------------------------------------------------------
  // Training threads

  private post(thread: number, msg: AgentToThread, transfer: ArrayBuffer[] = []): void {
    this.threads[thread]?.postMessage(msg, transfer);
  }

  private startThreads(st: EpochState): void {
    const o = this.o;
    for (let t = 0; t < o.threads; t++) {
      const rank = st.firstRank + t;
      const data: ThreadData = {
        config: o.config, outDir: o.outDir, resume: o.resume, backend: o.backend, thread: t, rank, worldSize: st.m.worldSize,
        membership: st.epoch, rankName: o.threads > 1 ? `${o.name}.t${t}` : o.name, logSamples: o.logSamples,
        progress: o.progress && rank === 0, checksum: o.checksum,
      };
      const w = startThread(new URL(`./thread${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url), data);
      this.threads.push(w);
      w.on('message', (m: ThreadToAgent) => this.onThreadMessage(t, m));
      w.on('error', (err) => this.fail(new Fatal(`training thread ${t} failed: ${err.message}`)));
      w.on('exit', (code) => {
        if (!this.finished && this.results[t] === undefined) this.fail(new Fatal(`training thread ${t} exited with code ${code} before finishing`));
      });
    }
  }

  private onThreadMessage(t: number, m: ThreadToAgent): void {
    switch (m.kind) {
      case 'log':
        this.log(m.line);
        return;
      case 'checkpoint':
        this.unary('commitCheckpoint', { workerId: this.workerId, step: m.step, path: m.path }, 10_000)
          .catch((err: grpc.ServiceError) => this.log(`CommitCheckpoint of step ${m.step} failed: ${err.details ?? err.message}`));
        return;
      case 'done':
        this.results[t] = m.result;
        if (this.results.filter((r) => r !== undefined).length === this.o.threads) void this.finish();
        return;
      default: {
        const st = this.current;
        if (!st || st.aborted || m.membership !== st.epoch) {
          this.abortThread(t, m.seq);
          return;
        }
        this.step = Math.max(this.step, m.step);
        const key = `${st.epoch}:${m.seq}`;
        let op = this.ops.get(key);
        if (!op) {
          op = { kind: m.kind, seq: m.seq, epoch: st.epoch, msgs: [] };
          this.ops.set(key, op);
        }
        if (op.kind !== m.kind) {
          this.fail(new Fatal(`training threads disagree: thread ${t} asked for ${m.kind} as collective ${m.seq}, another for ${op.kind}`));
          return;
        }
        op.msgs[t] = m as PendingOp['msgs'][number];
        if (op.msgs.filter(Boolean).length === this.o.threads) {
          this.ops.delete(key);
          this.runOp(st, op).catch(async (err: Error) => {
            // A broken link usually means a neighbour died or hangs: the coordinator notices within
            // its worker timeout and publishes a new membership, which aborts this collective.
            if (!st.aborted && !(err instanceof Fatal)) {
              this.log(`collective ${op!.kind} #${op!.seq} of epoch ${st.epoch}: ${err.message}; waiting for the coordinator's next membership`);
              await this.waitForEpoch(st.epoch + 1, this.workerTimeoutMs + 5000).catch(() => undefined);
            }
            if (st.aborted) {
              for (const msg of op!.msgs) this.abortThread(msg.thread, msg.seq);
            } else this.fail(err instanceof Fatal ? err : new Fatal(`collective ${op!.kind} #${op!.seq} of epoch ${st.epoch} failed: ${err.message}`));
          });
        }
      }
    }
  }

  private async runOp(st: EpochState, op: PendingOp): Promise<void> {
    const T = this.o.threads;
    const opts = { chunkBytes: this.chunkBytes, bucketBytes: this.bucketBytes };
    if (op.kind === 'allReduce') {
      const parts = op.msgs.map((m) => (m as Extract<ThreadToAgent, { kind: 'allReduce' }>).data);
      const n = parts[0]!.length;
      for (const [t, p] of parts.entries()) if (p.length !== n) throw new Fatal(`thread ${t} all-reduces ${p.length} values, thread 0 ${n}`);
      // Threads summed in thread order into the first one's buffer, then the ring across processes.
      const acc = parts[0]!;
      for (let t = 1; t < T; t++) {
        const p = parts[t]!;
        for (let i = 0; i < n; i++) acc[i] += p[i]!;
      }
      await ringAllReduce(await this.ringIO(st), acc, op.seq, op.msgs[0]!.step, opts);
      if (st.aborted) throw st.aborted;
      const W = st.m.worldSize;
      for (let i = 0; i < n; i++) acc[i] = acc[i]! / W;
      if (T === 1) this.post(0, { kind: 'result', seq: op.seq, data: acc }, [acc.buffer as ArrayBuffer]);
      else {
        const shared = new Float32Array(new SharedArrayBuffer(4 * n));
        shared.set(acc);
        for (let t = 0; t < T; t++) this.post(t, { kind: 'result', seq: op.seq, data: shared });
      }
      return;
    }
    if (op.kind === 'broadcast') {
      // Global rank 0 is thread 0 of ring position 0.
      const root = st.position === 0 ? (op.msgs[0] as Extract<ThreadToAgent, { kind: 'broadcast' }>).payload : null;
      if (st.position === 0 && !root) throw new Fatal('rank 0 sent no state to broadcast');
      const bytes = await ringBroadcast(await this.ringIO(st), root ?? null, op.seq, st.m.committedStep, opts);
      if (st.aborted) throw st.aborted;
      let shared: Uint8Array | null = null;
      for (let t = 0; t < T; t++) {
        if (st.position === 0 && t === 0) {
          this.post(0, { kind: 'result', seq: op.seq });
          continue;
        }
        shared ??= (() => { const s = new Uint8Array(new SharedArrayBuffer(bytes.byteLength)); s.set(bytes); return s; })();
        this.post(t, { kind: 'result', seq: op.seq, payload: shared });
      }
      return;
    }
    // commit: one report for the process, every thread's values.
    const step = op.msgs[0]!.step;
    const ranks = op.msgs.map((m, t) => ({ rank: st.firstRank + t, values: (m as Extract<ThreadToAgent, { kind: 'commit' }>).values }));
    let reply: StepCommit;
    for (;;) {
      try {
        reply = await this.unary<object, StepCommit>('commitStep', { workerId: this.workerId, epoch: st.epoch, step, ranks }, 3_600_000);
        break;
      } catch (err) {
        // Unreachable: retry until the watchdog gives up on the coordinator (the step is not applied).
        if ((err as grpc.ServiceError).code === grpc.status.UNAVAILABLE && !this.finished) {
          await new Promise((r) => setTimeout(r, 300));
          continue;
        }
        throw new Fatal(`CommitStep of step ${step} failed: ${(err as grpc.ServiceError).details ?? (err as Error).message}`);
      }
    }
    if (!reply.committed) {
      // The membership changed first: wait until the watch stream brings it, which aborts this op.
      await this.waitForEpoch(reply.epoch, this.o.coordinatorTimeoutMs).catch(() => undefined);
      throw st.aborted ?? new Fatal(`step ${step} was not committed and no new membership arrived`);
    }
    // Committed: every member applies the step, even when a new membership arrived meanwhile (the
    // threads' next collective then finds the old epoch over and re-syncs).
    const reports = reply.ranks.map((r) => r.values);
    for (let t = 0; t < T; t++) this.post(t, { kind: 'result', seq: op.seq, reports });
  }

  private async finish(): Promise<void> {
    const st = this.current;
    const rank0 = !!st && st.position === 0;
    try {
      await this.unary('leave', { workerId: this.workerId, reason: 'finished', finished: true }, 10_000);
    } catch (err) {
      this.log(`Leave failed (the job had finished here): ${(err as grpc.ServiceError).details ?? (err as Error).message}`);
    }
    if (this.finished) return;
    this.finished = true;
    this.log('finished');
    this.settle({ finished: true, rank0, result: rank0 ? this.results[0] : undefined });
  }
}

/** Runs one worker process to its end (see WorkerAgent). */
export async function runWorker(opts: WorkerOptions): Promise<WorkerResult> {
  return new WorkerAgent(opts).run();
}

