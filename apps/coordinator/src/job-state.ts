/**
 * The state of one training job as its coordinator keeps it, apart from any transport (as torch
 * elastic keeps its rendezvous state in dynamic_rendezvous.py, testable without a store): admission,
 * the rendezvous, membership epochs and their ring order, heartbeats and removals, late joiners, the
 * step barrier (two-phase commit), checkpoint records, metrics and the end of the job.
 *
 * No gRPC, no timers, no files: requests come in as the protocol's plain messages, answers go out as
 * return values or through `reply` callbacks, a refused request throws a `Refusal` (and changes
 * nothing). The clock is injected (`now`); the caller ends the join window (`closeJoinWindow`) and
 * checks heartbeats (`checkHeartbeats`) from its own timers. Memberships reach workers through the
 * sinks they watch with (`watch`): a gRPC server stream in the coordinator, an array in tests. Log
 * lines and events (`log`, `event`) are handed to the caller, who writes them where it wants.
 *
 * A stop on request (Ctrl-C, a scheduler's SIGTERM before a time limit or a preemption) becomes a
 * job-wide checkpoint: a worker that got a stop signal says so in its next step report (the
 * `stop_signal` value, @vitreg/trainer's STOP_KEY), or the coordinator's own process got one
 * (`requestStop`); the next step committed carries the request in every rank's values, so every rank
 * stops after that same step, rank 0 writes the checkpoint, and the workers leave; when all have, the
 * job ends interrupted (`JobOutcome.interrupted`).
 *
 * Over 450 lines: one job, one state machine; admission, membership epochs, the step barrier and the end
 * of the job change the same membership and step state (as dynamic_rendezvous.py keeps them together).
 */
import { signalName } from '@vitreg/core';
import type { CheckpointReport, JoinRequest, LeaveRequest, Membership, MetricsReport, StepCommit, StepReport } from '@vitreg/proto';
import { checkJoin } from './admission.js';
import {
  Refusal,
  resolveJobSettings,
  type JobOutcome,
  type JobSettings,
  type JobStateOptions,
  type MembershipSink,
  type WorkerState,
} from './job-settings.js';
import { deliver, memberList, ringOrder, ringText, type WorkerRecord as Worker } from './membership.js';
import { StepBarrier } from './step-barrier.js';
import { BrokenLinks, removedFor } from './broken-links.js';

/** The step-report value of a stop request: @vitreg/trainer's STOP_KEY (a signal's number, or -1). */
export const STOP_KEY = 'stop_signal';

/** The job state of a coordinator (see the module comment). */
export class JobState {
  readonly settings: JobSettings;
  private readonly now: () => number;
  private readonly log: (line: string) => void;
  private readonly event: (name: string, fields: Record<string, unknown>) => void;
  private readonly onFinish: (outcome: JobOutcome) => void;

  private readonly workers = new Map<string, Worker>();
  private joinCount = 0;
  /** The first admitted worker's config, which every later one must equal. */
  private jobConfig: { value: unknown } | null = null;
  private members: Worker[] = [];
  private pending: Worker[] = [];
  private epochNumber = 0;
  private current: Membership | null = null;
  private committed = 0;
  private lastCheckpoint = 0;
  private readonly barrier = new StepBarrier();
  private readonly brokenLinks = new BrokenLinks();
  private joinWindowOver = false;
  private result: JobOutcome | null = null;
  /** A stop requested and not yet committed: the signal's number (-1: none named) and who asked. */
  private stopRequest: { code: number; by: string } | null = null;
  /** The step the job stops after (committed with the stop request), once there is one. */
  private stopStep: number | null = null;

  constructor(opts: JobStateOptions) {
    this.settings = resolveJobSettings(opts);
    this.now = opts.now ?? Date.now;
    this.log = opts.log ?? (() => undefined);
    this.event = opts.event ?? (() => undefined);
    this.onFinish = opts.onFinish ?? (() => undefined);
  }

  // ---- what the job looks like now ----

  /** The current membership epoch (0 before the rendezvous). */
  get epoch(): number {
    return this.epochNumber;
  }

  /** The last published membership (null before the rendezvous). */
  get membership(): Membership | null {
    return this.current;
  }

  get committedStep(): number {
    return this.committed;
  }

  get lastCheckpointStep(): number {
    return this.lastCheckpoint;
  }

