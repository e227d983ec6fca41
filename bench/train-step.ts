/**
 * `npm run bench -- train-step [--batch 32] [--micro-batch 2] [--steps 1] [--model deit3_small_patch16_reg4] [--size 224] [--backend wasm] [--gpu N] [--workers 1]`
 * One supervised training step of the trainer as it runs in `vitreg train` (synthetic data, DeiT-III
 * augmentation, forward, backward, gradient sync, clipping, AdamW): ViT-S/16 with 4 registers at
 * 224 px, batch 32 by default, in micro-batches of 2 (gradients summed: a whole batch of 32 does not
 * fit the wasm backend's 4 GiB heap). One warm-up step, then `--steps` timed steps. Prints one JSON
 * line: images/s, seconds per step, memory, backend.
 *
 * `--workers N` (N > 1): data-parallel over N worker threads (`trainThreads`, as `vitreg train
 * --workers N`); `--batch` is per worker, images/s counts the global batch (batch x N), and the step
 * time is rank 0's (from its metrics line, so it includes waiting for the gradient all-reduce).
 * Memory is then the peak RSS of the process (all threads).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { describeAdapter, getBackendName, initBackend, setupWebGpu, type BackendName } from '@vitreg/core';
import { MAX_WORKERS, Trainer, trainThreads, validateTrainConfig, type TrainConfig } from '@vitreg/trainer';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      batch: { type: 'string', default: '32' },
      'micro-batch': { type: 'string', default: '2' },
      steps: { type: 'string', default: '1' },
      model: { type: 'string', default: 'deit3_small_patch16_reg4' },
      size: { type: 'string', default: '224' },
      backend: { type: 'string', default: 'wasm' },
      gpu: { type: 'string' },
      workers: { type: 'string', default: '1' },
    },
  });
  const batch = Number(values.batch);
  const steps = Number(values.steps);
  const micro = Number(values['micro-batch']);
  const size = Number(values.size);
  const workers = Number(values.workers);
  if (!Number.isInteger(workers) || workers < 1 || workers > MAX_WORKERS) {
    throw new Error(`--workers: expected an integer from 1 to ${MAX_WORKERS}, got "${values.workers}"`);
  }
  const config = validateTrainConfig({
    objective: 'supervised',
    model: { arch: values.model!, img_size: size, drop_path_rate: 0.1, layerscale_init: 1e-5 },
    data: { source: 'synthetic', train_size: batch * workers * (steps + 1), val_size: 1, synthetic_size: size },
    train: { steps: steps + 1, batch_size: batch, micro_batch_size: micro },
    optim: { warmup_steps: 1 },
    crops: { global_crops_size: size },
  });
  const gpu = values.gpu === undefined ? undefined : Number(values.gpu);
  if (gpu !== undefined) process.env.VITREG_GPU = String(gpu); // the training threads read it
  if (workers > 1)
    return runThreads(config, { batch, micro, steps, size, workers, model: values.model!, backend: values.backend as BackendName });
  const info = await initBackend(values.backend as BackendName, { log: () => {}, gpu });
  const trainer = new Trainer(config);
  trainer.initTeacher();
  await trainer.trainStep(); // warm-up: kernel compilation, first allocations
  let seconds = 0;
  let last: Record<string, number> = {};
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    last = await trainer.trainStep();
    seconds += (performance.now() - t0) / 1000;
  }
  const mem = tf.memory();
  process.stdout.write(
    JSON.stringify({
      case: 'train-step',
      model: values.model,
      size,
      batch,
      micro_batch: micro,
      workers: 1,
      steps,
      backend: getBackendName(),
      ...(info.adapter ? { adapter: describeAdapter(info.adapter) } : {}),
      images_per_s: Number(((batch * steps) / seconds).toFixed(3)),
      step_seconds: Number((seconds / steps).toFixed(3)),
      loss: Number(last.loss!.toFixed(4)),
      rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
      tf_mb: Math.round(mem.numBytes / 2 ** 20),
    }) + '\n',
  );
  trainer.dispose();
}

/** `--workers N`: one trainThreads run of steps + 1 steps; the first (warm-up) step is not timed. */
async function runThreads(
  config: TrainConfig,
  o: { batch: number; micro: number; steps: number; size: number; workers: number; model: string; backend: BackendName },
): Promise<void> {
  const out = await mkdtemp(join(tmpdir(), 'vitreg-bench-threads-'));
  try {
    await trainThreads(config, { outDir: out, progress: false, workers: o.workers, backend: o.backend });
    const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    const timed = lines.filter((m) => m.step! > 1 && m.step_seconds !== undefined);
    const seconds = timed.reduce((a, m) => a + m.step_seconds!, 0);
    const last = timed[timed.length - 1]!;
    process.stdout.write(
      JSON.stringify({
        case: 'train-step',
        model: o.model,
        size: o.size,
        batch: o.batch,
        micro_batch: o.micro,
        workers: o.workers,
        global_batch: o.batch * o.workers,
        steps: o.steps,
        backend: o.backend,
        ...(o.backend === 'webgpu' ? { adapter: describeAdapter(await setupWebGpu()) } : {}),
        images_per_s: Number(((o.batch * o.workers * timed.length) / seconds).toFixed(3)),
        step_seconds: Number((seconds / timed.length).toFixed(3)),
        loss: Number(last.loss!.toFixed(4)),
        // Peak RSS of the process, every thread included (the threads have exited by now).
        max_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
        rank0_tf_mb: Math.round(last.tf_mb!),
      }) + '\n',
    );
  } finally {
    await rm(out, { recursive: true, force: true });
  }
}
