/**
 * --grad-compression bf16: gradients on the ring as bfloat16 (src/ring.ts). The rounding (to nearest
 * even), the ring over real loopback sockets (half the bytes, bit-identical positions, sums of
 * integers exact, fractions within the rounding's bound), and whole jobs: 10 steps of 2 worker
 * processes with bf16 against float32 on the wire.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { loadWeights } from '@vitreg/registers';
import { Inbox, type FrameHeader, type OutLink } from '../src/frames.js';
import { TcpOutLink } from '../src/links.js';
import { acceptTcpLink } from '../src/incoming-link.js';
import { bf16Bits, ringAllReduce, type RingIO } from '../src/ring.js';
import { runLocalJob } from '../src/local.js';

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vitreg-bf16-'));
  await tf.setBackend('wasm');
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const bitsOf = (x: number) => ((f32[0] = x), u32[0]!);
const fromBits = (b: number) => ((u32[0] = b >>> 0), f32[0]!);
const bf16 = (x: number) => fromBits(bf16Bits(bitsOf(x)) << 16);

test('bf16 rounding: to nearest, ties to even; infinities, NaN and overflow as float32 to bfloat16 does (torch)', () => {
  assert.equal(bf16Bits(bitsOf(1)), 0x3f80);
  assert.equal(bf16(1 + 2 ** -8), 1, 'a tie goes to the even neighbour (down)');
  assert.equal(bf16(1 + 3 * 2 ** -8), 1 + 2 ** -6, 'a tie goes to the even neighbour (up)');
  assert.equal(bf16(1 + 2 ** -8 + 2 ** -20), 1 + 2 ** -7, 'above the tie goes up');
  assert.equal(bf16(-2.5), -2.5);
  assert.equal(bf16(0.1), 0.10009765625);
  assert.equal(bf16(3.4e38), Infinity, 'the largest floats round to infinity');
  assert.equal(bf16(-Infinity), -Infinity);
  assert.ok(Number.isNaN(bf16(NaN)));
  assert.equal(bf16Bits(0x7f800001), 0x7fc0, 'a signalling NaN stays a (quiet) NaN, not infinity');
  assert.equal(Object.is(bf16(-0), -0), true);
  assert.equal(bf16(2 ** -130), 2 ** -130, 'subnormals keep their top bits');
});

/** Counts the payload bytes an OutLink sends. */
class Counting implements OutLink {
  bytes = 0;
  constructor(private readonly link: OutLink) {}
  send(h: FrameHeader, data: Uint8Array): Promise<void> {
    this.bytes += data.byteLength;
    return this.link.send(h, data);
  }
  ready(): Promise<void> {
    return this.link.ready();
  }
  close(): void {
    this.link.close();
  }
}

/** P positions in this process linked by loopback TCP (position i -> i + 1) through the worker's links. */
async function ring(P: number): Promise<{ io: RingIO[]; outs: Counting[]; close: () => void }> {
  const inboxes = Array.from({ length: P }, () => new Inbox());
  const servers: net.Server[] = [];
  const links: net.Socket[] = [];
  for (let i = 0; i < P; i++) {
    const server = net.createServer((s) => links.push(acceptTcpLink(s, inboxes[i]!, { maxPayload: 1 << 20 })));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push(server);
  }
  const outs: Counting[] = [];
  for (let i = 0; i < P; i++) {
    const port = (servers[(i + 1) % P]!.address() as net.AddressInfo).port;
    const s = await new Promise<net.Socket>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => resolve(c));
    });
    await new Promise((r) => s.once('data', r));
    outs.push(new Counting(new TcpOutLink(s)));
  }
  const io = Array.from({ length: P }, (_, i) => ({ out: outs[i], inbox: inboxes[i], epoch: 1, position: i, size: P }));
  return {
    io,
    outs,
    close: () => {
      for (const o of outs) o.close();
      for (const l of links) l.destroy();
      for (const s of servers) s.close();
    },
  };
}

