/**
 * `npm run bench -- scaling [--nodes 1,2] [--steps 30] [--warmup 3] [--preset tiny-supervised | --config FILE.json]
 *   [--batch-size B] [--transport tcp|grpc] [--backend wasm] [--engine auto|tfjs|onnxruntime] [--grad-compression none|bf16]`
 * `npm run bench -- scaling --hosts N|N1,N2 --link-mbit R[,R2] [...]`
 * Data-parallel scaling through the real launcher paths, the same per-worker batch for every N. Without
 * --hosts: runLocalJob (a coordinator and N vitreg-worker processes over loopback) for each N of --nodes.
 * With --hosts: for each link rate and each n = 1..N (or each n of a list), n hosts of their own (test/netns.ts: network
 * namespaces on a bridge, links capped at R Mbit/s both ways; root) each running one vitreg-worker as a
 * launcher would (RANK, WORLD_SIZE, MASTER_ADDR = host 0); the default model is then ViT-S/16 with 4
 * registers at 192 px (deit3_small_patch16_reg4, 22 M parameters: gradients large against its compute;
 * 192 px are the deit3-b16-reg4 preset's crops, DeiT-III's pretraining size, which the runs use),
 * batch 4 per worker, synthetic data, 6 steps, one engine thread per worker (--engine-threads). Reads rank 0's <out>/metrics.jsonl and every rank's
 * ranks/*.jsonl, drops the first `warmup` steps and prints one JSON line per run: images_per_s (global)
 * and step_seconds as medians, allreduce_share = median(allreduce_s / step_seconds), compute_s (median
 * over ranks and steps), grad_mb (the all-reduced float32 megabytes: the checkpoint's weights) and, with
 * --hosts, link_bound_s = 2 (n - 1) / n x grad bytes / link rate (the all-reduce's time at the link's
 * full rate; halved on a bf16 wire). `cpus` is nproc: n workers on fewer cores share them, so compute_s
 * grows with n there, while each host of a real cluster has its own.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runLocalJob } from '@vitreg/worker';
import { Hosts, netnsUnavailable } from '../test/netns.js';

const usage =
  'Usage: npm run bench -- scaling [--nodes 1,2 | --hosts N|N1,N2 --link-mbit R[,R2]] [--steps 30] [--warmup 3] [--preset tiny-supervised | --config FILE.json]\n' +
  '  [--batch-size B] [--transport tcp|grpc] [--backend wasm] [--engine auto|tfjs|onnxruntime] [--engine-threads N] [--grad-compression none|bf16] [--keep]\n';

/** ViT-S/16 with 4 registers at the deit3-b16-reg4 preset's 192 px crops on synthetic images: the --hosts default. */
const VIT_S = {
  preset: 'deit3-b16-reg4',
  model: { arch: 'deit3_small_patch16_reg4', drop_path_rate: 0 },
  data: { source: 'synthetic', train_size: 256, val_size: 16 },
  train: { eval_every: 0 },
};

interface Figures {
  model: string;
  batch_per_worker: number;
  steps_measured: number;
  images_per_s: number;
  step_seconds: number;
  compute_s: number;
  allreduce_s: number;
  allreduce_share: number;
  grad_mb: number;
}

