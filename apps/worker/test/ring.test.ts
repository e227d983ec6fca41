import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { FrameParser, Inbox, ProtocolError, encodeHeader, type Frame } from '../src/frames.js';
import { TcpOutLink } from '../src/links.js';
import { ringAllReduce, ringBroadcast, type RingIO } from '../src/ring.js';
import { expandHostlist, launchInfo, selectDevice } from '../src/env.js';
import { decodeState, encodeState } from '../src/state-codec.js';

/** P ring positions in this process, linked by real loopback TCP sockets (position i -> i + 1). */
async function ring(P: number, maxPayload = 1 << 20): Promise<{ io: RingIO[]; close: () => void }> {
  const inboxes = Array.from({ length: P }, () => new Inbox());
  const servers: net.Server[] = [];
  const sockets: net.Socket[] = [];
  const outs: TcpOutLink[] = [];
  for (let i = 0; i < P; i++) {
    const inbox = inboxes[i]!;
    const server = net.createServer((s) => {
      sockets.push(s);
      const parser = new FrameParser((f: Frame) => inbox.push(f), maxPayload);
      s.on('data', (b) => {
        try {
          parser.push(b);
        } catch (err) {
          inbox.fail(err as Error);
          s.destroy();
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push(server);
  }
  for (let i = 0; i < P; i++) {
    const port = (servers[(i + 1) % P]!.address() as net.AddressInfo).port;
    const s = await new Promise<net.Socket>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => resolve(c));
    });
    outs.push(new TcpOutLink(s));
  }
  const io = Array.from({ length: P }, (_, i) => ({ out: outs[i], inbox: inboxes[i], epoch: 1, position: i, size: P }));
  return {
    io,
    close: () => {
      for (const o of outs) o.close();
      for (const s of sockets) s.destroy();
      for (const s of servers) s.close();
    },
  };
}

test('ring all-reduce over TCP: 3 positions, several buckets, segments and chunks; sums exact on integers, bit-identical on every position', async () => {
  const P = 3;
  const n = 100_003; // not a multiple of P, of the chunk or of the bucket
  const opts = { chunkBytes: 4096, bucketBytes: 4 * 30_000 };
  const { io, close } = await ring(P);
  try {
    // Integers: every float32 sum is exact, so the result must equal the naive sum.
    const ints = Array.from({ length: P }, (_, r) => Float32Array.from({ length: n }, (_, i) => ((i * 7 + r * 13) % 1000) - 500));
    const expected = Float32Array.from({ length: n }, (_, i) => ints.reduce((a, d) => a + d[i]!, 0));
    await Promise.all(io.map((x, r) => ringAllReduce(x, ints[r]!, 0, 5, opts)));
    for (let r = 0; r < P; r++) assert.deepEqual(ints[r], expected, `position ${r}`);
    // Fractions: rounding depends on the order, but every position holds the same bits, within 1e-6 of the float64 sum.
    const fr = Array.from({ length: P }, (_, r) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * (r + 1)) * 1e3));
    const exact = Array.from({ length: n }, (_, i) => fr.reduce((a, d) => a + d[i]!, 0));
    await Promise.all(io.map((x, r) => ringAllReduce(x, fr[r]!, 1, 5, opts)));
    for (let r = 1; r < P; r++)
      assert.ok(Buffer.from(fr[r]!.buffer).equals(Buffer.from(fr[0]!.buffer)), `position ${r} differs from position 0`);
    for (let i = 0; i < n; i += 97) assert.ok(Math.abs(fr[0]![i]! - exact[i]!) <= 1e-6 * 3e3, `index ${i}: ${fr[0]![i]} vs ${exact[i]}`);
    // Broadcast: position 0's bytes everywhere.
    const bytes = Uint8Array.from({ length: 10_001 }, (_, i) => (i * 31) % 251);
    const got = await Promise.all(io.map((x, r) => ringBroadcast(x, r === 0 ? bytes : null, 2, 5, opts)));
    for (const g of got) assert.deepEqual(g, bytes);
  } finally {
    close();
  }
});

test('ring all-reduce: a frame of the wrong step or size is a ProtocolError naming what was expected', async () => {
  const inbox = new Inbox();
  const io: RingIO = {
    out: { send: async () => undefined, ready: async () => undefined, close: () => undefined },
    inbox,
    epoch: 4,
    position: 1,
    size: 2,
  };
  inbox.push({ epoch: 4, op: 0, step: 9, phase: 0, index: 0, offset: 0, data: new Uint8Array(8) });
  await assert.rejects(
    ringAllReduce(io, new Float32Array(4), 0, 3, { chunkBytes: 1024, bucketBytes: 1 << 20 }),
    (err: Error) =>
      err instanceof ProtocolError &&
      /unexpected chunk \(epoch 4, op 0, step 9, phase 0, chunk 0\); expected epoch 4, op 0, step 3/.test(err.message),
  );
  const inbox2 = new Inbox();
  inbox2.push({ epoch: 4, op: 0, step: 3, phase: 0, index: 0, offset: 0, data: new Uint8Array(12) });
  await assert.rejects(
    ringAllReduce({ ...io, inbox: inbox2 }, new Float32Array(4), 0, 3, { chunkBytes: 1024, bucketBytes: 1 << 20 }),
    /chunk 0 of phase 0 has 12 bytes at offset 0, expected 8 at 0/,
  );
});

