/**
 * One process of `npm run bench -- allreduce` (forked by bench/allreduce.ts with the runner's execArgv,
 * so tsx and the vitreg-source condition apply). Roles (argv[2]):
 *  - `rank`: one ring member running the worker's real data plane from @vitreg/worker (connectTcpLink /
 *    acceptTcpLink / Inbox / ringAllReduce, or GrpcOutLink + a PushChunks server on PeerService as the
 *    worker's peer server serves it);
 *  - `sink` / `source`: the raw TCP ceiling (net, 1 MiB writes, one ack byte per round);
 *  - `stream`: the ring's traffic without the all-reduce: every process streams `floats * 4` bytes to
 *    its successor while it receives as many from its predecessor (net, 1 MiB writes), per round, and
 *    reports the round's time and its own CPU seconds (user + system).
 * Listens at its host's address (cfg.host: 127.0.0.1, or a host of its own with --hosts). Talks to the
 * parent over the IPC channel.
 */
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { PeerClient, PeerService, type Chunk, type PeerHandlers } from '@vitreg/proto';
import {
  acceptTcpLink,
  alignedCopy,
  connectTcpLink,
  encodeHello,
  GrpcOutLink,
  Inbox,
  linkMac,
  readHello,
  ringAllReduce,
  type OutLink,
} from '@vitreg/worker';

type Msg = Record<string, unknown> & { type: string };
const send = (m: Msg) => process.send!(m);
const inbox: Msg[] = [];
let waiting: ((m: Msg) => void) | null = null;
process.on('message', (m: Msg) => {
  if (waiting) {
    const w = waiting;
    waiting = null;
    w(m);
  } else inbox.push(m);
});
const recv = (): Promise<Msg> =>
  inbox.length
    ? Promise.resolve(inbox.shift()!)
    : new Promise((r) => {
        waiting = r;
      });

const role = process.argv[2];
const cfg = JSON.parse(process.argv[3]!) as {
  rank: number;
  size: number;
  floats: number;
  transport: 'tcp' | 'grpc';
  wire?: 'f32' | 'bf16';
  chunkBytes: number;
  bucketBytes: number;
  repeat: number;
  /** The address this process listens at (its host's, with --hosts). */
  host: string;
};

/**
 * Rank r's value at index i: multiples of 1/8 in [-128, 128), so any sum of up to 2^13 ranks is exact
 * in float32. On a bf16 wire, integers in [-32, 32): every partial sum of up to 4 ranks has at most 8
 * significant bits, so it is exact in bfloat16 too and the check stays exact.
 */
export function valueOf(rank: number, i: number): number {
  if (cfg.wire === 'bf16') return ((i * 31 + rank * 1237) % 64) - 32;
  return (((i * 31 + rank * 1237) % 2048) - 1024) / 8;
}

async function rankMain(): Promise<void> {
  const { rank, size, floats, transport, chunkBytes, bucketBytes } = cfg;
  const token = 'bench';
  const epoch = 1;
  const workerId = `rank-${rank}`;
  // Same queue limits as the agent's.
  const ib = new Inbox(256 << 20, 64 << 20);
  let accepted!: () => void;
  const acceptedP = new Promise<void>((r) => {
    accepted = r;
  });
  let port: number;
  let closeServer: () => void;
  if (transport === 'tcp') {
    // The worker's incoming link without the nonce and epoch checks: hello, accept byte, frames into the Inbox.
    const server = net.createServer((socket) => {
      socket.setNoDelay(true);
      readHello(socket, 10_000).then(
        ({ rest }) => {
          acceptTcpLink(socket, ib, { maxPayload: chunkBytes, rest, closedError: () => new Error('data link closed') });
          accepted();
        },
        (err: Error) => {
          send({ type: 'error', message: err.message });
        },
      );
    });
    port = await new Promise<number>((resolve) => server.listen(0, cfg.host, () => resolve((server.address() as net.AddressInfo).port)));
    closeServer = () => server.close();
  } else {
    // The worker's pushChunks handler without the auth and epoch checks: aligned copy into the Inbox.
    const handlers: PeerHandlers = {
      pushChunks: (call, callback) => {
        let n = 0;
        ib.pause = () => call.pause();
        ib.resume = () => call.resume();
        accepted();
        call.on('data', (c: Chunk) => {
          n++;
          ib.push({ epoch: c.epoch, op: c.op, step: c.step, phase: c.phase, index: c.index, offset: c.offset, data: alignedCopy(c.data) });
        });
        call.on('error', () => ib.fail(new Error('the incoming gRPC link broke')));
        call.on('end', () => callback(null, { chunks: n }));
      },
      openLink: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED, details: 'bench' }),
    };
    const server = new grpc.Server({ 'grpc.max_receive_message_length': chunkBytes + 4096, 'grpc.max_send_message_length': 1 << 20 });
    server.addService(PeerService, handlers);
    port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${cfg.host}:0`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    closeServer = () => server.forceShutdown();
  }
  send({ type: 'port', port });
  const { port: next, host: nextHost } = (await recv()) as unknown as { port: number; host: string };
  let out: OutLink;
  if (transport === 'tcp') {
    const nonce = Buffer.alloc(32, rank);
    out = await connectTcpLink(
      nextHost,
      next,
      encodeHello(workerId, epoch, nonce, linkMac(token, nonce, epoch, workerId)),
      undefined,
      10_000,
    );
  } else {
    const client = new PeerClient(`${nextHost}:${next}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 8 << 20,
      'grpc.max_send_message_length': 8 << 20,
    });
    const call = client.pushChunks(new grpc.Metadata(), () => undefined);
    out = new GrpcOutLink(call as unknown as grpc.ClientWritableStream<unknown>, workerId);
  }
  if (transport === 'tcp') await acceptedP;
  send({ type: 'linked' });

  const data = new Float32Array(floats);
  for (;;) {
    const m = await recv();
    if (m.type === 'exit') break;
    const iter = m.iter as number;
    for (let i = 0; i < floats; i++) data[i] = valueOf(rank, i);
    // Every rank starts at the parent's 'go', sent once all filled their data (no rank's time
    // includes waiting for a slower rank's preparation).
    send({ type: 'ready', iter });
    await recv();
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    await ringAllReduce({ out, inbox: ib, epoch, position: rank, size }, data, iter, iter, { chunkBytes, bucketBytes, wire: cfg.wire });
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    // Every index against the closed form (exact: see valueOf).
    let bad = 0;
    let firstBad = -1;
    for (let i = 0; i < floats; i++) {
      let want = 0;
      for (let r = 0; r < size; r++) want += valueOf(r, i);
      if (data[i] !== want) {
        if (bad++ === 0) firstBad = i;
      }
    }
    send({
      type: 'done',
      iter,
      seconds,
      cpu: (cpu.user + cpu.system) / 1e6,
      cpuUser: cpu.user / 1e6,
      bad,
      firstBad,
      got: firstBad >= 0 ? data[firstBad] : null,
    });
  }
  out.close();
  closeServer();
}

