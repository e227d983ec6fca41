/**
 * The coordinator's job state without gRPC, timers or sockets: requests as plain messages, a clock the
 * test moves, memberships collected by array sinks. Admission, rendezvous, ring order, heartbeats and
 * removals, late joiners, the step barrier, leaving, checkpoints, metrics, the end of the job.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PROTOCOL_VERSION, type JoinRequest, type Membership, type StepCommit } from '@vitreg/proto';
import { JobState, Refusal, resolveJobSettings, type JobOutcome, type JobStateOptions, type MembershipSink } from '../src/index.ts';

const JOB = 'job-42';
const CONFIG = { model: 'tiny', train: { batch_size: 4, lr: 0.001 } };

class Sink implements MembershipSink {
  got: Membership[] = [];
  ended = false;
  write(m: Membership): void {
    this.got.push(m);
  }
  end(): void {
    this.ended = true;
  }
  get last(): Membership | undefined {
    return this.got[this.got.length - 1];
  }
}

/** A CommitStep report: its answer once there is one, and how to withdraw it. */
interface Reported {
  reply: StepCommit | undefined;
  withdraw: () => void;
}

interface Harness {
  job: JobState;
  lines: string[];
  events: Record<string, unknown>[];
  outcomes: JobOutcome[];
  /** Moves the clock on. */
  advance(ms: number): void;
  /** Joins `name` and starts watching; returns its id and sink. */
  join(name: string, over?: Partial<JoinRequest>, caps?: Partial<JoinRequest['capabilities']>): { id: string; sink: Sink };
  /** Reports a step; `reply` holds the answer once there is one. */
  commit(id: string, step: number, o?: { rank?: number; values?: Record<string, number>; epoch?: number }): Reported;
}

function harness(opts: Partial<JobStateOptions> = {}): Harness {
  let t = 10_000;
  const lines: string[] = [];
  const events: Record<string, unknown>[] = [];
  const outcomes: JobOutcome[] = [];
  const job = new JobState({
    jobId: JOB,
    minWorkers: 1,
    maxWorkers: 2,
    workerTimeoutMs: 3000,
    now: () => t,
    log: (l) => lines.push(l),
    event: (name, fields) => events.push({ event: name, ...fields }),
    onFinish: (o) => outcomes.push(o),
    ...opts,
  });
  return {
    job,
    lines,
    events,
    outcomes,
    advance: (ms) => {
      t += ms;
    },
    join(name, over = {}, caps = {}) {
      let id = '';
      job.join(joinRequest(name, over, caps), '10.0.0.9:5000', (r) => (id = r.workerId));
      const sink = new Sink();
      job.watch(id, sink);
      return { id, sink };
    },
    commit(id, step, { rank = 0, values = {}, epoch = job.epoch } = {}) {
      const out: Reported = { reply: undefined, withdraw: () => undefined };
      out.withdraw = job.commitStep({ workerId: id, epoch, step, ranks: [{ rank, values }] }, (r) => (out.reply = r));
      return out;
    },
  };
}

let seq = 0;
function joinRequest(name: string, over: Partial<JoinRequest> = {}, caps: Partial<JoinRequest['capabilities']> = {}): JoinRequest {
  seq += 1;
  const req: JoinRequest = {
    jobId: JOB,
    protocolVersion: PROTOCOL_VERSION,
    name,
    launcherRank: -1,
    peerAddress: `10.0.0.${seq}:7000`,
    capabilities: { backend: 'cpu', device: 'cpu', hostname: 'h', pid: seq, localRank: -1, threads: 1, transports: ['tcp', 'grpc'] },
    configJson: JSON.stringify(CONFIG),
    ...over,
  };
  req.capabilities = { ...req.capabilities, ...caps };
  return req;
}

