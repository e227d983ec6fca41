/**
 * Hostile peers against a running job (issue 21): two real vitreg-worker processes and a coordinator on
 * loopback, and a rogue third member that holds the job token and joins as a worker, heartbeats and
 * keeps both its ring links alive, but reads nothing from its predecessor (a slowloris) and sends no
 * frame to its successor. Meanwhile a flood of bad joins, silent and garbage connections hits the
 * coordinator and a worker's data port. The job must go on: the rogue is removed (its successor's
 * collective deadline, --collective-timeout-ms, reports it as a broken link), every bad connection is
 * closed within its deadline, each kind of refusal is logged in bounded lines, and the two real
 * workers finish. Link-level cases: hostile-links.test.ts. About 30-60 s (two worker processes on the
 * tfjs engine; the rogue's stall adds the 3 s collective deadline).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { startCoordinator } from '@vitreg/coordinator';
import { childNodeArgs } from '@vitreg/core';
import {
  CoordinatorClient,
  METADATA_JOB,
  METADATA_TOKEN,
  PeerClient,
  PeerService,
  PROTOCOL_VERSION,
  type JoinReply,
  type Membership,
} from '@vitreg/proto';
import { resolveTrainConfig } from '@vitreg/trainer';
import { connectTcpLink, encodeHello, linkMac, type TcpOutLink } from '../src/links.js';

const WORKER_MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'main.ts');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const config = {
  preset: 'tiny-supervised',
  objective: 'supervised',
  model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0 },
  data: { train_size: 24, val_size: 8 },
  train: { steps: 8, batch_size: 4, eval_every: 0, checkpoint_every: 0 },
  optim: { warmup_steps: 2 },
};

type Unary = (req: object, md: grpc.Metadata, o: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;
function call<T>(client: object, method: string, req: object, md: grpc.Metadata): Promise<T> {
  return new Promise((resolve, reject) =>
    (client as Record<string, Unary>)[method]!(req, md, { deadline: Date.now() + 5000 }, (err, res) =>
      err ? reject(err) : resolve(res as T),
    ),
  );
}

/**
 * The rogue: a member by the protocol (join, watch, heartbeats, OpenLink), hostile on the data plane.
 * Its incoming link is accepted and then never read (signs of life only); its outgoing link is opened
 * with a valid MAC and then carries keepalives only.
 */
