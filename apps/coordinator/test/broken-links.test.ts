/**
 * A broken ring link (src/broken-links.ts) through a JobState driven directly: a clock the test moves,
 * array sinks. Two ring neighbours that both still reach the coordinator: the later in ring order is
 * removed once both gave a sign of life after the report; a report about a worker that is really gone
 * does not remove the reporter; stale, foreign and non-neighbour reports change nothing; of a chain of
 * reports (a stalled ring) only the head is acted on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PROTOCOL_VERSION, type Membership } from '@vitreg/proto';
import { JobState, type MembershipSink } from '../src/index.ts';

class Sink implements MembershipSink {
  got: Membership[] = [];
  write(m: Membership): void {
    this.got.push(m);
  }
  end(): void {}
}

/** A job of `n` workers w0..w{n-1} (launcher ranks 0..n-1, so that is the ring order), rendezvous done. */
function ringOf(n: number, minWorkers = 1) {
  let t = 1000;
  const lines: string[] = [];
  const events: string[] = [];
  const job = new JobState({
    jobId: 'j',
    minWorkers,
    maxWorkers: n,
    workerTimeoutMs: 3000,
    now: () => t,
    log: (l) => lines.push(l),
    event: (name) => events.push(name),
  });
  const ids: string[] = [];
  const sinks: Sink[] = [];
  for (let i = 0; i < n; i++) {
    let id = '';
    job.join(
      {
        jobId: 'j',
        protocolVersion: PROTOCOL_VERSION,
        name: `w${i}`,
        launcherRank: i,
        peerAddress: `10.0.0.${i + 1}:7000`,
        capabilities: { backend: 'cpu', device: 'cpu', hostname: 'h', pid: i, localRank: 0, threads: 1, transports: ['tcp'] },
        configJson: '{}',
      },
      'peer',
      (r) => (id = r.workerId),
    );
    const sink = new Sink();
    job.watch(id, sink);
    ids.push(id);
    sinks.push(sink);
  }
  assert.equal(job.epoch, 1);
  const names = () => job.membership!.members.map((m) => m.name).join(' ');
  const beat = (i: number, unreachable = -1, epoch = job.epoch) =>
    job.heartbeat(ids[i]!, { epoch, unreachablePeer: unreachable >= 0 ? ids[unreachable]! : '' });
  return { job, ids, sinks, lines, events, names, beat, advance: (ms: number) => (t += ms) };
}

test('a broken link between two ring neighbours that both reach the coordinator: the later in ring order leaves once both showed life', () => {
  const r = ringOf(4);
  r.advance(100);
  // w2 cannot reach its predecessor w1.
  assert.deepEqual(r.beat(2, 1), { epoch: 1, member: true });
  assert.equal(r.job.epoch, 1, 'no removal on the report alone');
  assert.ok(r.events.includes('link-down'));
  r.advance(100);
  r.beat(1);
  assert.equal(r.job.epoch, 1, 'w2 has not shown life since its report');
  r.advance(100);
  assert.deepEqual(r.beat(2, 1), { epoch: 2, member: false }, 'the later of the two is removed: the reporter itself here');
  assert.equal(r.names(), 'w0 w1 w3');
  assert.match(r.job.membership!.reason, /w2 cannot reach its ring neighbour w1/);
  assert.equal(r.sinks[2]!.got.at(-1)!.epoch, 2, 'the removed worker gets the membership it is not in');
  // Reported from the other side (w0 -> w1 after the change): w1 is the later one.
  r.advance(100);
  r.beat(0, 1);
  r.advance(100);
  r.beat(1);
  assert.equal(r.job.epoch, 2);
  r.beat(0);
  assert.equal(r.names(), 'w0 w3', 'w1 (later than w0) removed');
  // The link between the last and the first position (w3 -> w0): the last one leaves, never position 0.
  r.advance(100);
  r.beat(0, 3);
  r.advance(100);
  r.beat(3);
  r.beat(0);
  assert.equal(r.names(), 'w0');
});

test('a report about a neighbour that is really gone does not remove the reporter: the gone one misses its heartbeats', () => {
  const r = ringOf(3, 1);
  r.advance(100);
  // w1 stopped answering everything; w2 (its successor, later in the ring) reports it.
  r.beat(0);
  r.beat(2, 1);
  for (let t = 0; t < 3000; t += 250) {
    r.advance(250);
    r.beat(0);
    r.beat(2, 1);
    r.job.checkHeartbeats();
  }
  assert.equal(r.names(), 'w0 w2', 'w1 removed for its heartbeats, the reporter stays');
  assert.match(r.lines.join('\n'), /w1 missed heartbeats/);
});

test('reports of another epoch, of a non-neighbour, of an unknown id, or of a finished worker change nothing; a new membership clears reports', () => {
  const r = ringOf(4);
  r.advance(100);
  r.beat(0, 2); // w0 and w2 are not neighbours in 0 -> 1 -> 2 -> 3 -> 0
  r.beat(1, 0, 7); // another epoch
  r.job.heartbeat(r.ids[1]!, { epoch: 1, unreachablePeer: 'w99-nobody' });
  r.advance(100);
  for (let i = 0; i < 4; i++) r.beat(i);
  assert.equal(r.job.epoch, 1);
  assert.ok(!r.events.includes('link-down'));
  // A report, then another worker's removal (new membership): the report is forgotten.
  r.beat(3, 2);
  r.job.leave({ workerId: r.ids[0]!, finished: false, reason: 'bye' }, () => undefined);
  assert.equal(r.job.epoch, 2);
  r.advance(100);
  r.beat(2);
  r.beat(3);
  assert.equal(r.names(), 'w1 w2 w3', 'the epoch-1 report did not act in epoch 2');
  // A finished worker's link going down is no failure.
  r.job.leave({ workerId: r.ids[3]!, finished: true, reason: '' }, () => undefined);
  r.advance(100);
  r.beat(2, 3);
  r.advance(100);
  r.beat(2);
  r.beat(3);
  assert.equal(r.names(), 'w1 w2 w3');
});

test('a removal for a broken link below --min-workers stops the job as any removal does', () => {
  const r = ringOf(2, 2);
  r.advance(100);
  r.beat(1, 0);
  r.advance(100);
  r.beat(0);
  r.beat(1);
  assert.equal(r.job.stopped, true);
  assert.equal(r.job.membership!.stop, true);
  assert.match(r.job.outcome!.reason, /w1 cannot reach its ring neighbour w0.*fewer than --min-workers 2/);
});

test('a stalled ring: reports that form a chain remove only its head, the worker that stopped sending, never a stalled neighbour', () => {
  const r = ringOf(4);
  r.advance(100);
  // w3 heartbeats but sends nothing: w0 waits for it, and w1 for w0 (stalled behind it); w1's report may come first.
  r.beat(1, 0);
  r.beat(0, 3);
  r.advance(100);
  for (let i = 0; i < 4; i++) r.beat(i);
  assert.equal(r.names(), 'w0 w1 w2', 'w3, the head of the chain w1 -> w0 -> w3, removed; w1 stays');
  assert.match(r.job.membership!.reason, /w3 cannot reach its ring neighbour w0|w0 cannot reach its ring neighbour w3/);
  // The new membership cleared w1's report: nothing else happens.
  r.advance(100);
  for (let i = 0; i < 3; i++) r.beat(i);
  assert.equal(r.names(), 'w0 w1 w2');
});
