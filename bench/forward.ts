/**
 * `npm run bench -- forward [--engine tfjs|onnxruntime] [--model dinov2_vits14_reg] [--batch 8] [--size 224]
 *   [--iters 3] [--backend auto] [--gpu N] [--threads N] [--torch-onnx auto|off]`
 * Forward throughput of a randomly initialised model on random normalised images (weights do not change
 * the work done). Prints one JSON line.
 *
 * --engine onnxruntime runs vitreg's ONNX graph (OnnxEncoder, --threads intra-op threads) and, beside it
 * in the same process and alternating run by run, the same architecture exported by PyTorch
 * (bench/reference/torch_vit.py --case export-onnx, torch.onnx.export opset 17; needs /usr/bin/python3 with
 * torch, else skipped) on the same ONNX Runtime settings: `vs_torch_onnx` is our rate over PyTorch's
 * graph's. On a shared machine wall times drift, so each rate is also given per CPU-second of this
 * process (`cpu_images_per_s`, meaningful for one thread) and the ratio is the median of per-pair ratios.
 * Peak memory: run under `/usr/bin/time -v`.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { describeAdapter, initBackend, Rng, type BackendName } from '@vitreg/core';
import { getConfig, loadOnnxRuntime, OnnxEncoder, torchShapes, VisionTransformer, type StateDict, type ViTConfig } from '@vitreg/registers';

/** Random weights in PyTorch layouts (the work does not depend on the values). */
function randomStateDict(c: ViTConfig): StateDict {
  const rng = new Rng(0);
  const sd: StateDict = {};
  for (const [name, shape] of Object.entries(torchShapes(c))) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = rng.normal(0, 0.02);
    sd[name] = { shape, data };
  }
  return sd;
}

interface Timing {
  seconds: number;
  cpuSeconds: number;
}

