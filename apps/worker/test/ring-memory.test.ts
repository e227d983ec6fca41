/**
 * The ring collectives on an in-memory ring (issue 22, from mutation testing of ring.ts): every
 * position's link hands a copy of each frame to its successor's inbox on a later turn (as a socket reads
 * the bytes it was given), so the ring's own arithmetic is checked over many shapes in milliseconds. Sums against the naive sum (integers, exact
 * in float32 and on a bf16 wire), the bytes on the wire, broadcasts of every length around the chunk
 * size, and each refusal naming what was expected.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Inbox, ProtocolError, type Frame, type FrameHeader } from '../src/frames.js';
import { bf16Bits, ringAllReduce, ringBroadcast, type RingIO, type RingOptions } from '../src/ring.js';

interface MemoryRing {
  io: RingIO[];
  /** Payload bytes each position sent. */
  sent: number[];
  /** Frame headers each position sent, in order. */
  headers: FrameHeader[][];
}

/** P positions, position i's link delivering a copy of each frame to position i + 1's inbox. */
function memoryRing(P: number, epoch = 1): MemoryRing {
  const inboxes = Array.from({ length: P }, () => new Inbox());
  const sent = new Array<number>(P).fill(0);
  const headers: FrameHeader[][] = Array.from({ length: P }, () => []);
  const io = inboxes.map((inbox, i) => ({
    out: {
      ready: async () => undefined,
      close: () => undefined,
      // As a socket's write: the bytes are read on a later turn (the caller must not change them until
      // the send resolves), then delivered.
      send: (h: FrameHeader, data: Uint8Array) =>
        new Promise<void>((resolve) => {
          sent[i] += data.byteLength;
          headers[i]!.push({ ...h });
          setImmediate(() => {
            inboxes[(i + 1) % P]!.push({ ...h, data: data.slice() });
            resolve();
          });
        }),
    },
    inbox,
    epoch,
    position: i,
    size: P,
  }));
  return { io, sent, headers };
}

/** Integers in [-lim, lim], different at every position and index. */
function ints(P: number, n: number, lim: number): Float32Array[] {
  return Array.from({ length: P }, (_, r) =>
    Float32Array.from({ length: n }, (_, i) => ((i * 7919 + r * 104729 + 13) % (2 * lim + 1)) - lim),
  );
}

const naiveSum = (xs: Float32Array[]) => Float32Array.from({ length: xs[0]!.length }, (_, i) => xs.reduce((a, x) => a + x[i]!, 0));

/** The bfloat16 nearest to x (ties to even), computed in float64 arithmetic, for finite normal x. */
function bf16Nearest(x: number): number {
  if (x === 0) return 0;
  const e = Math.floor(Math.log2(Math.abs(x)));
  const ulp = 2 ** (e - 7);
  const q = x / ulp;
  const f = Math.floor(q);
  const r = q - f === 0.5 ? (f % 2 === 0 ? f : f + 1) : Math.round(q);
  return r * ulp;
}

test('all-reduce sums exactly on every position: 2 to 5 positions, lengths below, at and above P, chunks of 1 float up, several buckets', async () => {
  const cases: [number, number, RingOptions][] = [];
  for (const P of [2, 3, 4, 5])
    for (const n of [1, P - 1, P, P + 1, 37, 1000])
      for (const o of [
        { chunkBytes: 4, bucketBytes: 1 << 20 },
        { chunkBytes: 12, bucketBytes: 40 },
        { chunkBytes: 4096, bucketBytes: 4 },
        { chunkBytes: 2, bucketBytes: 1 << 20 },
      ])
        if (n > 0) cases.push([P, n, o]);
  for (const [P, n, opts] of cases) {
    const ring = memoryRing(P);
    const xs = ints(P, n, 1000);
    const want = naiveSum(xs);
    await Promise.all(ring.io.map((io, r) => ringAllReduce(io, xs[r]!, 7, 3, opts)));
    for (let r = 0; r < P; r++) assert.deepEqual(xs[r], want, `P ${P}, n ${n}, ${JSON.stringify(opts)}: position ${r}`);
  }
});