test('frame parser: frames split anywhere are reassembled; a bad magic or an oversized frame is refused', () => {
  const got: Frame[] = [];
  const p = new FrameParser((f) => got.push(f), 64);
  const payload = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
  const wire = Buffer.concat([
    encodeHeader({ epoch: 2, op: 3, step: 4, phase: 5, index: 6, offset: 7 }, 8),
    payload,
    encodeHeader({ epoch: 2, op: 4, step: 4, phase: 0, index: 0, offset: 0 }, 0),
  ]);
  for (let i = 0; i < wire.length; i += 5) p.push(wire.subarray(i, i + 5));
  assert.equal(got.length, 2);
  assert.deepEqual(
    { ...got[0]!, data: Array.from(got[0]!.data) },
    { epoch: 2, op: 3, step: 4, phase: 5, index: 6, offset: 7, data: [1, 2, 3, 4, 5, 6, 7, 8] },
  );
  assert.equal(got[0]!.data.byteOffset, 0);
  assert.throws(() => new FrameParser(() => undefined, 64).push(Buffer.alloc(32, 1)), /without the VRG1 magic/);
  assert.throws(
    () => new FrameParser(() => undefined, 64).push(encodeHeader({ epoch: 0, op: 0, step: 0, phase: 0, index: 0, offset: 0 }, 65)),
    /frame of 65 bytes, more than the 64 allowed/,
  );
});

test('launcher variables: torchrun, Slurm (hostlist expanded), Kubernetes Indexed Job; CUDA device per LOCAL_RANK', () => {
  assert.deepEqual(expandHostlist('gpu[01-03,07],login,n[8-9]x'), ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'login', 'n8x', 'n9x']);
  assert.throws(() => expandHostlist('a[1-'), /unbalanced/);
  assert.deepEqual(
    launchInfo({ RANK: '1', WORLD_SIZE: '4', LOCAL_RANK: '1', MASTER_ADDR: 'h0', MASTER_PORT: '1234', TORCHELASTIC_RUN_ID: 'j' }),
    { launcher: 'torchrun', rank: 1, worldSize: 4, localRank: 1, masterAddr: 'h0', masterPort: 1234, jobId: 'j' },
  );
  assert.deepEqual(
    launchInfo({ SLURM_PROCID: '5', SLURM_NTASKS: '8', SLURM_LOCALID: '1', SLURM_JOB_NODELIST: 'node[03-04]', SLURM_JOB_ID: '77' }),
    { launcher: 'slurm', rank: 5, worldSize: 8, localRank: 1, masterAddr: 'node03', masterPort: 29500, jobId: '77' },
  );
  assert.equal(launchInfo({ JOB_COMPLETION_INDEX: '2', WORLD_SIZE: '3', MASTER_ADDR: 'job-0.svc' }).launcher, 'kubernetes');
  // torchrun's static rendezvous holds MASTER_PORT with its own store: the coordinator takes the next one.
  assert.equal(launchInfo({ RANK: '0', MASTER_PORT: '29500', TORCHELASTIC_USE_AGENT_STORE: 'True' }).masterPort, 29501);
  assert.throws(() => launchInfo({ RANK: 'x' }), /RANK: expected a non-negative integer, got "x"/);
  const env: NodeJS.ProcessEnv = { CUDA_VISIBLE_DEVICES: '4,5,6' };
  assert.equal(selectDevice(1, env), 'cuda:5');
  assert.equal(env.CUDA_VISIBLE_DEVICES, '5');
  const bare: NodeJS.ProcessEnv = {};
  assert.equal(selectDevice(2, bare), 'cuda:2');
  assert.equal(bare.CUDA_VISIBLE_DEVICES, '2');
  assert.throws(() => selectDevice(3, { CUDA_VISIBLE_DEVICES: '0,1' }), /LOCAL_RANK 3 but CUDA_VISIBLE_DEVICES lists 2 devices/);
});

test('broadcast state codec: names, shapes, meta and values survive', () => {
  const state = { a: Float32Array.from([1, 2, 3]), 'b.c': Float32Array.from([-0.5]) };
  const back = decodeState(encodeState(state, { step: 7, cursor: 42 }));
  assert.deepEqual(back.meta, { step: 7, cursor: 42 });
  assert.deepEqual(Object.keys(back.state), ['a', 'b.c']);
  assert.deepEqual(Array.from(back.state.a!), [1, 2, 3]);
  assert.deepEqual(Array.from(back.state['b.c']!), [-0.5]);
  // The received payload is decoded in place (views, no second copy); at an odd offset, into copies.
  const bytes = encodeState(state, null);
  assert.equal(decodeState(bytes).state.a!.buffer, bytes.buffer);
  const odd = new Uint8Array(bytes.length + 1);
  odd.set(bytes, 1);
  const copied = decodeState(odd.subarray(1));
  assert.notEqual(copied.state.a!.buffer, odd.buffer);
  assert.deepEqual(Array.from(copied.state.a!), [1, 2, 3]);
  assert.deepEqual(Array.from(copied.state['b.c']!), [-0.5]);
});
