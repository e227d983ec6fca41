/**
 * A stop on request becomes a job-wide checkpoint (issue 23): a worker's stop signal, in its step
 * report, or the coordinator's own (`requestStop`), reaches every rank in the next commit; the workers'
 * leaves after it end the job interrupted, not failed, and not finished.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PROTOCOL_VERSION, type JoinRequest, type Membership, type StepCommit } from '@vitreg/proto';
import { JobState, type JobOutcome, type MembershipSink } from '../src/index.ts';
import { STOP_KEY } from '../src/job-state.ts';

const SIGTERM = 15;

function twoWorkers() {
  const outcomes: JobOutcome[] = [];
  const lines: string[] = [];
  const job = new JobState({
    jobId: 'j',
    minWorkers: 2,
    maxWorkers: 2,
    now: () => 0,
    log: (l) => lines.push(l),
    onFinish: (o) => outcomes.push(o),
  });
  const sinks: Membership[][] = [];
  const ids = ['worker-0', 'worker-1'].map((name, i) => {
    let id = '';
    const req: JoinRequest = {
      jobId: 'j',
      protocolVersion: PROTOCOL_VERSION,
      name,
      launcherRank: i,
      peerAddress: `10.0.0.${i}:7000`,
      capabilities: { backend: 'cpu', device: 'cpu', hostname: 'h', pid: i, localRank: -1, threads: 1, transports: ['tcp'] },
      configJson: '{}',
    };
    job.join(req, 'peer', (r) => (id = r.workerId));
    const got: Membership[] = [];
    sinks.push(got);
    job.watch(id, { write: (m) => got.push(m), end: () => undefined } as MembershipSink);
    return id;
  });
  const commit = (id: string, step: number, rank: number, values: Record<string, number> = { loss: 1 }) => {
    const out: { reply?: StepCommit } = {};
    job.commitStep({ workerId: id, epoch: job.epoch, step, ranks: [{ rank, values }] }, (r) => (out.reply = r));
    return out;
  };
  return { job, ids, sinks, outcomes, lines, commit };
}

test("one worker's signal: the next commit carries it to every rank, the leaves after it end the job interrupted", () => {
  const { job, ids, sinks, outcomes, lines, commit } = twoWorkers();
  const [a, b] = ids as [string, string];
  const s1 = [commit(a, 1, 0), commit(b, 1, 1)];
  assert.ok(s1.every((c) => c.reply?.committed && c.reply.ranks.every((r) => !(STOP_KEY in r.values))));
  // worker-1 got SIGTERM during step 2: its report says so; worker-0's does not.
  const s2 = [commit(a, 2, 0), commit(b, 2, 1, { loss: 1, [STOP_KEY]: SIGTERM })];
  for (const c of s2) {
    assert.equal(c.reply?.committed, true);
    assert.deepEqual(
      c.reply!.ranks.map((r) => r.values[STOP_KEY]),
      [SIGTERM, SIGTERM],
      'every rank learns of the stop from the same commit',
    );
  }
  assert.equal(job.stoppingAfter, 2);
  assert.ok(lines.some((l) => /worker-1 asks to stop \(SIGTERM\)/.test(l)));
  job.commitCheckpoint({ workerId: a, step: 2, path: '/runs/x/checkpoints/step-2' });
  // The workers leave, not finished: neither is a failure; the last one ends the job interrupted.
  job.leave({ workerId: b, reason: 'interrupted at step 2 (SIGTERM)', finished: false }, () => undefined);
  assert.equal(outcomes.length, 0);
  assert.equal(job.membership!.epoch, 1, 'a leave after the stop publishes no new ring');
  job.leave({ workerId: a, reason: 'interrupted at step 2 (SIGTERM)', finished: false }, () => undefined);
  assert.deepEqual(outcomes, [
    {
      finished: false,
      reason: 'interrupted at step 2 (SIGTERM to worker-1); checkpoint of step 2',
      interrupted: { step: 2, signal: 'SIGTERM' },
    },
  ]);
  const last = sinks[0]!.at(-1)!;
  assert.equal(last.stop, true);
  assert.equal(last.finished, false);
});

test("the coordinator's own signal (requestStop) stamps the next commit; a second request changes nothing", () => {
  const { job, ids, outcomes, commit } = twoWorkers();
  const [a, b] = ids as [string, string];
  assert.equal(job.requestStop(2, 'the coordinator'), true);
  assert.equal(job.requestStop(SIGTERM, 'worker-0'), false);
  const c = [commit(a, 1, 0), commit(b, 1, 1)];
  for (const x of c)
    assert.deepEqual(
      x.reply!.ranks.map((r) => r.values[STOP_KEY]),
      [2, 2],
    );
  job.leave({ workerId: a, reason: 'interrupted', finished: false }, () => undefined);
  job.leave({ workerId: b, reason: 'interrupted', finished: false }, () => undefined);
  assert.deepEqual(outcomes[0]?.interrupted, { step: 1, signal: 'SIGINT' });
});