/** Asserts `f` throws a Refusal with `code` and a message matching `message`. */
function refused(f: () => unknown, code: Refusal['code'], message: string | RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof Refusal, `a Refusal, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (typeof message === 'string') assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}

const ring = (m: Membership | null | undefined) => m?.members.map((x) => `${x.name}=${x.rank}@${x.firstRank}`).join(' ');

test('settings: defaults filled in; a bad option throws naming it', () => {
  assert.deepEqual(resolveJobSettings({ jobId: 'j', minWorkers: 1, maxWorkers: 3 }), {
    jobId: 'j',
    minWorkers: 1,
    maxWorkers: 3,
    joinTimeoutMs: 60_000,
    heartbeatMs: 1000,
    workerTimeoutMs: 30_000,
    transport: 'tcp',
  });
  assert.throws(() => new JobState({ jobId: '', minWorkers: 1, maxWorkers: 1 }), /^Error: jobId: must not be empty$/);
  assert.throws(() => new JobState({ jobId: 'j', minWorkers: 0, maxWorkers: 1 }), /minWorkers: expected an integer >= 1, got 0/);
  const fewer = /maxWorkers: expected an integer >= minWorkers \(2\), got 1/;
  assert.throws(() => new JobState({ jobId: 'j', minWorkers: 2, maxWorkers: 1 }), fewer);
  assert.throws(
    () => new JobState({ jobId: 'j', minWorkers: 1, maxWorkers: 1, transport: 'udp' as 'tcp' }),
    /transport: expected "tcp" or "grpc", got "udp"/,
  );
  const negative = /heartbeatMs: expected an integer >= 0, got -1/;
  assert.throws(() => new JobState({ jobId: 'j', minWorkers: 1, maxWorkers: 1, heartbeatMs: -1 }), negative);
});

test('admission: each refusal names what differs and changes nothing', () => {
  const h = harness({ maxWorkers: 2, minWorkers: 2 });
  const { job } = h;
  const peer = '10.0.0.9:5000';
  const tryJoin = (req: JoinRequest) => () => job.join(req, peer, () => assert.fail('no reply to a refused join'));
  const version = `protocol version 99; this coordinator speaks ${PROTOCOL_VERSION}`;
  refused(tryJoin(joinRequest('a', { protocolVersion: 99 })), 'FAILED_PRECONDITION', version);
  refused(tryJoin(joinRequest('a', { jobId: 'other' })), 'PERMISSION_DENIED', `job id "other" is not this coordinator's job "${JOB}"`);
  refused(tryJoin(joinRequest('')), 'INVALID_ARGUMENT', 'name: must not be empty');
  refused(tryJoin(joinRequest('a', {}, { threads: 0 })), 'INVALID_ARGUMENT', 'capabilities.threads must be >= 1, got 0');
  const plane = `the job's data plane is "tcp"; this worker serves "grpc"`;
  refused(tryJoin(joinRequest('a', {}, { transports: ['grpc'] })), 'FAILED_PRECONDITION', plane);
  refused(tryJoin(joinRequest('a', { configJson: '{' })), 'INVALID_ARGUMENT', /^config_json is not JSON: /);
  assert.equal(h.events.length, 0, 'no event from a refused join');

  const a = h.join('a');
  assert.equal(a.id, 'w1-a');
  assert.equal(job.workerState(a.id), 'pending');
  const other = JSON.stringify({ ...CONFIG, train: { ...CONFIG.train, batch_size: 3 } });
  const differs = 'field "train.batch_size" differs: 3 here, 4 in the job';
  refused(tryJoin(joinRequest('b', { configJson: other })), 'FAILED_PRECONDITION', differs);
  refused(tryJoin(joinRequest('a')), 'ALREADY_EXISTS', 'the name "a" is held by live worker w1-a');
  h.join('b');
  refused(tryJoin(joinRequest('c')), 'RESOURCE_EXHAUSTED', 'the job is full: 2 of --max-workers 2');
  assert.equal(job.epoch, 1);
  job.shutdown('test over');
  refused(tryJoin(joinRequest('d')), 'FAILED_PRECONDITION', 'the job has ended');
  const joined = /^join a \(w1-a\) from 10\.0\.0\.9:5000: launcher rank -1, peer 10\.0\.0\.\d+:7000, h pid \d+, 1 threads, cpu on cpu$/;
  assert.match(h.lines[0]!, joined);
});

test('rendezvous at maxWorkers: the join reply comes first; ring order by launcher rank, then join order; ranks from threads', () => {
  const h = harness({ minWorkers: 3, maxWorkers: 3 });
  const order: string[] = [];
  h.job.join(joinRequest('late-rank', { launcherRank: -1 }, { threads: 2 }), 'p', () => order.push('reply 1'));
  const b = h.join('second', { launcherRank: 1 });
  assert.equal(h.job.epoch, 0, 'no membership before maxWorkers joined');
  assert.equal(b.sink.got.length, 0, 'a pending worker gets no membership');
  h.job.join(joinRequest('first', { launcherRank: 0 }, { threads: 3 }), 'p', () => order.push(`reply 3 at epoch ${h.job.epoch}`));
  assert.deepEqual(order, ['reply 1', 'reply 3 at epoch 0']);
  const m = h.job.membership!;
  assert.equal(m.epoch, 1);
  assert.equal(m.reason, 'rendezvous');
  assert.equal(ring(m), 'first=0@0 second=1@3 late-rank=2@4');
  assert.equal(m.worldSize, 6);
  assert.deepEqual([m.transport, m.committedStep, m.stop, m.finished], ['tcp', 0, false, false]);
  assert.deepEqual(b.sink.got, [m], 'a watcher gets the rendezvous');
  const late = new Sink();
  assert.equal(h.job.watch('w1-late-rank', late), true);
  assert.deepEqual(late.got, [m], 'a member that starts watching gets the current membership at once');
  const line = 'membership epoch 1: rendezvous; 3 workers, world size 6, committed step 0; ring first=0@0 second=1@3 late-rank=2@4';
  assert.ok(h.lines.includes(line), h.lines.join('\n'));
});

