/**
 * `npm run bench -- forward [--model dinov2_vits14_reg] [--batch 8] [--size 224] [--iters 3] [--backend auto] [--gpu N]`
 * Forward throughput of a randomly initialised model on random normalised images (weights do not change
 * the work done). Prints one JSON line. Peak memory: run under `/usr/bin/time -v`.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { describeAdapter, initBackend, type BackendName } from '@vitreg/core';
import { getConfig, VisionTransformer } from '@vitreg/registers';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', default: 'dinov2_vits14_reg' },
      batch: { type: 'string', default: '8' },
      size: { type: 'string', default: '224' },
      iters: { type: 'string', default: '3' },
      backend: { type: 'string', default: 'auto' },
      gpu: { type: 'string' },
      attention: { type: 'string', default: 'none' },
    },
  });
  const info = await initBackend(values.backend as BackendName, { log: () => {}, gpu: values.gpu === undefined ? undefined : Number(values.gpu) });
  const batch = Number(values.batch);
  const size = Number(values.size);
  const iters = Number(values.iters);
  const model = new VisionTransformer(getConfig(values.model!), { seed: 0, trainable: false });
  const x = tf.randomNormal([batch, size, size, 3], 0, 1, 'float32', 0) as tf.Tensor4D;
  const once = async () => {
    const t0 = performance.now();
    const out = tf.tidy(() => {
      const o = model.forward(x, { attention: values.attention as 'none' | 'last' });
      return [o.cls, o.patches, o.registers];
    });
    await out[1].data();
    const shapes = { cls: out[0].shape, registers: out[2].shape, patches: out[1].shape };
    tf.dispose(out);
    return { seconds: (performance.now() - t0) / 1000, shapes };
  };
  const warm = await once();
  const times: number[] = [];
  for (let i = 0; i < iters; i++) times.push((await once()).seconds);
  const best = Math.min(...times);
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  process.stdout.write(
    JSON.stringify({
      case: 'forward',
      model: values.model,
      backend: info.name,
      ...(info.adapter ? { adapter: describeAdapter(info.adapter) } : {}),
      batch,
      size,
      input: [batch, size, size, 3],
      shapes: warm.shapes,
      images_per_s: +(batch / mean).toFixed(3),
      best_images_per_s: +(batch / best).toFixed(3),
      seconds_per_batch: +mean.toFixed(3),
      warmup_seconds: +warm.seconds.toFixed(3),
      rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
    }) + '\n',
  );
  x.dispose();
  model.dispose();
}
