/**
 * Ring collectives between worker processes (as NCCL's ring algorithm): each process sends only to
 * its successor and receives only from its predecessor, so every link carries 2 (P - 1) / P of the
 * data whatever the number of processes P.
 *
 * All-reduce (sum, in place): the buffer is cut into buckets (25 MiB, DDP's default); each bucket into
 * P segments. Reduce-scatter: P - 1 phases in which a process sends one segment and adds the one it
 * receives; after them position p holds the complete sum of segment (p + 1) mod P. All-gather: P - 1
 * phases passing the complete segments on. Every segment is summed once, by one process, in ring
 * order, and then copied: every process ends with bit-identical values. Segments travel as chunks
 * (1 MiB) and the phases are pipelined chunk by chunk: chunk i of a phase leaves as soon as chunk i
 * of the previous phase arrived.
 *
 * Broadcast: position 0 sends its bytes (length first), every other position stores each chunk and
 * passes it on, pipelined the same way.
 */
import { EpochEnded, ProtocolError, type Frame, type FrameHeader, type Inbox, type OutLink } from './frames.js';

export interface RingIO {
  /** To the successor (absent when P = 1). */
  out?: OutLink;
  /** From the predecessor. */
  inbox?: Inbox;
  epoch: number;
  /** Position in the ring, 0 .. size - 1. */
  position: number;
  size: number;
}

export interface RingOptions {
  chunkBytes: number;
  bucketBytes: number;
}

export const DEFAULT_BUCKET_BYTES = 25 << 20;

interface Range {
  start: number;
  end: number;
}

class Deferred {
  promise: Promise<void>;
  resolve!: () => void;
  constructor() {
    this.promise = new Promise((r) => { this.resolve = r; });
  }
}

/** `n` floats from `start` cut into `parts` nearly equal ranges (the first ones one longer). */
function split(start: number, n: number, parts: number): Range[] {
  const base = Math.floor(n / parts);
  const extra = n % parts;
  const out: Range[] = [];
  let s = start;
  for (let i = 0; i < parts; i++) {
    const len = base + (i < extra ? 1 : 0);
    out.push({ start: s, end: s + len });
    s += len;
  }
  return out;
}

function chunksOf(r: Range, chunkFloats: number): Range[] {
  const out: Range[] = [];
  for (let s = r.start; s < r.end; s += chunkFloats) out.push({ start: s, end: Math.min(r.end, s + chunkFloats) });
  return out;
}

function bytesOf(data: Float32Array, r: Range): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset + 4 * r.start, 4 * (r.end - r.start));
}

function check(f: Frame, want: FrameHeader, bytes: number, what: string): void {
  for (const k of ['epoch', 'op', 'step', 'phase', 'index', 'offset'] as const) {
    if (f[k] !== want[k]) throw new ProtocolError(`${what}: expected ${k} ${want[k]}, got ${f[k]} (epoch ${f.epoch}, op ${f.op}, step ${f.step}, phase ${f.phase}, chunk ${f.index})`);
  }
  if (f.data.byteLength !== bytes) throw new ProtocolError(`${what}: chunk ${f.index} of phase ${f.phase} has ${f.data.byteLength} bytes, expected ${bytes} (do all workers train the same model?)`);
}