/** The figures of one finished run folder (see the module comment). */
function summarise(out: string, warmup: number): Figures {
  const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as {
    model: { arch: string };
    train: { batch_size: number };
    crops: { global_crops_size: number };
  };
  const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, number>)
    .filter((r) => typeof r.step_seconds === 'number' && typeof r.images_per_s === 'number');
  const kept = rows.filter((r) => r.step! > warmup);
  if (!kept.length) throw new Error(`no step after the ${warmup} warm-up steps in ${join(out, 'metrics.jsonl')}`);
  const compute: number[] = [];
  for (const f of readdirSync(join(out, 'ranks'))) {
    for (const l of readFileSync(join(out, 'ranks', f), 'utf8')
      .split('\n')
      .filter(Boolean)) {
      const r = JSON.parse(l) as Record<string, number>;
      if (r.step! > warmup && typeof r.compute_s === 'number') compute.push(r.compute_s);
    }
  }
  const ckpts = readdirSync(join(out, 'checkpoints')).sort((a, b) => Number(a.split('-')[1]) - Number(b.split('-')[1]));
  const gradBytes = statSync(join(out, 'checkpoints', ckpts[ckpts.length - 1]!, 'model.safetensors')).size;
  return {
    model: `${cfg.model.arch} @${cfg.crops.global_crops_size}`,
    batch_per_worker: cfg.train.batch_size,
    steps_measured: kept.length,
    images_per_s: +median(kept.map((r) => r.images_per_s!)).toFixed(3),
    step_seconds: +median(kept.map((r) => r.step_seconds!)).toFixed(4),
    compute_s: +median(compute).toFixed(4),
    allreduce_s: +median(kept.map((r) => r.allreduce_s ?? 0)).toFixed(4),
    allreduce_share: +median(kept.map((r) => (r.allreduce_s ?? 0) / r.step_seconds!)).toFixed(3),
    grad_mb: +(gradBytes / 2 ** 20).toFixed(1),
  };
}

