/**
 * `vitreg features`: run a backbone on images or an image tensor and write its outputs as safetensors
 * (cls, registers, patches, prenorm; optionally attention and per-block tokens), streamed to the file
 * batch by batch, on the tfjs or the onnxruntime engine.
 */
import { resolve } from 'node:path';
import { FeatureWriter, loadImage, Progress } from '@vitreg/core';
import type { Encoder, HostArray } from '@vitreg/registers';
import { choiceFlag, CliError, intFlag, parseCommandArgs, type Command } from '../cli.js';
import {
  BACKEND_FLAGS, configFlag, ENGINE_FLAGS, engineUsage, engineFlags, IMAGE_FLAGS, imageFiles, imageTransform, loadEncoder, MODEL_FLAGS, readTensorBatch,
  resolveEngine, startBackend,
} from '../inputs.js';
import { TTR_FLAGS, ttrEncoder, ttrEngine, ttrFlags, ttrUsage } from '../ttr.js';

const usage = `
Usage: vitreg features --weights FILE [--model NAME] [--config JSON|FILE.json]
                       (IMAGE... | --tensor FILE.safetensors[:NAME]) --out OUT.safetensors
                       [--attention last|all] [--layers all] [--size N | --keep-aspect [--max-side N]]
                       [--backend auto|tensorflow-gpu|webgpu|tensorflow|wasm|cpu] [--gpu N] [--batch-size N]
                       [--engine auto|tfjs|onnxruntime] [--device cpu|cuda|webgpu] [--threads N]
                       [--test-time-registers neurons.json [--ttr-top-k K]]

Runs the backbone and writes, for B images of P patches, R registers and N = 1+R+P tokens:
  cls [B,D], registers [B,R,D], patches [B,P,D]   after the final LayerNorm
  prenorm [B,N,D]                                 the last block's output before it
  pooled [B,E]                                    the projected CLS (CLIP towers: configs with proj_dim)
  attention [B,H,N,N]                             with --attention last (all: attention.layerK)
  layerK.prenorm [B,N,D]                          with --layers all
Token order is [CLS, registers, patches]; patches are row-major over the patch grid. The file's
__metadata__ holds the image list, the grid and the model config.

  --weights FILE    .safetensors or .pth (F32/F16/BF16; DINOv2, timm, HF, DINO, DeiT-III or CLIP
                    names; OpenAI CLIP: --model clip_vitb16 or --config '{"act_layer":"quick_gelu"}'),
                    or an .onnx file from vitreg export (its size and outputs)
  --model NAME      use a named config (e.g. dinov2_vits14_reg) instead of the inferred one
  --config JSON     override config fields, e.g. '{"num_heads": 3}', or a .json file
  IMAGE...          image files, folders or globs, decoded as DINOv2 evaluates: shorter side to
                    256, centre crop 224, ImageNet mean/std (--size N: crop N; --keep-aspect: keep
                    the aspect ratio, sides rounded to the patch size; all images must then agree)
  --tensor SPEC     an already-normalised NHWC float32 batch [B,H,W,3] from a safetensors file
  --batch-size N    images per forward pass (default 8)
  --backend B       auto (default), tensorflow-gpu, webgpu, tensorflow, wasm or cpu (the tfjs engine)
  --gpu N           the webgpu backend's adapter (default $VITREG_GPU, else 0)
${engineUsage(20)}
${ttrUsage(20)}
                    (registers then has R+1 rows: the trained ones, then the test-time one)
`;

type Batch = { data: Float32Array; shape: [number, number, number, number] };

/** One batch through the encoder: its outputs under the file's tensor names. */
async function runBatch(encoder: Encoder, batch: Batch, opts: { attention: 'none' | 'last' | 'all'; layers: boolean }): Promise<Map<string, HostArray>> {
  const out = await encoder.encode(batch, { attention: opts.attention, layers: opts.layers });
  const named = new Map<string, HostArray>([['cls', out.cls], ['registers', out.registers], ['patches', out.patches], ['prenorm', out.prenorm]]);
  if (out.pooled) named.set('pooled', out.pooled);
  if (opts.attention === 'last') named.set('attention', out.attention![0]!);
  if (opts.attention === 'all') out.attention!.forEach((a, k) => named.set(`attention.layer${k}`, a));
  if (opts.layers) out.layers!.forEach((l, k) => named.set(`layer${k}.prenorm`, l));
  return named;
}