test('rendezvous at minWorkers only once the join window is closed', () => {
  const h = harness({ minWorkers: 2, maxWorkers: 4 });
  h.join('a');
  h.join('b');
  assert.equal(h.job.epoch, 0);
  h.job.closeJoinWindow();
  assert.equal(h.job.epoch, 1);
  assert.equal(ring(h.job.membership), 'a=0@0 b=1@1');
  const lone = harness({ minWorkers: 2, maxWorkers: 4 });
  lone.join('a');
  lone.job.closeJoinWindow();
  assert.equal(lone.job.epoch, 0, 'fewer than minWorkers: still waiting');
  lone.join('b');
  assert.equal(lone.job.epoch, 1, 'the window is over: the second join completes the rendezvous');
});

test('heartbeats: a member silent for workerTimeoutMs is removed, the others renumbered; its sink gets that membership and ends', () => {
  const h = harness({ minWorkers: 2, maxWorkers: 3 });
  const a = h.join('a');
  const b = h.join('b');
  const c = h.join('c');
  assert.equal(ring(h.job.membership), 'a=0@0 b=1@1 c=2@2');
  h.advance(2000);
  assert.deepEqual(h.job.heartbeat(a.id), { epoch: 1, member: true });
  assert.deepEqual(h.job.heartbeat(c.id), { epoch: 1, member: true });
  h.advance(999);
  h.job.checkHeartbeats();
  assert.equal(h.job.epoch, 1, 'b silent 2999 ms < 3000: kept');
  h.advance(1);
  h.job.checkHeartbeats();
  const m = h.job.membership!;
  assert.equal(m.epoch, 2);
  assert.equal(m.reason, 'b missed heartbeats for 3000 ms');
  assert.equal(ring(m), 'a=0@0 c=1@1');
  assert.equal(b.sink.last, m, 'the removed worker learns the membership it is not in');
  assert.ok(b.sink.ended);
  assert.equal(a.sink.last, m);
  assert.equal(a.sink.ended, false);
  assert.equal(h.job.workerState(b.id), 'removed');
  assert.deepEqual(h.job.heartbeat(b.id), { epoch: 2, member: false });
  refused(() => h.job.watch(b.id, new Sink()), 'FAILED_PRECONDITION', 'b is no longer a member: b missed heartbeats for 3000 ms');
  refused(() => h.job.heartbeat('w9-x'), 'NOT_FOUND', 'unknown worker id "w9-x"');
  assert.equal(h.job.describe(a.id), 'a, w1-a');
  assert.equal(h.job.describe('w9-x'), 'w9-x');
  // checkHeartbeats also takes the time explicitly.
  h.job.checkHeartbeats(20_000);
  assert.equal(h.outcomes.length, 1, 'both silent: fewer than minWorkers');
});

