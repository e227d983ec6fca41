/**
 * Ring links between worker processes: a raw TCP/TLS link (negotiated through the Peer service's
 * OpenLink, authenticated by an HMAC of the job token over a one-time nonce: the hello), both its
 * sides, and the outgoing side of a gRPC PushChunks stream. Both carry the same frames. What a worker
 * checks before it accepts a link (the nonce, the epoch, each chunk) is in peer-server.ts; the raw
 * link's receiving side after the hello is incoming-link.ts.
 *
 * Speed: the sender writes header and payload in one writev, Nagle off; the receiver reads straight
 * into the frame it is filling (incoming-link.ts). Liveness: with `liveness`, both sides send a sign of life at least every
 * `intervalMs` (the sender a keepalive frame when it has nothing queued, the receiver one byte back)
 * and declare the link down after `timeoutMs` without hearing anything, since a TCP connection across
 * a broken network path stays open for many minutes without an error. The sender also declares it
 * down when queued bytes could not leave for `stallMs` (a receiver that stops reading).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import type * as grpc from '@grpc/grpc-js';
import { encodeHeader, encodeKeepalive, ProtocolError, type FrameHeader, type OutLink } from './frames.js';

/** Signs of life on a raw link (see the module comment). */
export interface Liveness {
  intervalMs: number;
  timeoutMs: number;
  /**
   * The longest queued bytes may wait to leave (a receiver that answers signs of life but stops
   * reading); default `timeoutMs`. A worker uses its collective timeout: a receiver whose inbox is
   * full pauses on purpose until it enters the collective, which a straggler may take long to do.
   */
  stallMs?: number;
}

/**
 * The liveness of a job's ring links: the link timeout is the worker timeout; a sign of life every
 * fifth of it, at most every second; queued bytes may wait `stallMs` (default: the link timeout).
 */
export function linkLiveness(timeoutMs: number, stallMs?: number): Liveness {
  return { timeoutMs, intervalMs: Math.min(1000, Math.max(50, Math.floor(timeoutMs / 5))), ...(stallMs ? { stallMs } : {}) };
}

/** A link declared down: broken, or silent for the liveness timeout. */
export class LinkDown extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LinkDown';
  }
}

/** The byte a receiver answers a link with (accept), and the one it sends back as a sign of life. */
export const ACCEPT = 1;
export const ALIVE = 2;

export const HELLO_MAGIC = 0x48475256; // "VRGH"

/** The MAC a sender proves the token with: HMAC-SHA256(token, nonce | epoch | worker id). */
export function linkMac(token: string, nonce: Uint8Array, epoch: number, workerId: string): Buffer {
  return createHmac('sha256', token).update(nonce).update(`|${epoch}|${workerId}`).digest();
}

export function macEquals(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The hello frame: magic, JSON length, JSON {worker_id, epoch, nonce, mac} (hex). */
export function encodeHello(workerId: string, epoch: number, nonce: Uint8Array, mac: Uint8Array): Buffer {
  const json = Buffer.from(
    JSON.stringify({ worker_id: workerId, epoch, nonce: Buffer.from(nonce).toString('hex'), mac: Buffer.from(mac).toString('hex') }),
  );
  const head = Buffer.allocUnsafe(8);
  head.writeUInt32LE(HELLO_MAGIC, 0);
  head.writeUInt32LE(json.length, 4);
  return Buffer.concat([head, json]);
}

export interface Hello {
  worker_id: string;
  epoch: number;
  nonce: string;
  mac: string;
}

/** Reads the hello from the first bytes of a socket; resolves with it and whatever followed. */
export function readHello(socket: net.Socket, timeoutMs: number): Promise<{ hello: Hello; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new ProtocolError(`no hello within ${timeoutMs} ms`)), timeoutMs);
    const done = (err: Error | null, value?: { hello: Hello; rest: Buffer }) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve(value!);
    };
    const onError = (err: Error) => done(err);
    const onClose = () => done(new ProtocolError('link closed before its hello'));
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 8) return;
      if (buf.readUInt32LE(0) !== HELLO_MAGIC) return done(new ProtocolError('link did not start with a VRGH hello'));
      const len = buf.readUInt32LE(4);
      if (len > 4096) return done(new ProtocolError(`hello of ${len} bytes`));
      if (buf.length < 8 + len) return;
      socket.pause();
      try {
        const hello = JSON.parse(buf.subarray(8, 8 + len).toString('utf8')) as Hello;
        if (
          typeof hello.worker_id !== 'string' ||
          typeof hello.nonce !== 'string' ||
          typeof hello.mac !== 'string' ||
          !Number.isInteger(hello.epoch)
        ) {
          throw new Error('fields missing');
        }
        done(null, { hello, rest: buf.subarray(8 + len) });
      } catch (err) {
        done(new ProtocolError(`malformed hello (${(err as Error).message})`));
      }
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
}

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
}

