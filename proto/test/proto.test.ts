/**
 * @vitreg/proto: the generated codecs write the protobuf wire format (checked against bytes computed
 * by hand here), the grpc-js service definitions deserialize to plain objects with every field, and a
 * real grpc-js server and client talk through them on loopback.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import {
  CoordinatorClient,
  CoordinatorService,
  METADATA_JOB,
  METADATA_TOKEN,
  PeerClient,
  PeerService,
  PROTO_PACKAGE,
  PROTO_PATH,
  PROTOCOL_VERSION,
  vitreg,
  type Chunk,
  type CoordinatorHandlers,
  type HeartbeatReply,
  type JoinRequest,
  type PeerHandlers,
} from '@vitreg/proto';

// ---- the wire format, by hand (https://protobuf.dev/programming-guides/encoding/) ----

/** Base-128 varint: 7 bits a byte, least significant group first, high bit set on all but the last. */
function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}
/** A field key: (field number << 3) | wire type (0 varint, 2 length-delimited). */
const key = (field: number, wire: 0 | 2) => varint(field * 8 + wire);
const uint32Field = (field: number, v: number) => [...key(field, 0), ...varint(v)];
const bytesField = (field: number, b: ArrayLike<number>) => [...key(field, 2), ...varint(b.length), ...Array.from(b)];

test('the hand-written varint matches the protobuf documentation', () => {
  assert.deepEqual(varint(1), [0x01]);
  assert.deepEqual(varint(150), [0x96, 0x01]);
  assert.deepEqual(varint(300), [0xac, 0x02]);
  assert.deepEqual(key(8, 2), [0x42]);
});

test('Chunk encodes to the bytes computed by hand', () => {
  const data = Uint8Array.from([1, 2, 3, 4, 250, 251, 252, 253]);
  const bytes = vitreg.cluster.v1.Chunk.encode({ epoch: 3, op: 7, data }).finish();
  // epoch = 2, op = 3, data = 8; proto3 leaves out fields at their defaults.
  assert.deepEqual(Array.from(bytes), [...uint32Field(2, 3), ...uint32Field(3, 7), ...bytesField(8, data)]);
  assert.deepEqual(Array.from(bytes), [0x10, 0x03, 0x18, 0x07, 0x42, 0x08, 1, 2, 3, 4, 250, 251, 252, 253]);

  const more = vitreg.cluster.v1.Chunk.encode({ workerId: 'w1', epoch: 3, offset: 300, data }).finish();
  const expected = [...bytesField(1, Buffer.from('w1')), ...uint32Field(2, 3), ...uint32Field(7, 300), ...bytesField(8, data)];
  assert.deepEqual(Array.from(more), expected);
});

test('serialize and deserialize of the service definitions: plain objects, every field, bytes intact', () => {
  const push = PeerService.pushChunks;
  const data = Buffer.from(new Float32Array([1.5, -2, 3.25]).buffer);
  const wire = push.requestSerialize({ epoch: 3, op: 7, data });
  assert.ok(Buffer.isBuffer(wire));
  assert.deepEqual(Array.from(wire), [...uint32Field(2, 3), ...uint32Field(3, 7), ...bytesField(8, data)]);

  const chunk: Chunk = push.requestDeserialize(wire);
  assert.equal(Object.getPrototypeOf(chunk), Object.prototype, 'a plain object');
  assert.deepEqual(
    { ...chunk, data: undefined },
    { workerId: '', epoch: 3, op: 7, step: 0, phase: 0, index: 0, offset: 0, data: undefined },
  );
  assert.ok(chunk.data instanceof Uint8Array);
  assert.deepEqual(Buffer.from(chunk.data), data);
  assert.equal(chunk.data.buffer, wire.buffer, 'bytes are a view of the received buffer, not a copy');
  assert.deepEqual(Array.from(new Float32Array(Uint8Array.from(chunk.data).buffer)), [1.5, -2, 3.25]);

  // An empty message: every field at its default, repeated [] and maps {}, absent submessages filled.
  const join: JoinRequest = CoordinatorService.join.requestDeserialize(CoordinatorService.join.requestSerialize({ jobId: 'j' }));
  assert.deepEqual(join, {
    jobId: 'j',
    protocolVersion: 0,
    name: '',
    launcherRank: 0,
    peerAddress: '',
    capabilities: { backend: '', device: '', hostname: '', pid: 0, localRank: 0, threads: 0, transports: [] },
    configJson: '',
  });
  const commit = CoordinatorService.commitStep.responseDeserialize(
    CoordinatorService.commitStep.responseSerialize({ committed: true, epoch: 2, ranks: [{ rank: 1, values: { loss: 0.5 } }, {}] }),
  );
  assert.deepEqual(commit, {
    committed: true,
    epoch: 2,
    ranks: [
      { rank: 1, values: { loss: 0.5 } },
      { rank: 0, values: {} },
    ],
  });
  const link = PeerService.openLink.responseDeserialize(PeerService.openLink.responseSerialize({ port: 1 }));
  assert.equal(link.nonce.length, 0);
});