test('step barrier: held until all members reported, ranks in rank order; stale epochs, wrong steps, superseded, withdrawn reports', () => {
  const h = harness({ minWorkers: 3, maxWorkers: 3 });
  const [a, b, c] = [h.join('a'), h.join('b'), h.join('c')];
  const early = h.commit(c.id, 1, { rank: 2, values: { loss: 3 } });
  const first = h.commit(a.id, 1, { rank: 0, values: { loss: 1 } });
  assert.equal(first.reply, undefined, 'held');
  refused(() => h.commit(b.id, 2), 'INVALID_ARGUMENT', 'step 2 reported, but c reported step 1 in epoch 1');
  const stale = h.commit(b.id, 1, { epoch: 7 });
  assert.deepEqual(stale.reply, { committed: false, epoch: 1, ranks: [] }, 'another epoch: answered at once');
  const again = h.commit(a.id, 1, { rank: 0, values: { loss: 1.5 } });
  assert.deepEqual(first.reply, { committed: false, epoch: 1, ranks: [] }, 'superseded by its second report');
  early.withdraw();
  const bs = h.commit(b.id, 1, { rank: 1, values: { loss: 2 } });
  assert.equal(again.reply, undefined, "c's report was withdrawn (a cancelled call): still held");
  assert.equal(early.reply, undefined, 'a withdrawn report gets no answer');
  assert.equal(h.job.committedStep, 0);
  const cs = h.commit(c.id, 1, { rank: 2, values: { loss: 3 } });
  const want = {
    committed: true,
    epoch: 1,
    ranks: [
      { rank: 0, values: { loss: 1.5 } },
      { rank: 1, values: { loss: 2 } },
      { rank: 2, values: { loss: 3 } },
    ],
  };
  for (const r of [again, bs, cs]) assert.deepEqual(r.reply, want);
  assert.equal(h.job.committedStep, 1);
  refused(() => h.commit(a.id, 1), 'INVALID_ARGUMENT', 'step 1 is not after the committed step 1');
  assert.ok(h.lines.includes('step 1 committed (epoch 1, 3 ranks)'));
  assert.deepEqual(
    h.events.filter((e) => e.event === 'commit').map((e) => e.step),
    [1],
  );
});

test('a membership change answers held reports with committed=false and the new epoch', () => {
  const h = harness({ minWorkers: 1, maxWorkers: 2 });
  const a = h.join('a');
  const b = h.join('b');
  const held = h.commit(a.id, 1);
  h.job.watchEnded(b.id, b.sink, 'watch stream cancelled');
  assert.equal(h.job.membership!.reason, 'b disconnected (watch stream cancelled)');
  assert.deepEqual(held.reply, { committed: false, epoch: 2, ranks: [] });
  refused(() => h.commit(b.id, 1), 'FAILED_PRECONDITION', 'b is not a member: b disconnected (watch stream cancelled)');
  const alone = h.commit(a.id, 1, { epoch: 2 });
  assert.equal(alone.reply?.committed, true, 'one member left: its report completes the barrier');
});

test('a late joiner is pending until the next committed step, then enters in ring order after the members', () => {
  const h = harness({ minWorkers: 2, maxWorkers: 4 });
  const a = h.join('a');
  const b = h.join('b');
  h.job.closeJoinWindow();
  const late2 = h.join('late2', { launcherRank: 7 });
  const late1 = h.join('late1', { launcherRank: 3 });
  assert.equal(h.job.workerState(late1.id), 'pending');
  assert.equal(late1.sink.got.length, 0);
  assert.match(
    h.lines.find((l) => l.startsWith('join late1'))!,
    /; pending until the next commit$/,
  );
  refused(() => h.commit(late1.id, 1), 'FAILED_PRECONDITION', 'late1 is not a member yet (it enters after the next commit)');
  assert.deepEqual(h.job.heartbeat(late1.id), { epoch: 1, member: true });
  h.commit(a.id, 1);
  const done = h.commit(b.id, 1);
  assert.equal(done.reply?.committed, true);
  assert.equal(done.reply?.epoch, 1, 'the commit belongs to the epoch it was reported in');
  const m = h.job.membership!;
  assert.equal(m.epoch, 2);
  assert.equal(m.reason, 'late1, late2 joined');
  assert.equal(m.committedStep, 1);
  assert.equal(ring(m), 'a=0@0 b=1@1 late1=2@2 late2=3@3');
  assert.equal(late1.sink.last, m);
  assert.equal(late2.sink.last, m);
  assert.equal(h.job.workerState(late2.id), 'member');
});

test('a removal admits pending joiners at once; fewer than minWorkers left stops the job (finished=false)', () => {
  const h = harness({ minWorkers: 2, maxWorkers: 3 });
  const a = h.join('a');
  const b = h.join('b');
  h.job.closeJoinWindow();
  const c = h.join('c');
  h.job.leave({ workerId: b.id, finished: false, reason: 'preempted' }, () => undefined);
  assert.equal(h.job.membership!.reason, 'b left: preempted');
  assert.equal(ring(h.job.membership), 'a=0@0 c=1@1');
  assert.equal(h.job.workerState(b.id), 'left');
  h.advance(5000);
  h.job.heartbeat(c.id);
  h.job.checkHeartbeats();
  const m = h.job.membership!;
  assert.equal(m.reason, '1 workers left, fewer than --min-workers 2');
  assert.deepEqual([m.stop, m.finished], [true, false]);
  assert.ok(c.sink.ended && a.sink.ended, 'every stream ends with the stop');
  const reason = 'a missed heartbeats for 5000 ms; 1 workers left, fewer than --min-workers 2';
  assert.deepEqual(h.outcomes, [{ finished: false, reason }]);
  assert.equal(h.job.stopped, true);
  assert.deepEqual(h.job.heartbeat(c.id), { epoch: 3, member: false }, 'after the end no one is a member');
  const after = new Sink();
  assert.equal(h.job.watch(c.id, after), false);
  assert.deepEqual([after.got, after.ended], [[m], true], 'a watch after the end gets the last membership and ends');
});