async function timed(fn: () => Promise<unknown>): Promise<Timing> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const cpu = process.cpuUsage(c0);
  return { seconds: (performance.now() - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1]!;
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const rate = (batch: number, t: Timing[]) => ({
  images_per_s: +(batch / mean(t.map((x) => x.seconds))).toFixed(3),
  best_images_per_s: +(batch / Math.min(...t.map((x) => x.seconds))).toFixed(3),
  cpu_images_per_s: +(batch / mean(t.map((x) => x.cpuSeconds))).toFixed(3),
});

/** Exports bench/reference's PyTorch model with this config's sizes to ONNX; null (and why) without torch. */
function torchOnnx(c: ViTConfig, size: number, file: string): { ok: true } | { ok: false; why: string } {
  const python = process.env.VITREG_PYTHON ?? '/usr/bin/python3';
  const script = join(dirname(fileURLToPath(import.meta.url)), 'reference', 'torch_vit.py');
  if (c.ffn_layer !== 'mlp' || c.num_register_tokens !== 4)
    return { ok: false, why: 'the PyTorch reference is an MLP model with 4 registers' };
  const args = [
    script,
    '--case',
    'export-onnx',
    '--out',
    file,
    '--dim',
    String(c.embed_dim),
    '--depth',
    String(c.depth),
    '--heads',
    String(c.num_heads),
    '--patch',
    String(c.patch_size),
    '--size',
    String(size),
    '--batch',
    '1',
  ];
  const r = spawnSync(python, args, { encoding: 'utf8' });
  if (r.status !== 0) return { ok: false, why: `${python} ${r.error?.message ?? r.stderr.trim().split('\n').pop()}` };
  return { ok: true };
}

async function runOnnx(
  values: Record<string, string | undefined>,
  c: ViTConfig,
  batch: number,
  size: number,
  iters: number,
): Promise<void> {
  const ort = await loadOnnxRuntime();
  const threads = values.threads ? Number(values.threads) : undefined;
  const enc = await OnnxEncoder.fromWeights(c, randomStateDict(c), { threads });
  const images = {
    data: new Float32Array(batch * size * size * 3).map((_, i) => Math.sin(i)),
    shape: [batch, size, size, 3] as [number, number, number, number],
  };
  const warm = await timed(() => enc.encode(images));
  const dir = await mkdtemp(join(tmpdir(), 'bench-forward-'));
  let torch: { run: () => Promise<unknown> } | undefined;
  let skipped: string | undefined;
  try {
    if (values['torch-onnx'] !== 'off') {
      const file = join(dir, 'torch.onnx');
      const made = torchOnnx(c, size, file);
      if (made.ok) {
        const session = await ort.InferenceSession.create(file, {
          executionProviders: ['cpu'],
          graphOptimizationLevel: 'all',
          executionMode: 'sequential',
          interOpNumThreads: 1,
          ...(threads ? { intraOpNumThreads: threads } : {}),
        });
        const feeds = { images: new ort.Tensor('float32', images.data, [batch, 3, size, size]) };
        torch = { run: () => session.run(feeds) };
        await torch.run();
      } else skipped = made.why;
    }
    const ours: Timing[] = [];
    const theirs: Timing[] = [];
    for (let i = 0; i < iters; i++) {
      ours.push(await timed(() => enc.encode(images)));
      if (torch) theirs.push(await timed(torch.run));
    }
    const ratios = theirs.map((t, i) => t.seconds / ours[i]!.seconds);
    const cpuRatios = theirs.map((t, i) => t.cpuSeconds / ours[i]!.cpuSeconds);
    process.stdout.write(
      `${JSON.stringify({
        case: 'forward',
        engine: enc.description,
        model: values.model,
        threads: threads ?? 'default',
        batch,
        size,
        ...rate(batch, ours),
        warmup_seconds: +warm.seconds.toFixed(3),
        ...(torch
          ? { torch_onnx: rate(batch, theirs), vs_torch_onnx: +median(ratios).toFixed(3), vs_torch_onnx_cpu: +median(cpuRatios).toFixed(3) }
          : { torch_onnx: `skipped: ${skipped ?? '--torch-onnx off'}` }),
        rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
      })}\n`,
    );
  } finally {
    await enc.dispose();
    await rm(dir, { recursive: true, force: true });
  }
}

async function runTfjs(
  values: Record<string, string | undefined>,
  c: ViTConfig,
  batch: number,
  size: number,
  iters: number,
): Promise<void> {
  const info = await initBackend(values.backend as BackendName, {
    log: () => {},
    gpu: values.gpu === undefined ? undefined : Number(values.gpu),
  });
  const model = new VisionTransformer(c, { seed: 0, trainable: false });
  const x = tf.randomNormal([batch, size, size, 3], 0, 1, 'float32', 0) as tf.Tensor4D;
  const once = async () => {
    const out = tf.tidy(() => {
      const o = model.forward(x, { attention: values.attention as 'none' | 'last' });
      return [o.cls, o.patches, o.registers];
    });
    await out[1]!.data();
    tf.dispose(out);
  };
  const warm = await timed(once);
  const times: Timing[] = [];
  for (let i = 0; i < iters; i++) times.push(await timed(once));
  process.stdout.write(
    `${JSON.stringify({
      case: 'forward',
      engine: `tfjs ${info.name}`,
      model: values.model,
      backend: info.name,
      ...(info.adapter ? { adapter: describeAdapter(info.adapter) } : {}),
      batch,
      size,
      input: [batch, size, size, 3],
      ...rate(batch, times),
      seconds_per_batch: +mean(times.map((t) => t.seconds)).toFixed(3),
      warmup_seconds: +warm.seconds.toFixed(3),
      rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
    })}\n`,
  );
  x.dispose();
  model.dispose();
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      engine: { type: 'string', default: 'tfjs' },
      model: { type: 'string', default: 'dinov2_vits14_reg' },
      batch: { type: 'string', default: '8' },
      size: { type: 'string', default: '224' },
      iters: { type: 'string', default: '3' },
      backend: { type: 'string', default: 'auto' },
      gpu: { type: 'string' },
      attention: { type: 'string', default: 'none' },
      threads: { type: 'string' },
      'torch-onnx': { type: 'string', default: 'auto' },
    },
  });
  const c = getConfig(values.model!);
  const [batch, size, iters] = [Number(values.batch), Number(values.size), Number(values.iters)];
  if (values.engine === 'onnxruntime') await runOnnx(values, c, batch, size, iters);
  else if (values.engine === 'tfjs') await runTfjs(values, c, batch, size, iters);
  else throw new Error(`--engine: expected tfjs or onnxruntime, got ${values.engine}`);
}
