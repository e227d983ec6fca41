/**
 * The coordinator's TLS listener: Node's tls.Server in front of a grpc-js server, with every refused
 * connection reported (see listenTls).
 */
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';

/**
 * TLS through Node's tls server, handed to grpc-js as decrypted connections
 * (Server.createConnectionInjector): grpc-js' own TLS listener (bindAsync with
 * ServerCredentials.createSsl) drops failed handshakes without any event its users can see, while
 * tls.Server reports them ('tlsClientError') and lets us check the client certificate ourselves.
 * Same settings as ServerCredentials.createSsl(ca, [{ private_key, cert_chain }], !!ca).
 */
export async function listenTls(
  server: grpc.Server,
  host: string,
  port: number,
  creds: { cert: Buffer; key: Buffer; ca?: Buffer },
  refused: (peer: string, why: string) => void,
): Promise<{ port: number; tlsServer: tls.Server }> {
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const tlsServer = tls.createServer({
    cert: creds.cert,
    key: creds.key,
    ca: creds.ca,
    requestCert: !!creds.ca,
    // Checked below, so that a refused client certificate is logged (Node would drop it silently).
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    // A connection that never completes its handshake (half-open, or silent) is refused after 10 s, not Node's 120 s.
    handshakeTimeout: 10_000,
    ciphers: process.env.GRPC_SSL_CIPHER_SUITES,
  });
  const peer = (s: { remoteAddress?: string; remotePort?: number }): string =>
    s.remoteAddress ? `${s.remoteAddress.includes(':') ? `[${s.remoteAddress}]` : s.remoteAddress}:${s.remotePort}` : 'unknown peer';
  tlsServer.on('tlsClientError', (err, socket) => {
    refused(peer(socket), `TLS handshake failed: ${err.message.split('\n')[0]}`);
  });
  tlsServer.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.on('error', () => {
      /* the HTTP/2 session sees the same failure and closes */
    });
    if (creds.ca && !socket.authorized) {
      const cert = socket.getPeerCertificate();
      const none = !cert || Object.keys(cert).length === 0;
      refused(
        peer(socket),
        none
          ? 'client certificate refused: the client sent none (mutual TLS)'
          : `client certificate refused: ${socket.authorizationError ?? 'not authorized'} (subject CN=${cert.subject?.CN ?? '?'})`,
      );
      socket.destroy();
      return;
    }
    if (socket.alpnProtocol !== 'h2') {
      refused(peer(socket), `client did not negotiate HTTP/2 (ALPN ${JSON.stringify(socket.alpnProtocol)})`);
      socket.destroy();
      return;
    }
    injector.injectConnection(socket);
  });
  const bound = await new Promise<number>((resolve, reject) => {
    tlsServer.once('error', reject);
    tlsServer.listen(port, host, () => {
      tlsServer.removeListener('error', reject);
      resolve((tlsServer.address() as AddressInfo).port);
    });
  });
  tlsServer.on('close', () => injector.destroy());
  return { port: bound, tlsServer };
}
