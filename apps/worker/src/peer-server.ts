/**
 * A worker's Peer service and data-link listener: OpenLink (its ring predecessor of the current epoch
 * asks for a link and gets a one-time nonce), the incoming side of both data planes (a PushChunks
 * stream, or a raw TCP/TLS link whose hello proves the job token with the nonce), and the checks every
 * incoming chunk passes before it reaches the epoch's inbox. Each refusal is one log line (at most 20
 * of a kind per 10 s, then one line with the count: a flood cannot fill the disk). Raw links are
 * bounded before their hello: at most MAX_PENDING_LINKS connections may be waiting for one (more are
 * closed at once), and each has the hello deadline (10 s, or the link timeout if shorter).
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { listenGuarded, LogLimiter } from '@vitreg/coordinator';
import { METADATA_JOB, METADATA_TOKEN, PeerService, type Chunk, type PeerHandlers } from '@vitreg/proto';
import { alignedCopy, ProtocolError } from './frames.js';
import { linkMac, macEquals, readHello, type Liveness, type TlsFiles } from './links.js';
import { acceptTcpLink } from './incoming-link.js';
import { tokenMatches } from './auth.js';
import { linkDown, predecessorId, type EpochState } from './epoch.js';
import { METADATA_LINK } from './grpc-client.js';
import { Fatal } from './fatal.js';

export interface PeerServerOptions {
  token: string;
  jobId: string;
  tls?: TlsFiles;
  bindHost: string;
  /** Port of the Peer service (0: any). */
  peerPort: number;
  /** Largest chunk accepted. */
  chunkBytes: number;
  /** Bytes of one value on the wire: chunk sizes are multiples of it (4: float32; 2: --grad-compression bf16). Default 4. */
  valueBytes?: number;
}

/** What the peer server asks of its worker. */
export interface PeerServerHost {
  /** The epoch in hand (null before the first membership). */
  current(): EpochState | null;
  /** Resolves once the worker is in `epoch` or a later one; rejects after `timeoutMs`. */
  waitForEpoch(epoch: number, timeoutMs: number): Promise<void>;
  log(line: string): void;
  /** Signs of life on incoming raw links (known once the worker joined). */
  liveness?(): Liveness | undefined;
}

type Status = { code: grpc.status; details: string };

const failed = (details: string): Status => ({ code: grpc.status.FAILED_PRECONDITION, details });

/** Raw connections that may wait for their hello at once: a ring has one predecessor, so a few are plenty. */
export const MAX_PENDING_LINKS = 16;

export class PeerServer {
  /** The Peer service's port (known after start). */
  peerPort = 0;
  /** The raw data links' port (known after start). */
  tcpPort = 0;
  private server: grpc.Server | null = null;
  private tcpServer: net.Server | null = null;
  private guard: net.Server | null = null;
  private nonces = new Map<string, { epoch: number; workerId: string; expires: number }>();
  private pendingLinks = 0;
  private readonly limiter: LogLimiter;

  constructor(
    private readonly o: PeerServerOptions,
    private readonly host: PeerServerHost,
  ) {
    this.limiter = new LogLimiter((line) => host.log(line));
  }

  /** A refusal's log line, bounded per kind (see the module comment). */
  private refusal(kind: string, line: string): void {
    this.limiter.line(kind, line);
  }

  private checkAuth(metadata: grpc.Metadata): Status | null {
    const token = metadata.get(METADATA_TOKEN)[0];
    if (typeof token !== 'string' || !tokenMatches(token, this.o.token))
      return { code: grpc.status.UNAUTHENTICATED, details: 'wrong job token' };
    const job = metadata.get(METADATA_JOB)[0];
    if (job !== this.o.jobId)
      return { code: grpc.status.PERMISSION_DENIED, details: `job id "${String(job ?? '')}" is not this worker's job "${this.o.jobId}"` };
    return null;
  }

  /**
   * Checks a chunk on arrival against the epoch in hand; a refusal names what was expected. The
   * first chunk of a link is the epoch's first collective (rank 0's state broadcast), which carries
   * the step the membership started at; later chunks are checked exactly (op, step, phase, index,
   * size) by the ring as it consumes them.
   */
  private validateChunk(st: EpochState, c: { epoch: number; step: number; data: Uint8Array }, first: boolean): Status | null {
    if (c.epoch !== st.epoch) return failed(`chunk of membership epoch ${c.epoch}; this worker is in epoch ${st.epoch}`);
    const vb = this.o.valueBytes ?? 4;
    if (c.data.byteLength % vb !== 0 || c.data.byteLength > this.o.chunkBytes) {
      const details = `chunk of ${c.data.byteLength} bytes; expected a multiple of ${vb} up to ${this.o.chunkBytes}`;
      return { code: grpc.status.INVALID_ARGUMENT, details };
    }
    if (first && c.step !== st.m.committedStep)
      return failed(`chunk for step ${c.step}; epoch ${st.epoch} starts at step ${st.m.committedStep}`);
    return null;
  }