  /** The step the job stops after on request, once committed (null otherwise). */
  get stoppingAfter(): number | null {
    return this.stopStep;
  }

  /** True once the job ended (finished, stopped, or shut down). */
  get stopped(): boolean {
    return this.result !== null;
  }

  /** How the job ended; null while it runs. */
  get outcome(): JobOutcome | null {
    return this.result;
  }

  /** Where a worker stands (undefined for an unknown id). */
  workerState(workerId: string): WorkerState | undefined {
    return this.workers.get(workerId)?.state;
  }

  /** "name, id" for a known worker id, else the id: for log lines. */
  describe(workerId: string): string {
    const w = this.workers.get(workerId);
    return w ? `${w.name}, ${workerId}` : workerId;
  }

  // ---- requests ----

  /**
   * Admits a worker (pending until the rendezvous or, after it, the next committed step), or throws
   * a Refusal. `peer` is the caller's address (logs). `reply` gets the join reply before the
   * rendezvous this join may complete is published.
   */
  join(req: JoinRequest, peer: string, reply: (r: { workerId: string; heartbeatMs: number; workerTimeoutMs: number }) => void): void {
    const {
      threads,
      config,
      capabilities: caps,
    } = checkJoin(req, {
      settings: this.settings,
      stopped: this.stopped,
      config: this.jobConfig,
      live: [...this.members, ...this.pending],
    });
    this.jobConfig ??= { value: config };
    this.joinCount += 1;
    const w: Worker = {
      id: `w${this.joinCount}-${req.name}`,
      name: req.name,
      launcherRank: req.launcherRank,
      peerAddress: req.peerAddress,
      threads,
      joinOrder: this.joinCount,
      lastSeen: this.now(),
      state: 'pending',
      finished: false,
      watchers: new Set(),
    };
    this.workers.set(w.id, w);
    this.pending.push(w);
    const late = this.epochNumber > 0;
    const info = `${caps?.hostname || '?'} pid ${caps?.pid ?? '?'}, ${threads} threads, ${caps?.backend || '?'} on ${caps?.device || '?'}`;
    this.log(
      `join ${w.name} (${w.id}) from ${peer}: launcher rank ${w.launcherRank}, peer ${w.peerAddress}, ${info}` +
        (late ? '; pending until the next commit' : ''),
    );
    this.event('join', {
      worker: w.id,
      name: w.name,
      peer,
      launcherRank: w.launcherRank,
      peerAddress: w.peerAddress,
      capabilities: caps,
      pending: late,
    });
    const { heartbeatMs, workerTimeoutMs } = this.settings;
    reply({ workerId: w.id, heartbeatMs, workerTimeoutMs });
    this.maybeRendezvous();
  }

  /** The join window is over: the rendezvous forms as soon as minWorkers joined. */
  closeJoinWindow(): void {
    this.joinWindowOver = true;
    this.maybeRendezvous();
  }

  /**
   * Records a sign of life; `member` is false for a worker that is no longer in the job. `report`: the
   * heartbeat's epoch and the ring neighbour the worker cannot reach, if any (broken-links.ts).
   */
  heartbeat(workerId: string, report?: { epoch: number; unreachablePeer: string }): { epoch: number; member: boolean } {
    const w = this.workerFor(workerId);
    if (w.state === 'member' || w.state === 'pending') {
      w.lastSeen = this.now();
      this.linkReport(w, report);
    }
    return { epoch: this.epochNumber, member: (w.state === 'member' || w.state === 'pending') && !this.stopped };
  }

  /** Removes every live, unfinished worker silent for workerTimeoutMs or longer (at `now`). */
  checkHeartbeats(now = this.now()): void {
    for (const w of [...this.members, ...this.pending]) {
      if (w.finished) continue;
      const silent = now - w.lastSeen;
      if (silent >= this.settings.workerTimeoutMs) this.remove(w, `${w.name} missed heartbeats for ${silent} ms`);
    }
  }

  /**
   * Starts sending memberships to `sink`: the current one at once (to a member), then every later
   * one. After the job ended the sink gets the last membership and is ended. Returns false when the
   * sink was ended at once.
   */
  watch(workerId: string, sink: MembershipSink): boolean {
    const w = this.workerFor(workerId);
    if (w.state === 'removed' || w.state === 'left')
      throw new Refusal('FAILED_PRECONDITION', `${w.name} is no longer a member: ${w.why ?? 'removed'}`);
    if (this.stopped) {
      if (this.current) sink.write(this.current);
      sink.end();
      return false;
    }
    w.lastSeen = this.now();
    w.watchers.add(sink);
    if (w.state === 'member' && this.current) sink.write(this.current);
    return true;
  }

