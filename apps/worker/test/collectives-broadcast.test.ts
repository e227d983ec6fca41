/**
 * The agent's broadcast hands rank 0's state to its training threads without an extra copy where it
 * can: a process of one thread (one worker per GPU) gets the received bytes themselves, transferred; a
 * process of several threads one SharedArrayBuffer copy for all of them. Two ring positions over an
 * in-memory link (collectives-helpers.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Collectives } from '../src/collectives.js';
import { recordingHost as host, twoPositions, until, type Post } from './collectives-helpers.js';

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
  await until(() => posts0.length >= 1 && posts1.length >= receiverThreads, failed);
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