async function rogue(address: string, jobId: string, token: string, configJson: string) {
  const md = new grpc.Metadata();
  md.set(METADATA_TOKEN, token);
  md.set(METADATA_JOB, jobId);
  const sockets: net.Socket[] = [];
  const timers: NodeJS.Timeout[] = [];
  const tcp = net.createServer((s) => {
    sockets.push(s);
    s.on('error', () => undefined);
    s.once('data', () => {
      s.pause(); // the hello read; from now on nothing is read
      s.write(Buffer.from([1]));
      const t = setInterval(() => !s.destroyed && s.write(Buffer.from([2])), 100);
      timers.push(t);
    });
  });
  await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', r));
  const tcpPort = (tcp.address() as net.AddressInfo).port;
  const peer = new grpc.Server();
  peer.addService(PeerService, {
    openLink: (_c: unknown, cb: (e: null, r: object) => void) => cb(null, { port: tcpPort, nonce: randomBytes(32) }),
    pushChunks: (_c: unknown, cb: (e: object) => void) => cb({ code: grpc.status.UNIMPLEMENTED }),
  } as unknown as grpc.UntypedServiceImplementation);
  const peerPort = await new Promise<number>((res, rej) =>
    peer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  const client = new CoordinatorClient(address, grpc.credentials.createInsecure());
  const reply = await call<JoinReply>(
    client,
    'join',
    {
      jobId,
      protocolVersion: PROTOCOL_VERSION,
      name: 'rogue',
      launcherRank: 2,
      peerAddress: `127.0.0.1:${peerPort}`,
      capabilities: { backend: 'wasm', device: 'cpu', hostname: 'rogue', pid: 1, localRank: 0, threads: 1, transports: ['tcp'] },
      configJson,
    },
    md,
  );
  const id = reply.workerId;
  let epoch = 0;
  const links: TcpOutLink[] = [];
  const dataPorts: number[] = [];
  const memberships: Membership[] = [];
  const stream = client.watchMembership({ workerId: id }, md);
  stream.on('error', () => undefined);
  stream.on('data', (m: Membership) => {
    memberships.push(m);
    epoch = m.epoch;
    const me = m.members.findIndex((x) => x.workerId === id);
    if (me < 0) return;
    const next = m.members[(me + 1) % m.members.length]!;
    const pc = new PeerClient(next.peerAddress, grpc.credentials.createInsecure());
    call<{ port: number; nonce: Uint8Array }>(pc, 'openLink', { workerId: id, epoch: m.epoch }, md)
      .then(async ({ port, nonce }) => {
        dataPorts.push(port);
        const hello = encodeHello(id, m.epoch, nonce, linkMac(token, nonce, m.epoch, id));
        links.push(await connectTcpLink('127.0.0.1', port, hello, undefined, 5000, { intervalMs: 100, timeoutMs: 60_000 }));
      })
      .catch(() => undefined)
      .finally(() => pc.close());
  });
  timers.push(
    setInterval(
      () => void call(client, 'heartbeat', { workerId: id, epoch, step: 0, unreachablePeer: '' }, md).catch(() => undefined),
      200,
    ),
  );
  return {
    id,
    memberships,
    dataPorts,
    close: () => {
      for (const t of timers) clearInterval(t);
      for (const l of links) l.close();
      for (const s of sockets) s.destroy();
      stream.cancel();
      client.close();
      tcp.close();
      peer.forceShutdown();
    },
  };
}

test('a running job survives a rogue member (slowloris receiver, silent sender), a flood of bad joins, and silent and garbage connections: the rogue is removed, each kind logged in bounded lines, the job finishes', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-hostile-'));
  const cfgPath = join(root, 'config.json');
  await writeFile(cfgPath, JSON.stringify(config));
  const out = join(root, 'run');
  const token = randomBytes(16).toString('hex');
  const jobId = 'hostile-job';
  const coordLines: string[] = [];
  const coord = await startCoordinator({
    host: '127.0.0.1',
    port: 0,
    jobId,
    token,
    minWorkers: 2,
    maxWorkers: 3,
    heartbeatMs: 200,
    // Generous for a loaded 2-core machine: the collective deadline (3 s) is what removes the rogue.
    workerTimeoutMs: 6000,
    joinTimeoutMs: 120_000,
    prefaceTimeoutMs: 1500,
    log: (l) => coordLines.push(l),
  });
  const workers = [0, 1].map((i) => {
    const child = spawn(
      process.execPath,
      [
        ...childNodeArgs(WORKER_MAIN),
        '--config',
        cfgPath,
        '--backend',
        'wasm',
        '--engine',
        'tfjs',
        '--no-progress',
        '--out',
        out,
        '--coordinator',
        coord.address,
        '--job-id',
        jobId,
        '--name',
        `worker-${i}`,
        '--rank',
        String(i),
        '--coordinator-timeout-ms',
        '5000',
        '--collective-timeout-ms',
        '3000',
      ],
      { env: { ...process.env, VITREG_TOKEN: token, RANK: '', WORLD_SIZE: '' }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return { child, exit, err: () => err };
  });
  let bad: Awaited<ReturnType<typeof rogue>> | undefined;
  const extra: net.Socket[] = [];
  try {
    // The same config as the real workers send (as parsed JSON), after the first of them joined.
    while (!coordLines.some((l) => /^join worker-/.test(l))) await sleep(50);
    const r = await rogue(coord.address, jobId, token, JSON.stringify(resolveTrainConfig({ configFile: cfgPath })));
    bad = r;
    while (!r.dataPorts.length) await sleep(50);

    // A flood of joins: a wrong token, and the right token with another config or a taken name.
    const flood = new CoordinatorClient(coord.address, grpc.credentials.createInsecure());
    const wrong = new grpc.Metadata();
    wrong.set(METADATA_TOKEN, 'not-the-token');
    wrong.set(METADATA_JOB, jobId);
    const right = new grpc.Metadata();
    right.set(METADATA_TOKEN, token);
    right.set(METADATA_JOB, jobId);
    const flooding = (i: number, md: grpc.Metadata, over: object) =>
      call(
        flood,
        'join',
        {
          jobId,
          protocolVersion: PROTOCOL_VERSION,
          name: `flood-${i}`,
          launcherRank: -1,
          peerAddress: '127.0.0.1:9',
          capabilities: { threads: 1, transports: ['tcp'] },
          configJson: '{"x":1}',
          ...over,
        },
        md,
      ).then(
        () => 'admitted',
        (e: grpc.ServiceError) => grpc.status[e.code],
      );
    const answers = await Promise.all([
      ...Array.from({ length: 100 }, (_, i) => flooding(i, wrong, {})),
      ...Array.from({ length: 30 }, (_, i) => flooding(i, right, {})),
      ...Array.from({ length: 10 }, (_, i) => flooding(i, right, { name: 'rogue' })),
    ]);
    flood.close();
    assert.ok(!answers.includes('admitted'), 'no flood join admitted');
    assert.equal(answers.filter((a) => a === 'UNAUTHENTICATED').length, 100);

    // Silent and garbage connections to the coordinator and to worker-0's data port (learned by the rogue's OpenLink).
    const [host, port] = [coord.address.split(':')[0]!, coord.port];
    const connect = (p: number, first?: string) => {
      const s = net.connect(p, host, () => first && s.write(first));
      s.on('error', () => undefined);
      extra.push(s);
    };
    for (let i = 0; i < 3; i++) connect(port);
    connect(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    for (let i = 0; i < 24; i++) connect(r.dataPorts[0]!);
    connect(r.dataPorts[0]!, 'not a hello at all');

    // The job goes on without the rogue and finishes.
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<string>((r) => (timer = setTimeout(() => r('timeout'), 150_000)));
    const codes = await Promise.race([Promise.all(workers.map((w) => w.exit)), deadline]);
    clearTimeout(timer);
    assert.notEqual(codes, 'timeout', `the job stalled; coordinator:\n${coordLines.slice(-15).join('\n')}`);
    assert.deepEqual(codes, [0, 0], workers.map((w) => w.err().slice(-2000)).join('\n---\n'));
    const outcome = await coord.done;
    assert.ok(outcome.finished, JSON.stringify(outcome));
    const removal = r.memberships.find((m) => !m.members.some((x) => x.workerId === r.id));
    assert.ok(removal, 'the rogue learned it was removed');
    assert.match(removal.reason, /rogue cannot reach its ring neighbour worker-0|worker-0 cannot reach its ring neighbour rogue/);

    const c = coordLines.join('\n');
    const joinLines = coordLines.filter((l) => l.startsWith('refused Join')).length;
    assert.ok(joinLines <= 20, `${joinLines} refused-Join lines for 140 refusals: bounded`);
    await coord.close(); // writes the summary of what was not logged one by one
    assert.match(coordLines.join('\n'), /\.\.\. \d+ more refused Join calls in the last \d+ s/);
    assert.match(c, /closed a connection from .*: no HTTP\/2 preface within 1500 ms/);
    assert.match(c, /closed a connection from .*: not HTTP\/2 \(first bytes "GET/);
    const w0 = await readFile(join(out, 'logs', 'worker-0.log'), 'utf8');
    assert.match(w0, /no frame from the ring predecessor for 3000 ms/);
    assert.match(w0, /the data link with rogue, this worker's ring predecessor in epoch 1, is down/);
    assert.match(w0, /refused a data link from .*: (no hello within 6000 ms|link did not start with a VRGH hello)/);
    assert.match(w0, /already wait for their hello \(at most 16\)/);
  } finally {
    for (const s of extra) s.destroy();
    bad?.close();
    for (const w of workers) if (w.child.exitCode === null) w.child.kill('SIGKILL');
    await coord.close();
    await rm(root, { recursive: true, force: true });
  }
});