test('all-reduce on a bf16 wire: half the bytes of float32; bfloat16-exact integer sums exact; one rank holding values gives their bfloat16 rounding', async () => {
  for (const P of [2, 3, 4]) {
    const n = 301;
    const opts = { chunkBytes: 64, bucketBytes: 4 * 100 };
    // Sums of integers below 256 in magnitude are bfloat16-exact at every hop.
    const f32 = memoryRing(P);
    const a = ints(P, n, Math.floor(255 / P));
    const want = naiveSum(a);
    await Promise.all(f32.io.map((io, r) => ringAllReduce(io, a[r]!, 0, 1, opts)));
    const bf = memoryRing(P);
    const b = ints(P, n, Math.floor(255 / P));
    await Promise.all(bf.io.map((io, r) => ringAllReduce(io, b[r]!, 0, 1, { ...opts, wire: 'bf16' })));
    for (let r = 0; r < P; r++) {
      assert.deepEqual(a[r], want, `f32, P ${P}, position ${r}`);
      assert.deepEqual(b[r], want, `bf16, P ${P}, position ${r}`);
      assert.equal(bf.sent[r]! * 2, f32.sent[r]!, `P ${P}, position ${r}: bf16 sends half the bytes`);
    }
    // Every position sends 2 (P - 1) / P of the data: each bucket's segments, (P - 1) twice.
    const perBucket = (len: number) => {
      const base = Math.floor(len / P);
      const seg = (i: number) => base + (i < len % P ? 1 : 0);
      return seg;
    };
    for (let r = 0; r < P; r++) {
      let floats = 0;
      for (let s = 0; s < n; s += 100) {
        const seg = perBucket(Math.min(100, n - s));
        for (let k = 0; k < P - 1; k++) floats += seg((((r - k) % P) + P) % P) + seg((((r + 1 - k) % P) + P) % P);
      }
      assert.equal(f32.sent[r], 4 * floats, `P ${P}, position ${r}: float32 bytes sent`);
    }
    // Fractions held by one rank only: each hop adds zeros, so every position ends with bf16(x).
    for (let holder = 0; holder < P; holder++) {
      const ring = memoryRing(P);
      const xs = Array.from({ length: P }, (_, r) =>
        Float32Array.from({ length: n }, (_, i) => (r === holder ? Math.fround((Math.sin(i + 1) * 1000) / (i + 3)) : 0)),
      );
      const orig = Float32Array.from(xs[holder]!);
      await Promise.all(ring.io.map((io, r) => ringAllReduce(io, xs[r]!, 0, 1, { ...opts, wire: 'bf16' })));
      for (let r = 0; r < P; r++)
        for (let i = 0; i < n; i++)
          assert.equal(xs[r]![i], bf16Nearest(orig[i]!), `P ${P}, holder ${holder}, position ${r}, index ${i}: ${orig[i]}`);
    }
  }
});

test('all-reduce: frames are tagged with the epoch, op, step, phase, chunk and byte offset in the segment', async () => {
  const P = 3;
  const ring = memoryRing(P, 6);
  const xs = ints(P, 10, 9);
  await Promise.all(ring.io.map((io, r) => ringAllReduce(io, xs[r]!, 4, 11, { chunkBytes: 8, bucketBytes: 1 << 20 })));
  // Segments of 10 floats over 3 positions: 4, 3, 3; chunks of 2 floats. Position 0 first sends its own
  // segment 0 (chunks at 0, 8 bytes), then segment 2 (reduce-scatter), then segments 1 and 0 (all-gather).
  const h0 = ring.headers[0]!;
  assert.ok(h0.every((h) => h.epoch === 6 && h.op === 4 && h.step === 11));
  const byPhase = (k: number) => h0.filter((h) => h.phase === k).map((h) => [h.index, h.offset]);
  assert.deepEqual(byPhase(0), [
    [0, 0],
    [1, 8],
  ]);
  assert.deepEqual(byPhase(1), [
    [0, 0],
    [1, 8],
  ]);
  assert.deepEqual(byPhase(2), [
    [0, 0],
    [1, 8],
  ]);
  assert.deepEqual(byPhase(3), [
    [0, 0],
    [1, 8],
  ]);
  assert.equal(h0.length, 8);
  // Position 1 sends segment 1 (3 floats: chunks of 2 and 1) first.
  assert.deepEqual(
    ring.headers[1]!.filter((h) => h.phase === 0).map((h) => [h.index, h.offset]),
    [
      [0, 0],
      [1, 8],
    ],
  );
});

