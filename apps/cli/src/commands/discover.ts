/**
 * `vitreg discover`: LOST object discovery over a dataset, image files or a tensor, with CorLoc when
 * ground-truth boxes are known: @vitreg/probe's runDiscovery per checkpoint (results appended to
 * OUT/results.jsonl one batch at a time, so a rerun skips the images already there). Several --weights
 * run a sweep (one sub-folder per checkpoint plus OUT/sweep.{csv,json,png}).
 */
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { BACKEND_NAMES, checkpointNames, CocoDataset, listImageFiles, SettingsMismatchError, VocDataset, type Dataset } from '@vitreg/core';
import {
  datasetSource,
  fileSource,
  LOST_K_PATCHES,
  runDiscovery,
  tensorSource,
  writeSweep,
  type DiscoverSource,
  type DiscoveryRunOptions,
  type InputGeometry,
} from '@vitreg/probe';
import { CliError, inputAsCliError, parseFlags, type Command } from '../cli.js';
import {
  BACKEND_FLAGS,
  checkBackendFlags,
  configFlag,
  DEFAULT_ENGINE,
  ENGINE_FLAGS,
  engineUsage,
  engineFlags,
  loadEncoder,
  readTensorBatch,
  startBackend,
  SYNTHETIC_FLAGS,
  syntheticDataset,
} from '../inputs.js';
import type { Encoder } from '@vitreg/registers';
import { TTR_FLAGS, ttrEncoder, ttrEngine, ttrFlags, ttrUsage } from '../ttr.js';

// ---------------------------------------------------------------------------------------------
// Inputs of discover

async function openDataset(
  data: string,
  values: { split?: string; images?: string; count?: string; 'synthetic-size'?: string; seed?: string },
): Promise<Dataset> {
  if (data === 'synthetic') return syntheticDataset(values, 'train', 100);
  if (!existsSync(data)) throw new CliError(`--data: ${data} does not exist`);
  try {
    if (data.endsWith('.json')) {
      const images = values.images ?? dirname(data);
      return new CocoDataset(data, images);
    }
    if (statSync(data).isDirectory()) {
      return new VocDataset(data, { split: values.split ?? 'trainval' });
    }
  } catch (err) {
    throw new CliError(`--data ${data}: ${(err as Error).message}`);
  }
  throw new CliError(`--data: expected a VOC folder, a COCO .json file or 'synthetic', got ${data}`);
}