  /**
   * Checks a link's proof: a nonce this worker issued through OpenLink for (epoch, sender) and not
   * used yet, and HMAC-SHA256(token, nonce | epoch | sender). Returns why it fails, or null.
   */
  private checkLinkProof(epoch: number, workerId: string, nonceHex: string, macHex: string): string | null {
    const issued = this.nonces.get(nonceHex);
    this.nonces.delete(nonceHex);
    if (!issued || issued.expires < Date.now()) return 'unknown or expired link nonce (a link starts with OpenLink)';
    if (issued.epoch !== epoch || issued.workerId !== workerId) return 'the link does not match the nonce it was issued for';
    const mac = linkMac(this.o.token, Buffer.from(nonceHex, 'hex'), epoch, workerId);
    if (!macEquals(mac, Buffer.from(macHex, 'hex'))) return 'bad link MAC (wrong job token?)';
    return null;
  }

  private handlers(): PeerHandlers {
    return {
      openLink: (call, callback) => {
        const bad = this.checkAuth(call.metadata);
        if (bad) {
          this.refusal('refused OpenLink calls', `refused OpenLink from ${call.getPeer()}: ${bad.details}`);
          return callback(bad);
        }
        const { workerId, epoch } = call.request;
        this.host.waitForEpoch(epoch, 15_000).then(
          () => {
            const st = this.host.current()!;
            if (st.epoch !== epoch) return callback(failed(`link for membership epoch ${epoch}; this worker is in epoch ${st.epoch}`));
            if (workerId !== predecessorId(st))
              return callback({
                code: grpc.status.PERMISSION_DENIED,
                details: `worker ${workerId} is not this worker's ring predecessor in epoch ${epoch}`,
              });
            const nonce = randomBytes(32);
            this.nonces.set(nonce.toString('hex'), { epoch, workerId, expires: Date.now() + 30_000 });
            callback(null, { port: this.tcpPort, nonce });
          },
          (err: Error) => callback({ code: grpc.status.FAILED_PRECONDITION, details: err.message }),
        );
      },
      pushChunks: (call, callback) => {
        const refuse = (e: Status) => {
          this.refusal('refused chunk streams', `refused chunks from ${call.getPeer()}: ${grpc.status[e.code]}: ${e.details}`);
          callback(e);
          call.destroy();
        };
        const bad = this.checkAuth(call.metadata);
        if (bad) return refuse(bad);
        let st: EpochState | null = null;
        let n = 0;
        let ended = false;
        const onChunk = (c: Chunk) => {
          if (ended) return;
          if (!st) {
            const cur = this.host.current();
            if (!cur) return refuse({ code: grpc.status.FAILED_PRECONDITION, details: 'this worker has no membership yet' });
            if (c.epoch === cur.epoch && c.workerId !== predecessorId(cur)) {
              const details = `worker "${c.workerId}" is not this worker's ring predecessor in epoch ${cur.epoch}`;
              return refuse({ code: grpc.status.PERMISSION_DENIED, details });
            }
            const v = this.validateChunk(cur, c, true);
            if (v) return refuse(v);
            const [nonce = '', mac = ''] = String(call.metadata.get(METADATA_LINK)[0] ?? '').split(':');
            const proof = this.checkLinkProof(c.epoch, c.workerId, nonce, mac);
            if (proof)
              return refuse({ code: grpc.status.PERMISSION_DENIED, details: `the link of worker "${c.workerId}" was refused: ${proof}` });
            if (cur.incoming)
              return refuse({ code: grpc.status.ALREADY_EXISTS, details: `epoch ${cur.epoch} already has its incoming link` });
            st = cur;
            cur.incoming = true;
            cur.inbox.pause = () => call.pause();
            cur.inbox.resume = () => call.resume();
            cur.closers.push(() => {
              ended = true;
              callback(null, { chunks: n });
            });
          } else {
            if (st.aborted) return;
            const v = this.validateChunk(st, c, false);
            if (v) {
              st.inbox.fail(new ProtocolError(v.details));
              return refuse(v);
            }
          }
          n++;
          const { epoch, op, step, phase, index, offset } = c;
          st.inbox.push({ epoch, op, step, phase, index, offset, data: alignedCopy(c.data) });
        };
        call.on('data', onChunk);
        call.on('error', () => {
          if (!st) return;
          const err = new ProtocolError('the incoming gRPC link broke');
          st.inbox.fail(err);
          linkDown(st, 'predecessor', err, (l) => this.host.log(l));
        });
        call.on('end', () => {
          if (!ended) {
            ended = true;
            callback(null, { chunks: n });
          }
        });
      },
    };
  }

