/**
 * The ring's data plane: frames, the queue a worker reads its predecessor's frames from, and the
 * binary framing of the raw TCP/TLS link.
 *
 * A frame is one chunk of a collective, tagged like the protocol's `Chunk` message: membership epoch,
 * collective number (`op`), training step, ring phase, chunk index and byte offset. On a TCP link a
 * frame is a 32-byte little-endian header (magic "VRG1", epoch, op, step, phase, index, offset,
 * payload bytes) followed by the payload. A header with the magic "VRGK" and nothing after it is a
 * keepalive: a sign of life on an idle link, skipped by the parser.
 */

export interface FrameHeader {
  epoch: number;
  op: number;
  step: number;
  phase: number;
  index: number;
  offset: number;
}

export interface Frame extends FrameHeader {
  /** 4-byte aligned (its own ArrayBuffer from offset 0) so that it can be viewed as float32. */
  data: Uint8Array;
}

export const FRAME_MAGIC = 0x31475256; // "VRG1"
export const KEEPALIVE_MAGIC = 0x4b475256; // "VRGK"
export const HEADER_BYTES = 32;
/** Default chunk: 1 MiB. */
export const DEFAULT_CHUNK_BYTES = 1 << 20;

/** A frame or link that breaks the protocol: refused, logged, and the link closed. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/**
 * A collective waited longer than its frame deadline for its ring predecessor's next frame (the
 * predecessor heartbeats and keeps its link alive but sends nothing: a hung or hostile worker).
 */
export class CollectiveTimeout extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CollectiveTimeout';
  }
}

/** Raised in waiting collectives when the membership epoch they belong to ended. */
export class EpochEnded extends Error {
  constructor(
    readonly epoch: number,
    reason: string,
  ) {
    super(reason);
    this.name = 'EpochEnded';
  }
}

export function encodeHeader(h: FrameHeader, length: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_BYTES);
  b.writeUInt32LE(FRAME_MAGIC, 0);
  b.writeUInt32LE(h.epoch, 4);
  b.writeUInt32LE(h.op, 8);
  b.writeUInt32LE(h.step, 12);
  b.writeUInt32LE(h.phase, 16);
  b.writeUInt32LE(h.index, 20);
  b.writeUInt32LE(h.offset, 24);
  b.writeUInt32LE(length, 28);
  return b;
}

/**
 * Payload buffers are reused: a collective hands each frame's buffer back once it used it, so a
 * steady stream of 1 MiB chunks allocates (and garbage-collects) nothing. Buffers are aligned
 * (their own ArrayBuffer from offset 0) and not zero-filled (every byte is written before use).
 */
const pool = new Map<number, Uint8Array[]>();
const POOL_MAX = 64;

export function takeBuffer(length: number): Uint8Array {
  const free = pool.get(length);
  const b = free?.pop();
  return b ?? (length === 0 ? new Uint8Array(0) : new Uint8Array(Buffer.allocUnsafeSlow(length).buffer, 0, length));
}

/** Returns a payload buffer for reuse; the caller must not touch it afterwards. */
export function giveBack(b: Uint8Array): void {
  if (b.byteOffset !== 0 || b.byteLength === 0) return;
  let free = pool.get(b.byteLength);
  if (!free) pool.set(b.byteLength, (free = []));
  if (free.length < POOL_MAX) free.push(b);
}

/** An aligned copy of `bytes` (a received Buffer may sit at any offset of a larger one). */
export function alignedCopy(bytes: Uint8Array): Uint8Array {
  const out = takeBuffer(bytes.byteLength);
  out.set(bytes);
  return out;
}

/** The 32 bytes of a keepalive. */
export function encodeKeepalive(): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  b.writeUInt32LE(KEEPALIVE_MAGIC, 0);
  return b;
}

/**
 * Cuts a TCP byte stream into frames. Payloads land in buffers of their own (aligned, from the
 * pool); keepalives are skipped; a bad magic or a payload over `maxPayload` bytes is a
 * ProtocolError. Two ways in: `push(bytes)` copies bytes read elsewhere; `target()` / `advance(n)`
 * let the socket read straight into the next header or payload (no copy: see acceptTcpLink).
 */
export class FrameParser {
  private header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  private current: { h: FrameHeader; data: Uint8Array; fill: number } | null = null;

  constructor(
    private readonly onFrame: (f: Frame) => void,
    private readonly maxPayload: number,
  ) {}

