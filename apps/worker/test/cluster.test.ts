/**
 * Whole cluster jobs on this machine: a coordinator process and N vitreg-worker processes over
 * loopback (runLocalJob, the code of `vitreg train --nodes N`), tiny models, a few steps.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { METADATA_JOB, METADATA_TOKEN, PeerClient } from '@vitreg/proto';
import { ensureGradients } from '@vitreg/core';
import { train, validateTrainConfig } from '@vitreg/trainer';
import { runLocalJob, type LocalJobOptions } from '../src/local.js';
import { assertEpochsExact, committedSamples, jsonl, maxDiff, rankChecksums, untilStep, weights } from './run-files.js';

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vitreg-cluster-'));
  await tf.setBackend('wasm');
  await ensureGradients();
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Supervised tiny run: drop path, flips, crops; 24 images, so a global batch of 12 crosses epochs. */
const base = {
  preset: 'tiny-supervised',
  objective: 'supervised',
  // Per-image drop path (not DINOv2's batch subset, which depends on the batch): W ranks x B = 1 rank x W*B.
  model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0.2, drop_path_batch_subset: false },
  data: { train_size: 24, val_size: 8 },
  train: { steps: 5, batch_size: 12, eval_every: 0, checkpoint_every: 2, keep_checkpoints: 10 },
  optim: { warmup_steps: 2 },
};

async function configFile(name: string, batch: number, over: Record<string, unknown> = {}): Promise<string> {
  const path = join(root, `${name}.json`);
  await writeFile(path, JSON.stringify({ ...base, train: { ...base.train, batch_size: batch }, ...over }));
  return path;
}

async function job(name: string, o: Partial<LocalJobOptions> & { nodes: number; config: string }) {
  const outDir = join(root, name);
  const r = await runLocalJob({
    outDir,
    passThrough: false,
    // The tfjs engine, as these tests were written for (cluster-onnx.test.ts runs a job on onnxruntime).
    trainArgs: ['--config', o.config, '--backend', 'wasm', '--engine', 'tfjs', '--no-progress'],
    workerArgs: ['--checksum', '--log-samples', ...(o.workerArgs ?? [])],
    heartbeatMs: 200,
    coordinatorTimeoutMs: 3000,
    ...o,
  });
  return { ...r, outDir };
}

let straightTwo = ''; // checksum of the undisturbed 2-process run, shared by later tests

test('2 and 3 worker processes, and 2 processes x 2 threads, train the weights of 1 process with the same global batch (max |diff| < 1e-6); every rank ends identical', async (t) => {
  const one = await train(validateTrainConfig(JSON.parse(await readFile(await configFile('b12', 12), 'utf8'))), {
    outDir: join(root, 'one'),
    progress: false,
  });
  const w1 = await weights(one.checkpoint);
  for (const [nodes, threads, batch] of [
    [2, 1, 6],
    [3, 1, 4],
    [2, 2, 3],
  ] as const) {
    const ranks = nodes * threads;
    const r = await job(`n${nodes}t${threads}`, { nodes, threads, config: await configFile(`b${batch}`, batch) });
    assert.ok(r.finished, `the ${nodes}-process job did not finish: ${JSON.stringify(r)}`);
    assert.deepEqual(r.workerCodes, Array(nodes).fill(0));
    const names = Array.from({ length: nodes }, (_, i) =>
      threads === 1 ? [`worker-${i}`] : Array.from({ length: threads }, (_, k) => `worker-${i}.t${k}`),
    ).flat();
    const sums = await rankChecksums(r.outDir, names);
    assert.equal(sums.length, ranks);
    assert.equal(new Set(sums).size, 1, `ranks ended with different weights: ${sums.join(' ')}`);
    const d = maxDiff(w1, await weights(String(r.result!.checkpoint)));
    t.diagnostic(`${nodes} processes x ${threads} threads: max |weight difference| from 1 process = ${d.toExponential(2)}`);
    assert.ok(d < 1e-6, `${nodes} processes x ${threads} threads: weights differ from 1 process by ${d}`);
    // Rank 0 reports the global loss: the mean of the ranks' own losses.
    const metrics = await jsonl(join(r.outDir, 'metrics.jsonl'));
    const own = await Promise.all(names.map((n) => jsonl(join(r.outDir, 'ranks', `${n}.jsonl`))));
    for (const m of metrics) {
      const losses = own.map((ls) => ls.find((l) => l.step === m.step && !l.final)!.loss!);
      assert.ok(
        Math.abs(m.loss! - losses.reduce((a, b) => a + b, 0) / ranks) < 1e-5,
        `step ${m.step}: global loss ${m.loss} vs ranks ${losses}`,
      );
      assert.equal(m.world_size, ranks);
      assert.ok(m.straggler_rank! >= 0 && m.straggler_rank! < ranks);
      assert.ok(m.allreduce_s! >= 0 && m.images_per_s! > 0);
    }
    assertEpochsExact(await committedSamples(r.outDir), 24);
    if (nodes === 2 && threads === 1) straightTwo = sums[0]!;
  }
});