export const features: Command = {
  summary: 'run a backbone on images and write CLS, register, patch tokens (and attention) as safetensors',
  usage,
  async run(argv) {
    const { values, positionals } = parseCommandArgs('features', argv, {
      ...MODEL_FLAGS,
      ...BACKEND_FLAGS,
      ...IMAGE_FLAGS,
      ...ENGINE_FLAGS,
      ...TTR_FLAGS,
      tensor: { type: 'string' },
      out: { type: 'string' },
      attention: { type: 'string' },
      layers: { type: 'string' },
      'batch-size': { type: 'string' },
    });
    if (!values.out) throw new CliError('--out OUT.safetensors is required');
    if (!values.out.endsWith('.safetensors')) throw new CliError(`--out: expected a .safetensors path, got ${values.out}`);
    if (values.tensor !== undefined && positionals.length > 0) throw new CliError('give images or --tensor, not both');
    if (values.tensor === undefined && positionals.length === 0) throw new CliError('no input: give IMAGE... or --tensor FILE.safetensors[:NAME]');
    const attention = choiceFlag('attention', values.attention, ['none', 'last', 'all'] as const, 'none');
    const layers = choiceFlag('layers', values.layers, ['none', 'all'] as const, 'none') === 'all';
    const batchSize = intFlag('batch-size', values['batch-size'], 8);
    const ttr = ttrFlags(values);
    const engine = ttrEngine(engineFlags(values), ttr, [values.weights], { onnx: true });

    // tfjs runs only when it is the engine (or reads the weights for a test-time register's model
    // fingerprint): onnxruntime's outputs go straight to the file.
    const tfjs = values.weights && (ttr !== undefined || (await resolveEngine(engine, values.weights)) === 'tfjs');
    const backend = tfjs ? (await startBackend(values.backend, values.gpu)).name : 'none';
    const model = ttr
      ? await ttrEncoder(ttr, { weights: values.weights, model: values.model, config: configFlag(values.config), engine })
      : await loadEncoder(values.weights, { model: values.model, config: configFlag(values.config) }, engine);
    const p = model.config.patch_size;

    // Inputs: one tensor batch, or images decoded one at a time.
    let count: number;
    let labels: string[];
    let batches: () => AsyncGenerator<Batch>;
    if (values.tensor !== undefined) {
      const t = await readTensorBatch(values.tensor, p);
      const [B, H, W] = t.shape;
      count = B;
      labels = Array.from({ length: B }, (_, i) => `${t.file}:${t.name}[${i}]`);
      batches = async function* () {
        for (let i = 0; i < B; i += batchSize) {
          const n = Math.min(batchSize, B - i);
          yield { data: t.data.subarray(i * H * W * 3, (i + n) * H * W * 3), shape: [n, H, W, 3] };
        }
      };
    } else {
      const files = await imageFiles(positionals);
      const transform = imageTransform(values, p);
      count = files.length;
      labels = files;
      batches = async function* () {
        let size: [number, number] | undefined;
        for (let i = 0; i < files.length; i += batchSize) {
          const imgs = [];
          for (const f of files.slice(i, i + batchSize)) {
            const img = await loadImage(f, transform).catch((err: Error) => {
              throw new CliError(err.message);
            });
            size ??= [img.height, img.width];
            if (img.height !== size[0] || img.width !== size[1]) {
              throw new CliError(`${f}: becomes ${img.width}x${img.height} but ${files[0]} became ${size[1]}x${size[0]}; one output file needs one size (use --size)`);
            }
            imgs.push(img);
          }
          const data = new Float32Array(imgs.length * size![0] * size![1] * 3);
          imgs.forEach((img, j) => data.set(img.data, j * img.data.length));
          yield { data, shape: [imgs.length, size![0], size![1], 3] };
        }
      };
    }

    let grid: [number, number] = [0, 0];
    const writer = new FeatureWriter(resolve(values.out), count, () => ({
      vitreg_images: JSON.stringify(labels),
      vitreg_grid: JSON.stringify(grid),
      vitreg_config: JSON.stringify(model.config),
      vitreg_weights: values.weights!,
      vitreg_backend: backend,
      vitreg_engine: model.description,
      ...(ttr ? { vitreg_test_time_registers: ttr.path } : {}),
    }));
    const progress = new Progress({ total: count, label: 'features', unit: 'img' });
    try {
      for await (const batch of batches()) {
        grid = [batch.shape[1] / p, batch.shape[2] / p];
        await writer.add(await runBatch(model, batch, { attention, layers }), batch.shape[0]);
        progress.tick(batch.shape[0]);
      }
      await writer.finish();
    } catch (err) {
      await writer.abort();
      throw err instanceof CliError ? err : new CliError((err as Error).message);
    }
    progress.done();
    process.stderr.write(`wrote ${count} image(s), grid ${grid[0]}x${grid[1]}, to ${values.out}\n`);
    await model.dispose();
  },
};
