/**
 * The collectives of a worker's training threads, run by the agent: all-reduce (the mean of every
 * thread's buffer over the world), broadcast (rank 0's state to every rank) and the step commit.
 * Each is hierarchical: the agent waits for the request of every thread of its process, combines them
 * in thread order (shared memory), runs the ring across processes (ring.ts) or asks the coordinator
 * (the commit), and hands the same result to every thread. A collective of an epoch that ended is
 * aborted: its threads get `aborted` and re-sync. One that waited past the frame deadline for its
 * predecessor (--collective-timeout-ms) reports that neighbour as unreachable, as a broken link.
 */
import type { RankValues, StepCommit } from '@vitreg/proto';
import { ringAllReduce, ringBroadcast, type RingOptions } from './ring.js';
import { linkDown, ringIO, type EpochState } from './epoch.js';
import { CollectiveTimeout } from './frames.js';
import { Fatal } from './fatal.js';
import type { AgentToThread, ThreadToAgent } from './messages.js';

type Request = Extract<ThreadToAgent, { kind: 'allReduce' | 'broadcast' | 'commit' }>;

interface PendingOp {
  kind: Request['kind'];
  seq: number;
  epoch: number;
  msgs: Request[];
}

/** What the collectives ask of the agent. */
export interface CollectivesHost {
  /** Training threads in this process. */
  readonly threads: number;
  /** The epoch in hand (null before the first membership). */
  current(): EpochState | null;
  post(thread: number, msg: AgentToThread, transfer?: ArrayBuffer[]): void;
  /** The step barrier at the coordinator. */
  commitStep(epoch: number, step: number, ranks: RankValues[]): Promise<StepCommit>;
  /** Resolves once the worker is in `epoch` or a later one; rejects after `timeoutMs`. */
  waitForEpoch(epoch: number, timeoutMs: number): Promise<void>;
  /** How long to wait for the coordinator's next membership after a broken link. */
  membershipWaitMs(): number;
  /** How long to wait for the membership a not-committed step announces. */
  readonly coordinatorTimeoutMs: number;
  /** A thread reached `step` (heartbeats report it). */
  reached(step: number): void;
  fail(err: Error): void;
  log(line: string): void;
}

export class Collectives {
  private ops = new Map<string, PendingOp>();

  constructor(
    private readonly host: CollectivesHost,
    private readonly ring: RingOptions,
  ) {}

  /** Thread `t` asks for collective `m.seq` of its epoch; the collective runs once every thread asked. */
  request(t: number, m: Request): void {
    const host = this.host;
    const st = host.current();
    if (!st || st.aborted || m.membership !== st.epoch) {
      this.abortThread(t, m.seq);
      return;
    }
    host.reached(m.step);
    const key = `${st.epoch}:${m.seq}`;
    let op = this.ops.get(key);
    if (!op) {
      op = { kind: m.kind, seq: m.seq, epoch: st.epoch, msgs: [] };
      this.ops.set(key, op);
    }
    if (op.kind !== m.kind) {
      host.fail(new Fatal(`training threads disagree: thread ${t} asked for ${m.kind} as collective ${m.seq}, another for ${op.kind}`));
      return;
    }
    op.msgs[t] = m;
    if (op.msgs.filter(Boolean).length !== host.threads) return;
    this.ops.delete(key);
    const ready = op;
    this.run(st, ready).catch(async (err: Error) => {
      const what = `collective ${ready.kind} #${ready.seq} of epoch ${st.epoch}`;
      // A broken link usually means a neighbour died or hangs: the coordinator notices within
      // its worker timeout and publishes a new membership, which aborts this collective.
      if (!st.aborted && !(err instanceof Fatal)) {
        host.log(`${what}: ${err.message}; waiting for the coordinator's next membership`);
        // A predecessor that keeps its link alive but sends nothing: reported like a broken link.
        if (err instanceof CollectiveTimeout) linkDown(st, 'predecessor', err, (l) => host.log(l));
        await host.waitForEpoch(st.epoch + 1, host.membershipWaitMs()).catch(() => undefined);
      }
      if (st.aborted) {
        for (const msg of ready.msgs) this.abortThread(msg.thread, msg.seq);
      } else host.fail(err instanceof Fatal ? err : new Fatal(`${what} failed: ${err.message}`));
    });
  }

  /** Aborts the collectives still gathering requests in `epoch` (it ended). */
  abortEpoch(epoch: number): void {
    for (const [key, op] of this.ops) {
      if (op.epoch === epoch) {
        this.ops.delete(key);
        for (const msg of op.msgs) if (msg) this.abortThread(msg.thread, msg.seq);
      }
    }
  }