test('every member leaving finished: a stop membership with finished=true; a finished member no longer holds the barrier', () => {
  const h = harness({ minWorkers: 2, maxWorkers: 2 });
  const a = h.join('a');
  const b = h.join('b');
  const held = h.commit(a.id, 1);
  const replies: string[] = [];
  h.job.leave({ workerId: b.id, finished: true, reason: 'finished' }, () => replies.push(`reply at epoch ${h.job.epoch}`));
  assert.deepEqual(replies, ['reply at epoch 1']);
  assert.equal(held.reply?.committed, true, "b's share is no longer needed");
  h.job.watchEnded(b.id, b.sink, 'watch stream closed');
  assert.equal(h.job.epoch, 1, 'a finished worker closing its stream is no removal');
  h.job.leave({ workerId: a.id, finished: true, reason: '' }, () => undefined);
  const m = h.job.membership!;
  assert.deepEqual([m.epoch, m.reason, m.stop, m.finished], [2, 'every worker finished', true, true]);
  assert.deepEqual(h.outcomes, [{ finished: true, reason: 'every worker finished' }]);
  assert.ok(h.lines.includes('job finished: every worker finished'));
  const finish = { event: 'finish', finished: true, reason: 'every worker finished', committedStep: 1, lastCheckpointStep: 0 };
  assert.deepEqual(h.events.at(-1), finish);
});

test('checkpoints of committed steps and metrics are recorded; a checkpoint ahead of the commit or bad metrics JSON is refused', () => {
  const h = harness({ minWorkers: 1, maxWorkers: 1 });
  const a = h.join('a');
  const ahead = 'checkpoint of step 1, but the last committed step is 0';
  refused(() => h.job.commitCheckpoint({ workerId: a.id, step: 1, path: 'c1' }), 'FAILED_PRECONDITION', ahead);
  h.commit(a.id, 1);
  h.commit(a.id, 2);
  assert.deepEqual(h.job.commitCheckpoint({ workerId: a.id, step: 2, path: 'ckpt/2' }), { lastCheckpointStep: 2 });
  assert.deepEqual(h.job.commitCheckpoint({ workerId: a.id, step: 1, path: 'ckpt/1' }), { lastCheckpointStep: 2 });
  assert.equal(h.job.lastCheckpointStep, 2);
  assert.ok(h.lines.includes('checkpoint of step 2 by a: ckpt/2'));
  h.job.reportMetrics({ workerId: a.id, step: 2, json: '{"loss":0.5}' });
  refused(() => h.job.reportMetrics({ workerId: a.id, step: 2, json: 'nope' }), 'INVALID_ARGUMENT', /^metrics json is not JSON: /);
  const kinds = h.events.map((e) => e.event);
  assert.deepEqual(kinds, ['join', 'membership', 'commit', 'commit', 'checkpoint', 'checkpoint', 'metrics']);
  assert.deepEqual(h.events.at(-1), { event: 'metrics', worker: a.id, name: 'a', step: 2, metrics: { loss: 0.5 } });
});

test('shutdown: held reports answered committed=false, every sink ended, the outcome not finished; once only', () => {
  const h = harness({ minWorkers: 2, maxWorkers: 3 });
  const a = h.join('a');
  const b = h.join('b');
  h.job.closeJoinWindow();
  const pending = h.join('c');
  const held = h.commit(a.id, 1);
  h.job.shutdown('coordinator closed');
  assert.deepEqual(held.reply, { committed: false, epoch: 1, ranks: [] });
  assert.ok(a.sink.ended && b.sink.ended && pending.sink.ended);
  assert.deepEqual(h.outcomes, [{ finished: false, reason: 'coordinator closed' }]);
  h.job.shutdown('again');
  assert.equal(h.outcomes.length, 1);
  assert.deepEqual(h.job.outcome, { finished: false, reason: 'coordinator closed' });
  const late = h.commit(b.id, 1);
  assert.deepEqual(late.reply, { committed: false, epoch: 1, ranks: [] }, 'a report after the end is answered at once');
});