test('ring all-reduce on a bf16 wire: half the bytes of float32, every position bit-identical and bfloat16-exact, integer sums exact, fractions within the rounding bound', async () => {
  const P = 3;
  const n = 50_003;
  const { io, outs, close } = await ring(P);
  try {
    const opts = { chunkBytes: 4096, bucketBytes: 4 * 20_000 };
    const sent = () => outs.reduce((a, o) => a + o.bytes, 0);
    // Integers in [-64, 64): every partial sum has at most 8 significant bits, so bf16 is exact.
    const ints = Array.from({ length: P }, (_, r) => Float32Array.from({ length: n }, (_, i) => ((i * 7 + r * 13) % 128) - 64));
    const exact = Float32Array.from({ length: n }, (_, i) => ints.reduce((a, d) => a + d[i]!, 0));
    const copy = ints.map((d) => d.slice());
    await Promise.all(io.map((x, r) => ringAllReduce(x, copy[r]!, 0, 1, opts)));
    const f32Bytes = sent();
    await Promise.all(io.map((x, r) => ringAllReduce(x, ints[r]!, 1, 1, { ...opts, wire: 'bf16' })));
    assert.equal(sent() - f32Bytes, f32Bytes / 2, 'bf16 sends half the bytes');
    for (let r = 0; r < P; r++) assert.deepEqual(ints[r], exact, `position ${r}`);
    // Fractions: rounded, but the same bits everywhere, each value a bfloat16, close to the float64 sum.
    const fr = Array.from({ length: P }, (_, r) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * (r + 1) * 0.37)));
    const want = Array.from({ length: n }, (_, i) => fr.reduce((a, d) => a + d[i]!, 0));
    await Promise.all(io.map((x, r) => ringAllReduce(x, fr[r]!, 2, 1, { ...opts, wire: 'bf16' })));
    for (let r = 1; r < P; r++) assert.ok(Buffer.from(fr[r]!.buffer).equals(Buffer.from(fr[0]!.buffer)), `position ${r} differs`);
    const bits = new Uint32Array(fr[0]!.buffer);
    assert.ok(
      bits.every((b) => (b & 0xffff) === 0),
      'every value is a bfloat16',
    );
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(fr[0]![i]! - want[i]!));
    // P roundings of partial sums below P in size, each within half a bfloat16 step (2^-8 relative).
    assert.ok(worst <= P * P * 2 ** -8, `worst error ${worst}`);
  } finally {
    close();
  }
});

/** A 2-process tiny supervised job of 10 steps on loopback; `compression` on the worker command line. */
async function job(name: string, compression: 'none' | 'bf16') {
  const config = join(root, 'tiny.json');
  await writeFile(
    config,
    JSON.stringify({
      preset: 'tiny-supervised',
      model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0 },
      data: { train_size: 24, val_size: 8 },
      train: { steps: 10, batch_size: 4, eval_every: 0, checkpoint_every: 10 },
      optim: { warmup_steps: 2 },
    }),
  );
  const outDir = join(root, name);
  const r = await runLocalJob({
    nodes: 2,
    outDir,
    passThrough: false,
    trainArgs: ['--config', config, '--backend', 'wasm', '--engine', 'tfjs', '--no-progress'],
    workerArgs: ['--checksum', '--grad-compression', compression],
  });
  assert.ok(r.finished, JSON.stringify(r));
  const sums: string[] = [];
  for (const w of ['worker-0', 'worker-1']) {
    const lines = (await readFile(join(outDir, 'ranks', `${w}.jsonl`), 'utf8')).trim().split('\n');
    sums.push((JSON.parse(lines[lines.length - 1]!) as { checksum: string }).checksum);
  }
  const m = await loadWeights(join(String(r.result!.checkpoint), 'model.safetensors'));
  const w: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(m.params)) w[k] = v.dataSync() as Float32Array;
  m.dispose();
  return { sums, weights: w, log: await readFile(join(outDir, 'logs', 'worker-0.log'), 'utf8') };
}

test('--grad-compression bf16: 10 steps of 2 processes stay bit-identical across ranks and within a small distance of float32 on the wire', async (t) => {
  const exact = await job('f32', 'none');
  const half = await job('bf16', 'bf16');
  assert.equal(new Set(half.sums).size, 1, `bf16 ranks differ: ${half.sums.join(' ')}`);
  assert.equal(new Set(exact.sums).size, 1);
  assert.notEqual(half.sums[0], exact.sums[0], 'bf16 rounds: the weights differ from float32 in the last bits');
  let maxAbs = 0;
  let sq = 0;
  let norm = 0;
  for (const [k, a] of Object.entries(exact.weights)) {
    const b = half.weights[k]!;
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i]! - b[i]!);
      maxAbs = Math.max(maxAbs, d);
      sq += d * d;
      norm += a[i]! * a[i]!;
    }
  }
  const rel = Math.sqrt(sq / norm);
  t.diagnostic(
    `after 10 steps, bf16 vs float32 on the wire: max |weight difference| ${maxAbs.toExponential(2)}, relative L2 ${rel.toExponential(2)}`,
  );
  assert.ok(maxAbs < 1e-3, `max |difference| ${maxAbs}`);
  assert.ok(rel < 1e-3, `relative L2 difference ${rel}`);
});