/** Opens the TCP (TLS with `tls`) link to `host:port`, sends the hello and waits for the one-byte accept. */
export async function connectTcpLink(
  host: string,
  port: number,
  hello: Buffer,
  tlsFiles: TlsFiles | undefined,
  timeoutMs: number,
  liveness?: Liveness,
): Promise<TcpOutLink> {
  const socket: net.Socket = await new Promise((resolve, reject) => {
    const onErr = (err: Error) => reject(err);
    const s = tlsFiles
      ? tls.connect(
          {
            host,
            port,
            ca: tlsFiles.ca,
            cert: tlsFiles.cert,
            key: tlsFiles.key,
            checkServerIdentity: () => undefined,
            rejectUnauthorized: !!tlsFiles.ca,
          },
          () => {
            s.off('error', onErr);
            resolve(s);
          },
        )
      : net.connect({ host, port }, () => {
          s.off('error', onErr);
          resolve(s);
        });
    s.setTimeout(timeoutMs, () => s.destroy(new Error(`no answer from ${host}:${port} within ${timeoutMs} ms`)));
    s.once('error', onErr);
  });
  socket.setNoDelay(true);
  socket.write(hello);
  await new Promise<void>((resolve, reject) => {
    const onData = (b: Buffer) => {
      cleanup();
      if (b[0] === ACCEPT) resolve();
      else reject(new ProtocolError(`${host}:${port} refused the link`));
    };
    const onClose = () => {
      cleanup();
      reject(new ProtocolError(`${host}:${port} closed the link after the hello (refused)`));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
    };
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onError);
  });
  socket.setTimeout(0);
  return new TcpOutLink(socket, liveness, `${host}:${port}`);
}

/** What both outgoing links share: the first error sticks, and `ready()` waits out backpressure. */
abstract class BackpressuredLink {
  protected error: Error | null = null;
  private drainWaiters: (() => void)[] = [];
  private failureHandlers: ((err: Error) => void)[] = [];
  private closing = false;

  /** True while the transport asks the sender to wait for 'drain'. */
  protected abstract needsDrain(): boolean;

  protected wake(): void {
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w();
  }

  protected failWith(err: Error): void {
    const first = !this.error;
    this.error ??= err;
    this.wake();
    if (first && !this.closing) for (const h of this.failureHandlers) h(err);
  }

  /** Told once when the link fails by itself (an error, the peer closing it, silence): not after close(). */
  onFailure(handler: (err: Error) => void): void {
    if (this.error && !this.closing) handler(this.error);
    else this.failureHandlers.push(handler);
  }

  /** close() calls this first: what follows is no failure. */
  protected closingNow(): void {
    this.closing = true;
  }

  async ready(): Promise<void> {
    while (!this.error && this.needsDrain()) await new Promise<void>((r) => this.drainWaiters.push(r));
    if (this.error) throw this.error;
  }
}

/** Frames as header + payload writes on a socket; completion from the write callbacks. */
export class TcpOutLink extends BackpressuredLink implements OutLink {
  private heard = Date.now();
  /** The last time a write left this process's buffers (or the queue was empty when one began). */
  private progress = Date.now();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly socket: net.Socket,
    liveness?: Liveness,
    peer = `${socket.remoteAddress}:${socket.remotePort}`,
  ) {
    super();
    socket.on('drain', () => this.wake());
    socket.on('error', (err) => this.failWith(err));
    socket.on('close', () => {
      this.stopTimer();
      this.failWith(new LinkDown(`the data link to ${peer} closed`));
    });
    // After the accept byte the receiver sends only signs of life.
    socket.on('data', () => {
      this.heard = Date.now();
    });
    if (liveness) {
      const keepalive = encodeKeepalive();
      this.timer = setInterval(() => {
        const silent = Date.now() - this.heard;
        if (silent > liveness.timeoutMs) {
          this.failWith(new LinkDown(`no sign of life on the data link to ${peer} for ${silent} ms`));
          socket.destroy();
          return;
        }
        // A receiver that answers signs of life but stops reading (a slowloris on the data plane):
        // bytes wait here and none left for the timeout.
        const stuck = Date.now() - this.progress;
        if (socket.writableLength > 0 && stuck > (liveness.stallMs ?? liveness.timeoutMs)) {
          const waiting = socket.writableLength;
          this.failWith(new LinkDown(`the receiver at ${peer} stopped reading: ${waiting} bytes waited ${stuck} ms to leave`));
          socket.destroy();
          return;
        }
        // Idle: a keepalive (never inside a frame: a frame's two writes happen in one tick).
        if (socket.writableLength === 0 && !this.error) socket.write(keepalive);
      }, liveness.intervalMs);
      this.timer.unref();
    }
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  protected needsDrain(): boolean {
    return this.socket.writableNeedDrain;
  }

  send(h: FrameHeader, data: Uint8Array): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      if (this.socket.writableLength === 0) this.progress = Date.now();
      // Header and payload leave in one writev.
      this.socket.cork();
      this.socket.write(encodeHeader(h, data.byteLength));
      this.socket.write(data, (err) => {
        this.progress = Date.now();
        if (err) reject(err);
        else resolve();
      });
      this.socket.uncork();
    });
  }

  close(): void {
    this.closingNow();
    this.stopTimer();
    this.failWith(new Error('ring link closed'));
    this.socket.destroy();
  }
}

/** Frames as Chunk messages on a PushChunks client stream. */
export class GrpcOutLink extends BackpressuredLink implements OutLink {
  private needDrain = false;

  constructor(
    private readonly call: grpc.ClientWritableStream<unknown>,
    private readonly workerId: string,
  ) {
    super();
    call.on('drain', () => {
      this.needDrain = false;
      this.wake();
    });
    call.on('error', (err: Error) => this.failWith(err));
  }

  protected needsDrain(): boolean {
    return this.needDrain;
  }

  send(h: FrameHeader, data: Uint8Array): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    // Serialisation copies the bytes at once: the payload may change right after.
    const ok = this.call.write({
      workerId: this.workerId,
      epoch: h.epoch,
      op: h.op,
      step: h.step,
      phase: h.phase,
      index: h.index,
      offset: h.offset,
      data,
    });
    if (!ok) this.needDrain = true;
    return Promise.resolve();
  }

  close(): void {
    this.closingNow();
    this.failWith(new Error('ring link closed'));
    this.call.end();
  }
}