test('one position: nothing is sent and the data stays; no link to the neighbours is an error', async () => {
  const x = Float32Array.from([1.5, -2]);
  await ringAllReduce({ epoch: 1, position: 0, size: 1 }, x, 0, 0, { chunkBytes: 4, bucketBytes: 4 });
  assert.deepEqual(x, Float32Array.from([1.5, -2]));
  const b = Uint8Array.from([1, 2, 3]);
  assert.equal(await ringBroadcast({ epoch: 1, position: 0, size: 1 }, b, 0, 0, { chunkBytes: 4, bucketBytes: 4 }), b);
  await assert.rejects(ringAllReduce({ epoch: 1, position: 0, size: 2 }, x, 0, 0, { chunkBytes: 4, bucketBytes: 4 }), {
    message: 'ringAllReduce: no link to the ring neighbours',
  });
  await assert.rejects(ringBroadcast({ epoch: 1, position: 1, size: 2 }, null, 0, 0, { chunkBytes: 4, bucketBytes: 4 }), {
    message: 'ringBroadcast: no link to the ring neighbours',
  });
  const ring = memoryRing(2);
  await assert.rejects(ringBroadcast(ring.io[0]!, null, 0, 0, { chunkBytes: 4, bucketBytes: 4 }), {
    message: 'ringBroadcast: position 0 has nothing to send',
  });
});

test('broadcast: every length around the chunk size reaches every position; the length frame goes round once', async () => {
  for (const P of [2, 3, 4])
    for (const len of [0, 1, 7, 8, 9, 16, 17, 100]) {
      const ring = memoryRing(P);
      const bytes = Uint8Array.from({ length: len }, (_, i) => (i * 37 + 11) & 255);
      const got = await Promise.all(
        ring.io.map((io, r) => ringBroadcast(io, r === 0 ? bytes : null, 2, 9, { chunkBytes: 8, bucketBytes: 0 })),
      );
      for (let r = 0; r < P; r++) assert.deepEqual(got[r], bytes, `P ${P}, ${len} bytes, position ${r}`);
      // Every position sends the length frame; all but the last also every chunk, at its offset.
      const chunks = Math.ceil(len / 8);
      for (let r = 0; r < P; r++) {
        const h = ring.headers[r]!;
        assert.deepEqual(h[0], { epoch: 1, op: 2, step: 9, phase: 0, index: 0, offset: 0 });
        const data = h.filter((x) => x.phase === 1);
        assert.equal(data.length, r === P - 1 ? 0 : chunks, `P ${P}, ${len} bytes, position ${r}: chunks sent`);
        data.forEach((x, i) => assert.deepEqual([x.index, x.offset], [i, 8 * i]));
      }
    }
});

test('refusals name what was expected', async () => {
  const opts = { chunkBytes: 8, bucketBytes: 1 << 20 };
  const lone = (position: number, frames: Frame[], extra: Partial<RingOptions> = {}) => {
    const inbox = new Inbox();
    for (const f of frames) inbox.push(f);
    const io: RingIO = {
      out: { send: async () => undefined, ready: async () => undefined, close: () => undefined },
      inbox,
      epoch: 2,
      position,
      size: 2,
    };
    return { io, opts: { ...opts, ...extra } };
  };
  const frame = (h: Partial<FrameHeader>, bytes: number): Frame => ({
    epoch: 2,
    op: 0,
    step: 5,
    phase: 0,
    index: 0,
    offset: 0,
    ...h,
    data: new Uint8Array(bytes),
  });
  // 4 floats over 2 positions: one chunk of 2 floats a phase.
  let t = lone(1, [frame({}, 8), frame({}, 8)]);
  await assert.rejects(ringAllReduce(t.io, new Float32Array(4), 0, 5, t.opts), (e: Error) => {
    assert.ok(e instanceof ProtocolError);
    assert.equal(
      e.message,
      'all-reduce: unexpected chunk (epoch 2, op 0, step 5, phase 0, chunk 0); expected epoch 2, op 0, step 5, a chunk of phases 0-1 not yet received',
    );
    return true;
  });
  for (const bad of [{ epoch: 3 }, { op: 1 }, { phase: 2 }, { index: 1 }]) {
    t = lone(1, [frame(bad, 8)]);
    await assert.rejects(ringAllReduce(t.io, new Float32Array(4), 0, 5, t.opts), ProtocolError, JSON.stringify(bad));
  }
  t = lone(1, [frame({ offset: 4 }, 8)]);
  await assert.rejects(ringAllReduce(t.io, new Float32Array(4), 0, 5, t.opts), {
    message:
      'all-reduce: chunk 0 of phase 0 has 8 bytes at offset 4, expected 8 at 0 (do all workers train the same model and --grad-compression?)',
  });
  t = lone(1, [frame({}, 8)], { wire: 'bf16' });
  await assert.rejects(ringAllReduce(t.io, new Float32Array(4), 0, 5, t.opts), /has 8 bytes at offset 0, expected 4 at 0/);
  // Broadcast: the length frame first, exactly; then chunks in order.
  t = lone(1, [frame({ step: 4 }, 8)]);
  await assert.rejects(ringBroadcast(t.io, null, 0, 5, t.opts), {
    message: 'broadcast: expected step 5, got 4 (epoch 2, op 0, step 4, phase 0, chunk 0)',
  });
  t = lone(1, [frame({}, 4)]);
  await assert.rejects(ringBroadcast(t.io, null, 0, 5, t.opts), {
    message: 'broadcast: chunk 0 of phase 0 has 4 bytes, expected 8 (do all workers train the same model?)',
  });
  const negative = frame({}, 8);
  new DataView(negative.data.buffer).setFloat64(0, -1, true);
  t = lone(1, [negative]);
  await assert.rejects(
    ringBroadcast(t.io, null, 0, 5, t.opts),
    (e: Error) => e instanceof ProtocolError && e.message === 'broadcast: bad length -1',
  );
});