  /**
   * A watch stream ended from the worker's side (`how`: cancelled, an error, closed). Unless the job
   * ended it (removal, stop) or the worker had left finished, the worker is removed as disconnected.
   */
  watchEnded(workerId: string, sink: MembershipSink, how: string): void {
    const w = this.workers.get(workerId);
    if (!w) return;
    const ours = w.watchers.delete(sink);
    if (!ours || this.stopped || w.finished) return;
    if (w.state === 'member' || w.state === 'pending') this.remove(w, `${w.name} disconnected (${how})`);
  }

  /**
   * The step barrier: holds the report until every unfinished member reported the same step, then
   * answers every held report with {committed: true, ranks} and admits pending joiners. A report of
   * another epoch (or after the end) is answered {committed: false} at once; a membership change
   * answers held reports the same way. Returns a function that withdraws the report (a cancelled call).
   */
  commitStep(req: StepReport, reply: (r: StepCommit) => void): () => void {
    const w = this.workerFor(req.workerId);
    if (w.state === 'pending') throw new Refusal('FAILED_PRECONDITION', `${w.name} is not a member yet (it enters after the next commit)`);
    if (w.state !== 'member') throw new Refusal('FAILED_PRECONDITION', `${w.name} is not a member: ${w.why ?? w.state}`);
    w.lastSeen = this.now();
    if (this.stopped || req.epoch !== this.epochNumber) {
      reply({ committed: false, epoch: this.epochNumber, ranks: [] });
      return () => undefined;
    }
    if (req.step <= this.committed)
      throw new Refusal('INVALID_ARGUMENT', `step ${req.step} is not after the committed step ${this.committed}`);
    // A worker's stop signal comes with its report.
    const asked = req.ranks.find((r) => r.values?.[STOP_KEY]);
    if (asked) this.requestStop(asked.values[STOP_KEY]!, w.name);
    const withdraw = this.barrier.hold(w, req.step, req.ranks, reply, this.epochNumber);
    this.maybeCommit();
    return withdraw;
  }

  /**
   * A stop on request (`code`: the signal's number, -1 when none): the next step committed carries it
   * to every rank, which then stop after it with a checkpoint. The first request wins; false when the
   * job has ended or already stops.
   */
  requestStop(code: number, by: string): boolean {
    if (this.stopped || this.stopRequest || this.stopStep !== null) return false;
    this.stopRequest = { code, by };
    const sig = signalName(code);
    this.log(`${by} asks to stop${sig ? ` (${sig})` : ''}: every worker stops after the next committed step, with a checkpoint`);
    this.event('stop-request', { by, signal: sig ?? null });
    return true;
  }

  /** Records a checkpoint of a committed step; returns the last checkpointed step. */
  commitCheckpoint(req: CheckpointReport): { lastCheckpointStep: number } {
    const w = this.workerFor(req.workerId);
    if (w.state !== 'member') throw new Refusal('FAILED_PRECONDITION', `${w.name} is not a member`);
    if (req.step > this.committed)
      throw new Refusal('FAILED_PRECONDITION', `checkpoint of step ${req.step}, but the last committed step is ${this.committed}`);
    this.lastCheckpoint = Math.max(this.lastCheckpoint, req.step);
    this.log(`checkpoint of step ${req.step} by ${w.name}: ${req.path}`);
    this.event('checkpoint', { worker: w.id, name: w.name, step: req.step, path: req.path });
    return { lastCheckpointStep: this.lastCheckpoint };
  }

  /** Hands a worker's metrics (JSON text, parsed) to the event record. */
  reportMetrics(req: MetricsReport): void {
    const w = this.workerFor(req.workerId);
    let metrics: unknown;
    try {
      metrics = JSON.parse(req.json);
    } catch (e) {
      throw new Refusal('INVALID_ARGUMENT', `metrics json is not JSON: ${(e as Error).message}`);
    }
    this.event('metrics', { worker: w.id, name: w.name, step: req.step, metrics });
  }

