/**
 * The agent's all-reduce writes the mean into each training thread's own view of a SharedArrayBuffer (in
 * place: nothing outside the view changes, the result carries no data) and refuses any other buffer. The
 * thread's side (GrpcRingSync) copies its buffers into a shared stage kept from call to call (the engines'
 * gradients cannot be shared: onnxruntime-node takes no shared tensor). The means are checked against a
 * sum written out here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageChannel } from 'node:worker_threads';
import { Collectives } from '../src/collectives.js';
import { GrpcRingSync } from '../src/ring-sync.js';
import type { AgentToThread, ThreadToAgent } from '../src/messages.js';
import { recordingHost, twoPositions, until, type Post } from './collectives-helpers.js';

const N = 1000;
/** Rank r's values: multiples of 1/4, so every sum and the mean over 2 or 4 ranks are exact in float32. */
const values = (r: number) => Float32Array.from({ length: N }, (_, i) => ((r * 7 + i * 3) % 41) / 4 - 5);
/** The mean over ranks 0..W-1, element by element, in float64. */
function mean(W: number): Float32Array {
  const out = new Float32Array(N);
  for (let i = 0; i < N; i++) {
    let s = 0;
    for (let r = 0; r < W; r++) s += values(r)[i]!;
    out[i] = s / W;
  }
  return out;
}

const GUARD = 8;
/** Rank r's values in a view of a SharedArrayBuffer with GUARD sevens on either side. */
function sharedView(r: number): Float32Array {
  const all = new Float32Array(new SharedArrayBuffer(4 * (N + 2 * GUARD))).fill(7);
  const view = all.subarray(GUARD, GUARD + N);
  view.set(values(r));
  return view;
}

/** Runs one all-reduce on two positions of `threads` threads, each rank handing over `view(rank)`. */
async function allReduce(threads: number, view: (rank: number) => Float32Array) {
  const states = twoPositions(2 * threads);
  const posts: Post[][] = [[], []];
  const failed: Error[] = [];
  const ring = { chunkBytes: 256, bucketBytes: 1024 };
  const data: Float32Array[] = [];
  states.forEach((st, p) => {
    const c = new Collectives(recordingHost(st, threads, posts[p]!, failed), ring);
    for (let t = 0; t < threads; t++) {
      const r = p * threads + t;
      data[r] = view(r);
      c.request(t, { kind: 'allReduce', thread: t, seq: 0, membership: 1, step: 1, data: data[r] });
    }
  });
  await until(() => (posts[0]!.length === threads && posts[1]!.length === threads) || failed.length > 0, failed);
  return { data, posts: posts.flat(), failed, expected: mean(2 * threads) };
}

for (const threads of [1, 2]) {
  test(`${threads} thread${threads > 1 ? 's' : ''} per process: the mean lands in each thread's shared view, nothing outside it changes, the result carries no data`, async () => {
    const { data, posts, failed, expected } = await allReduce(threads, sharedView);
    assert.deepEqual(failed, []);
    for (const [r, view] of data.entries()) {
      assert.deepEqual(Float32Array.from(view), expected, `rank ${r}'s view holds the mean`);
      const all = new Float32Array(view.buffer);
      assert.deepEqual(
        [...all.subarray(0, GUARD), ...all.subarray(GUARD + N)],
        new Array(2 * GUARD).fill(7),
        'nothing outside the view changed',
      );
    }
    assert.equal(posts.length, 2 * threads);
    for (const p of posts) {
      assert.deepEqual(p.msg, { kind: 'result', seq: 0 });
      assert.equal(p.transfer, undefined);
    }
  });
}

test('a buffer that is not shared is refused, naming the thread', async () => {
  const { posts, failed } = await allReduce(2, (r) => (r === 1 ? values(r) : sharedView(r)));
  assert.match(failed[0]?.message ?? '', /thread 1 sent an all-reduce buffer that is not a SharedArrayBuffer/);
  assert.equal(posts.filter((p) => p.thread === 1).length, 0);
});

/** A GrpcRingSync on one end of a channel, and the messages arriving at the other (the agent's) end. */
function threadSide() {
  const { port1, port2 } = new MessageChannel();
  const got: ThreadToAgent[] = [];
  port2.on('message', (m: ThreadToAgent) => got.push(m));
  const sync = new GrpcRingSync(0, 0, 2, 1, port1);
  const close = () => {
    port1.close();
    port2.close();
  };
  return { sync, got, reply: (m: AgentToThread) => port2.postMessage(m), close };
}

test('GrpcRingSync: the buffers are copied into one shared stage, kept from call to call, and copied back', async () => {
  const { sync, got, reply, close } = threadSide();
  try {
    const sab = new SharedArrayBuffer(4 * 40);
    // Views of one SharedArrayBuffer with a gap between them, then plain arrays (the engines' own).
    const calls = [
      [new Float32Array(sab, 0, 10), new Float32Array(sab, 44, 20)],
      [new Float32Array(10), new Float32Array(20)],
    ];
    const stages: ArrayBufferLike[] = [];
    for (const [c, buffers] of calls.entries()) {
      buffers.forEach((b, i) => b.fill(i + 1));
      const done = sync.allReduce(buffers);
      await until(() => got.length === c + 1, []);
      const m = got[c]!;
      assert.ok(m.kind === 'allReduce');
      assert.ok(m.data.buffer instanceof SharedArrayBuffer && m.data.buffer !== sab, 'a shared copy');
      assert.deepEqual([...m.data], [...new Array(10).fill(1), ...new Array(20).fill(2)]);
      stages.push(m.data.buffer);
      m.data.set(Float32Array.from({ length: 30 }, (_, i) => i + c));
      reply({ kind: 'result', seq: m.seq });
      await done;
      assert.deepEqual(
        [...buffers[0]!, ...buffers[1]!],
        Array.from({ length: 30 }, (_, i) => i + c),
      );
    }
    assert.equal(new Float32Array(sab)[10], 0, 'the gap untouched');
    // Each message brings its own SharedArrayBuffer object: the same memory shows through the first one.
    assert.deepEqual(
      [...new Float32Array(stages[0]!)],
      Array.from({ length: 30 }, (_, i) => i + 1),
      'the same stage both times',
    );
  } finally {
    close();
  }
});
