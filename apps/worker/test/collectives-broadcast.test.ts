/**
 * The agent's broadcast hands rank 0's state to its training threads without an extra copy where it
 * can: a process of one thread (one worker per GPU) gets the received bytes themselves, transferred; a
 * process of several threads one SharedArrayBuffer copy for all of them. Two ring positions over an
 * in-memory link (as ring-memory.test.ts), each with its own Collectives and a host that records posts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Membership } from '@vitreg/proto';
import { Collectives, type CollectivesHost } from '../src/collectives.js';
import type { EpochState } from '../src/epoch.js';
import { Inbox, type FrameHeader } from '../src/frames.js';
import type { AgentToThread } from '../src/messages.js';

interface Post {
  thread: number;
  msg: AgentToThread;
  transfer?: ArrayBuffer[];
}

/** Two epoch states whose links deliver a copy of each frame to the other position's inbox on a later turn. */
function twoPositions(): EpochState[] {
  const inboxes = [new Inbox(), new Inbox()];
  const m = { epoch: 1, committedStep: 0, members: [{}, {}] } as unknown as Membership;
  return inboxes.map((inbox, i) => ({
    m,
    epoch: 1,
    position: i,
    firstRank: i,
    inbox,
    incoming: true,
    out: Promise.resolve({
      ready: async () => undefined,
      close: () => undefined,
      send: (h: FrameHeader, data: Uint8Array) =>
        new Promise<void>((resolve) =>
          setImmediate(() => {
            inboxes[(i + 1) % 2]!.push({ ...h, data: data.slice() });
            resolve();
          }),
        ),
    }) as unknown as EpochState['out'],
    aborted: null,
    closers: [],
    unreachable: '',
  }));
}

function host(st: EpochState, threads: number, posts: Post[], failed: Error[]): CollectivesHost {
  return {
    threads,
    current: () => st,
    post: (thread, msg, transfer) => posts.push({ thread, msg, transfer }),
    commitStep: () => Promise.reject(new Error('no commit here')),
    waitForEpoch: () => Promise.resolve(),
    membershipWaitMs: () => 1000,
    coordinatorTimeoutMs: 1000,
    reached: () => undefined,
    fail: (err) => failed.push(err),
    log: () => undefined,
  };
}

async function broadcast(receiverThreads: number): Promise<{ sent: Uint8Array; posts: Post[] }> {
  const [s0, s1] = twoPositions();
  const posts0: Post[] = [];
  const posts1: Post[] = [];
  const failed: Error[] = [];
  const ring = { chunkBytes: 1000, bucketBytes: 1 << 20 };
  const c0 = new Collectives(host(s0!, 1, posts0, failed), ring);
  const c1 = new Collectives(host(s1!, receiverThreads, posts1, failed), ring);
  const sent = Uint8Array.from({ length: 4567 }, (_, i) => (i * 31 + 7) % 251);
  c0.request(0, { kind: 'broadcast', thread: 0, seq: 0, membership: 1, step: 0, payload: sent.slice() });
  for (let t = 0; t < receiverThreads; t++) c1.request(t, { kind: 'broadcast', thread: t, seq: 0, membership: 1, step: 0 });
  for (let i = 0; i < 1000 && (posts0.length < 1 || posts1.length < receiverThreads) && failed.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 2));
  }
  assert.deepEqual(failed, []);
  assert.equal(posts0.length, 1, 'rank 0 gets its result');
  assert.equal(posts0[0]!.msg.kind === 'result' && posts0[0]!.msg.payload, undefined, 'rank 0 keeps its own state');
  return { sent, posts: posts1 };
}

test('one training thread: the received state is handed over itself (transferred, no copy)', async () => {
  const { sent, posts } = await broadcast(1);
  assert.equal(posts.length, 1);
  const { msg, transfer } = posts[0]!;
  assert.ok(msg.kind === 'result' && msg.payload);
  assert.deepEqual(msg.payload, sent);
  assert.ok(msg.payload.buffer instanceof ArrayBuffer && msg.payload.byteLength === msg.payload.buffer.byteLength);
  assert.deepEqual(transfer, [msg.payload.buffer], 'its whole buffer in the transfer list');
});

test('several training threads: one shared copy for all of them', async () => {
  const { sent, posts } = await broadcast(3);
  assert.deepEqual(
    posts.map((p) => p.thread),
    [0, 1, 2],
  );
  const first = posts[0]!.msg.kind === 'result' ? posts[0]!.msg.payload : undefined;
  assert.ok(first && first.buffer instanceof SharedArrayBuffer);
  assert.deepEqual(new Uint8Array(first), sent);
  for (const p of posts) {
    assert.ok(p.msg.kind === 'result');
    assert.equal(p.msg.payload, first, 'the same shared bytes');
    assert.equal(p.transfer, undefined);
  }
});
