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
 * On a bf16 wire (`wire: 'bf16'`, DDP's bf16 compression hook) the chunks carry bfloat16, rounded to
 * nearest even: half the bytes. Each hop adds its own float32 values to the bfloat16 partial sum it
 * received and sends the result rounded again; the owner of a segment rounds the complete sum to
 * bfloat16 in its own copy too before the all-gather passes it on, so every process still ends with
 * bit-identical values (sums of bfloat16-representable floats).
 *
 * Broadcast: position 0 sends its bytes (length first), every other position stores each chunk and
 * passes it on, pipelined the same way; the last position passes only the length frame back to
 * position 0, so that every link of an epoch starts with the same frame.
 */
import {
  CollectiveTimeout,
  giveBack,
  ProtocolError,
  takeBuffer,
  type Frame,
  type FrameHeader,
  type Inbox,
  type OutLink,
} from './frames.js';

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

/** How gradients travel: exact float32 (the default), or bfloat16 (half the bytes). */
export type Wire = 'f32' | 'bf16';

export interface RingOptions {
  /** Bytes of a chunk on the wire (at most). */
  chunkBytes: number;
  bucketBytes: number;
  /** The all-reduce's values on the wire (default f32). */
  wire?: Wire;
  /**
   * The longest a collective waits for its predecessor's next frame (default: no limit); past it the
   * collective fails with a CollectiveTimeout (a predecessor that heartbeats but sends nothing).
   */
  frameTimeoutMs?: number;
}

/** The inbox's next frame of collective `what`, within the frame deadline of `opts`. */
function nextFrame(inbox: Inbox, opts: RingOptions, what: () => string): Promise<Frame> {
  const ms = opts.frameTimeoutMs;
  return inbox.next(ms, () => new CollectiveTimeout(`${what()}: no frame from the ring predecessor for ${ms} ms`));
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
    this.promise = new Promise((r) => {
      this.resolve = r;
    });
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

/** A broadcast frame must be exactly the expected one (broadcast frames arrive in order). */
function check(f: Frame, want: FrameHeader, bytes: number, what: string): void {
  for (const k of ['epoch', 'op', 'step', 'phase', 'index', 'offset'] as const) {
    if (f[k] !== want[k])
      throw new ProtocolError(
        `${what}: expected ${k} ${want[k]}, got ${f[k]} (epoch ${f.epoch}, op ${f.op}, step ${f.step}, phase ${f.phase}, chunk ${f.index})`,
      );
  }
  if (f.data.byteLength !== bytes)
    throw new ProtocolError(
      `${what}: chunk ${f.index} of phase ${f.phase} has ${f.data.byteLength} bytes, expected ${bytes} (do all workers train the same model?)`,
    );
}

/**
 * dst[off + j] += src[j]: its own small function so that V8 optimises the loop on its own, four at a
 * time (1.4 instead of 2.0 ns a value on this project's machines: the adds are most of a rank's own
 * CPU time in an all-reduce, which on a busy machine competes with the kernel's network work).
 */
function addInto(dst: Float32Array, off: number, src: Float32Array): void {
  const n = src.length;
  let j = 0;
  for (; j + 4 <= n; j += 4) {
    dst[off + j] += src[j]!;
    dst[off + j + 1] += src[j + 1]!;
    dst[off + j + 2] += src[j + 2]!;
    dst[off + j + 3] += src[j + 3]!;
  }
  for (; j < n; j++) dst[off + j] += src[j]!;
}

/** The bfloat16 of float32 bits `u`, rounded to nearest even (NaN stays a quiet NaN, overflow goes to infinity). */
export function bf16Bits(u: number): number {
  return (u & 0x7fffffff) > 0x7f800000 ? ((u >>> 16) | 0x40) & 0xffff : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
}

/** out[j] = bfloat16 of the float32 bits[start + j]. */
function encodeBf16(bits: Uint32Array, start: number, out: Uint16Array): void {
  const n = out.length;
  for (let j = 0; j < n; j++) out[j] = bf16Bits(bits[start + j]!);
}

/** bits[start + j] = float32 bits of the bfloat16 src[j] (exact). */
function decodeBf16(src: Uint16Array, bits: Uint32Array, start: number): void {
  const n = src.length;
  for (let j = 0; j < n; j++) bits[start + j] = src[j]! << 16;
}

/** bits[start .. end) rounded to bfloat16 precision in place. */
function roundBf16(bits: Uint32Array, start: number, end: number): void {
  for (let i = start; i < end; i++) bits[i] = bf16Bits(bits[i]!) << 16;
}

/**
 * Sums `data` over the ring's processes, in place (see the module comment). Chunks are sent as soon
 * as their data is ready, in every bucket at once (a bucket's first phase needs nothing received),
 * and received chunks are placed by their (phase, index) tags, so buckets overlap on the wire.
 */
export async function ringAllReduce(io: RingIO, data: Float32Array, op: number, step: number, opts: RingOptions): Promise<void> {
  const P = io.size;
  if (P === 1) return;
  const { out, inbox } = io;
  if (!out || !inbox) throw new Error('ringAllReduce: no link to the ring neighbours');
  const p = io.position;
  const bf16 = opts.wire === 'bf16';
  const vb = bf16 ? 2 : 4;
  const chunkFloats = Math.max(1, Math.floor(opts.chunkBytes / vb));
  const bucketFloats = Math.max(P, opts.bucketBytes >> 2);
  const bits = bf16 ? new Uint32Array(data.buffer, data.byteOffset, data.length) : null;
  const scratch = bf16 ? new Float32Array(chunkFloats) : null;
  interface Stage {
    send: Range[];
    recv: Range[];
    sendBase: number;
    recvBase: number;
    reduce: boolean;
    /** The last reduce-scatter phase: what it receives completes a segment (rounded on a bf16 wire). */
    last: boolean;
    next: number;
    guard: number;
  }
  const stages: Stage[] = [];
  const firsts: number[] = [];
  for (let b = 0; b < data.length; b += bucketFloats) {
    const segs = split(b, Math.min(bucketFloats, data.length - b), P);
    const seg = (i: number) => segs[((i % P) + P) % P]!;
    const first = stages.length;
    firsts.push(first);
    for (let k = 0; k < 2 * (P - 1); k++) {
      const rs = k < P - 1;
      const s = rs ? k : k - (P - 1);
      const send = rs ? seg(p - s) : seg(p + 1 - s);
      const recv = rs ? seg(p - s - 1) : seg(p - s);
      // All-gather phase s overwrites the segment reduce-scatter phase s sent: it waits for that send.
      stages.push({
        send: chunksOf(send, chunkFloats),
        recv: chunksOf(recv, chunkFloats),
        sendBase: send.start,
        recvBase: recv.start,
        reduce: rs,
        last: k === P - 2,
        next: k < 2 * (P - 1) - 1 ? stages.length + 1 : -1,
        guard: rs ? -1 : first + s,
      });
    }
  }
  // The chunk a phase receives is the chunk the next phase of its bucket sends.
  const sent = stages.map((st) => st.send.map(() => new Deferred()));
  const got = stages.map((st) => new Uint8Array(st.recv.length));
  let remaining = stages.reduce((n, st) => n + st.recv.length, 0);
  const queue: [number, number][] = [];
  let wake: (() => void) | null = null;
  const enqueue = (k: number, i: number) => {
    queue.push([k, i]);
    if (wake) {
      const w = wake;
      wake = null;
      w();
    }
  };
  for (const f of firsts) for (let i = 0; i < stages[f]!.send.length; i++) queue.push([f, i]);
  let failed: Error | null = null;
  const total = stages.reduce((n, st) => n + st.send.length, 0);
  const sender = async () => {
    for (let done = 0; done < total; done++) {
      while (queue.length === 0) {
        if (failed) return;
        await new Promise<void>((r) => {
          wake = r;
        });
      }
      if (failed) return;
      const [k, i] = queue.shift()!;
      const st = stages[k]!;
      const r = st.send[i]!;
      await out.ready();
      const h: FrameHeader = { epoch: io.epoch, op, step, phase: k, index: i, offset: vb * (r.start - st.sendBase) };
      let payload = bytesOf(data, r);
      if (bits) {
        payload = takeBuffer(2 * (r.end - r.start));
        encodeBf16(bits, r.start, new Uint16Array(payload.buffer, payload.byteOffset, r.end - r.start));
      }
      out.send(h, payload).then(
        () => {
          if (bits) giveBack(payload);
          sent[k]![i]!.resolve();
        },
        (err: Error) => {
          failed ??= err;
          sent[k]![i]!.resolve();
        },
      );
    }
  };
  const receiver = async () => {
    const all = remaining;
    while (remaining > 0) {
      const f = await nextFrame(inbox, opts, () => `all-reduce ${op} of step ${step} (${all - remaining} of ${all} chunks received)`);
      const k = f.phase;
      const st = stages[k];
      const r = st?.recv[f.index];
      if (f.epoch !== io.epoch || f.op !== op || f.step !== step || !st || !r || got[k]![f.index]) {
        throw new ProtocolError(
          `all-reduce: unexpected chunk (epoch ${f.epoch}, op ${f.op}, step ${f.step}, phase ${f.phase}, chunk ${f.index}); expected epoch ${io.epoch}, op ${op}, step ${step}, a chunk of phases 0-${stages.length - 1} not yet received`,
        );
      }
      const n = r.end - r.start;
      const bytes = vb * n;
      if (f.data.byteLength !== bytes || f.offset !== vb * (r.start - st.recvBase)) {
        throw new ProtocolError(
          `all-reduce: chunk ${f.index} of phase ${f.phase} has ${f.data.byteLength} bytes at offset ${f.offset}, expected ${bytes} at ${vb * (r.start - st.recvBase)} (do all workers train the same model and --grad-compression?)`,
        );
      }
      got[k]![f.index] = 1;
      remaining--;
      if (!st.reduce) await sent[st.guard]![f.index]!.promise;
      if (bits) {
        const src = new Uint16Array(f.data.buffer, f.data.byteOffset, n);
        if (st.reduce) {
          const tmp = scratch!.subarray(0, n);
          decodeBf16(src, new Uint32Array(tmp.buffer, tmp.byteOffset, n), 0);
          addInto(data, r.start, tmp);
          if (st.last) roundBf16(bits, r.start, r.end);
        } else decodeBf16(src, bits, r.start);
      } else {
        const src = new Float32Array(f.data.buffer, f.data.byteOffset, n);
        if (st.reduce) addInto(data, r.start, src);
        else data.set(src, r.start);
      }
      giveBack(f.data);
      if (st.next >= 0) enqueue(st.next, f.index);
    }
  };
  try {
    await Promise.all([sender(), receiver()]);
  } catch (err) {
    failed ??= err as Error;
    if (wake) (wake as () => void)();
    throw err;
  }
  await Promise.all(sent.flat().map((d) => d.promise));
  if (failed) throw failed;
}

/** Position 0's `bytes`, delivered to every position (see the module comment). */
export async function ringBroadcast(
  io: RingIO,
  bytes: Uint8Array | null,
  op: number,
  step: number,
  opts: RingOptions,
): Promise<Uint8Array> {
  const P = io.size;
  if (P === 1) return bytes!;
  const { out, inbox } = io;
  if (!out || !inbox) throw new Error('ringBroadcast: no link to the ring neighbours');
  const forward = io.position !== P - 1;
  const head = (phase: number, index: number, offset: number): FrameHeader => ({ epoch: io.epoch, op, step, phase, index, offset });
  const next = () => nextFrame(inbox, opts, () => `broadcast ${op} of step ${step}`);
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
    // The last position hands the length frame back: every link of the ring starts with it.
    check(await next(), head(0, 0, 0), 8, 'broadcast');
    await Promise.all(sends);
    return bytes;
  }
  const first = await next();
  check(first, head(0, 0, 0), 8, 'broadcast');
  const total = new DataView(first.data.buffer, first.data.byteOffset, 8).getFloat64(0, true);
  if (!Number.isSafeInteger(total) || total < 0) throw new ProtocolError(`broadcast: bad length ${total}`);
  await send(head(0, 0, 0), first.data);
  const buf = new Uint8Array(total);
  for (let i = 0, off = 0; off < total; i++, off += opts.chunkBytes) {
    const n = Math.min(opts.chunkBytes, total - off);
    const f = await next();
    check(f, head(1, i, off), n, 'broadcast');
    buf.set(f.data, off);
    if (forward) await send(head(1, i, off), f.data);
  }
  await Promise.all(sends);
  return buf;
}