test('constants and the .proto file', () => {
  assert.equal(PROTOCOL_VERSION, 1);
  assert.equal(PROTO_PACKAGE, 'vitreg.cluster.v1');
  assert.equal(METADATA_TOKEN, 'x-vitreg-token');
  assert.equal(METADATA_JOB, 'x-vitreg-job');
  assert.ok(existsSync(PROTO_PATH), PROTO_PATH);
  assert.match(readFileSync(PROTO_PATH, 'utf8'), /package vitreg\.cluster\.v1;/);
  assert.equal(CoordinatorService.watchMembership.path, '/vitreg.cluster.v1.Coordinator/WatchMembership');
  assert.equal(CoordinatorService.watchMembership.responseStream, true);
  assert.equal(CoordinatorService.watchMembership.requestStream, false);
  assert.equal(PeerService.pushChunks.requestStream, true);
  assert.equal(PeerService.pushChunks.responseStream, false);
  assert.deepEqual(Object.keys(CoordinatorService), [
    'join',
    'heartbeat',
    'watchMembership',
    'commitStep',
    'commitCheckpoint',
    'reportMetrics',
    'leave',
  ]);
  assert.deepEqual(Object.keys(PeerService), ['pushChunks', 'openLink']);
});

test('a grpc-js server and client: unary Heartbeat and client-streaming PushChunks on loopback', async () => {
  const unimplemented = (_call: unknown, callback: grpc.sendUnaryData<never>) =>
    callback({ code: grpc.status.UNIMPLEMENTED, details: 'not in this test' });
  const coordinator: CoordinatorHandlers = {
    join: unimplemented,
    heartbeat: (call, callback) => {
      if (call.metadata.get(METADATA_TOKEN)[0] !== 'secret') {
        callback({ code: grpc.status.UNAUTHENTICATED, details: 'bad token' });
        return;
      }
      callback(null, { epoch: call.request.epoch + 1, member: call.request.workerId === 'w0' });
    },
    watchMembership: (call) => call.end(),
    commitStep: unimplemented,
    commitCheckpoint: unimplemented,
    reportMetrics: unimplemented,
    leave: unimplemented,
  };
  const received: Chunk[] = [];
  const peer: PeerHandlers = {
    pushChunks: (call, callback) => {
      call.on('data', (c: Chunk) => received.push(c));
      call.on('end', () => callback(null, { chunks: received.length }));
    },
    openLink: unimplemented,
  };
  const server = new grpc.Server();
  server.addService(CoordinatorService, coordinator);
  server.addService(PeerService, peer);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const address = `127.0.0.1:${port}`;
  const client = new CoordinatorClient(address, grpc.credentials.createInsecure());
  const peerClient = new PeerClient(address, grpc.credentials.createInsecure());
  try {
    const metadata = new grpc.Metadata();
    metadata.set(METADATA_TOKEN, 'secret');
    metadata.set(METADATA_JOB, 'job-1');
    const deadline = () => ({ deadline: Date.now() + 5000 });
    const reply = await new Promise<HeartbeatReply>((resolve, reject) =>
      client.heartbeat({ workerId: 'w0', epoch: 4 }, metadata, deadline(), (err, r) => (err ? reject(err) : resolve(r!))),
    );
    assert.deepEqual(reply, { epoch: 5, member: true });

    const denied = await new Promise<grpc.ServiceError | null>((resolve) =>
      client.heartbeat({ workerId: 'w0' }, new grpc.Metadata(), deadline(), (err) => resolve(err)),
    );
    assert.equal(denied?.code, grpc.status.UNAUTHENTICATED);

    const pushed = await new Promise<number>((resolve, reject) => {
      const stream = peerClient.pushChunks(metadata, deadline(), (err, r) => (err ? reject(err) : resolve(r!.chunks)));
      for (let i = 0; i < 3; i++) stream.write({ workerId: 'w0', epoch: 1, op: 2, index: i, data: Buffer.alloc(1024 * (i + 1), i + 1) });
      stream.end();
    });
    assert.equal(pushed, 3);
    assert.deepEqual(
      received.map((c) => [c.index, c.data.length, c.data[0], c.data[c.data.length - 1]]),
      [
        [0, 1024, 1, 1],
        [1, 2048, 2, 2],
        [2, 3072, 3, 3],
      ],
    );
    assert.equal(received[0].workerId, 'w0');
  } finally {
    client.close();
    peerClient.close();
    server.forceShutdown();
  }
});
