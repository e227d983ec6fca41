/**
 * `npm run bench -- ttr [--model dinov2_vits14] [--batch 8] [--size 224] [--iters 5] [--neurons 50]
 *   [--layers 4] [--backend auto] [--gpu N]`
 * The forward cost of test-time registers (Jiang et al. 2025; model.ts `testTimeRegisters`) relative to
 * the plain forward of the same randomly initialised model on the same random images: `--neurons` register
 * neurons spread over `--layers` blocks ending at two thirds of the depth (the reference's DINOv2-L
 * selection: 50 neurons in blocks 12-17 of 24). Plain and test-time-register runs alternate, one pair per
 * iteration; `ttr_over_plain` is the median of the per-pair time ratios (1.05 = 5% slower). The work is
 * one extra token and, in the chosen blocks, the MLP activation computed apart from the second linear
 * layer plus the edit. Prints one JSON line.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { describeAdapter, initBackend, Rng, type BackendName } from '@vitreg/core';
import { ffnHiddenDim, getConfig, VisionTransformer } from '@vitreg/registers';

const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1]!;
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', default: 'dinov2_vits14' },
      batch: { type: 'string', default: '8' },
      size: { type: 'string', default: '224' },
      iters: { type: 'string', default: '5' },
      neurons: { type: 'string', default: '50' },
      layers: { type: 'string', default: '4' },
      backend: { type: 'string', default: 'auto' },
      gpu: { type: 'string' },
    },
  });
  const c = getConfig(values.model!);
  const [batch, size, iters, count, nLayers] = [values.batch, values.size, values.iters, values.neurons, values.layers].map(
    Number,
  ) as number[];
  const info = await initBackend(values.backend as BackendName, {
    log: () => {},
    gpu: values.gpu === undefined ? undefined : Number(values.gpu),
  });
  const model = new VisionTransformer(c, { seed: 0, trainable: false });
  const hidden = ffnHiddenDim(c);
  const last = Math.max(0, Math.round((2 * c.depth) / 3) - 1);
  const blocks = Array.from({ length: Math.min(nLayers!, last + 1) }, (_, i) => last - i);
  const rng = new Rng(1);
  const neurons = Array.from({ length: count! }, (_, i) => ({
    layer: blocks[i % blocks.length]!,
    neuron: Math.floor(rng.float() * hidden),
  }));
  const x = tf.randomNormal([batch!, size!, size!, 3], 0, 1, 'float32', 0) as tf.Tensor4D;
  const once = async (ttr: boolean) => {
    const t0 = performance.now();
    const out = tf.tidy(() => {
      const o = model.forward(x, ttr ? { testTimeRegisters: { neurons } } : {});
      return [o.cls, o.patches, o.registers];
    });
    await out[1]!.data();
    tf.dispose(out);
    return (performance.now() - t0) / 1000;
  };
  const warm = [await once(false), await once(true)];
  const plain: number[] = [];
  const ttr: number[] = [];
  for (let i = 0; i < iters!; i++) {
    plain.push(await once(false));
    ttr.push(await once(true));
  }
  process.stdout.write(
    `${JSON.stringify({
      case: 'ttr',
      engine: `tfjs ${info.name}`,
      model: values.model,
      backend: info.name,
      ...(info.adapter ? { adapter: describeAdapter(info.adapter) } : {}),
      batch,
      size,
      neurons: count,
      blocks: blocks.sort((a, b) => a - b),
      plain_seconds_per_batch: +mean(plain).toFixed(4),
      ttr_seconds_per_batch: +mean(ttr).toFixed(4),
      plain_images_per_s: +(batch! / mean(plain)).toFixed(3),
      ttr_images_per_s: +(batch! / mean(ttr)).toFixed(3),
      ttr_over_plain: +median(plain.map((p, i) => ttr[i]! / p)).toFixed(3),
      warmup_seconds: warm.map((w) => +w.toFixed(3)),
      rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
    })}\n`,
  );
  x.dispose();
  model.dispose();
}
