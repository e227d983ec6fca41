/**
 * Hostile peers on the data plane, link by link (src/links.ts, src/incoming-link.ts, src/frames.ts,
 * src/ring.ts, src/peer-server.ts): a receiver that answers signs of life but stops reading (a
 * slowloris), a sender that trickles a frame a byte at a time, a predecessor that keeps its link alive
 * but sends no frame of a collective, a flood of connections that never send their hello, and malformed
 * frames on an accepted link (bad magic, a payload over the chunk size, a chunk of another epoch). Each is
 * ended within its deadline with a log line or a named error. The same against a running job:
 * hostile.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { METADATA_JOB, METADATA_TOKEN, PeerClient, type Membership } from '@vitreg/proto';
import { openEpoch, type EpochState } from '../src/epoch.js';
import { CollectiveTimeout, encodeHeader, Inbox, ProtocolError, type FrameHeader, type OutLink } from '../src/frames.js';
import { encodeHello, LinkDown, linkMac, TcpOutLink, type Liveness } from '../src/links.js';
import { acceptTcpLink } from '../src/incoming-link.js';
import { ringAllReduce, ringBroadcast } from '../src/ring.js';
import { MAX_PENDING_LINKS, PeerServer } from '../src/peer-server.js';

const LIVE: Liveness = { intervalMs: 50, timeoutMs: 400 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rejects with `what` after `ms`: a test that would otherwise hang fails instead. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms))),
  ]);
}

test('a receiver that answers signs of life but stops reading: the sender declares the link down after stallMs', async () => {
  // Accepts, then never reads again, but sends a sign of life every 50 ms (so liveness alone never fires).
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => {
    sockets.push(s);
    s.write(Buffer.from([1]));
    s.pause();
    const t = setInterval(() => !s.destroyed && s.write(Buffer.from([2])), 50);
    s.on('close', () => clearInterval(t));
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const sock = await new Promise<net.Socket>((resolve) => {
    const c = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1', () => resolve(c));
  });
  await new Promise((r) => sock.once('data', r));
  const out = new TcpOutLink(sock, { ...LIVE, stallMs: 600 });
  let failed = null as Error | null;
  out.onFailure((e) => (failed = e));
  const t0 = Date.now();
  const chunk = new Uint8Array(1 << 20);
  const h: FrameHeader = { epoch: 1, op: 0, step: 0, phase: 0, index: 0, offset: 0 };
  // Send until the link gives up: the kernel's buffers take a few MiB, then nothing leaves.
  await within(
    (async () => {
      for (let i = 0; i < 4096; i++) {
        await out.ready();
        void out.send({ ...h, index: i }, chunk).catch(() => undefined);
      }
    })(),
    15_000,
    'the sender kept waiting on a receiver that does not read',
  ).catch((e: Error) => assert.ok(e instanceof LinkDown, String(e)));
  assert.ok(failed instanceof LinkDown, `failure: ${String(failed)}`);
  assert.match(failed.message, /stopped reading: \d+ bytes waited \d+ ms to leave/);
  assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
  for (const s of sockets) s.destroy();
  server.close();
});

test('a sender that trickles a frame a byte at a time (each byte a sign of life): the receiver closes the link after the link timeout', async () => {
  const inbox = new Inbox();
  const errors: Error[] = [];
  let down = null as Error | null;
  const links: net.Socket[] = [];
  const server = net.createServer((s) => {
    links.push(
      acceptTcpLink(s, inbox, { maxPayload: 1 << 20, liveness: LIVE, onDown: (e) => (down = e), onProtocolError: (e) => errors.push(e) }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const c = await new Promise<net.Socket>((resolve) => {
    const s = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1', () => resolve(s));
  });
  c.on('error', () => undefined);
  await new Promise((r) => c.once('data', r));
  c.write(encodeHeader({ epoch: 1, op: 0, step: 0, phase: 0, index: 0, offset: 0 }, 1024));
  const drip = setInterval(() => !c.destroyed && c.write(Buffer.from([7])), 40);
  const t0 = Date.now();
  await within(
    assert.rejects(inbox.next(), (e: Error) => e instanceof LinkDown && /trickling bytes/.test(e.message)),
    5000,
    'the receiver kept waiting for a trickled frame',
  );
  clearInterval(drip);
  assert.ok(Date.now() - t0 < LIVE.timeoutMs + 1000, `took ${Date.now() - t0} ms`);
  assert.ok(down instanceof LinkDown);
  assert.match(errors.map((e) => e.message).join('\n'), /took over 400 ms \(\d+ of 1056 bytes arrived\)/);
  c.destroy();
  for (const l of links) l.destroy();
  server.close();
});

test('a predecessor that keeps its link alive but sends no frame: the all-reduce and the broadcast fail with a CollectiveTimeout; a later frame stays queued', async () => {
  const sent: FrameHeader[] = [];
  const out: OutLink = {
    send: (h) => (sent.push(h), Promise.resolve()),
    ready: () => Promise.resolve(),
    close: () => undefined,
  };
  const inbox = new Inbox();
  const io = { out, inbox, epoch: 3, position: 1, size: 2 };
  const opts = { chunkBytes: 64, bucketBytes: 1 << 20, frameTimeoutMs: 300 };
  const t0 = Date.now();
  await within(
    assert.rejects(ringAllReduce(io, new Float32Array(64), 5, 9, opts), (e: Error) => {
      assert.ok(e instanceof CollectiveTimeout, String(e));
      assert.match(e.message, /all-reduce 5 of step 9 \(0 of 4 chunks received\): no frame from the ring predecessor for 300 ms/);
      return true;
    }),
    5000,
    'the all-reduce waited on',
  );
  assert.ok(Date.now() - t0 < 1500, `took ${Date.now() - t0} ms`);
  assert.ok(sent.length > 0, 'it sent its own first chunks');
  await within(
    assert.rejects(
      ringBroadcast(io, null, 6, 9, opts),
      (e: Error) => e instanceof CollectiveTimeout && /broadcast 6 of step 9/.test(e.message),
    ),
    5000,
    'the broadcast waited on',
  );
  // The timed-out waiter was withdrawn: a frame arriving later is not lost.
  inbox.push({ epoch: 3, op: 7, step: 9, phase: 0, index: 0, offset: 0, data: new Uint8Array(4) });
  assert.equal((await inbox.next(100)).op, 7);
});

test(`connections that never send their hello: at most ${MAX_PENDING_LINKS} wait, the rest are closed at once, each waiting one after the link timeout, with bounded log lines`, async () => {
  const lines: string[] = [];
  const peers = new PeerServer(
    { token: 't', jobId: 'j', bindHost: '127.0.0.1', peerPort: 0, chunkBytes: 1 << 20 },
    {
      current: () => null,
      waitForEpoch: () => Promise.reject(new Error('no epoch')),
      log: (l) => lines.push(l),
      liveness: () => ({ intervalMs: 100, timeoutMs: 800 }),
    },
  );
  await peers.start();
  const closed: number[] = [];
  const t0 = Date.now();
  const open = (port: number, first?: Buffer) =>
    new Promise<net.Socket>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        if (first) s.write(first);
        resolve(s);
      });
      s.on('error', () => undefined);
      s.on('close', () => closed.push(Date.now() - t0));
    });
  const silent: net.Socket[] = [];
  const garbage = await open(peers.tcpPort, Buffer.from('GET / HTTP/1.1\r\n\r\n'));
  await within(
    (async () => {
      while (closed.length < 1) await sleep(20);
    })(),
    3000,
    'the garbage link',
  );
  for (let i = 0; i < 40; i++) silent.push(await open(peers.tcpPort));
  const peerSilent = await open(peers.peerPort);
  const peerGarbage = await open(peers.peerPort, Buffer.from('hello there, not HTTP/2 at all'));
  try {
    await within(
      (async () => {
        while (closed.length < 43) await sleep(50);
      })(),
      8000,
      'the 43 connections closed',
    );
    const atOnce = closed.filter((ms) => ms < 500).length;
    assert.ok(atOnce >= 40 - MAX_PENDING_LINKS, `${atOnce} closed at once`);
    assert.ok(Math.max(...closed) < 4000, `the last closed after ${Math.max(...closed)} ms`);
    const text = lines.join('\n');
    assert.match(text, /already wait for their hello \(at most 16\)/);
    assert.match(text, /no hello within 800 ms/);
    assert.match(text, /did not start with a VRGH hello/);
    assert.match(text, /closed a Peer service connection from .*: no HTTP\/2 preface within 800 ms/);
    assert.match(text, /closed a Peer service connection from .*: not HTTP\/2/);
    const over = lines.filter((l) => /already wait for their hello/.test(l)).length;
    assert.ok(over <= 20, `${over} lines for links over the limit: bounded (20 a kind per 10 s)`);
  } finally {
    for (const s of [...silent, garbage, peerSilent, peerGarbage]) s.destroy();
    await peers.close();
  }
  assert.match(lines.join('\n'), /\.\.\. \d+ more data links over the limit in the last \d+ s/, 'the rest summed up in one line');
});

test('malformed frames on an accepted data link: the link is closed, "broke the protocol" is logged, the predecessor is reported unreachable', async () => {
  const lines: string[] = [];
  let st: EpochState | null = null;
  const chunkBytes = 1024;
  const peers = new PeerServer(
    { token: 't', jobId: 'j', bindHost: '127.0.0.1', peerPort: 0, chunkBytes },
    {
      current: () => st,
      waitForEpoch: () => Promise.resolve(),
      log: (l) => lines.push(l),
      liveness: () => ({ intervalMs: 100, timeoutMs: 5000 }),
    },
  );
  await peers.start();
  const client = new PeerClient(`127.0.0.1:${peers.peerPort}`, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set(METADATA_TOKEN, 't');
  md.set(METADATA_JOB, 'j');
  /** A fresh epoch with this worker ("me", w1) after its predecessor ("pred", w0), a link from w0 accepted into it, then `bytes` sent. */
  const attempt = async (epoch: number, bytes: Buffer) => {
    const m = {
      epoch,
      committedStep: 0,
      transport: 'tcp',
      members: [
        { workerId: 'w0', name: 'pred', rank: 0, firstRank: 0, peerAddress: '127.0.0.1:1' },
        { workerId: 'w1', name: 'me', rank: 1, firstRank: 1, peerAddress: `127.0.0.1:${peers.peerPort}` },
      ],
    } as unknown as Membership;
    const epochState = openEpoch(m, m.members[1]!);
    st = epochState;
    const reply = await new Promise<{ port: number; nonce: Uint8Array }>((resolve, reject) =>
      client.openLink({ workerId: 'w0', epoch }, md, (err, v) => (err ? reject(err) : resolve(v!))),
    );
    const sock = await new Promise<net.Socket>((resolve) => {
      const s = net.connect(reply.port, '127.0.0.1', () => resolve(s));
    });
    sock.on('error', () => undefined);
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    sock.write(encodeHello('w0', epoch, reply.nonce, linkMac('t', reply.nonce, epoch, 'w0')));
    await within(new Promise((r) => sock.once('data', r)), 3000, 'the accept byte');
    assert.ok(epochState.incoming, 'the link was accepted');
    const from = `127.0.0.1:${sock.localPort}`;
    const inboxFailed = assert.rejects(epochState.inbox.next(5000), ProtocolError);
    sock.write(bytes);
    await within(closed, 3000, 'the link closed');
    await inboxFailed;
    return { from, st: epochState };
  };
  const h = (epoch: number): FrameHeader => ({ epoch, op: 0, step: 0, phase: 0, index: 0, offset: 0 });
  try {
    const cases: [Buffer, RegExp][] = [
      [Buffer.alloc(64, 0xab), /broke the protocol: frame without the VRG1 magic \(got 0xabababab\); closing it/],
      [
        encodeHeader(h(2), chunkBytes + 4),
        new RegExp(`broke the protocol: frame of ${chunkBytes + 4} bytes, more than the ${chunkBytes} allowed; closing it`),
      ],
      [
        Buffer.concat([encodeHeader(h(9), 8), Buffer.alloc(8)]),
        /broke the protocol: chunk of membership epoch 9; this worker is in epoch 3; closing it/,
      ],
    ];
    for (const [i, [bytes, why]] of cases.entries()) {
      const epoch = i + 1;
      const { from, st: s } = await attempt(epoch, bytes);
      const mine = lines.filter((l) => l.startsWith(`data link from ${from} broke the protocol: `));
      assert.equal(mine.length, 1, `case ${epoch}: ${lines.join('\n')}`);
      assert.match(mine[0]!, why);
      assert.equal(s.unreachable, 'w0', `case ${epoch}: the predecessor is reported unreachable`);
      assert.ok(
        lines.some((l) => l.startsWith(`the data link with pred, this worker's ring predecessor in epoch ${epoch}, is down (`)),
        `case ${epoch}: ${lines.join('\n')}`,
      );
    }
  } finally {
    client.close();
    await peers.close();
  }
});
