/**
 * The raw data link's receiving path and liveness (src/frames.ts, src/incoming-link.ts, src/links.ts): frames read straight
 * into their payload buffers (the accepted socket's handle moved into a reading Socket), keepalives
 * skipped, a silent link declared down on either side within its timeout, an idle but live link kept.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { encodeHeader, encodeKeepalive, FrameParser, Inbox, type Frame } from '../src/frames.js';
import { LinkDown, TcpOutLink, type Liveness } from '../src/links.js';
import { acceptTcpLink } from '../src/incoming-link.js';

const LIVE: Liveness = { intervalMs: 50, timeoutMs: 400 };

/** A server whose connections go through acceptTcpLink into `inbox` (no hello: the test sends frames at once). */
async function receiver(inbox: Inbox, o: { liveness?: Liveness; onDown?: (e: Error) => void } = {}) {
  const links: net.Socket[] = [];
  const accepted: net.Socket[] = [];
  const server = net.createServer((s) => {
    accepted.push(s);
    links.push(acceptTcpLink(s, inbox, { maxPayload: 1 << 20, ...o }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return { port, links, accepted, close: () => (links.forEach((l) => l.destroy()), server.close()) };
}

async function connect(port: number): Promise<net.Socket> {
  const s = await new Promise<net.Socket>((resolve) => {
    const c = net.connect(port, '127.0.0.1', () => resolve(c));
  });
  await new Promise((r) => s.once('data', r)); // the accept byte
  return s;
}

test('the frame parser: keepalives skipped; target()/advance() byte by byte give the frames push() gives', () => {
  const frames = (feed: (p: FrameParser, b: Buffer) => void) => {
    const got: Frame[] = [];
    const p = new FrameParser((f) => got.push(f), 1 << 10);
    const payload = Buffer.from(Array.from({ length: 40 }, (_, i) => i));
    const h = { epoch: 3, op: 1, step: 2, phase: 0, index: 5, offset: 8 };
    const bytes = Buffer.concat([encodeKeepalive(), encodeHeader(h, 40), payload, encodeKeepalive(), encodeHeader({ ...h, index: 6 }, 0)]);
    feed(p, bytes);
    return got.map((f) => [f.index, f.data.byteLength, f.data.byteOffset, [...f.data.subarray(0, 3)]]);
  };
  const pushed = frames((p, b) => p.push(b));
  const direct = frames((p, b) => {
    for (let i = 0; i < b.length;) {
      const t = p.target();
      const n = Math.min(t.length, 1 + (i % 7), b.length - i);
      t.set(b.subarray(i, i + n));
      p.advance(n);
      i += n;
    }
  });
  assert.deepEqual(pushed, [
    [5, 40, 0, [0, 1, 2]],
    [6, 0, 0, []],
  ]);
  assert.deepEqual(direct, pushed);
});

test('acceptTcpLink on a plain TCP socket reads straight into the frames: every byte in place, split anywhere, buffers aligned', async () => {
  const inbox = new Inbox();
  const r = await receiver(inbox);
  try {
    const s = await connect(r.port);
    assert.notEqual(r.links[0], r.accepted[0], 'the link moved to a Socket that reads into the frames');
    const sizes = [1 << 20, 12, 0, 4096, 3 << 18, 8];
    const want = sizes.map((n, k) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + k) & 255)));
    const stream = Buffer.concat(
      want.flatMap((p, k) => [encodeHeader({ epoch: 1, op: 0, step: 0, phase: 0, index: k, offset: 0 }, p.length), p, encodeKeepalive()]),
    );
    // Odd pieces with pauses, so reads end inside headers and payloads.
    for (let i = 0; i < stream.length;) {
      const n = Math.min(stream.length - i, 1 + ((i * 131) % 70_001));
      s.write(stream.subarray(i, i + n));
      i += n;
      if (i % 3 === 0) await new Promise((res) => setTimeout(res, 1));
    }
    for (const [k, p] of want.entries()) {
      const f = await inbox.next();
      assert.equal(f.index, k);
      assert.equal(f.data.byteOffset, 0);
      assert.ok(Buffer.from(f.data.buffer, 0, f.data.byteLength).equals(p), `frame ${k}`);
    }
    s.destroy();
    await assert.rejects(inbox.next(), /closed/);
  } finally {
    r.close();
  }
});

test('liveness: a sender that goes silent is declared down by the receiver, a receiver that goes silent by the sender; an idle live link stays up', async () => {
  // Receiver side: the peer sends nothing at all.
  const inbox = new Inbox();
  let down = null as Error | null;
  const r = await receiver(inbox, { liveness: LIVE, onDown: (e) => (down = e) });
  const mute = await connect(r.port);
  const t0 = Date.now();
  await assert.rejects(inbox.next(), (e: Error) => e instanceof LinkDown && /no sign of life/.test(e.message));
  assert.ok(Date.now() - t0 < LIVE.timeoutMs + 500, `took ${Date.now() - t0} ms`);
  assert.ok(down instanceof LinkDown);
  mute.destroy();
  r.close();

  // Sender side: a server that accepts and then never writes.
  const keepalives: Buffer[] = [];
  const silent = net.createServer((s) => {
    s.write(Buffer.from([1]));
    s.on('data', (b: Buffer) => keepalives.push(b));
  });
  await new Promise<void>((res) => silent.listen(0, '127.0.0.1', res));
  const sock = await connect((silent.address() as net.AddressInfo).port);
  const out = new TcpOutLink(sock, LIVE);
  let failed = null as Error | null;
  out.onFailure((e) => (failed = e));
  await new Promise((res) => setTimeout(res, LIVE.timeoutMs + 300));
  assert.ok(failed instanceof LinkDown, `the sender saw ${String(failed)}`);
  assert.ok(Buffer.concat(keepalives).length >= 32, 'the idle sender sent keepalives');
  await assert.rejects(out.ready(), LinkDown);
  silent.close();

  // Both sides live and idle for three timeouts: nothing fails.
  const inbox2 = new Inbox();
  let down2 = null as Error | null;
  const r2 = await receiver(inbox2, { liveness: LIVE, onDown: (e) => (down2 = e) });
  const out2 = new TcpOutLink(await connect(r2.port), LIVE);
  let failed2 = null as Error | null;
  out2.onFailure((e) => (failed2 = e));
  await new Promise((res) => setTimeout(res, 3 * LIVE.timeoutMs));
  assert.equal(down2, null);
  assert.equal(failed2, null);
  await out2.ready();
  await out2.send({ epoch: 1, op: 0, step: 0, phase: 0, index: 0, offset: 0 }, new Uint8Array(8).fill(9));
  assert.deepEqual([...(await inbox2.next()).data], Array(8).fill(9));
  // Closing on purpose is no failure.
  out2.close();
  assert.equal(failed2, null);
  r2.close();
});
