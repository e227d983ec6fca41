/**
 * What the coordinator's gRPC tests share: a coordinator on 127.0.0.1 (an ephemeral port) with its log
 * lines, grpc-js clients, unary calls as promises, refusal assertions, join requests and watch streams.
 */
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { CoordinatorClient, METADATA_JOB, METADATA_TOKEN, PROTOCOL_VERSION, type JoinReply, type Membership } from '@vitreg/proto';
import { startCoordinator, type CoordinatorHandle, type CoordinatorOptions } from '../src/index.ts';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const JOB = 'job-42';
export const TOKEN = 's3cret-token';
export const CONFIG = JSON.stringify({ model: 'tiny', train: { batch_size: 4, lr: 0.001 } });

export type Client = InstanceType<typeof CoordinatorClient>;

export function meta(token = TOKEN, job = JOB): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set(METADATA_TOKEN, token);
  m.set(METADATA_JOB, job);
  return m;
}

/** One unary call as a promise (5 s deadline). */
export function rpc<Res>(client: Client, method: string, req: object, md = meta()): Promise<Res> {
  return new Promise((resolve, reject) => {
    type Unary = (req: object, md: grpc.Metadata, o: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: Res) => void) => void;
    (client as unknown as Record<string, Unary>)[method]!(req, md, { deadline: Date.now() + 5000 }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

export async function refused(p: Promise<unknown>, code: grpc.status, message: string | RegExp): Promise<void> {
  await assert.rejects(p, (e: grpc.ServiceError) => {
    assert.equal(e.code, code, `status ${grpc.status[e.code]} (${e.details}), expected ${grpc.status[code]}`);
    if (typeof message === 'string') assert.equal(e.details, message);
    else assert.match(e.details, message);
    return true;
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls until `f` returns a value (not undefined) or fails after `ms`. */
export async function until<T>(what: string, f: () => T | undefined, ms = 4000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

export interface Job {
  coord: CoordinatorHandle;
  lines: string[];
  clients: Client[];
  client(creds?: grpc.ChannelCredentials): Client;
}

export async function withJob(opts: Partial<CoordinatorOptions>, body: (job: Job) => Promise<void>): Promise<void> {
  const lines: string[] = [];
  const coord = await startCoordinator({
    host: '127.0.0.1',
    port: 0,
    jobId: JOB,
    token: TOKEN,
    minWorkers: 1,
    maxWorkers: 2,
    log: (l) => lines.push(l),
    ...opts,
  });
  const clients: Client[] = [];
  const job: Job = {
    coord,
    lines,
    clients,
    client: (creds = grpc.credentials.createInsecure()) => {
      // The server certificate names localhost (and 127.0.0.1): no TLS server name set to an IP.
      const c = new CoordinatorClient(coord.address, creds, { 'grpc.ssl_target_name_override': 'localhost' });
      clients.push(c);
      return c;
    },
  };
  try {
    await body(job);
  } finally {
    for (const c of clients) c.close();
    await coord.close();
  }
}

let joinSeq = 0;
export function joinRequest(name: string, over: Record<string, unknown> = {}, caps: Record<string, unknown> = {}) {
  joinSeq += 1;
  return {
    jobId: JOB,
    protocolVersion: PROTOCOL_VERSION,
    name,
    launcherRank: -1,
    peerAddress: `127.0.0.1:${40000 + joinSeq}`,
    capabilities: {
      backend: 'cpu',
      device: 'cpu',
      hostname: 'test',
      pid: 1000 + joinSeq,
      localRank: -1,
      threads: 1,
      transports: ['tcp', 'grpc'],
      ...caps,
    },
    configJson: CONFIG,
    ...over,
  };
}

/** A watch stream that collects every Membership it receives. */
export function watch(client: Client, workerId: string) {
  const got: Membership[] = [];
  let error: grpc.ServiceError | undefined;
  let ended = false;
  const stream = client.watchMembership({ workerId }, meta());
  stream.on('data', (m: Membership) => got.push(m));
  stream.on('error', (e: grpc.ServiceError) => (error = e));
  stream.on('end', () => (ended = true));
  return {
    got,
    stream,
    get error() {
      return error;
    },
    get ended() {
      return ended;
    },
    epoch: (n: number) => until(`membership epoch ${n}`, () => got.find((m) => m.epoch === n)),
  };
}

export async function joinAs(client: Client, name: string, over: Record<string, unknown> = {}, caps: Record<string, unknown> = {}) {
  const r = await rpc<JoinReply>(client, 'join', joinRequest(name, over, caps));
  return r.workerId;
}