  /** Tells thread `thread` its collective `seq` was dropped, with its place in the epoch now in hand (if it runs). */
  abortThread(thread: number, seq: number): void {
    const st = this.host.current();
    const info = st && !st.aborted ? { membership: st.epoch, rank: st.firstRank + thread, worldSize: st.m.worldSize } : null;
    const reason = st?.aborted?.message ?? `membership changed to epoch ${st?.epoch}`;
    this.host.post(thread, { kind: 'aborted', seq, reason, next: info });
  }

  private run(st: EpochState, op: PendingOp): Promise<void> {
    if (op.kind === 'allReduce') return this.allReduce(st, op);
    if (op.kind === 'broadcast') return this.broadcast(st, op);
    return this.commit(st, op);
  }

  /**
   * Threads summed in thread order into the first one's buffer, the ring across processes, divided by the
   * world size: in place, in each thread's own shared buffer (GrpcRingSync's stage), and a result without
   * data.
   */
  private async allReduce(st: EpochState, op: PendingOp): Promise<void> {
    const T = this.host.threads;
    const parts = op.msgs.map((m) => (m as Extract<Request, { kind: 'allReduce' }>).data);
    const n = parts[0]!.length;
    for (const [t, p] of parts.entries()) {
      if (p.length !== n) throw new Fatal(`thread ${t} all-reduces ${p.length} values, thread 0 ${n}`);
      if (!(p.buffer instanceof SharedArrayBuffer))
        throw new Fatal(`thread ${t} sent an all-reduce buffer that is not a SharedArrayBuffer`);
    }
    const acc = parts[0]!;
    for (let t = 1; t < T; t++) {
      const p = parts[t]!;
      for (let i = 0; i < n; i++) acc[i] += p[i]!;
    }
    await ringAllReduce(await ringIO(st), acc, op.seq, op.msgs[0]!.step, this.ring);
    if (st.aborted) throw st.aborted;
    const W = st.m.worldSize;
    for (let i = 0; i < n; i++) acc[i] = acc[i]! / W;
    for (let t = 0; t < T; t++) {
      if (t > 0) parts[t]!.set(acc);
      this.host.post(t, { kind: 'result', seq: op.seq });
    }
  }

  /**
   * Global rank 0 (thread 0 of ring position 0) sends its state; every other thread gets it: a process of
   * one thread (one worker per GPU) is handed the received bytes themselves (transferred, no copy: a
   * ViT-L state is 6 GiB), a process of several threads one shared copy.
   */
  private async broadcast(st: EpochState, op: PendingOp): Promise<void> {
    const T = this.host.threads;
    const root = st.position === 0 ? (op.msgs[0] as Extract<Request, { kind: 'broadcast' }>).payload : null;
    if (st.position === 0 && !root) throw new Fatal('rank 0 sent no state to broadcast');
    const bytes = await ringBroadcast(await ringIO(st), root ?? null, op.seq, st.m.committedStep, this.ring);
    if (st.aborted) throw st.aborted;
    const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && !(bytes.buffer instanceof SharedArrayBuffer);
    if (T === 1 && st.position !== 0 && whole) {
      this.host.post(0, { kind: 'result', seq: op.seq, payload: bytes }, [bytes.buffer as ArrayBuffer]);
      return;
    }
    let shared: Uint8Array | null = null;
    for (let t = 0; t < T; t++) {
      if (st.position === 0 && t === 0) {
        this.host.post(0, { kind: 'result', seq: op.seq });
        continue;
      }
      if (!shared) {
        shared = new Uint8Array(new SharedArrayBuffer(bytes.byteLength));
        shared.set(bytes);
      }
      this.host.post(t, { kind: 'result', seq: op.seq, payload: shared });
    }
  }

  /** One CommitStep for the process, with every thread's values; every thread gets every rank's. */
  private async commit(st: EpochState, op: PendingOp): Promise<void> {
    const step = op.msgs[0]!.step;
    const ranks = op.msgs.map((m, t) => ({ rank: st.firstRank + t, values: (m as Extract<Request, { kind: 'commit' }>).values }));
    const reply = await this.host.commitStep(st.epoch, step, ranks);
    if (!reply.committed) {
      // The membership changed first: wait until the watch stream brings it, which aborts this op.
      await this.host.waitForEpoch(reply.epoch, this.host.coordinatorTimeoutMs).catch(() => undefined);
      throw st.aborted ?? new Fatal(`step ${step} was not committed and no new membership arrived`);
    }
    // Committed: every member applies the step, even when a new membership arrived meanwhile (the
    // threads' next collective then finds the old epoch over and re-syncs).
    const reports = reply.ranks.map((r) => r.values);
    for (let t = 0; t < this.host.threads; t++) this.host.post(t, { kind: 'result', seq: op.seq, reports });
  }
}
