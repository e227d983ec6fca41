/**
 * `npm run bench -- scaling [--nodes 1,2] [--steps 30] [--warmup 3] [--preset tiny-supervised | --config FILE.json]
 *   [--batch-size B] [--transport tcp|grpc] [--backend wasm]`
 * Data-parallel scaling on this machine through the real local launcher (runLocalJob: a coordinator and
 * N vitreg-worker processes over loopback), the same per-worker batch for every N. Reads rank 0's
 * <out>/metrics.jsonl, drops the first `warmup` steps and prints one JSON line per N: images_per_s (global)
 * and step_seconds as medians, allreduce_share = median(allreduce_s / step_seconds). `cpus` is nproc:
 * N workers on fewer cores share them. Example, ViT-S/16 reg4 at 224: a config file such as
 * {"preset": "deit3-b16-reg4", "model": {"arch": "deit3_small_patch16_reg4", "drop_path_rate": 0}}
 * with --batch-size 8 --steps 6.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runLocalJob } from '@vitreg/worker';

const usage =
  'Usage: npm run bench -- scaling [--nodes 1,2] [--steps 30] [--warmup 3] [--preset tiny-supervised | --config FILE.json] [--batch-size B] [--transport tcp|grpc] [--backend wasm] [--keep]\n';

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
      keep: { type: 'boolean', default: false },
    },
  });
  const source = values.config ? ['--config', values.config] : ['--preset', values.preset ?? 'tiny-supervised'];
  const warmup = Number(values.warmup);
  const cpus = availableParallelism();
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