/** The ceiling: `floats * 4` bytes per round over one loopback socket, 1 MiB writes, an ack byte per round. */
async function sinkMain(): Promise<void> {
  const bytes = cfg.floats * 4;
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    let got = 0;
    socket.on('data', (b: Buffer) => {
      got += b.length;
      while (got >= bytes) {
        got -= bytes;
        socket.write(Buffer.from([1]));
      }
    });
    socket.on('error', () => undefined);
  });
  const port = await new Promise<number>((resolve) =>
    server.listen(0, cfg.host, () => resolve((server.address() as net.AddressInfo).port)),
  );
  send({ type: 'port', port });
  await recv();
  server.close();
  process.exit(0);
}

async function sourceMain(): Promise<void> {
  const bytes = cfg.floats * 4;
  const { port } = (await recv()) as unknown as { port: number };
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: cfg.host, port }, () => resolve(s));
    s.once('error', reject);
  });
  socket.setNoDelay(true);
  const buf = Buffer.alloc(bytes, 7);
  let ack: (() => void) | null = null;
  socket.on('data', (b: Buffer) => {
    for (let i = 0; i < b.length; i++) ack?.();
  });
  const times: number[] = [];
  for (let round = 0; round <= cfg.repeat; round++) {
    const acked = new Promise<void>((r) => {
      ack = r;
    });
    const t0 = performance.now();
    for (let off = 0; off < bytes; off += 1 << 20) {
      if (!socket.write(buf.subarray(off, Math.min(bytes, off + (1 << 20))))) await new Promise((r) => socket.once('drain', r));
    }
    await acked;
    if (round > 0) times.push((performance.now() - t0) / 1000);
  }
  send({ type: 'times', times });
  socket.destroy();
  process.exit(0);
}

/** Streams to the successor while receiving from the predecessor; reports each round's time until both ended. */
async function streamMain(): Promise<void> {
  const bytes = cfg.floats * 4;
  let got = 0;
  let received: (() => void) | null = null;
  let incoming: net.Socket | null = null;
  const server = net.createServer((socket) => {
    incoming = socket;
    socket.on('data', (b: Buffer) => {
      got += b.length;
      if (got >= bytes && received) {
        got -= bytes;
        const r = received;
        received = null;
        r();
      }
    });
    socket.on('error', () => undefined);
  });
  const port = await new Promise<number>((resolve) =>
    server.listen(0, cfg.host, () => resolve((server.address() as net.AddressInfo).port)),
  );
  send({ type: 'port', port });
  const { port: next, host: nextHost } = (await recv()) as unknown as { port: number; host: string };
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: nextHost, port: next }, () => resolve(s));
    s.once('error', reject);
  });
  socket.setNoDelay(true);
  send({ type: 'linked' });
  const buf = Buffer.alloc(1 << 20, 7);
  for (;;) {
    const m = await recv();
    if (m.type === 'exit') break;
    const done = new Promise<void>((r) => {
      received = r;
      if (got >= bytes) {
        got -= bytes;
        received = null;
        r();
      }
    });
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    for (let off = 0; off < bytes; off += buf.length) {
      if (!socket.write(buf.subarray(0, Math.min(buf.length, bytes - off)))) await new Promise((r) => socket.once('drain', r));
    }
    await done;
    const cpu = process.cpuUsage(cpu0);
    send({ type: 'done', seconds: (performance.now() - t0) / 1000, cpu: (cpu.user + cpu.system) / 1e6 });
  }
  socket.destroy();
  (incoming as net.Socket | null)?.destroy();
  server.close();
}

const main = role === 'rank' ? rankMain : role === 'sink' ? sinkMain : role === 'stream' ? streamMain : sourceMain;
main().then(
  () => process.exit(0),
  (err: Error) => {
    send({ type: 'error', message: err.stack ?? err.message });
    process.exit(1);
  },
);