test('the gRPC data plane (--transport grpc, PushChunks streams) gives the weights of the TCP data plane bit for bit', async () => {
  assert.ok(straightTwo, 'needs the 2-process run of the first test');
  const r = await job('grpc', { nodes: 2, config: await configFile('b6', 6), transport: 'grpc' });
  assert.ok(r.finished, JSON.stringify(r));
  assert.match(await readFile(join(r.outDir, 'logs', 'worker-0.log'), 'utf8'), /transport grpc/);
  assert.equal(r.result!.checksum, straightTwo);
});

test('Sinkhorn-Knopp centering across 2 processes x 2 threads: its sums over every rank run inside the step (thread sums, then the ring); every rank ends identical', async () => {
  const heads = { head_n_prototypes: 32, head_hidden_dim: 32, head_bottleneck_dim: 16 };
  const config = await configFile('sk', 3, {
    preset: 'tiny-dino',
    objective: 'dino',
    model: { arch: 'vit_micro_patch8_reg4' },
    train: { ...base.train, batch_size: 3, steps: 2, checkpoint_every: 0, knn_train_size: 8, centering: 'sinkhorn_knopp' },
    dino: heads,
    ibot: { ...heads, separate_head: true, mask_sample_probability: 1 },
    crops: { local_crops_number: 2 },
  });
  const r = await job('sk', { nodes: 2, threads: 2, config });
  assert.ok(r.finished, JSON.stringify(r));
  const names = ['worker-0.t0', 'worker-0.t1', 'worker-1.t0', 'worker-1.t1'];
  const sums = await rankChecksums(r.outDir, names);
  assert.equal(sums.length, 4);
  assert.equal(new Set(sums).size, 1, `ranks ended with different weights: ${sums.join(' ')}`);
  const metrics = await jsonl(join(r.outDir, 'metrics.jsonl'));
  assert.deepEqual(
    metrics.map((m) => [m.step, m.world_size]),
    [
      [1, 4],
      [2, 4],
    ],
  );
  assert.ok(metrics.every((m) => Number.isFinite(m.loss_ibot) && Number.isFinite(m.loss_dino_global)));
});

