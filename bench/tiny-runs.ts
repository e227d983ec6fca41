/**
 * `npm run bench -- tiny-runs [--preset tiny-supervised|tiny-dino] [--backend wasm]`
 * The two CPU presets end to end, exactly as `vitreg train --preset NAME` runs them (synthetic shapes,
 * periodic evaluations and checkpoints included, into a temporary folder), one after the other in this
 * process. Prints one JSON line per preset: its final accuracy (tiny-supervised: validation accuracy of
 * the classifier; tiny-dino: k-NN accuracy of the teacher's CLS token), steps, wall seconds and CPU
 * seconds of this process (`process.cpuUsage`, user + system: what the run cost even when other
 * processes share the cores), the backend, the machine (CPU model, cores) and the 1-minute load average
 * before and after the run (a load above the core count means the wall time is inflated by others).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { getBackendName, initBackend, type BackendName } from '@vitreg/core';
import { presetConfig, train } from '@vitreg/trainer';

const PRESETS = ['tiny-supervised', 'tiny-dino'] as const;

/** Trains one preset into a temporary folder; its accuracy, wall and CPU seconds. */
async function runPreset(name: (typeof PRESETS)[number]): Promise<Record<string, unknown>> {
  const config = presetConfig(name);
  const out = await mkdtemp(join(tmpdir(), `bench-${name}-`));
  try {
    const load = loadavg()[0]!;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const res = await train(config, { outDir: out, progress: false });
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const ev = res.eval!;
    const metric = config.objective === 'supervised' ? 'val_accuracy' : 'knn_accuracy';
    return {
      case: 'tiny-runs',
      preset: name,
      metric,
      accuracy: Number(ev[metric]!.toFixed(4)),
      chance: Number((1 / ev.num_classes).toFixed(4)),
      val_images: config.data.val_size,
      steps: res.step,
      batch: config.train.batch_size,
      wall_s: Number(wall.toFixed(1)),
      cpu_s: Number(((cpu.user + cpu.system) / 1e6).toFixed(1)),
      ...(ev.teacher_entropy !== undefined
        ? { teacher_entropy: Number(ev.teacher_entropy.toFixed(3)), teacher_batch_entropy: Number(ev.teacher_batch_entropy!.toFixed(3)) }
        : {}),
      backend: getBackendName(),
      machine: { cpu: cpus()[0]?.model.trim() ?? 'unknown', cores: cpus().length },
      load_1m_before: Number(load.toFixed(2)),
      load_1m_after: Number(loadavg()[0]!.toFixed(2)),
      node: process.version,
    };
  } finally {
    await rm(out, { recursive: true, force: true });
  }
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string' },
      backend: { type: 'string', default: 'wasm' },
    },
  });
  const chosen = values.preset === undefined ? [...PRESETS] : [values.preset];
  for (const p of chosen) {
    if (!(PRESETS as readonly string[]).includes(p)) throw new Error(`--preset: expected one of ${PRESETS.join(', ')}, got "${p}"`);
  }
  await initBackend(values.backend as BackendName, { log: () => {} });
  for (const p of chosen) process.stdout.write(JSON.stringify(await runPreset(p as (typeof PRESETS)[number])) + '\n');
}
