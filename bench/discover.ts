/**
 * `npm run bench -- discover [--model dinov2_vits14_reg] [--batch 4] [--size 224] [--iters 3] [--backend wasm]
 *   [--engine tfjs|onnxruntime] [--threads N]`
 * LOST throughput: forward with the last block's keys, then LOST per image (similarity matMul on the
 * backend, degrees / expansion / component on the host), on random normalised images with a randomly
 * initialised model (weights do not change the work done). Prints one JSON line, with the share of
 * time spent in LOST itself after the forward pass. --engine onnxruntime runs the forward pass on
 * vitreg's ONNX graph (the same weights), LOST stays on the tfjs backend.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, type BackendName } from '@vitreg/core';
import { disposeOutput, getConfig, OnnxEncoder, outputTensors, stateDictOf, VisionTransformer } from '@vitreg/registers';
import { affinity, lostFeatures, lostFromAffinity } from '@vitreg/probe';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', default: 'dinov2_vits14_reg' },
      batch: { type: 'string', default: '4' },
      size: { type: 'string', default: '224' },
      iters: { type: 'string', default: '3' },
      backend: { type: 'string', default: 'wasm' },
      engine: { type: 'string', default: 'tfjs' },
      threads: { type: 'string' },
    },
  });
  const info = await initBackend(values.backend as BackendName, { log: () => {} });
  const batch = Number(values.batch);
  const size = Number(values.size);
  const iters = Number(values.iters);
  const model = new VisionTransformer(getConfig(values.model!), { seed: 0, trainable: false });
  const p = model.config.patch_size;
  const x = tf.randomNormal([batch, size, size, 3], 0, 1, 'float32', 0) as tf.Tensor4D;
  const onnx =
    values.engine === 'onnxruntime'
      ? await OnnxEncoder.fromWeights(model.config, await stateDictOf(model), {
          threads: values.threads ? Number(values.threads) : undefined,
        })
      : undefined;
  const host = { data: x.dataSync() as Float32Array, shape: [batch, size, size, 3] as [number, number, number, number] };
  const forward = async () => {
    if (!onnx) {
      return tf.tidy(() => {
        const out = model.forward(x, { keys: true });
        return { f: lostFeatures(out, 'keys'), grid: out.grid };
      });
    }
    const out = outputTensors(await onnx.encode(host, { keys: true }));
    const f = lostFeatures(out, 'keys');
    disposeOutput(out);
    return { f, grid: out.grid };
  };
  const once = async () => {
    const t0 = performance.now();
    const feats = await forward();
    await feats.f.data();
    const t1 = performance.now();
    for (let i = 0; i < batch; i++) {
      const a = tf.tidy(() => tf.squeeze(tf.slice(feats.f, [i, 0, 0], [1, -1, -1]), [0]) as tf.Tensor2D);
      lostFromAffinity(affinity(a), feats.grid, p, { imageSize: { width: size, height: size } });
      a.dispose();
    }
    feats.f.dispose();
    const t2 = performance.now();
    return { seconds: (t2 - t0) / 1000, lostSeconds: (t2 - t1) / 1000 };
  };
  const warm = await once();
  const runs: { seconds: number; lostSeconds: number }[] = [];
  for (let i = 0; i < iters; i++) runs.push(await once());
  const mean = runs.reduce((a, r) => a + r.seconds, 0) / runs.length;
  const lostMean = runs.reduce((a, r) => a + r.lostSeconds, 0) / runs.length;
  const best = Math.min(...runs.map((r) => r.seconds));
  process.stdout.write(
    JSON.stringify({
      case: 'discover',
      model: values.model,
      engine: onnx ? onnx.description : 'tfjs',
      backend: info.name,
      batch,
      size,
      patches: (size / p) ** 2,
      images_per_s: +(batch / mean).toFixed(3),
      best_images_per_s: +(batch / best).toFixed(3),
      lost_ms_per_image: +((1000 * lostMean) / batch).toFixed(2),
      lost_share: +(lostMean / mean).toFixed(3),
      warmup_seconds: +warm.seconds.toFixed(3),
      rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
    }) + '\n',
  );
  x.dispose();
  model.dispose();
  await onnx?.dispose();
}