/** Sums `data` over the ring's processes, in place (see the module comment). */
export async function ringAllReduce(io: RingIO, data: Float32Array, op: number, step: number, opts: RingOptions): Promise<void> {
  const P = io.size;
  if (P === 1) return;
  const { out, inbox } = io;
  if (!out || !inbox) throw new Error('ringAllReduce: no link to the ring neighbours');
  const p = io.position;
  const chunkFloats = Math.max(1, opts.chunkBytes >> 2);
  const bucketFloats = Math.max(P, opts.bucketBytes >> 2);
  interface Stage { phase: number; send: Range[]; recv: Range[]; reduce: boolean; dep: number; guard: number }
  const stages: Stage[] = [];
  let phase = 0;
  for (let b = 0; b < data.length; b += bucketFloats) {
    const segs = split(b, Math.min(bucketFloats, data.length - b), P);
    const first = stages.length;
    const seg = (i: number) => segs[((i % P) + P) % P]!;
    for (let s = 0; s < P - 1; s++) {
      stages.push({ phase: phase++, send: chunksOf(seg(p - s), chunkFloats), recv: chunksOf(seg(p - s - 1), chunkFloats), reduce: true, dep: s === 0 ? -1 : stages.length - 1, guard: -1 });
    }
    for (let s = 0; s < P - 1; s++) {
      // All-gather phase s overwrites the segment reduce-scatter phase s sent: wait for that send.
      stages.push({ phase: phase++, send: chunksOf(seg(p + 1 - s), chunkFloats), recv: chunksOf(seg(p - s), chunkFloats), reduce: false, dep: stages.length - 1, guard: first + s });
    }
  }
  const received = stages.map((st) => st.recv.map(() => new Deferred()));
  const sent = stages.map((st) => st.send.map(() => new Deferred()));
  const header = (st: Stage, i: number, r: Range, seg: Range[]): FrameHeader => ({
    epoch: io.epoch, op, step, phase: st.phase, index: i, offset: 4 * (r.start - seg[0]!.start),
  });
  let failed: Error | null = null;
  const sender = async () => {
    for (let k = 0; k < stages.length; k++) {
      const st = stages[k]!;
      for (let i = 0; i < st.send.length; i++) {
        if (st.dep >= 0) await received[st.dep]![i]!.promise;
        if (failed) return;
        await out.ready();
        const r = st.send[i]!;
        out.send(header(st, i, r, st.send), bytesOf(data, r)).then(() => sent[k]![i]!.resolve(), (err: Error) => { failed ??= err; sent[k]![i]!.resolve(); });
      }
    }
  };
  const receiver = async () => {
    for (let k = 0; k < stages.length; k++) {
      const st = stages[k]!;
      for (let i = 0; i < st.recv.length; i++) {
        const r = st.recv[i]!;
        const f = await inbox.next();
        check(f, header(st, i, r, st.recv), 4 * (r.end - r.start), 'all-reduce');
        const src = new Float32Array(f.data.buffer, f.data.byteOffset, r.end - r.start);
        if (st.reduce) {
          for (let j = 0, o = r.start; j < src.length; j++, o++) data[o] += src[j]!;
        } else {
          await sent[st.guard]![i]!.promise;
          data.set(src, r.start);
        }
        received[k]![i]!.resolve();
      }
    }
  };
  try {
    await Promise.all([sender(), receiver()]);
  } catch (err) {
    failed ??= err as Error;
    // Unblock the sender if the receiver failed.
    for (const row of received) for (const d of row) d.resolve();
    throw err;
  }
  await Promise.all(sent.flat().map((d) => d.promise));
  if (failed) throw failed;
}

/** Position 0's `bytes`, delivered to every position (see the module comment). */
export async function ringBroadcast(io: RingIO, bytes: Uint8Array | null, op: number, step: number, opts: RingOptions): Promise<Uint8Array> {
  const P = io.size;
  if (P === 1) return bytes!;
  const { out, inbox } = io;
  if (!out || !inbox) throw new Error('ringBroadcast: no link to the ring neighbours');
  const forward = io.position !== P - 1;
  const head = (phase: number, index: number, offset: number): FrameHeader => ({ epoch: io.epoch, op, step, phase, index, offset });
  const sends: Promise<void>[] = [];
  const send = async (h: FrameHeader, data: Uint8Array) => {
    await out.ready();
    sends.push(out.send(h, data));
  };
  if (io.position === 0) {
    if (!bytes) throw new Error('ringBroadcast: position 0 has nothing to send');
    const len = new Uint8Array(8);
    new DataView(len.buffer).setFloat64(0, bytes.byteLength, true);
    await send(head(0, 0, 0), len);
    for (let i = 0, off = 0; off < bytes.byteLength; i++, off += opts.chunkBytes) {
      await send(head(1, i, off), bytes.subarray(off, Math.min(bytes.byteLength, off + opts.chunkBytes)));
    }
    await Promise.all(sends);
    return bytes;
  }
  const first = await inbox.next();
  check(first, head(0, 0, 0), 8, 'broadcast');
  const total = new DataView(first.data.buffer, first.data.byteOffset, 8).getFloat64(0, true);
  if (!Number.isSafeInteger(total) || total < 0) throw new ProtocolError(`broadcast: bad length ${total}`);
  if (forward) await send(head(0, 0, 0), first.data);
  const buf = new Uint8Array(total);
  for (let i = 0, off = 0; off < total; i++, off += opts.chunkBytes) {
    const n = Math.min(opts.chunkBytes, total - off);
    const f = await inbox.next();
    check(f, head(1, i, off), n, 'broadcast');
    buf.set(f.data, off);
    if (forward) await send(head(1, i, off), f.data);
  }
  await Promise.all(sends);
  return buf;
}

export { EpochEnded };
