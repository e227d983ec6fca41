/**
 * The coordinator's plaintext listener: Node's net.Server in front of grpc-js (as the TLS listener),
 * so that connections are bounded and each bad one leaves a log line. grpc-js' own listener accepts
 * any number of connections and closes a silent one only when its keepalive ping goes unanswered
 * (15 s here), without a word. Here:
 * - at most `maxConnections` connections at once: one more is closed at once;
 * - the HTTP/2 client preface must arrive within `prefaceMs`: a half-open connection, or a client
 *   that connects and says nothing, is closed then;
 * - a connection whose first bytes are not the HTTP/2 preface is closed at once.
 * A connection that passed is handed to grpc-js (Server.createConnectionInjector) with the bytes
 * read so far put back in front (Node's HTTP/2 session reads what its socket already buffered).
 */
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';

/** The first bytes every HTTP/2 client sends (RFC 9113, 3.4). */
export const HTTP2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export interface GuardOptions {
  /** Connections open at once (default 256). */
  maxConnections?: number;
  /** Milliseconds a new connection has to send the HTTP/2 preface (default 10000; a function: asked at each connection). */
  prefaceMs?: number | (() => number);
  /** Told of each closed connection: a kind (for bounded logging), the peer, and why. */
  refused: (kind: string, peer: string, why: string) => void;
}

const peerOf = (s: net.Socket): string =>
  s.remoteAddress ? `${s.remoteAddress.includes(':') ? `[${s.remoteAddress}]` : s.remoteAddress}:${s.remotePort}` : 'unknown peer';

/** Serves `server` (plaintext gRPC) on host:port behind the guard; resolves with the bound port. */
export async function listenGuarded(
  server: grpc.Server,
  host: string,
  port: number,
  o: GuardOptions,
): Promise<{ port: number; netServer: net.Server }> {
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const max = o.maxConnections ?? 256;
  let open = 0;
  const netServer = net.createServer((socket) => {
    const peer = peerOf(socket);
    socket.on('error', () => undefined);
    if (open >= max) {
      o.refused('connections over the limit', peer, `${open} connections open, at most ${max}: closed at once`);
      socket.destroy();
      return;
    }
    open++;
    socket.once('close', () => open--);
    let got = Buffer.alloc(0);
    const prefaceMs = typeof o.prefaceMs === 'function' ? o.prefaceMs() : (o.prefaceMs ?? 10_000);
    const timer = setTimeout(() => {
      o.refused(
        'silent connections',
        peer,
        `no HTTP/2 preface within ${prefaceMs} ms (${got.length} bytes): half-open, or not a gRPC client; closed`,
      );
      socket.destroy();
    }, prefaceMs);
    timer.unref();
    const onData = (b: Buffer) => {
      got = Buffer.concat([got, b]);
      const n = Math.min(got.length, HTTP2_PREFACE.length);
      if (!got.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n))) {
        clearTimeout(timer);
        const first = JSON.stringify(got.subarray(0, 16).toString('latin1'));
        o.refused('garbage connections', peer, `not HTTP/2 (first bytes ${first}); closed`);
        socket.destroy();
        return;
      }
      if (got.length < HTTP2_PREFACE.length) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      socket.unshift(got);
      injector.injectConnection(socket);
    };
    socket.on('data', onData);
    socket.once('close', () => clearTimeout(timer));
  });
  const bound = await new Promise<number>((resolve, reject) => {
    netServer.once('error', reject);
    netServer.listen(port, host, () => {
      netServer.removeListener('error', reject);
      resolve((netServer.address() as net.AddressInfo).port);
    });
  });
  netServer.on('close', () => injector.destroy());
  return { port: bound, netServer };
}
