/**
 * `npm run bench -- train-step [--batch 32] [--micro-batch 2] [--steps 1] [--model deit3_small_patch16_reg4] [--size 224] [--backend wasm]`
 * One supervised training step of the trainer as it runs in `vitreg train` (synthetic data, DeiT-III
 * augmentation, forward, backward, gradient sync, clipping, AdamW): ViT-S/16 with 4 registers at
 * 224 px, batch 32 by default, in micro-batches of 2 (gradients summed: a whole batch of 32 does not
 * fit the wasm backend's 4 GiB heap). One warm-up step, then `--steps` timed steps. Prints one JSON
 * line: images/s, seconds per step, memory, backend.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { getBackendName, initBackend, type BackendName } from '@vitreg/core';
import { Trainer, validateTrainConfig } from '@vitreg/trainer';

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
    },
  });
  const batch = Number(values.batch);
  const steps = Number(values.steps);
  const micro = Number(values['micro-batch']);
  const size = Number(values.size);
  await initBackend(values.backend as BackendName, { log: () => {} });
  const config = validateTrainConfig({
    objective: 'supervised',
    model: { arch: values.model!, img_size: size, drop_path_rate: 0.1, layerscale_init: 1e-5 },
    data: { train_size: batch * (steps + 1), val_size: 1, synthetic_size: size },
    train: { steps: steps + 1, batch_size: batch, micro_batch_size: micro },
    optim: { warmup_steps: 1 },
    crops: { global_crops_size: size },
  });
  const trainer = new Trainer(config);
  await trainer.initWeights();
  await trainer.trainStep(); // warm-up: kernel compilation, first allocations
  let seconds = 0;
  let last: Record<string, number> = {};
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    last = await trainer.trainStep();
    seconds += (performance.now() - t0) / 1000;
  }
  const mem = tf.memory();
  process.stdout.write(JSON.stringify({
    case: 'train-step',
    model: values.model,
    size,
    batch,
    micro_batch: micro,
    steps,
    backend: getBackendName(),
    images_per_s: Number(((batch * steps) / seconds).toFixed(3)),
    step_seconds: Number((seconds / steps).toFixed(3)),
    loss: Number(last.loss!.toFixed(4)),
    rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
    tf_mb: Math.round(mem.numBytes / 2 ** 20),
  }) + '\n');
  trainer.dispose();
}