/** n hosts of their own at `mbit`, one vitreg-worker each; resolves with the run folder's figures. */
async function onHosts(
  n: number,
  mbit: number,
  trainArgs: string[],
  workerArgs: string[],
  warmup: number,
  keep: boolean,
): Promise<Figures & { job_wall_s: number }> {
  const out = mkdtempSync(join(tmpdir(), `vitreg-scaling-h${n}-`));
  const hosts = Hosts.create({ hosts: n, linkMbit: mbit });
  try {
    const token = randomBytes(16).toString('hex');
    const t0 = performance.now();
    const ps = Array.from({ length: n }, (_, i) => hosts.launchWorker(i, [...trainArgs, '--out', out, ...workerArgs], { token }));
    const ends = await Promise.all(ps.map((p) => p.exit));
    const wall = (performance.now() - t0) / 1000;
    const bad = ends.findIndex((e) => e.code !== 0);
    if (bad >= 0)
      throw new Error(`host ${bad}'s worker exited with ${ends[bad]!.code ?? ends[bad]!.signal}:\n${ps[bad]!.stderr().slice(-3000)}`);
    return { ...summarise(out, warmup), job_wall_s: +wall.toFixed(1) };
  } finally {
    hosts.destroy();
    if (!keep) rmSync(out, { recursive: true, force: true });
    else process.stderr.write(`kept ${out}\n`);
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

export async function run(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage);
    return;
  }
  const { values } = parseArgs({
    args: argv,
    options: {
      nodes: { type: 'string', default: '1,2' },
      steps: { type: 'string', default: '30' },
      warmup: { type: 'string', default: '3' },
      preset: { type: 'string' },
      config: { type: 'string' },
      'batch-size': { type: 'string' },
      transport: { type: 'string', default: 'tcp' },
      backend: { type: 'string', default: 'wasm' },
      engine: { type: 'string' },
      'engine-threads': { type: 'string' },
      'grad-compression': { type: 'string', default: 'none' },
      hosts: { type: 'string' },
      'link-mbit': { type: 'string', default: '100,1000' },
      keep: { type: 'boolean', default: false },
    },
  });
  const warmup = Number(values.warmup);
  const cpus = availableParallelism();
  if (values.hosts !== undefined) {
    const why = netnsUnavailable();
    if (why) throw new Error(`--hosts: ${why}`);
    // N: every host count 1..N; a list (3,4): those only.
    const counts = values.hosts.includes(',')
      ? values.hosts.split(',').map(Number)
      : Array.from({ length: Number(values.hosts) }, (_, i) => i + 1);
    if (!counts.length || counts.some((n) => !Number.isInteger(n) || n < 1))
      throw new Error(`--hosts: an integer >= 1 or a list of them, got ${values.hosts}`);
    let config = values.config;
    const tmp = mkdtempSync(join(tmpdir(), 'vitreg-scaling-'));
    try {
      if (!config) {
        config = join(tmp, 'vit-s.json');
        writeFileSync(config, JSON.stringify(VIT_S));
      }
      const steps = values.steps === '30' && !values.config ? '6' : values.steps!;
      const trainArgs = [
        '--config',
        config,
        '--steps',
        steps,
        '--batch-size',
        values['batch-size'] ?? (values.config ? '8' : '4'),
        '--backend',
        values.backend!,
        '--no-progress',
        ...(values.engine ? ['--engine', values.engine] : []),
        // One compute thread per worker: a host of this machine is one core.
        '--engine-threads',
        values['engine-threads'] ?? '1',
      ];
      const compression = values['grad-compression']!;
      const workerArgs = ['--transport', values.transport!, '--grad-compression', compression];
      for (const mbit of values['link-mbit']!.split(',').map(Number)) {
        for (const n of counts) {
          const r = await onHosts(n, mbit, trainArgs, workerArgs, warmup, values.keep!);
          const wire = compression === 'bf16' ? 2 : 4;
          const linkBound = n > 1 ? (((2 * (n - 1)) / n) * ((r.grad_mb * 2 ** 20 * wire) / 4)) / ((mbit * 1e6) / 8) : 0;
          process.stdout.write(
            JSON.stringify({
              case: 'scaling',
              hosts: n,
              link_mbit: mbit,
              grad_compression: compression,
              ...r,
              link_bound_s: +linkBound.toFixed(3),
              cpus,
              loadavg_1m: +loadavg()[0]!.toFixed(2),
              oversubscribed: n > cpus,
            }) + '\n',
          );
        }
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    return;
  }
  const source = values.config ? ['--config', values.config] : ['--preset', values.preset ?? 'tiny-supervised'];
  for (const nodes of values.nodes!.split(',').map(Number)) {
    const out = mkdtempSync(join(tmpdir(), `vitreg-scaling-${nodes}-`));
    try {
      const trainArgs = [
        ...source,
        '--steps',
        values.steps!,
        '--no-progress',
        '--backend',
        values.backend!,
        ...(values['batch-size'] ? ['--batch-size', values['batch-size']] : []),
      ];
      const t0 = performance.now();
      const res = await runLocalJob({ nodes, trainArgs, outDir: out, transport: values.transport as 'tcp' | 'grpc', passThrough: false });
      const wall = (performance.now() - t0) / 1000;
      if (!res.finished || res.workerCodes.some((c) => c !== 0)) {
        throw new Error(
          `the ${nodes}-worker job failed (coordinator ${res.coordinatorCode}, workers ${res.workerCodes.join(',')}); logs in ${join(out, 'logs')}`,
        );
      }
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as {
        model: { arch: string };
        train: { batch_size: number };
        crops: { global_crops_size: number };
      };
      const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, number>)
        .filter((r) => typeof r.step_seconds === 'number' && typeof r.images_per_s === 'number');
      const kept = rows.filter((r) => r.step! > warmup);
      if (!kept.length) throw new Error(`no step after the ${warmup} warm-up steps in ${join(out, 'metrics.jsonl')}`);
      const model = values.config
        ? `${cfg.model.arch} @${cfg.crops.global_crops_size}`
        : `${values.preset ?? 'tiny-supervised'} (${cfg.model.arch} @${cfg.crops.global_crops_size})`;
      process.stdout.write(
        JSON.stringify({
          case: 'scaling',
          model,
          workers: nodes,
          transport: values.transport,
          backend: values.backend,
          batch_per_worker: cfg.train.batch_size,
          steps_measured: kept.length,
          images_per_s: +median(kept.map((r) => r.images_per_s!)).toFixed(3),
          step_seconds: +median(kept.map((r) => r.step_seconds!)).toFixed(4),
          allreduce_s: +median(kept.map((r) => r.allreduce_s ?? 0)).toFixed(4),
          allreduce_share: +median(kept.map((r) => (r.allreduce_s ?? 0) / r.step_seconds!)).toFixed(3),
          job_wall_s: +wall.toFixed(1),
          cpus,
          loadavg_1m: +loadavg()[0]!.toFixed(2),
          oversubscribed: nodes > cpus,
        }) + '\n',
      );
    } finally {
      if (!values.keep) rmSync(out, { recursive: true, force: true });
      else process.stderr.write(`kept ${out}\n`);
    }
  }
}