test('bf16Bits: ties to even, infinities kept, a NaN stays a (quiet) NaN, the largest floats overflow to infinity', () => {
  const cases: [number, number][] = [
    [0x3f808000, 0x3f80], // a tie, even: down
    [0x3f818000, 0x3f82], // a tie, odd: up to even
    [0x3f818001, 0x3f82],
    [0x3f817fff, 0x3f81],
    [0xbf818000, 0xbf82], // negative: the same on the magnitude
    [0x7f800000, 0x7f80], // +infinity
    [0xff800000, 0xff80], // -infinity
    [0x7f800001, 0x7fc0], // a NaN whose payload lies in the dropped bits: still NaN, not infinity
    [0x7fc00000, 0x7fc0],
    [0x7f7fffff, 0x7f80], // the largest float rounds to infinity
  ];
  for (const [u, want] of cases) assert.equal(bf16Bits(u), want, `bf16Bits(0x${u.toString(16)})`);
});

test('bf16 wire, 2 positions, several chunks per segment: the owner adds the bfloat16 it received to its own float32 value, then rounds once', async () => {
  const n = 37;
  const ring = memoryRing(2);
  const x = [0, 1].map((r) =>
    Float32Array.from({ length: n }, (_, i) => Math.fround(Math.sin(3 * i + r + 1) * 2.7 + (r ? 0.013 : -0.007))),
  );
  const orig = x.map((a) => Float32Array.from(a));
  // Segment 0 (floats 0-18) is completed by position 1, segment 1 (19-36) by position 0.
  const want = Array.from({ length: n }, (_, i) => {
    const [own, other] = i < 19 ? [orig[1]![i]!, orig[0]![i]!] : [orig[0]![i]!, orig[1]![i]!];
    return bf16Nearest(Math.fround(own + bf16Nearest(other)));
  });
  await Promise.all(ring.io.map((io, r) => ringAllReduce(io, x[r]!, 0, 1, { chunkBytes: 6, bucketBytes: 1 << 20, wire: 'bf16' })));
  for (let r = 0; r < 2; r++) for (let i = 0; i < n; i++) assert.equal(x[r]![i], want[i], `position ${r}, index ${i}`);
});

test('a position with a successor link but no inbox (or the reverse) is refused', async () => {
  const ring = memoryRing(2);
  const opts = { chunkBytes: 4, bucketBytes: 4 };
  const x = new Float32Array(2);
  await assert.rejects(ringAllReduce({ ...ring.io[0]!, inbox: undefined }, x, 0, 0, opts), {
    message: 'ringAllReduce: no link to the ring neighbours',
  });
  await assert.rejects(ringAllReduce({ ...ring.io[0]!, out: undefined }, x, 0, 0, opts), {
    message: 'ringAllReduce: no link to the ring neighbours',
  });
  await assert.rejects(ringBroadcast({ ...ring.io[1]!, inbox: undefined }, null, 0, 0, opts), {
    message: 'ringBroadcast: no link to the ring neighbours',
  });
  await assert.rejects(ringBroadcast({ ...ring.io[1]!, out: undefined }, null, 0, 0, opts), {
    message: 'ringBroadcast: no link to the ring neighbours',
  });
});