  /** Serves the Peer service on bindHost:peerPort and the raw data links on an ephemeral port (TLS when TLS is on). */
  async start(): Promise<void> {
    const o = this.o;
    const server = new grpc.Server({
      'grpc.max_receive_message_length': o.chunkBytes + 4096,
      'grpc.max_send_message_length': 1 << 20,
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
    });
    server.addService(PeerService, this.handlers());
    const creds = o.tls
      ? grpc.ServerCredentials.createSsl(o.tls.ca ?? null, [{ private_key: o.tls.key, cert_chain: o.tls.cert }], !!o.tls.ca)
      : grpc.ServerCredentials.createInsecure();
    if (o.tls) {
      this.peerPort = await new Promise<number>((resolve, reject) => {
        server.bindAsync(`${o.bindHost}:${o.peerPort}`, creds, (err, port) =>
          err
            ? reject(new Fatal(`cannot serve the Peer service on ${o.bindHost}:${o.peerPort}: ${err.message}`, { cause: err }))
            : resolve(port),
        );
      });
    } else {
      // Plaintext: behind the coordinator's guard (at most 64 connections, the HTTP/2 preface within 10 s or the link
      // timeout if shorter, a line for each bad one).
      try {
        const g = await listenGuarded(server, o.bindHost, o.peerPort, {
          maxConnections: 64,
          prefaceMs: () => Math.min(10_000, this.host.liveness?.()?.timeoutMs ?? 10_000),
          refused: (kind, peer, why) => this.refusal(`${kind} (Peer service)`, `closed a Peer service connection from ${peer}: ${why}`),
        });
        this.peerPort = g.port;
        this.guard = g.netServer;
      } catch (err) {
        throw new Fatal(`cannot serve the Peer service on ${o.bindHost}:${o.peerPort}: ${(err as Error).message}`, { cause: err });
      }
    }
    this.server = server;
    // The raw data links: TLS with the same certificates when TLS is on.
    const onSocket = (socket: net.Socket) => {
      if (this.pendingLinks >= MAX_PENDING_LINKS) {
        socket.on('error', () => undefined);
        this.refusal(
          'data links over the limit',
          `refused a data link from ${socket.remoteAddress}:${socket.remotePort}: ${this.pendingLinks} connections already wait for their hello (at most ${MAX_PENDING_LINKS})`,
        );
        socket.destroy();
        return;
      }
      this.acceptTcp(socket).catch(() => undefined);
    };
    const t = o.tls;
    const tcp = t
      ? tls.createServer({ cert: t.cert, key: t.key, ca: t.ca, requestCert: !!t.ca, rejectUnauthorized: !!t.ca }, onSocket)
      : net.createServer(onSocket);
    tcp.on('tlsClientError', (err: Error, s: net.Socket) => {
      this.refusal('refused data links', `refused a data link from ${s.remoteAddress}: TLS: ${err.message}`);
    });
    this.tcpPort = await new Promise<number>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(0, o.bindHost, () => resolve((tcp.address() as net.AddressInfo).port));
    });
    this.tcpServer = tcp;
  }

  /** An incoming raw link: its hello (proof and epoch), then its frames, checked, into the epoch's inbox. */
  private async acceptTcp(socket: net.Socket): Promise<void> {
    socket.setNoDelay(true);
    const who = `${socket.remoteAddress}:${socket.remotePort}`;
    this.pendingLinks++;
    let pending = true;
    const settled = () => {
      if (pending) this.pendingLinks--;
      pending = false;
    };
    try {
      const helloMs = Math.min(10_000, this.host.liveness?.()?.timeoutMs ?? 10_000);
      const { hello, rest } = await readHello(socket, helloMs).finally(settled);
      const proof = this.checkLinkProof(hello.epoch, hello.worker_id, hello.nonce, hello.mac);
      if (proof) throw new ProtocolError(proof);
      const st = this.host.current();
      if (!st || st.epoch !== hello.epoch || st.aborted)
        throw new ProtocolError(`link for epoch ${hello.epoch}; this worker is in epoch ${st?.epoch}`);
      if (st.incoming) throw new ProtocolError(`epoch ${st.epoch} already has its incoming link`);
      st.incoming = true;
      let first = true;
      const link = acceptTcpLink(socket, st.inbox, {
        maxPayload: this.o.chunkBytes,
        rest,
        check: (f) => {
          const v = this.validateChunk(st, f, first);
          first = false;
          if (v) throw new ProtocolError(v.details);
        },
        onProtocolError: (err) => this.host.log(`data link from ${who} broke the protocol: ${err.message}; closing it`),
        closedError: () => st.aborted ?? new ProtocolError(`the data link from ${who} closed`),
        liveness: this.host.liveness?.(),
        onDown: (err) => linkDown(st, 'predecessor', err, (l) => this.host.log(l)),
      });
      st.closers.push(() => link.destroy());
      if (st.aborted) link.destroy();
    } catch (err) {
      settled();
      this.refusal('refused data links', `refused a data link from ${who}: ${(err as Error).message}`);
      socket.destroy();
    }
  }

  /** Stops listening; the Peer service shuts down once its calls ended, or after 2 s (a peer across a broken network never answers). */
  async close(): Promise<void> {
    this.tcpServer?.close();
    this.guard?.close();
    this.limiter.close();
    const s = this.server;
    if (!s) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        s.forceShutdown();
        resolve();
      }, 2000);
      t.unref();
      s.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}
