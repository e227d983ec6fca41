/**
 * The coordinator against real grpc-js clients on 127.0.0.1 (ephemeral ports): admission and
 * refusals, rendezvous, ring order, heartbeats, watch streams, the step barrier, late joiners,
 * stopping and finishing. TLS is in tls.test.ts, the vitreg-coordinator bin in bin.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { JoinReply, StepCommit } from '@vitreg/proto';
import { JOB, TOKEN, joinAs, joinRequest, meta, refused, rpc, sleep, until, watch, withJob } from './helpers.ts';

test('refusals: wrong token, job id, protocol version, config, capabilities, name, capacity; the job is unaffected', async () => {
  await withJob({ minWorkers: 2, maxWorkers: 2, heartbeatMs: 250, workerTimeoutMs: 5000 }, async ({ client, lines, coord }) => {
    const c = client();
    await refused(rpc(c, 'join', joinRequest('worker-0'), meta('wrong')), grpc.status.UNAUTHENTICATED, 'wrong job token');
    await refused(rpc(c, 'heartbeat', { workerId: 'x' }, meta('')), grpc.status.UNAUTHENTICATED, 'wrong job token');
    await refused(
      rpc(c, 'join', joinRequest('worker-0'), meta(TOKEN, 'other-job')),
      grpc.status.PERMISSION_DENIED,
      `job id "other-job" is not this coordinator's job "${JOB}"`,
    );
    await refused(
      rpc(c, 'join', joinRequest('worker-0', { protocolVersion: 2 })),
      grpc.status.FAILED_PRECONDITION,
      'protocol version 2; this coordinator speaks 1',
    );
    await refused(rpc(c, 'join', joinRequest('worker-0', { jobId: 'nope' })), grpc.status.PERMISSION_DENIED, /"nope".*"job-42"/);
    await refused(rpc(c, 'join', joinRequest('worker-0', {}, { threads: 0 })), grpc.status.INVALID_ARGUMENT, /threads must be >= 1, got 0/);
    await refused(
      rpc(c, 'join', joinRequest('worker-0', {}, { transports: ['grpc'] })),
      grpc.status.FAILED_PRECONDITION,
      /data plane is "tcp"/,
    );
    await refused(
      rpc(c, 'join', joinRequest('worker-0', { configJson: '{oops' })),
      grpc.status.INVALID_ARGUMENT,
      /config_json is not JSON/,
    );
    // Nothing of the above was admitted: the first admitted worker's config becomes the job's.
    const w0 = await joinAs(c, 'worker-0');
    const other = JSON.stringify({ train: { lr: 0.001, batch_size: 3 }, model: 'tiny' });
    await refused(
      rpc(c, 'join', joinRequest('worker-1', { configJson: other })),
      grpc.status.FAILED_PRECONDITION,
      'field "train.batch_size" differs: 3 here, 4 in the job',
    );
    await refused(rpc(c, 'join', joinRequest('worker-0')), grpc.status.ALREADY_EXISTS, /name "worker-0" is held by live worker/);
    // Key order does not matter.
    const w1 = await joinAs(c, 'worker-1', { configJson: JSON.stringify({ train: { lr: 0.001, batch_size: 4 }, model: 'tiny' }) });
    await refused(rpc(c, 'join', joinRequest('worker-2')), grpc.status.RESOURCE_EXHAUSTED, /full: 2 of --max-workers 2/);
    const seen = watch(c, w0);
    const m = await seen.epoch(1);
    assert.equal(m.reason, 'rendezvous');
    assert.deepEqual(
      m.members.map((x) => x.workerId),
      [w0, w1],
    );
    // Refusals after the rendezvous change nothing either.
    await refused(
      rpc(c, 'commitStep', { workerId: w0, epoch: 1, step: 1, ranks: [] }, meta('bad')),
      grpc.status.UNAUTHENTICATED,
      'wrong job token',
    );
    await refused(rpc(c, 'leave', { workerId: w0, finished: false }, meta(TOKEN, 'x')), grpc.status.PERMISSION_DENIED, /"x"/);
    await refused(rpc(c, 'heartbeat', { workerId: 'w99-nobody' }), grpc.status.NOT_FOUND, 'unknown worker id "w99-nobody"');
    assert.deepEqual(await rpc(c, 'heartbeat', { workerId: w0, epoch: 1, step: 0 }), { epoch: 1, member: true });
    await sleep(50);
    assert.equal(seen.got.length, 1);
    // One log line per refusal, naming the peer and why.
    const refusals = lines.filter((l) => l.startsWith('refused '));
    assert.equal(refusals.length, 14, refusals.join('\n'));
    assert.ok(
      refusals.some((l) => /^refused Join from .*127\.0\.0\.1.* \(worker-0\): wrong job token$/.test(l)),
      refusals.join('\n'),
    );
    let settled = false;
    void coord.done.then(() => (settled = true));
    await sleep(20);
    assert.equal(settled, false);
  });
});

test('rendezvous at maxWorkers: ring order by launcher rank, then join order; ranks and world size from threads', async () => {
  await withJob({ minWorkers: 1, maxWorkers: 4, joinTimeoutMs: 60_000, transport: 'grpc' }, async ({ client }) => {
    const c = client();
    const a = await joinAs(c, 'a', {}, { threads: 2 }); // no launcher rank
    const b = await joinAs(c, 'b', { launcherRank: 1 }, { threads: 1 });
    const d = await joinAs(c, 'd', {}, { threads: 3 }); // no launcher rank, joined after a
    const w = watch(c, a);
    await sleep(50);
    assert.equal(w.got.length, 0, 'no membership before maxWorkers joined (join timeout 60 s)');
    const e = await joinAs(c, 'e', { launcherRank: 0 }, { threads: 2 });
    const m = await w.epoch(1);
    assert.deepEqual(
      m.members.map((x) => [x.workerId, x.rank, x.firstRank, x.threads]),
      [
        [e, 0, 0, 2],
        [b, 1, 2, 1],
        [a, 2, 3, 2],
        [d, 3, 5, 3],
      ],
    );
    assert.equal(m.worldSize, 8);
    assert.equal(m.transport, 'grpc');
    assert.equal(m.committedStep, 0);
    assert.equal(m.stop, false);
    assert.equal(m.members[1].name, 'b');
    assert.match(m.members[1].peerAddress, /^127\.0\.0\.1:\d+$/);
  });
});

test('rendezvous at minWorkers once the join timeout passed', async () => {
  const t0 = Date.now();
  await withJob({ minWorkers: 2, maxWorkers: 4, joinTimeoutMs: 400 }, async ({ client }) => {
    const c = client();
    const a = await joinAs(c, 'a');
    const w = watch(c, a);
    await sleep(500);
    assert.equal(w.got.length, 0, 'one worker is fewer than --min-workers 2');
    const r = await rpc<JoinReply>(c, 'join', joinRequest('b'));
    assert.equal(r.heartbeatMs, 1000);
    assert.equal(r.workerTimeoutMs, 30000);
    const m = await w.epoch(1);
    assert.ok(Date.now() - t0 >= 400);
    assert.deepEqual(
      m.members.map((x) => x.name),
      ['a', 'b'],
    );
    assert.equal(m.transport, 'tcp');
  });
});

test('heartbeat eviction: a silent member is removed, the others renumbered in a new epoch; its heartbeats get member=false', async () => {
  await withJob({ minWorkers: 2, maxWorkers: 3, workerTimeoutMs: 300 }, async ({ client, lines }) => {
    const c = client();
    const ids = [
      await joinAs(c, 'w0', { launcherRank: 0 }),
      await joinAs(c, 'w1', { launcherRank: 1 }),
      await joinAs(c, 'w2', { launcherRank: 2 }),
    ];
    const w = watch(c, ids[0]);
    await w.epoch(1);
    const beat = setInterval(() => {
      for (const id of [ids[0], ids[2]]) rpc(c, 'heartbeat', { workerId: id, epoch: 1, step: 0 }).catch(() => {});
    }, 50);
    try {
      const m = await w.epoch(2);
      assert.match(m.reason, /^w1 missed heartbeats for \d+ ms$/);
      assert.deepEqual(
        m.members.map((x) => [x.name, x.rank, x.firstRank]),
        [
          ['w0', 0, 0],
          ['w2', 1, 1],
        ],
      );
      assert.equal(m.worldSize, 2);
      assert.deepEqual(await rpc(c, 'heartbeat', { workerId: ids[1], epoch: 1, step: 0 }), { epoch: 2, member: false });
      assert.deepEqual(await rpc(c, 'heartbeat', { workerId: ids[0], epoch: 2, step: 0 }), { epoch: 2, member: true });
      assert.ok(lines.some((l) => /^removed w1 .*missed heartbeats/.test(l)));
    } finally {
      clearInterval(beat);
    }
  });
});

test('a cancelled watch stream removes its member; an unknown worker id is NOT_FOUND', async () => {
  await withJob({ minWorkers: 1, maxWorkers: 2 }, async ({ client }) => {
    const c = client();
    const a = await joinAs(c, 'a');
    const b = await joinAs(c, 'b');
    const wa = watch(c, a);
    const wb = watch(c, b);
    await wa.epoch(1);
    await wb.epoch(1);
    wb.stream.cancel();
    const m = await wa.epoch(2);
    assert.match(m.reason, /^b disconnected/);
    assert.deepEqual(
      m.members.map((x) => x.name),
      ['a'],
    );
    const unknown = watch(c, 'nobody');
    await until('NOT_FOUND', () => unknown.error);
    assert.equal(unknown.error!.code, grpc.status.NOT_FOUND);
    assert.deepEqual(await rpc(c, 'heartbeat', { workerId: b }), { epoch: 2, member: false });
  });
});

test('commit barrier: holds until every member reported, answers all with every rank in rank order; stale epochs, mismatched steps and non-members', async () => {
  await withJob({ minWorkers: 3, maxWorkers: 3 }, async ({ client }) => {
    const c = client();
    const ids = [
      await joinAs(c, 'w0', { launcherRank: 0 }, { threads: 2 }),
      await joinAs(c, 'w1', { launcherRank: 1 }),
      await joinAs(c, 'w2', { launcherRank: 2 }),
    ];
    const w = watch(c, ids[0]);
    const m = await w.epoch(1);
    assert.equal(m.worldSize, 4);
    await refused(rpc(c, 'commitStep', { workerId: 'ghost', epoch: 1, step: 1, ranks: [] }), grpc.status.NOT_FOUND, /ghost/);
    assert.deepEqual(await rpc(c, 'commitStep', { workerId: ids[1], epoch: 7, step: 1, ranks: [] }), {
      committed: false,
      epoch: 1,
      ranks: [],
    });
    const results: (StepCommit | undefined)[] = [undefined, undefined, undefined];
    const p2 = rpc<StepCommit>(c, 'commitStep', { workerId: ids[2], epoch: 1, step: 1, ranks: [{ rank: 3, values: { loss: 3.5 } }] }).then(
      (r) => (results[2] = r),
    );
    const p0 = rpc<StepCommit>(c, 'commitStep', {
      workerId: ids[0],
      epoch: 1,
      step: 1,
      ranks: [
        { rank: 1, values: { loss: 1.5, acc: 0.25 } },
        { rank: 0, values: { loss: 0.5 } },
      ],
    }).then((r) => (results[0] = r));
    await refused(
      rpc(c, 'commitStep', { workerId: ids[1], epoch: 1, step: 2, ranks: [] }),
      grpc.status.INVALID_ARGUMENT,
      /step 2 reported, but w\d reported step 1 in epoch 1/,
    );
    await sleep(100);
    assert.deepEqual(results, [undefined, undefined, undefined], 'held until every member reported');
    const r1 = await rpc<StepCommit>(c, 'commitStep', { workerId: ids[1], epoch: 1, step: 1, ranks: [{ rank: 2, values: { loss: 2.5 } }] });
    await Promise.all([p0, p2]);
    const expected = {
      committed: true,
      epoch: 1,
      ranks: [
        { rank: 0, values: { loss: 0.5 } },
        { rank: 1, values: { loss: 1.5, acc: 0.25 } },
        { rank: 2, values: { loss: 2.5 } },
        { rank: 3, values: { loss: 3.5 } },
      ],
    };
    assert.deepEqual(r1, expected);
    assert.deepEqual(results[0], expected);
    assert.deepEqual(results[2], expected);
    await refused(
      rpc(c, 'commitStep', { workerId: ids[1], epoch: 1, step: 1, ranks: [] }),
      grpc.status.INVALID_ARGUMENT,
      /not after the committed step 1/,
    );
    // A checkpoint of a committed step is recorded; of a later one refused.
    assert.deepEqual(await rpc(c, 'commitCheckpoint', { workerId: ids[0], step: 1, path: '/ckpt/1' }), { lastCheckpointStep: 1 });
    await refused(
      rpc(c, 'commitCheckpoint', { workerId: ids[0], step: 2, path: '/ckpt/2' }),
      grpc.status.FAILED_PRECONDITION,
      /last committed step is 1/,
    );
  });
});

test('a membership change answers held commits with committed=false and the new epoch; a removed worker is no member', async () => {
  await withJob({ minWorkers: 2, maxWorkers: 3 }, async ({ client }) => {
    const c = client();
    const ids = [await joinAs(c, 'w0'), await joinAs(c, 'w1'), await joinAs(c, 'w2')];
    const w = watch(c, ids[0]);
    await w.epoch(1);
    const held = [0, 1].map((i) =>
      rpc<StepCommit>(c, 'commitStep', { workerId: ids[i], epoch: 1, step: 1, ranks: [{ rank: i, values: {} }] }),
    );
    await sleep(50);
    await rpc(c, 'leave', { workerId: ids[2], reason: 'preempted', finished: false });
    for (const r of await Promise.all(held)) assert.deepEqual(r, { committed: false, epoch: 2, ranks: [] });
    const m = await w.epoch(2);
    assert.equal(m.reason, 'w2 left: preempted');
    assert.equal(m.committedStep, 0);
    await refused(
      rpc(c, 'commitStep', { workerId: ids[2], epoch: 2, step: 1, ranks: [] }),
      grpc.status.FAILED_PRECONDITION,
      /w2 is not a member/,
    );
  });
});

test('a late joiner is pending until the next committed step, then enters the next epoch', async () => {
  await withJob({ minWorkers: 2, maxWorkers: 3, joinTimeoutMs: 100 }, async ({ client }) => {
    const c = client();
    const a = await joinAs(c, 'a');
    const b = await joinAs(c, 'b');
    const w = watch(c, a);
    await w.epoch(1);
    const late = await joinAs(c, 'late', { launcherRank: 0 });
    const wl = watch(c, late);
    await refused(
      rpc(c, 'commitStep', { workerId: late, epoch: 1, step: 1, ranks: [] }),
      grpc.status.FAILED_PRECONDITION,
      /not a member yet/,
    );
    assert.deepEqual(await rpc(c, 'heartbeat', { workerId: late }), { epoch: 1, member: true });
    await sleep(50);
    assert.equal(wl.got.length, 0);
    const [ra, rb] = await Promise.all(
      [a, b].map((id, i) =>
        rpc<StepCommit>(c, 'commitStep', { workerId: id, epoch: 1, step: 1, ranks: [{ rank: i, values: { loss: i } }] }),
      ),
    );
    assert.equal(ra.committed && rb.committed, true);
    const m = await w.epoch(2);
    assert.equal(m.reason, 'late joined');
    assert.equal(m.committedStep, 1);
    assert.deepEqual(
      m.members.map((x) => [x.name, x.rank]),
      [
        ['a', 0],
        ['b', 1],
        ['late', 2],
      ],
    );
    assert.deepEqual((await wl.epoch(2)).epoch, 2);
  });
});

test('fewer survivors than --min-workers: a final stop membership and done with finished=false', async () => {
  await withJob({ minWorkers: 2, maxWorkers: 2 }, async ({ client, coord }) => {
    const c = client();
    const a = await joinAs(c, 'a');
    const b = await joinAs(c, 'b');
    const w = watch(c, a);
    await w.epoch(1);
    await rpc(c, 'leave', { workerId: b, finished: false });
    const m = await w.epoch(2);
    assert.equal(m.stop, true);
    assert.equal(m.finished, false);
    assert.equal(m.reason, '1 workers left, fewer than --min-workers 2');
    assert.deepEqual(await coord.done, { finished: false, reason: 'b left; 1 workers left, fewer than --min-workers 2' });
    await until('stream end', () => w.ended);
    await refused(rpc(c, 'join', joinRequest('c')), grpc.status.FAILED_PRECONDITION, 'the job has ended');
  });
});

test('every member leaving finished: stop with finished=true, done finished; events logged as JSONL', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vitreg-coord-'));
  const events = join(dir, 'events.jsonl');
  try {
    await withJob({ minWorkers: 2, maxWorkers: 2, eventsPath: events }, async ({ client, coord }) => {
      const c = client();
      const a = await joinAs(c, 'a');
      const b = await joinAs(c, 'b');
      const w = watch(c, a);
      await w.epoch(1);
      await Promise.all([a, b].map((id) => rpc(c, 'commitStep', { workerId: id, epoch: 1, step: 1, ranks: [] })));
      await rpc(c, 'reportMetrics', { workerId: a, step: 1, json: '{"val_acc":0.5}' });
      await refused(rpc(c, 'reportMetrics', { workerId: a, step: 1, json: 'nan' }), grpc.status.INVALID_ARGUMENT, /not JSON/);
      await rpc(c, 'leave', { workerId: a, finished: true });
      await sleep(30);
      assert.equal(w.got.length, 1, 'one finished member is not the end');
      await rpc(c, 'leave', { workerId: b, finished: true });
      const m = await w.epoch(2);
      assert.equal(m.stop, true);
      assert.equal(m.finished, true);
      assert.equal(m.committedStep, 1);
      assert.deepEqual(await coord.done, { finished: true, reason: 'every worker finished' });
    });
    const lines = readFileSync(events, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    for (const l of lines) assert.ok(!Number.isNaN(Date.parse(l.time)));
    assert.deepEqual(
      lines.map((l) => l.event),
      ['start', 'join', 'join', 'membership', 'commit', 'metrics', 'refused', 'leave', 'leave', 'membership', 'finish'],
    );
    assert.deepEqual(lines[5].metrics, { val_acc: 0.5 });
    assert.equal(lines[10].finished, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