  push(chunk: Uint8Array): void {
    let pos = 0;
    while (pos < chunk.length) {
      const t = this.target();
      const take = Math.min(t.length, chunk.length - pos);
      t.set(chunk.subarray(pos, pos + take));
      pos += take;
      this.advance(take);
    }
  }

  /** Bytes of the frame being read so far and its size (header included), or null between frames. */
  partial(): { have: number; of: number } | null {
    const c = this.current;
    if (c) return { have: HEADER_BYTES + c.fill, of: HEADER_BYTES + c.data.length };
    return this.headerFill > 0 ? { have: this.headerFill, of: HEADER_BYTES } : null;
  }

  /** Where the next bytes of the stream belong: the rest of the header, or the rest of the payload. */
  target(): Uint8Array {
    const c = this.current;
    return c ? c.data.subarray(c.fill) : this.header.subarray(this.headerFill);
  }

  /** `n` bytes were written at the start of `target()`. */
  advance(n: number): void {
    const c = this.current;
    if (c) {
      c.fill += n;
      if (c.fill === c.data.length) this.emit();
      return;
    }
    this.headerFill += n;
    if (this.headerFill < HEADER_BYTES) return;
    this.headerFill = 0;
    const b = this.header;
    const magic = b.readUInt32LE(0);
    if (magic === KEEPALIVE_MAGIC) return;
    if (magic !== FRAME_MAGIC) throw new ProtocolError(`frame without the VRG1 magic (got 0x${magic.toString(16)})`);
    const length = b.readUInt32LE(28);
    if (length > this.maxPayload) throw new ProtocolError(`frame of ${length} bytes, more than the ${this.maxPayload} allowed`);
    const h = {
      epoch: b.readUInt32LE(4),
      op: b.readUInt32LE(8),
      step: b.readUInt32LE(12),
      phase: b.readUInt32LE(16),
      index: b.readUInt32LE(20),
      offset: b.readUInt32LE(24),
    };
    this.current = { h, data: takeBuffer(length), fill: 0 };
    if (length === 0) this.emit();
  }

  private emit(): void {
    const c = this.current!;
    this.current = null;
    this.onFrame({ ...c.h, data: c.data });
  }
}

/**
 * Frames from the predecessor, in arrival order. `next()` waits for the next one; `fail()` rejects
 * the waiting and later calls (the link broke, or the epoch ended). Backpressure: above `high`
 * queued bytes the link is paused, below `low` resumed.
 */
export class Inbox {
  private queue: Frame[] = [];
  private head = 0;
  private waiter: { resolve: (f: Frame) => void; reject: (e: Error) => void } | null = null;
  private error: Error | null = null;
  private bytes = 0;
  private paused = false;
  pause: () => void = () => undefined;
  resume: () => void = () => undefined;

  constructor(
    private readonly high = 64 << 20,
    private readonly low = 16 << 20,
  ) {}

  push(f: Frame): void {
    if (this.error) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(f);
      return;
    }
    this.queue.push(f);
    this.bytes += f.data.byteLength;
    if (!this.paused && this.bytes > this.high) {
      this.paused = true;
      this.pause();
    }
  }

  /**
   * The next frame. With `timeoutMs`, rejects with `onTimeout()` when none arrived within it (the
   * waiter is then withdrawn: a later frame stays queued).
   */
  next(timeoutMs?: number, onTimeout?: () => Error): Promise<Frame> {
    if (this.head < this.queue.length) {
      const f = this.queue[this.head]!;
      this.queue[this.head++] = undefined as unknown as Frame;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      this.bytes -= f.data.byteLength;
      if (this.paused && this.bytes < this.low) {
        this.paused = false;
        this.resume();
      }
      return Promise.resolve(f);
    }
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      if (timeoutMs === undefined || !Number.isFinite(timeoutMs)) {
        this.waiter = { resolve, reject };
        return;
      }
      const waiter = {
        resolve: (f: Frame) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        if (this.waiter !== waiter) return;
        this.waiter = null;
        reject(onTimeout?.() ?? new CollectiveTimeout(`no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = waiter;
    });
  }

  fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    this.queue = [];
    this.head = 0;
    this.bytes = 0;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(err);
    }
  }
}

/** The sending side of a ring link. */
export interface OutLink {
  /** Queues a frame; resolves once its bytes left this process's buffers (the payload may then change). */
  send(h: FrameHeader, data: Uint8Array): Promise<void>;
  /** Resolves when the link can take more (backpressure). */
  ready(): Promise<void>;
  close(): void;
}