  /**
   * A worker leaves: finished (a member done with training; when every member is, the job finishes)
   * or not (removed). `reply` is answered before the membership this leave causes is published.
   */
  leave(req: LeaveRequest, reply: () => void): void {
    const w = this.workerFor(req.workerId);
    this.event('leave', { worker: w.id, name: w.name, finished: req.finished, reason: req.reason });
    if (w.state !== 'member' && w.state !== 'pending') {
      reply();
      return;
    }
    // After the step a stop was committed with, a member leaving is done (not a failure).
    if ((req.finished || this.stopStep !== null) && w.state === 'member') {
      w.finished = true;
      this.log(`${w.name} (${w.id}) ${req.finished ? 'finished' : 'stopped'}${req.reason ? `: ${req.reason}` : ''}`);
      reply();
      this.maybeAllFinished();
      // Its barrier share is no longer needed: the others may now complete a held step.
      if (!this.stopped) this.maybeCommit();
      return;
    }
    reply();
    this.remove(w, `${w.name} left${req.reason ? `: ${req.reason}` : ''}`, 'left');
  }

  /** Ends the job (not finished, unless it already ended): held reports are answered, every watch ends. */
  shutdown(reason: string): void {
    if (!this.stopped) this.finish(false, reason);
    this.barrier.release(this.epochNumber);
    deliver(null, [], this.workers.values());
  }

  // ---- the rules ----

  /** A broken ring link (broken-links.ts): records `w`'s report; removes one of two workers once both showed life after a report. */
  private linkReport(w: Worker, report?: { epoch: number; unreachablePeer: string }): void {
    if (this.stopped) return;
    const peer = report?.unreachablePeer ? this.workers.get(report.unreachablePeer) : undefined;
    if (peer && report!.epoch === this.epochNumber && this.brokenLinks.report(this.members, w, peer, this.now())) {
      this.log(`${w.name} reports its ring link with ${peer.name} down (epoch ${this.epochNumber}); waiting for a sign of life from both`);
      this.event('link-down', { worker: w.id, name: w.name, peer: peer.id, peerName: peer.name, epoch: this.epochNumber });
    }
    const r = this.brokenLinks.takeConfirmed();
    if (!r) return;
    const gone = removedFor(this.members, r);
    const other = gone === r.reporter ? r.peer : r.reporter;
    this.remove(
      gone,
      `${gone.name} cannot reach its ring neighbour ${other.name}, both reach the coordinator: the later in ring order leaves`,
    );
  }

  private workerFor(id: string): Worker {
    const w = this.workers.get(id);
    if (!w) throw new Refusal('NOT_FOUND', `unknown worker id ${JSON.stringify(id)}`);
    return w;
  }

  /**
   * Publishes the next membership epoch: `members` (already in ring order) renumbered. `gone` are
   * workers that just stopped being members: they get this membership too (they are not in it), then
   * their sinks end.
   */
  private publish(reason: string, gone: Worker[] = [], stop = false, finished = false): void {
    this.epochNumber += 1;
    const epoch = this.epochNumber;
    const { transport } = this.settings;
    const committedStep = this.committed;
    const ms = memberList(this.members);
    const worldSize = ms.reduce((s, m) => s + m.threads, 0);
    this.current = { epoch, members: ms, worldSize, reason, stop, finished, transport, committedStep };
    const ring = ringText(ms);
    this.log(
      `membership epoch ${epoch}${stop ? (finished ? ' (stop, finished)' : ' (stop)') : ''}: ${reason}; ` +
        `${ms.length} workers, world size ${worldSize}, committed step ${committedStep}${ring ? `; ring ${ring}` : ''}`,
    );
    this.event('membership', { epoch, reason, stop, finished, worldSize, committedStep, transport, members: ms });
    this.barrier.release(this.epochNumber);
    this.brokenLinks.clear();
    const audience = new Set<Worker>([...this.members, ...gone, ...(stop ? this.pending : [])]);
    deliver(this.current, audience, stop ? [...audience] : gone);
    if (stop) {
      for (const w of this.pending) {
        w.state = 'removed';
        w.why = reason;
      }
      this.pending = [];
    }
  }

  private finish(finished: boolean, reason: string, interrupted?: JobOutcome['interrupted']): void {
    if (this.stopped) return;
    this.result = { finished, reason, ...(interrupted ? { interrupted } : {}) };
    this.log(`job ${finished ? 'finished' : 'stopped'}: ${reason}`);
    this.event('finish', { finished, reason, committedStep: this.committed, lastCheckpointStep: this.lastCheckpoint });
    this.onFinish(this.result);
  }