async function imageSource(inputs: string[], geometry: InputGeometry): Promise<DiscoverSource> {
  let files: string[];
  try {
    files = await listImageFiles(inputs);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  return fileSource(files, geometry);
}

/** --tensor FILE[:NAME]: images of already-normalised pixels, fed as is. */
async function tensorInput(spec: string, geometry: InputGeometry): Promise<DiscoverSource> {
  const { file, name, data, shape } = await readTensorBatch(spec);
  if (geometry.kind !== 'native' || geometry.maxSide !== undefined) {
    throw new CliError('--tensor: the tensor is fed as is; --size and --max-side do not apply');
  }
  return tensorSource({ data, shape }, `${file}:${name}`);
}

/** runDiscovery with its errors as one line: other settings in --out, bad input. */
async function discoverInto(model: Encoder, source: DiscoverSource, out: string, opts: DiscoveryRunOptions) {
  try {
    return await runDiscovery(model, source, out, opts);
  } catch (err) {
    if (err instanceof SettingsMismatchError) {
      const c = err.changes[0]!;
      const was = `${c.key} ${JSON.stringify(c.before)}, not ${JSON.stringify(c.now)}`;
      throw new CliError(`--out ${out}: holds results of a run with ${was}; use another --out`);
    }
    throw inputAsCliError(err);
  }
}

// ---------------------------------------------------------------------------------------------

const USAGE = `
Usage: vitreg discover --weights FILE [--weights FILE ...]
                       (--data VOC_DIR|COCO_JSON|synthetic | IMAGE... | --tensor FILE.safetensors[:NAME])
                       --out DIR [options]

LOST object discovery (Simeoni et al. 2021) on the last block's keys of the patch tokens (CLS and
registers dropped). Writes DIR/results.jsonl (one line per image: image, box [x0, y0, x1, y1] in
pixels of the model input, seed [row, col], and with ground truth gt, iou and hit), DIR/corloc.json
when boxes are known (CorLoc: share of images with IoU >= 0.5 against any ground-truth box), and with
--pictures DIR/pictures/*.png (mask tinted, component green, seed yellow, box red, ground truth white).
Interrupted runs resume: images already in results.jsonl are skipped.

Input geometry (ground-truth boxes follow the same transform):
  default          LOST's protocol: full resolution, padded right/bottom to a multiple of the patch
  --max-side N     shrink (keep aspect) so the longer side is at most N, then pad
  --size N         resize to N x N (N a multiple of the patch size); allows batching

Options:
  --weights FILE     .safetensors, .pth or .onnx (DINOv2, timm, HF, DINO, DeiT-III or CLIP names;
                     OpenAI CLIP: --model clip_vitb16 or --config '{"act_layer":"quick_gelu"}');
                     repeat for a sweep: one sub-folder per checkpoint and DIR/sweep.{csv,json,png}
                     (CorLoc vs registers)
  --model NAME       use a named config instead of the inferred one
  --config JSON      override config fields, e.g. '{"num_heads": 3}'
  --data SRC         a VOC folder (Annotations/, JPEGImages/, ImageSets/Main/SPLIT.txt: --split SPLIT,
                     default trainval, a missing list file is an error; --split '*' = every
                     annotation), a COCO instances .json (--images DIR, default the json's folder;
                     crowd boxes dropped),
                     or 'synthetic' (--count N, default 100; --synthetic-size N, default 224; --seed)
  --tensor SPEC      already-normalised NHWC float32 images from a safetensors file
  --features F       keys (default) | values
  --k-patches N      LOST's k (default ${LOST_K_PATCHES})
  --pictures         draw the result on every image
  --batch-size N     images per forward pass (default 1; only equal-size images are batched)
  --backend B        ${BACKEND_NAMES.join(' | ')} (tfjs: the engine with --engine tfjs, and LOST itself)
  --gpu N            the webgpu backend's adapter (default $VITREG_GPU, else 0)
  --verbose          say why the faster backends were skipped (default: one line, e.g. backend: wasm (auto))
${engineUsage(21)}
${ttrUsage(21)}
  --out DIR          output folder
`;

export const discover: Command = {
  summary: 'LOST object discovery and CorLoc on VOC, COCO, synthetic data or image files',
  usage: USAGE,
  async run(argv) {
    const f = parseFlags('discover', argv, {
      weights: { type: 'string', multiple: true },
      model: { type: 'string' },
      config: { type: 'string' },
      data: { type: 'string' },
      tensor: { type: 'string' },
      split: { type: 'string' },
      images: { type: 'string' },
      ...SYNTHETIC_FLAGS,
      features: { type: 'string' },
      'k-patches': { type: 'string' },
      size: { type: 'string' },
      'max-side': { type: 'string' },
      pictures: { type: 'boolean' },
      'batch-size': { type: 'string' },
      ...BACKEND_FLAGS,
      ...ENGINE_FLAGS,
      ...TTR_FLAGS,
      out: { type: 'string' },
    });
    const { values, positionals } = f;
    const weights = values.weights ?? [];
    if (weights.length === 0) f.missing('weights', '--weights FILE is required (see vitreg discover --help)');
    const outDir = f.require('out', '--out DIR is required (see vitreg discover --help)');
    const given = [values.data !== undefined, positionals.length > 0, values.tensor !== undefined].filter(Boolean).length;
    if (given !== 1) f.fail('give exactly one input: --data SRC, image files, or --tensor FILE.safetensors[:NAME]');
    const features = f.choice('features', ['keys', 'values'] as const, 'keys');
    const kPatches = f.int('k-patches', LOST_K_PATCHES);
    const batchSize = f.int('batch-size', 1);
    if (values.size !== undefined && values['max-side'] !== undefined) f.fail('--size and --max-side exclude each other');
    const geometry: InputGeometry =
      values.size !== undefined
        ? { kind: 'square', size: f.int('size', 224) }
        : values['max-side'] !== undefined
          ? { kind: 'native', maxSide: f.int('max-side', 0, 0) }
          : { kind: 'native' };
    if (values.data === 'synthetic') f.check(() => syntheticDataset(values, 'train', 100), undefined);
    checkBackendFlags(f);
    const config = f.check(() => configFlag(values.config), undefined);
    const ttr = f.check(() => ttrFlags(values), null);
    const engine = f.check(() => ttrEngine(engineFlags(values), ttr, weights, { onnx: true }), DEFAULT_ENGINE);
    // Input paths with the other flags (the weights files are checked by done()), before the backend starts.
    f.path('data', 'any', (v) => v === 'synthetic');
    f.path('images', 'folder');
    f.inputs(positionals);
    f.done();
    await startBackend(values.backend, values.gpu, values.verbose);
    const source =
      values.tensor !== undefined
        ? await tensorInput(values.tensor, geometry)
        : positionals.length > 0
          ? await imageSource(positionals, geometry)
          : datasetSource(await openDataset(values.data!, values), geometry);
    if (source.names.length === 0) throw new CliError('no images to process');
    const rows: Record<string, string | number | null>[] = [];
    const dirs = checkpointNames(weights);
    for (const [i, w] of weights.entries()) {
      const model = ttr
        ? await ttrEncoder(ttr, { weights: w, model: values.model, config, engine })
        : await loadEncoder(w, { model: values.model, config }, engine);
      try {
        if (geometry.kind === 'square' && geometry.size % model.config.patch_size !== 0) {
          throw new CliError(`--size ${geometry.size} is not a multiple of the patch size ${model.config.patch_size}`);
        }
        const out = weights.length > 1 ? join(outDir, dirs[i]) : outDir;
        const c = await discoverInto(model, source, out, { weights: w, features, kPatches, batchSize, pictures: values.pictures === true });
        rows.push({
          checkpoint: w,
          registers: model.config.num_register_tokens,
          corloc: c?.corloc ?? null,
          hits: c?.hits ?? null,
          images: source.names.length,
        });
        if (c) process.stderr.write(`${w}: CorLoc ${(100 * c.corloc).toFixed(2)}% (${c.hits}/${c.images})\n`);
      } finally {
        await model.dispose();
      }
    }
    if (weights.length > 1 && rows.some((r) => r.corloc !== null)) {
      await writeSweep(outDir, rows, { x: 'registers', metrics: ['corloc'] });
    }
  },
};
