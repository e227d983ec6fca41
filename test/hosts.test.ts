/**
 * The cluster between hosts of their own: test/netns.ts makes 3 hosts (network namespaces on a
 * bridge, each link capped at 1000 Mbit/s both ways, addresses in 10.231.17.0/24) and starts
 * vitreg-worker in each as a launcher would on its machine (RANK, WORLD_SIZE, MASTER_ADDR = host 0,
 * MASTER_PORT, --advertise/--bind its own address; rank 0 hosts the coordinator). Then: the weights
 * of 1 process; a host cut off and later back; the coordinator's host cut off and the job relaunched;
 * two hosts that reach the coordinator but not each other; last, destroy() leaves no namespace, veth or
 * bridge of this run behind. Each test has a timeout, so a hang fails it. Tiny models, few steps. Skipped
 * with one line where namespaces cannot be made (not root, no iproute2, no network namespaces).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients } from '@vitreg/core';
import { train, validateTrainConfig } from '@vitreg/trainer';
import { Hosts, leftoversOf, netnsUnavailable, type HostProcess } from './netns.js';
import {
  assertEpochsExact,
  committedSamples,
  jsonl,
  maxDiff,
  rankChecksums as checksums,
  untilStep,
  weights,
} from '../apps/worker/test/run-files.js';

const skip = netnsUnavailable() ?? false;
if (skip) process.stdout.write(`# hosts.test.ts skipped: ${skip}\n`);

/** Timings of these jobs: heartbeats every 250 ms, a worker (and a ring link) silent for 2 s is out, the coordinator for 4 s. */
const TIMING = ['--heartbeat-ms', '250', '--worker-timeout-ms', '2000', '--coordinator-timeout-ms', '4000'];
const COORDINATOR_TIMEOUT_MS = 4000;
/**
 * Each test's limit, so that a hang fails that test cleanly (and `after` still removes the hosts): each
 * took 37-191 s in runs on the 2 shared cores with other jobs (60-106 s at load average 20-37, 2026-12-05).
 */
const TEST_TIMEOUT_MS = 300_000;

/** Supervised tiny run as in apps/worker/test/cluster.test.ts: 24 images, per-image drop path. */
const base = {
  preset: 'tiny-supervised',
  objective: 'supervised',
  model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0.2, drop_path_batch_subset: false },
  data: { train_size: 24, val_size: 8 },
  train: { steps: 12, batch_size: 4, eval_every: 0, checkpoint_every: 4, keep_checkpoints: 10 },
  optim: { warmup_steps: 2 },
};

