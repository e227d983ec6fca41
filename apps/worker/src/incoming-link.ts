/**
 * The receiving side of a raw TCP/TLS ring link, after its hello was read and accepted (links.ts):
 * the accept byte, then every frame into the epoch's inbox, with backpressure and liveness. On plain
 * TCP the socket reads straight into the frame it is filling (Node's `onread` with a buffer
 * function): no read buffer is allocated per read and no byte is copied on the way to the frame,
 * which halved the receiving process's CPU time per byte (bench/allreduce.ts, `rank_cpu_load`).
 * With liveness, a frame once begun must arrive whole within the link timeout (paused time aside),
 * so a sender that trickles bytes, each a sign of life, cannot hold a collective for ever.
 */
import net from 'node:net';
import tls from 'node:tls';
import { FrameParser, ProtocolError, type Frame, type Inbox } from './frames.js';
import { ACCEPT, ALIVE, LinkDown, type Liveness } from './links.js';

export interface IncomingLinkOptions {
  /** Largest frame payload accepted: a larger one is a ProtocolError. */
  maxPayload: number;
  /** The bytes that followed the hello (readHello's `rest`). */
  rest?: Buffer;
  /** Checks each frame before it is queued; throwing refuses it, as a protocol error. */
  check?: (f: Frame) => void;
  /** Told when the link broke the protocol; the link is then closed and the inbox failed with the error. */
  onProtocolError?: (err: Error) => void;
  /** The error the inbox fails with when the link closes (default: "the data link closed"). */
  closedError?: () => Error;
  /** Signs of life both ways (see the module comment); the link is closed when none came for `timeoutMs`. */
  liveness?: Liveness;
  /** Told once when the link ends for any reason (closed, broke, or silent: a LinkDown). */
  onDown?: (err: Error) => void;
  /** Read through the socket's own buffers and copy (default: straight into the frames where possible). */
  copy?: boolean;
}

/** The internals acceptTcpLink takes a plain TCP socket's handle from (see takeOver). */
interface SocketInternals {
  _handle?: { reading?: boolean; readStop?: () => number } | null;
}

/**
 * A plain TCP socket whose reads land in `target()` (Node's `onread` with a buffer function: no read
 * buffer allocated per read, no copy). Node offers `onread` only to sockets it creates for a
 * connect, so the accepted socket's handle moves into a new Socket (the `handle` option); whatever
 * the old one had read already is returned for the parser. Null where this is not possible (TLS,
 * or a Node whose sockets look different): the caller then reads through 'data' events.
 */
function takeOver(
  socket: net.Socket,
  target: () => Uint8Array,
  got: (n: number) => boolean,
): { socket: net.Socket; buffered: Buffer[] } | null {
  if (socket instanceof tls.TLSSocket) return null;
  const internals = socket as unknown as SocketInternals;
  const handle = internals._handle;
  if (!handle || typeof handle.readStop !== 'function') return null;
  try {
    if (handle.reading) {
      handle.reading = false;
      handle.readStop();
    }
    const buffered: Buffer[] = [];
    for (let b: Buffer | null; (b = socket.read() as Buffer | null) !== null;) buffered.push(b);
    const next = new net.Socket({
      handle,
      readable: true,
      writable: true,
      onread: { buffer: target, callback: (n: number) => got(n) },
    } as net.SocketConstructorOpts);
    // The old Socket object lets go of the handle: closing it now closes nothing.
    internals._handle = null;
    socket.removeAllListeners();
    socket.on('error', () => undefined);
    socket.destroy();
    return { socket: next, buffered };
  } catch {
    return null;
  }
}

/**
 * The receiving side of a raw link whose hello was read and accepted: sends the one-byte accept,
 * then queues every frame in `inbox`, pausing the socket while the inbox is over its limit. Returns
 * the socket that carries the link from now on (close that one): on a plain TCP link it is a new
 * Socket object reading straight into each frame's payload buffer (takeOver), on TLS the same one.
 */
export function acceptTcpLink(socket: net.Socket, inbox: Inbox, o: IncomingLinkOptions): net.Socket {
  let link = socket;
  let heard = Date.now();
  let paused = false;
  let down = false;
  let timer: NodeJS.Timeout | null = null;
  /** When the frame being read began (null between frames): a frame must arrive within the link timeout. */
  let frameSince: number | null = null;
  const parser = new FrameParser((f: Frame) => {
    frameSince = null;
    o.check?.(f);
    inbox.push(f);
  }, o.maxPayload);
  const begun = () => {
    if (frameSince === null && parser.partial()) frameSince = Date.now();
  };
  const fail = (err: Error) => {
    o.onProtocolError?.(err);
    inbox.fail(err);
    link.destroy();
  };
  const end = (err: Error) => {
    if (timer) clearInterval(timer);
    timer = null;
    if (down) return;
    down = true;
    o.onDown?.(err);
  };
  const feed = (b: Uint8Array) => {
    heard = Date.now();
    try {
      parser.push(b);
      begun();
    } catch (err) {
      fail(err as Error);
    }
  };
  const direct = o.copy
    ? null
    : takeOver(
        socket,
        () => parser.target(),
        (n) => {
          heard = Date.now();
          try {
            parser.advance(n);
            begun();
          } catch (err) {
            fail(err as Error);
            return false;
          }
          return !paused;
        },
      );
  if (direct) link = direct.socket;
  inbox.pause = () => {
    paused = true;
    link.pause();
  };
  inbox.resume = () => {
    paused = false;
    heard = Date.now();
    if (frameSince !== null) frameSince = heard;
    link.resume();
  };
  link.write(Buffer.from([ACCEPT]));
  if (!direct) link.on('data', feed);
  link.on('close', () => {
    const err = o.closedError?.() ?? new ProtocolError('the data link closed');
    inbox.fail(err);
    end(err);
  });
  link.on('error', () => undefined);
  if (o.rest?.length) feed(o.rest);
  for (const b of direct?.buffered ?? []) feed(b);
  const live = o.liveness;
  if (live) {
    const alive = Buffer.from([ALIVE]);
    timer = setInterval(() => {
      if (link.destroyed) return;
      const silent = Date.now() - heard;
      if (!paused && silent > live.timeoutMs) {
        const err = new LinkDown(`no sign of life on the data link from ${socket.remoteAddress}:${socket.remotePort} for ${silent} ms`);
        inbox.fail(err);
        end(err);
        link.destroy();
        return;
      }
      // A sender that trickles a frame (a slowloris: each byte a sign of life) gets the link timeout for the whole frame.
      const part = parser.partial();
      if (!paused && part && frameSince !== null && Date.now() - frameSince > live.timeoutMs) {
        const err = new LinkDown(
          `a frame from ${socket.remoteAddress}:${socket.remotePort} took over ${live.timeoutMs} ms (${part.have} of ${part.of} bytes arrived): a sender trickling bytes`,
        );
        o.onProtocolError?.(err);
        inbox.fail(err);
        end(err);
        link.destroy();
        return;
      }
      if (link.writableLength === 0) link.write(alive);
    }, live.intervalMs);
    timer.unref();
  }
  link.resume();
  return link;
}