for (const [victimIndex, who] of [
  [2, 'a worker'],
  [0, 'rank 0 (the others elect a new rank 0, which writes the rest of the run)'],
] as const)
  test(`kill -9 of ${who} mid-run: the others finish on a smaller ring; no image of an epoch lost or seen twice`, async () => {
    let victim: ChildProcess | undefined;
    const outDir = join(root, `kill${victimIndex}`);
    const config = await configFile('kill', 2, { train: { ...base.train, batch_size: 2, steps: 14 } });
    const running = job(`kill${victimIndex}`, {
      nodes: 3,
      config,
      onSpawn: (w, c) => {
        if (w === victimIndex) victim = c;
      },
    });
    await untilStep(outDir, 3);
    victim!.kill('SIGKILL');
    const r = await running;
    assert.ok(r.finished, JSON.stringify(r));
    const survivors = [0, 1, 2].filter((i) => i !== victimIndex);
    assert.deepEqual(
      survivors.map((i) => r.workerCodes[i]),
      [0, 0],
    );
    assert.equal(r.workerSignals[victimIndex], 'SIGKILL');
    assert.equal(r.result!.step, 14, 'the rank 0 at the end printed the result');
    const metrics = await jsonl(join(outDir, 'metrics.jsonl'));
    assert.deepEqual(
      metrics.map((m) => m.step),
      Array.from({ length: 14 }, (_, i) => i + 1),
      'every step committed once',
    );
    assert.equal(metrics[0]!.world_size, 3);
    assert.equal(metrics[metrics.length - 1]!.world_size, 2);
    assert.ok(metrics[metrics.length - 1]!.membership! > metrics[0]!.membership!);
    assertEpochsExact(await committedSamples(outDir), 24);
    const sums = await rankChecksums(
      outDir,
      survivors.map((i) => `worker-${i}`),
    );
    assert.equal(sums.length, 2);
    assert.equal(sums[0], sums[1]);
  });

