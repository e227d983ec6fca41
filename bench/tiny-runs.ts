/**
 * `npm run bench -- tiny-runs [--preset tiny-supervised|tiny-dino|tiny-clip] [--engine auto|tfjs|onnxruntime[,...]] [--threads N] [--backend wasm]`
 * The three CPU presets end to end, exactly as `vitreg train --preset NAME [--engine E]` runs them
 * (synthetic shapes, periodic evaluations and checkpoints included, into a temporary folder), one after
 * the other in this process, on each engine asked (default `auto`: ONNX Runtime where onnxruntime-node
 * loads, else tfjs, as `vitreg train` resolves it). Prints one JSON line per preset and engine: its final
 * accuracy (tiny-supervised: validation accuracy of the classifier; tiny-dino: k-NN accuracy of the
 * teacher's CLS token; tiny-clip: zero-shot top-1 on the 5 shapes with the caption grammar's prompts), steps, wall seconds and CPU seconds of this process (`process.cpuUsage`, user +
 * system over every thread: what the run cost even when other processes share the cores), peak RSS, the
 * engine, the machine (CPU model, vector extensions, cores) and the 1-minute load average before and
 * after the run (a load above the core count means the wall time is inflated by others).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { getBackendName, initBackend, type BackendName } from '@vitreg/core';
import type { EngineChoice } from '@vitreg/registers';
import { presetConfig, resolveTrainEngine, train, type ResolvedTrainEngine } from '@vitreg/trainer';
import { load1, machineInfo, peakRssMb } from './_machine.js';

const PRESETS = ['tiny-supervised', 'tiny-dino', 'tiny-clip'] as const;

/** Trains one preset into a temporary folder; its accuracy, wall and CPU seconds. */
async function runPreset(name: (typeof PRESETS)[number], engine: ResolvedTrainEngine): Promise<Record<string, unknown>> {
  const config = presetConfig(name);
  const out = await mkdtemp(join(tmpdir(), `bench-${name}-`));
  try {
    const load = load1();
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const res = await train(config, { outDir: out, progress: false, engine: engine.factory });
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const ev = res.eval!;
    const metric = config.objective === 'supervised' ? 'val_accuracy' : config.objective === 'clip' ? 'zeroshot_top1' : 'knn_accuracy';
    return {
      case: 'tiny-runs',
      preset: name,
      engine: engine.description,
      metric,
      accuracy: Number((ev as unknown as Record<string, number>)[metric]!.toFixed(4)),
      chance: Number((1 / config.data.num_classes).toFixed(4)),
      val_images: config.data.val_size,
      steps: res.step,
      batch: config.train.batch_size,
      wall_s: Number(wall.toFixed(1)),
      cpu_s: Number(((cpu.user + cpu.system) / 1e6).toFixed(1)),
      ...(ev.teacher_entropy !== undefined
        ? { teacher_entropy: Number(ev.teacher_entropy.toFixed(3)), teacher_batch_entropy: Number(ev.teacher_batch_entropy!.toFixed(3)) }
        : {}),
      // The process's peak so far: a later line includes the earlier runs' peaks.
      peak_rss_mb: peakRssMb(),
      backend: getBackendName(),
      machine: machineInfo(),
      load_1m_before: load,
      load_1m_after: load1(),
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
      engine: { type: 'string', default: 'auto' },
      threads: { type: 'string' },
      backend: { type: 'string', default: 'wasm' },
    },
  });
  const chosen = values.preset === undefined ? [...PRESETS] : [values.preset];
  for (const p of chosen) {
    if (!(PRESETS as readonly string[]).includes(p)) throw new Error(`--preset: expected one of ${PRESETS.join(', ')}, got "${p}"`);
  }
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  // tfjs: the tfjs engine, and the host side of the ONNX Runtime engine's DINO step.
  await initBackend(values.backend as BackendName, { log: () => {} });
  for (const e of values.engine!.split(',')) {
    const engine = await resolveTrainEngine({ engine: e as EngineChoice, ...(e !== 'tfjs' && threads ? { threads } : {}) });
    for (const p of chosen) process.stdout.write(JSON.stringify(await runPreset(p as (typeof PRESETS)[number], engine)) + '\n');
  }
}