let root = '';
let hosts: Hosts | null = null;
before(async () => {
  if (skip) return;
  root = await mkdtemp(join(tmpdir(), 'vitreg-hosts-'));
  hosts = Hosts.create({ hosts: 3, linkMbit: 1000 });
});
after(async () => {
  hosts?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

async function configFile(name: string, over: { batch_size?: number; steps?: number; checkpoint_every?: number } = {}): Promise<string> {
  const path = join(root, `${name}.json`);
  await writeFile(path, JSON.stringify({ ...base, train: { ...base.train, ...over } }));
  return path;
}

/** The job's worker on host `i` (launcher rank `i`), writing to `out`. */
function worker(i: number, config: string, out: string, token: string, extra: string[] = []): HostProcess {
  const args = ['--config', config, '--out', out, '--backend', 'wasm', '--engine', 'tfjs', '--no-progress', '--checksum', '--log-samples'];
  return hosts!.launchWorker(i, [...args, ...TIMING, ...extra], { token });
}

function job(config: string, out: string, extra: string[] = []): HostProcess[] {
  const token = randomBytes(16).toString('hex');
  return [0, 1, 2].map((i) => worker(i, config, out, token, extra));
}

/** What a process said, for assertion messages. */
function said(p: HostProcess): string {
  return `host ${p.host}:\n${p.stderr().split('\n').slice(-25).join('\n')}`;
}

async function until(what: string, check: () => boolean, timeoutMs = 60_000): Promise<void> {
  for (const t0 = Date.now(); !check();) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The result line rank 0 printed. */
function result(p: HostProcess): { checksum: string; checkpoint: string; step: number } {
  const line = p
    .stdout()
    .split('\n')
    .filter((l) => l.includes('"checkpoint"'))
    .pop();
  assert.ok(line, `no result line\n${said(p)}`);
  return JSON.parse(line) as { checksum: string; checkpoint: string; step: number };
}

let straight = ''; // the uninterrupted 3-host run's checksum, shared by the relaunch test

test(
  '3 hosts of their own train the weights of 1 process with the same global batch; every rank ends identical',
  { skip, timeout: TEST_TIMEOUT_MS },
  async (t) => {
    const out = join(root, 'straight');
    const ps = job(await configFile('b4'), out);
    const codes = await Promise.all(ps.map((p) => p.exit));
    ps.forEach((p, i) => assert.equal(codes[i]!.code, 0, said(p)));
    const sums = await checksums(out, ['worker-0', 'worker-1', 'worker-2']);
    assert.equal(sums.length, 3);
    assert.equal(new Set(sums).size, 1, `ranks ended with different weights: ${sums.join(' ')}`);
    straight = result(ps[0]!).checksum;
    assert.equal(straight, sums[0]);
    // One process, global batch 12, in this process (the tfjs engine on wasm, as the workers).
    await tf.setBackend('wasm');
    await ensureGradients();
    const one = await train(validateTrainConfig(JSON.parse(await readFile(await configFile('b12', { batch_size: 12 }), 'utf8'))), {
      outDir: join(root, 'one'),
      progress: false,
    });
    const d = maxDiff(await weights(one.checkpoint), await weights(result(ps[0]!).checkpoint));
    t.diagnostic(`3 hosts vs 1 process: max |weight difference| ${d.toExponential(2)}`);
    assert.ok(d < 1e-6, `3 hosts differ from 1 process by ${d}`);
    const m = await jsonl(join(out, 'metrics.jsonl'));
    assert.ok(m.every((l) => l.world_size === 3));
    assertEpochsExact(await committedSamples(out), 24);
    const log = await readFile(join(out, 'logs', 'worker-1.log'), 'utf8');
    assert.match(log, /peer 10\.231\.17\.2:\d+/, 'worker 1 advertises its own host address');
  },
);

test(
  'a host cut off mid-run: the others go on (--min-workers 2), the cut-off worker exits non-zero within its timeout; the link back, a worker restarted there joins the running job; every committed image exactly once',
  { skip, timeout: TEST_TIMEOUT_MS },
  async (t) => {
    const out = join(root, 'cut');
    // More steps than the test waits for: it stops the job (SIGTERM: every worker stops after the same
    // committed step) once the restarted worker trained in committed steps.
    const config = await configFile('cut', { batch_size: 2, steps: 100_000, checkpoint_every: 0 });
    const token = randomBytes(16).toString('hex');
    const extra = ['--min-workers', '2'];
    const ps = [0, 1, 2].map((i) => worker(i, config, out, token, extra));
    const metrics = () => jsonl(join(out, 'metrics.jsonl'));
    await untilStep(out, 3);
    const cutAt = Date.now();
    hosts!.cut(2);
    const gone = await ps[2]!.exit;
    const exitedAfter = Date.now() - cutAt;
    t.diagnostic(`the cut-off worker exited ${exitedAfter} ms after the cut, code ${gone.code}`);
    assert.notEqual(gone.code, 0, said(ps[2]!));
    assert.ok(
      exitedAfter < COORDINATOR_TIMEOUT_MS + 4000,
      `it took ${exitedAfter} ms (--coordinator-timeout-ms ${COORDINATOR_TIMEOUT_MS})`,
    );
    assert.match(ps[2]!.stderr(), /lost the coordinator/, said(ps[2]!));
    assert.match(ps[0]!.stderr(), /removed worker-2 .*missed heartbeats/);
    const before = await metrics();
    assert.ok(
      before.some((l) => l.world_size === 2),
      'the job went on with 2 hosts',
    );
    hosts!.heal(2);
    const again = worker(2, config, out, token, extra);
    await until('worker-2 joins again', () => /worker-2 joined/.test(ps[0]!.stderr()), 120_000);
    // Three committed steps of the grown ring, then the test ends the job.
    let m = await metrics();
    for (const t0 = Date.now(); m.filter((l) => l.world_size === 3 && l.step > before.length).length < 3; m = await metrics()) {
      if (Date.now() - t0 > 60_000) assert.fail(`no steps on 3 hosts after the rejoin\n${said(again)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    ps[1]!.child.kill('SIGTERM');
    const codes = await Promise.all([ps[0]!.exit, ps[1]!.exit, again.exit]);
    assert.deepEqual(
      codes.map((c) => c.code),
      [143, 143, 143],
      [ps[0]!, ps[1]!, again].map(said).join('\n'),
    );
    m = await metrics();
    const sizes = m.map((l) => l.world_size).filter((w, i, a) => i === 0 || w !== a[i - 1]);
    t.diagnostic(`world size by step: ${sizes.join(' -> ')} over ${m.length} committed steps`);
    assert.deepEqual(sizes, [3, 2, 3]);
    assert.deepEqual(
      m.map((l) => l.step),
      Array.from({ length: m.length }, (_, i) => i + 1),
      'every step committed once',
    );
    assertEpochsExact(await committedSamples(out), 24);
    // The restarted worker trained in the last committed steps.
    const last = m[m.length - 1]!;
    const own = await jsonl(join(out, 'ranks', 'worker-2.jsonl'));
    assert.ok(
      own.some((l) => l.step === last.step && l.membership === last.membership),
      'worker-2 has a line of the last committed step',
    );
    const sums = await checksums(out, ['worker-0', 'worker-1', 'worker-2']);
    assert.equal(sums.length, 3);
    assert.equal(new Set(sums).size, 1, `ranks ended with different weights: ${sums.join(' ')}`);
  },
);

test(
  "the coordinator's host cut off: every worker exits non-zero; the relaunched job resumes and ends with the uninterrupted run's weights",
  { skip, timeout: TEST_TIMEOUT_MS },
  async (t) => {
    assert.ok(straight, 'needs the uninterrupted run of the first test');
    const out = join(root, 'coordcut');
    const config = await configFile('b4');
    const ps = job(config, out);
    await untilStep(out, 5);
    hosts!.cut(0);
    const t0 = Date.now();
    const codes = await Promise.all(ps.map((p) => p.exit));
    t.diagnostic(`exits ${codes.map((c) => c.code).join(', ')} within ${Date.now() - t0} ms of the cut`);
    ps.forEach((p, i) => assert.notEqual(codes[i]!.code, 0, said(p)));
    assert.match(ps[1]!.stderr(), /lost the coordinator/, said(ps[1]!));
    hosts!.heal(0);
    const relaunched = job(config, out, ['--resume']);
    const again = await Promise.all(relaunched.map((p) => p.exit));
    relaunched.forEach((p, i) => assert.equal(again[i]!.code, 0, said(p)));
    assert.equal(result(relaunched[0]!).checksum, straight, 'the resumed run differs from the uninterrupted one');
    const steps = (await jsonl(join(out, 'metrics.jsonl'))).map((l) => l.step);
    assert.deepEqual(
      steps,
      Array.from({ length: 12 }, (_, i) => i + 1),
    );
  },
);

test(
  'two hosts that reach the coordinator but not each other (ring neighbours): the later in ring order is removed and the ring re-forms without it, no hang',
  { skip, timeout: TEST_TIMEOUT_MS },
  async (t) => {
    const out = join(root, 'partition');
    // The partition holds the ring up until it re-forms: 24 steps are enough for the job to go on after it.
    const config = await configFile('partition', { batch_size: 2, steps: 24, checkpoint_every: 0 });
    const ps = job(config, out, ['--min-workers', '2']);
    await untilStep(out, 3);
    const t0 = Date.now();
    hosts!.partition(1, 2);
    const gone = await ps[2]!.exit;
    t.diagnostic(`worker-2 left ${Date.now() - t0} ms after the partition, code ${gone.code}`);
    assert.equal(gone.code, 1, said(ps[2]!));
    assert.match(ps[2]!.stderr(), /removed from the job/, said(ps[2]!));
    const codes = await Promise.all([ps[0]!.exit, ps[1]!.exit]);
    assert.deepEqual(
      codes.map((c) => c.code),
      [0, 0],
      [ps[0]!, ps[1]!].map(said).join('\n'),
    );
    hosts!.join(1, 2);
    const coord = ps[0]!.stderr();
    assert.match(coord, /reports its ring link with worker-[12] down/);
    assert.match(coord, /removed worker-2 .*cannot reach its ring neighbour worker-1/);
    const m = await jsonl(join(out, 'metrics.jsonl'));
    assert.deepEqual(
      m.map((l) => l.step),
      Array.from({ length: 24 }, (_, i) => i + 1),
    );
    assert.equal(m[0]!.world_size, 3);
    assert.equal(m[m.length - 1]!.world_size, 2);
    assertEpochsExact(await committedSamples(out), 24);
    const sums = await checksums(out, ['worker-0', 'worker-1']);
    assert.equal(sums.length, 2);
    assert.equal(sums[0], sums[1]);
  },
);

test('destroy() leaves no namespace, veth or bridge of this run (vitreg-<pid>-*, vrh<id>*, vrb<id>)', { skip, timeout: 60_000 }, () => {
  const h = hosts!;
  const links = [h.bridge, ...h.names.map((_, i) => `vrh${h.id}${i}`)].sort();
  assert.deepEqual(leftoversOf(h), { namespaces: [...h.names].sort(), links }, 'before destroy()');
  h.destroy();
  assert.deepEqual(leftoversOf(h), { namespaces: [], links: [] }, 'after destroy()');
});