test('a worker stopped (SIGSTOP) past the deadline is removed, the job goes on; resumed, it learns it was removed and exits non-zero', async () => {
  let victim: ChildProcess | undefined;
  const outDir = join(root, 'stop');
  const config = await configFile('stop', 3, { train: { ...base.train, batch_size: 3, steps: 10 } });
  const running = job('stop', {
    nodes: 2,
    config,
    workerTimeoutMs: 1500,
    // Stopped longer than its own coordinator timeout (steps 3 to 6 take over 3 s on loaded cores), the
    // victim would give up on the coordinator as soon as it runs again, before the answer saying it was removed.
    coordinatorTimeoutMs: 60_000,
    onSpawn: (w, c) => {
      if (w === 1) victim = c;
    },
  });
  await untilStep(outDir, 3);
  victim!.kill('SIGSTOP');
  await untilStep(outDir, 6);
  victim!.kill('SIGCONT');
  const r = await running;
  assert.ok(r.finished, JSON.stringify(r));
  assert.equal(r.workerCodes[0], 0);
  assert.equal(r.workerCodes[1], 1);
  const log = await readFile(join(outDir, 'logs', 'worker-1.log'), 'utf8');
  assert.match(log, /removed|no longer knows this worker|ended this worker's membership/);
  const coord = await readFile(join(outDir, 'logs', 'coordinator.log'), 'utf8');
  assert.match(coord, /missed heartbeats/);
  assertEpochsExact(await committedSamples(outDir), 24);
});

test('the coordinator killed: workers exit non-zero; the relaunched job resumes from the last checkpoint and ends with the weights of an uninterrupted run', async () => {
  assert.ok(straightTwo, 'needs the 2-process run of the first test');
  let coordinator: ChildProcess | undefined;
  const outDir = join(root, 'coordkill');
  const config = await configFile('b6', 6);
  const running = job('coordkill', {
    nodes: 2,
    config,
    onSpawn: (w, c) => {
      if (w === 'coordinator') coordinator = c;
    },
  });
  await untilStep(outDir, 3);
  coordinator!.kill('SIGKILL');
  const r = await running;
  assert.equal(r.finished, false);
  assert.deepEqual(r.workerCodes, [1, 1]);
  assert.match(await readFile(join(outDir, 'logs', 'worker-0.log'), 'utf8'), /lost the coordinator/);
  const again = await runLocalJob({
    nodes: 2,
    outDir,
    passThrough: false,
    trainArgs: ['--config', config, '--backend', 'wasm', '--engine', 'tfjs', '--no-progress', '--resume'],
    workerArgs: ['--checksum'],
  });
  assert.ok(again.finished, JSON.stringify(again));
  assert.equal(again.result!.checksum, straightTwo);
  const metrics = await jsonl(join(outDir, 'metrics.jsonl'));
  assert.deepEqual(
    metrics.map((m) => m.step),
    [1, 2, 3, 4, 5],
  );
});

test('a worker joining late enters at the next step, receives the state, and the ring grows', async () => {
  const outDir = join(root, 'late');
  // Long enough that the second worker (started once the first has committed step 2) joins before the end.
  const config = await configFile('late', 3, { train: { ...base.train, batch_size: 3, steps: 80, checkpoint_every: 0 } });
  const r = await job('late', { nodes: 2, config, joinTimeoutMs: 500, startWhen: (i) => (i === 1 ? untilStep(outDir, 2) : undefined) });
  assert.ok(r.finished, JSON.stringify(r));
  assert.match(await readFile(join(outDir, 'logs', 'coordinator.log'), 'utf8'), /worker-1 joined/);
  assert.deepEqual(r.workerCodes, [0, 0]);
  const metrics = await jsonl(join(outDir, 'metrics.jsonl'));
  assert.equal(metrics[0]!.world_size, 1, 'starts alone');
  assert.equal(metrics[metrics.length - 1]!.world_size, 2, 'ends with 2 ranks');
  assertEpochsExact(await committedSamples(outDir), 24);
  const sums = await rankChecksums(outDir, ['worker-0', 'worker-1']);
  assert.equal(sums.length, 2);
  assert.equal(sums[0], sums[1]);
});

test('security: wrong token or job id, stale epoch, wrong step, wrong size, oversized and foreign chunks are refused with their status; the job ends as if undisturbed', async () => {
  assert.ok(straightTwo, 'needs the 2-process run of the first test');
  const outDir = join(root, 'rogue');
  const config = await configFile('b6', 6);
  const token = 'rogue-test-token';
  const running = job('rogue', { nodes: 2, config, token });
  // As soon as the ring is formed (the workers are still loading their backend).
  const eventsPath = join(outDir, 'logs', 'coordinator.jsonl');
  for (let t0 = Date.now(); !(existsSync(eventsPath) && (await readFile(eventsPath, 'utf8')).includes('"event":"membership"'));) {
    if (Date.now() - t0 > 60_000) throw new Error('no membership within 60 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  const events = (await jsonl(join(outDir, 'logs', 'coordinator.jsonl'))) as unknown as {
    event: string;
    epoch: number;
    members: { name: string; workerId: string; peerAddress: string }[];
  }[];
  const m = events.find((e) => e.event === 'membership')!;
  const target = m.members[1]!;
  const pred = m.members[0]!.workerId;
  const jobInfo = events.find((e) => e.event === 'start') as unknown as { job: string };
  const client = new PeerClient(target.peerAddress, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 8 << 20 });
  const push = (meta: Record<string, string>, chunk: Record<string, unknown>) =>
    new Promise<grpc.ServiceError | null>((resolve) => {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(meta)) md.set(k, v);
      const call = (
        client as unknown as { pushChunks(m: grpc.Metadata, cb: (e: grpc.ServiceError | null) => void): grpc.ClientWritableStream<unknown> }
      ).pushChunks(md, (err) => resolve(err));
      call.on('error', () => undefined);
      call.write(chunk);
      call.end();
    });
  const ok = { [METADATA_TOKEN]: token, [METADATA_JOB]: jobInfo.job };
  const chunk = { workerId: pred, epoch: m.epoch, op: 1, step: 1, phase: 0, index: 0, offset: 0, data: new Uint8Array(16) };
  const cases: [string, Record<string, string>, Record<string, unknown>, grpc.status, RegExp][] = [
    ['wrong token', { ...ok, [METADATA_TOKEN]: 'nope' }, chunk, grpc.status.UNAUTHENTICATED, /wrong job token/],
    ['wrong job', { ...ok, [METADATA_JOB]: 'other' }, chunk, grpc.status.PERMISSION_DENIED, /job id "other"/],
    ['stale epoch', ok, { ...chunk, epoch: m.epoch + 7 }, grpc.status.FAILED_PRECONDITION, /membership epoch/],
    ['wrong step', ok, { ...chunk, step: 9999 }, grpc.status.FAILED_PRECONDITION, /chunk for step 9999; epoch \d+ starts at step 0/],
    ['wrong size', ok, { ...chunk, data: new Uint8Array(6) }, grpc.status.INVALID_ARGUMENT, /6 bytes; expected a multiple of 4/],
    ['oversized', ok, { ...chunk, data: new Uint8Array(3 << 20) }, grpc.status.RESOURCE_EXHAUSTED, /./],
    ['not the predecessor', ok, { ...chunk, workerId: 'rogue' }, grpc.status.PERMISSION_DENIED, /not this worker's ring predecessor/],
    [
      "the predecessor's id without its link nonce",
      ok,
      { ...chunk, op: 0, step: 0 },
      grpc.status.PERMISSION_DENIED,
      /the link of worker ".*" was refused: unknown or expired link nonce/,
    ],
  ];
  for (const [what, meta, c, code, msg] of cases) {
    const err = await push(meta, c);
    assert.ok(err, `${what}: accepted`);
    assert.equal(err.code, code, `${what}: ${err.code} ${err.details}`);
    assert.match(err.details, msg, what);
  }
  client.close();
  const r = await running;
  assert.ok(r.finished, JSON.stringify(r));
  assert.equal(r.result!.checksum, straightTwo, 'the refused chunks changed the training');
  const log = await readFile(join(outDir, 'logs', 'worker-1.log'), 'utf8');
  assert.ok((log.match(/refused chunks from/g) ?? []).length >= 7, 'every refusal logged');
});

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

test(
  "mutual TLS on every connection (coordinator, Peer service, data links): the job gives the plaintext run's weights; a certificate from another CA is refused",
  { skip: hasOpenssl ? false : 'the openssl command is not installed (apt-get install openssl)' },
  async () => {
    assert.ok(straightTwo, 'needs the 2-process run of the first test');
    const dir = join(root, 'certs');
    mkdirSync(dir);
    const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    for (const ca of ['ca1', 'ca2'])
      run('req', '-x509', ...ec, '-keyout', `${ca}.key`, '-out', `${ca}.pem`, '-days', '2', '-subj', `/CN=${ca}`);
    writeFileSync(join(dir, 'node.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
    for (const [name, ca] of [
      ['node', 'ca1'],
      ['rogue', 'ca2'],
    ]) {
      run('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
      run(
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        `${ca}.pem`,
        '-CAkey',
        `${ca}.key`,
        '-CAcreateserial',
        '-out',
        `${name}.pem`,
        '-days',
        '2',
        '-extfile',
        'node.ext',
      );
    }
    const outDir = join(root, 'tls');
    const running = job('tls', {
      nodes: 2,
      config: await configFile('b6', 6),
      tls: { cert: join(dir, 'node.pem'), key: join(dir, 'node.key'), ca: join(dir, 'ca1.pem') },
    });
    const eventsPath = join(outDir, 'logs', 'coordinator.jsonl');
    for (let t0 = Date.now(); !(existsSync(eventsPath) && (await readFile(eventsPath, 'utf8')).includes('"event":"membership"'));) {
      if (Date.now() - t0 > 60_000) throw new Error('no membership within 60 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    const m = ((await jsonl(eventsPath)) as unknown as { event: string; members: { peerAddress: string }[] }[]).find(
      (e) => e.event === 'membership',
    )!;
    // A client with a certificate from another CA cannot even reach the Peer service.
    const rogue = new PeerClient(
      m.members[1]!.peerAddress,
      grpc.credentials.createSsl(
        readFileSync(join(dir, 'ca1.pem')),
        readFileSync(join(dir, 'rogue.key')),
        readFileSync(join(dir, 'rogue.pem')),
      ),
    );
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      (
        rogue as unknown as { openLink(r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void): void }
      ).openLink({ workerId: 'x', epoch: 1 }, new grpc.Metadata(), { deadline: new Date(Date.now() + 5000) }, (e) => resolve(e));
    });
    rogue.close();
    assert.ok(err, 'a foreign-CA client was served');
    assert.equal(err.code, grpc.status.UNAVAILABLE);
    const r = await running;
    assert.ok(r.finished, JSON.stringify(r));
    assert.equal(r.result!.checksum, straightTwo);
  },
);
