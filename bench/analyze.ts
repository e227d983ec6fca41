/**
 * `npm run bench -- analyze [--model dinov2_vits14_reg] [--images 10] [--size 224] [--backend wasm] [--engine tfjs|onnxruntime]`
 * End-to-end analysis (what `vitreg analyze` runs: @vitreg/viz's analyzeImages) on generated images with
 * a randomly initialised model (random weights do the same work): model load from its file, decode,
 * forward with last attention and every block's tokens, token analysis, all figures, joint PCA, report.
 * Prints one JSON line: total seconds (model load included) and images/s, the engine (the forward pass)
 * and the backend (tfjs: the token analysis).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { getBackendName, initBackend, Rng, setQuiet, type BackendName } from '@vitreg/core';
import {
  getConfig,
  loadWeights,
  OnnxEncoder,
  readWeights,
  saveWeights,
  TfjsEncoder,
  VisionTransformer,
  type Encoder,
} from '@vitreg/registers';
import { analyzeImages, imageFileInputs } from '@vitreg/viz';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', default: 'dinov2_vits14_reg' },
      images: { type: 'string', default: '10' },
      size: { type: 'string', default: '224' },
      backend: { type: 'string', default: 'wasm' },
      engine: { type: 'string', default: 'tfjs' },
    },
  });
  const count = Number(values.images);
  const size = Number(values.size);
  const dir = await mkdtemp(join(tmpdir(), 'bench-analyze-'));
  try {
    // Smooth random images (a few blobs), so PNG decoding and figures see realistic content.
    const rng = new Rng(0);
    const files: string[] = [];
    for (let k = 0; k < count; k++) {
      const blobs = Array.from({ length: 4 }, () => [
        rng.float() * size,
        rng.float() * size,
        20 + rng.float() * 60,
        rng.int(256),
        rng.int(256),
        rng.int(256),
      ]);
      const px = Buffer.alloc(size * size * 3);
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          for (let c = 0; c < 3; c++) {
            let v = 40;
            for (const b of blobs) v += b[3 + c] * Math.exp(-((x - b[0]) ** 2 + (y - b[1]) ** 2) / (2 * b[2] ** 2));
            px[(y * size + x) * 3 + c] = Math.min(255, v);
          }
        }
      }
      files.push(join(dir, `img${k}.png`));
      await sharp(px, { raw: { width: size, height: size, channels: 3 } })
        .png()
        .toFile(files[k]);
    }
    await initBackend(values.backend as BackendName, { log: () => {} });
    const weights = join(dir, 'model.safetensors');
    const model = new VisionTransformer(getConfig(values.model!), { seed: 0 });
    await saveWeights(model, weights);
    model.dispose();

    setQuiet(true);
    const t0 = performance.now();
    let encoder: Encoder;
    if (values.engine === 'onnxruntime') {
      const { config, stateDict } = await readWeights(weights);
      encoder = await OnnxEncoder.fromWeights(config, stateDict);
    } else encoder = new TfjsEncoder(await loadWeights(weights));
    const transform = { kind: 'eval', resize: size, crop: size } as const;
    const r = await analyzeImages([{ label: 'A', weights, encoder }], imageFileInputs(files, transform), join(dir, 'out'), { transform });
    await encoder.dispose();
    const seconds = (performance.now() - t0) / 1000;
    setQuiet(false);
    if (r.failed.length > 0 || r.images !== count) {
      throw new Error(`analyze: ${r.images} of ${count} images (${r.failed.map((f) => f.error).join('; ')})`);
    }
    process.stdout.write(
      `${JSON.stringify({
        case: 'analyze',
        model: values.model,
        images: count,
        size,
        engine: values.engine,
        backend: getBackendName(),
        seconds: Number(seconds.toFixed(2)),
        images_per_s: Number((count / seconds).toFixed(3)),
      })}\n`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
