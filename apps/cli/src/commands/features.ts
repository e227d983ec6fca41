/**
 * `vitreg features`: run a backbone on images or an image tensor and write its outputs as safetensors
 * (cls, registers, patches, prenorm; optionally attention and per-block tokens), on the tfjs or the
 * onnxruntime engine: flags, the model and the input batches, then @vitreg/registers' writeFeatureFile
 * (streamed to the file batch by batch).
 */
import { resolve } from 'node:path';
import { imageFileBatches, type ImageFileBatch } from '@vitreg/core';
import { writeFeatureFile, type ImageBatch } from '@vitreg/registers';
import { CliError, parseFlags, type Command } from '../cli.js';
import {
  BACKEND_FLAGS,
  checkBackendFlags,
  configFlag,
  DEFAULT_ENGINE,
  ENGINE_FLAGS,
  engineUsage,
  engineFlags,
  IMAGE_FLAGS,
  imageFiles,
  imageTransform,
  loadEncoder,
  MODEL_FLAGS,
  readTensorBatch,
  resolveEngine,
  startBackend,
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
  --verbose         say why the faster backends were skipped (default: one line, e.g. backend: wasm (auto))
${engineUsage(20)}
${ttrUsage(20)}
                    (registers then has R+1 rows: the trained ones, then the test-time one)
`;

export const features: Command = {
  summary: 'run a backbone on images and write CLS, register, patch tokens (and attention) as safetensors',
  usage,
  async run(argv) {
    const f = parseFlags('features', argv, {
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
    const { values, positionals } = f;
    const outPath = f.require('out', '--out OUT.safetensors is required');
    if (outPath && !outPath.endsWith('.safetensors')) f.fail(`--out: expected a .safetensors path, got ${outPath}`);
    const weights = f.require('weights', '--weights FILE is required (.safetensors, .pth or an .onnx from vitreg export)');
    if (values.tensor !== undefined && positionals.length > 0) f.fail('give images or --tensor, not both');
    if (values.tensor === undefined && positionals.length === 0) f.fail('no input: give IMAGE... or --tensor FILE.safetensors[:NAME]');
    const attention = f.choice('attention', ['none', 'last', 'all'] as const, 'none');
    const layers = f.choice('layers', ['none', 'all'] as const, 'none') === 'all';
    const batchSize = f.int('batch-size', 8);
    checkBackendFlags(f);
    if (values.tensor === undefined) f.check(() => imageTransform(values, 1), undefined);
    const config = f.check(() => configFlag(values.config), undefined);
    const ttr = f.check(() => ttrFlags(values), null);
    const engine = f.check(() => ttrEngine(engineFlags(values), ttr, [weights], { onnx: true }), DEFAULT_ENGINE);
    f.inputs(positionals); // the weights, --tensor and --test-time-registers files are checked by done()
    f.done();

    // tfjs runs only when it is the engine (or reads the weights for a test-time register's model
    // fingerprint): onnxruntime's outputs go straight to the file.
    const tfjs = ttr !== null || (await resolveEngine(engine, weights)) === 'tfjs';
    const backend = tfjs ? (await startBackend(values.backend, values.gpu, values.verbose)).name : 'none';
    const model = ttr
      ? await ttrEncoder(ttr, { weights, model: values.model, config, engine })
      : await loadEncoder(weights, { model: values.model, config }, engine);
    const p = model.config.patch_size;

    // Inputs: one tensor batch, or images decoded one at a time (all of one size: one output file).
    let count: number;
    let labels: string[];
    let batches: () => AsyncGenerator<ImageBatch>;
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
        let first: ImageFileBatch | undefined;
        for await (const b of imageFileBatches(files, transform, batchSize)) {
          first ??= b;
          const [, h, w] = b.shape;
          if (h !== first.shape[1] || w !== first.shape[2]) {
            const became = `${files[0]} became ${first.shape[2]}x${first.shape[1]}`;
            throw new CliError(`${b.files[0]}: becomes ${w}x${h} but ${became}; one output file needs one size (use --size)`);
          }
          yield b;
        }
      };
    }

    let grid: [number, number];
    try {
      ({ grid } = await writeFeatureFile(model, batches(), resolve(outPath), {
        count,
        attention,
        layers,
        metadata: (g) => ({
          vitreg_images: JSON.stringify(labels),
          vitreg_grid: JSON.stringify(g),
          vitreg_config: JSON.stringify(model.config),
          vitreg_weights: weights,
          vitreg_backend: backend,
          vitreg_engine: model.description,
          ...(ttr ? { vitreg_test_time_registers: ttr.path } : {}),
        }),
      }));
    } catch (err) {
      throw err instanceof CliError ? err : new CliError((err as Error).message);
    }
    process.stderr.write(`wrote ${count} image(s), grid ${grid[0]}x${grid[1]}, to ${outPath}\n`);
    await model.dispose();
  },
};