  /** Forms the first membership when the rendezvous condition holds. */
  private maybeRendezvous(): void {
    if (this.stopped || this.epochNumber > 0) return;
    const { minWorkers, maxWorkers } = this.settings;
    if (this.pending.length >= maxWorkers || (this.joinWindowOver && this.pending.length >= minWorkers)) {
      this.members = [...this.pending].sort(ringOrder);
      this.pending = [];
      for (const w of this.members) w.state = 'member';
      this.publish('rendezvous');
    }
  }

  /** Admits the pending joiners into a new membership (after a commit). */
  private admitPending(): void {
    if (this.stopped || this.epochNumber === 0 || this.pending.length === 0) return;
    const joiners = [...this.pending].sort(ringOrder);
    this.pending = [];
    for (const w of joiners) w.state = 'member';
    this.members = [...this.members, ...joiners];
    this.publish(`${joiners.map((w) => w.name).join(', ')} joined`);
  }

  /** Removes a worker (failure, timeout, disconnect, or leaving unfinished). */
  private remove(w: Worker, why: string, state: WorkerState = 'removed'): void {
    if (this.stopped) return;
    if (w.state === 'pending') {
      this.pending = this.pending.filter((p) => p !== w);
      w.state = state;
      w.why = why;
      this.log(`removed pending ${w.name} (${w.id}): ${why}`);
      this.event('removed', { worker: w.id, name: w.name, reason: why, pending: true });
      deliver(null, [], [w]);
      return;
    }
    if (w.state !== 'member') return;
    w.state = state;
    w.why = why;
    this.members = this.members.filter((m) => m !== w);
    this.log(`removed ${w.name} (${w.id}): ${why}`);
    this.event('removed', { worker: w.id, name: w.name, reason: why, epoch: this.epochNumber });
    const survivors = this.members.length + this.pending.length;
    const { minWorkers } = this.settings;
    if (survivors < minWorkers) {
      const reason = `${survivors} workers left, fewer than --min-workers ${minWorkers}`;
      this.members = [...this.members, ...[...this.pending].sort(ringOrder)];
      this.pending = [];
      this.publish(reason, [w], true, false);
      this.finish(false, `${why}; ${reason}`);
      return;
    }
    const joiners = [...this.pending].sort(ringOrder);
    this.pending = [];
    for (const j of joiners) j.state = 'member';
    this.members = [...this.members, ...joiners];
    this.publish(why, [w]);
    this.maybeAllFinished();
  }

  private maybeAllFinished(): void {
    if (this.stopped || this.epochNumber === 0 || this.members.length === 0) return;
    if (!this.members.every((m) => m.finished)) return;
    if (this.stopStep !== null) {
      const code = this.stopRequest?.code ?? -1;
      const signal = signalName(code);
      const reason = `interrupted at step ${this.stopStep}${signal ? ` (${signal} to ${this.stopRequest?.by})` : ''}; checkpoint of step ${this.lastCheckpoint}`;
      this.publish(reason, [], true, false);
      this.finish(false, reason, { step: this.stopStep, ...(signal ? { signal } : {}) });
      return;
    }
    this.publish('every worker finished', [], true, true);
    this.finish(true, 'every worker finished');
  }

  /** Completes the barrier when every unfinished member of the epoch reported. */
  private maybeCommit(): void {
    const done = this.barrier.takeIfComplete(this.members.filter((m) => !m.finished));
    if (!done) return;
    const { step } = done;
    let ranks = done.ranks;
    this.committed = step;
    this.log(`step ${step} committed (epoch ${this.epochNumber}, ${ranks.length} ranks)`);
    this.event('commit', { step, epoch: this.epochNumber, ranks: ranks.map((r) => ({ rank: r.rank, values: r.values })) });
    if (this.stopRequest && this.stopStep === null) {
      // Every rank learns of the stop from this commit, so all stop after this same step.
      const { code, by } = this.stopRequest;
      ranks = ranks.map((r) => ({ ...r, values: { ...r.values, [STOP_KEY]: code } }));
      this.stopStep = step;
      this.log(`the job stops after step ${step} (asked by ${by}): rank 0 writes a checkpoint, then every worker leaves`);
      this.event('stop', { step, by, signal: signalName(code) ?? null });
    }
    for (const reply of done.replies) reply({ committed: true, epoch: this.epochNumber, ranks });
    this.admitPending();
  }
}
