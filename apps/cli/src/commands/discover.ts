/**
 * `vitreg discover`: LOST object discovery over a dataset, image files or a tensor, with CorLoc when
 * ground-truth boxes are known. Results are appended to OUT/results.jsonl one image at a time, so a
 * rerun skips the images already there. Several --weights run a sweep (one sub-folder per checkpoint
 * plus OUT/sweep.{csv,json,png}).
 */
import { existsSync, statSync } from 'node:fs';
import { appendFile, open, readFile, truncate } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import {
  BACKEND_NAMES, checkpointNames, CocoDataset, decodeImage, ensureDir, IMAGENET_MEAN, IMAGENET_STD, listImageFiles, Progress,
  stem, SyntheticDataset, VocDataset, writeFileAtomic, writeJsonAtomic, encodePng,
  type Dataset,
} from '@vitreg/core';
import * as tf from '@tensorflow/tfjs-core';
import { disposeOutput, outputTensors, type Encoder } from '@vitreg/registers';
import {
  affinity, corloc, discoveryRecord, drawDiscovery, lostFeatures, lostFromAffinity, prepareInput, writeSweep,
  type DiscoveryRecord, type InputGeometry, type LostResult, type ModelInput,
} from '@vitreg/probe';
import { choiceFlag, CliError, intFlag, parseCommandArgs, type Command } from '../cli.js';
import {
  BACKEND_FLAGS, configFlag, ENGINE_FLAGS, engineUsage, engineFlags, loadEncoder, readTensorBatch, startBackend, SYNTHETIC_FLAGS,
  syntheticDataset,
} from '../inputs.js';
import { TTR_FLAGS, ttrEncoder, ttrEngine, ttrFlags, ttrUsage } from '../ttr.js';

/**
 * LOST on a batch of inputs of equal padded size, as @vitreg/probe's discoverBatch does, on any engine:
 * the encoder returns the last block's keys (or values), LOST runs per image on tfjs.
 */
async function discoverEncoded(model: Encoder, inputs: ModelInput[], opts: { features: 'keys' | 'values'; kPatches: number }): Promise<LostResult[]> {
  const { paddedHeight: h, paddedWidth: w } = inputs[0]!;
  const data = new Float32Array(inputs.length * h * w * 3);
  inputs.forEach((inp, i) => data.set(inp.data, i * h * w * 3));
  const encoded = await model.encode({ data, shape: [inputs.length, h, w, 3] }, opts.features === 'keys' ? { keys: true } : { values: true });
  const out = outputTensors(encoded);
  const feats = lostFeatures(out, opts.features);
  disposeOutput(out);
  try {
    return inputs.map((inp, i) => {
      const a = tf.tidy(() => tf.squeeze(tf.slice(feats, [i, 0, 0], [1, -1, -1]), [0]) as tf.Tensor2D);
      const sim = affinity(a);
      a.dispose();
      return lostFromAffinity(sim, encoded.grid, model.config.patch_size, { kPatches: opts.kPatches, imageSize: { width: inp.width, height: inp.height } });
    });
  } finally {
    feats.dispose();
  }
}


// ---------------------------------------------------------------------------------------------
// Inputs of discover

/** Where the images of a discover run come from: a name per image and a way to get it ready. */
interface Source {
  names: string[];
  /** The model input of image i (boxes empty when there is no ground truth). */
  load(i: number, patchSize: number): Promise<ModelInput>;
}

/** Stable item ids known without loading the items (the ids the datasets give their items). */
function datasetNames(ds: Dataset): string[] {
  if (ds instanceof VocDataset) return [...ds.ids];
  if (ds instanceof CocoDataset) return ds.images.map((im) => String(im.id));
  if (ds instanceof SyntheticDataset) return Array.from({ length: ds.length }, (_, i) => `synthetic-${ds.split}-${i}`);
  return Array.from({ length: ds.length }, (_, i) => String(i));
}

function datasetSource(ds: Dataset, geometry: InputGeometry): Source {
  return { names: datasetNames(ds), load: async (i, p) => prepareInput(await ds.get(i), geometry, p) };
}

async function openDataset(data: string, values: { split?: string; images?: string; count?: string; 'synthetic-size'?: string; seed?: string }): Promise<Dataset> {
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

async function fileSource(inputs: string[], geometry: InputGeometry): Promise<Source> {
  let files: string[];
  try {
    files = await listImageFiles(inputs);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  return {
    names: files,
    load: async (i, p) => {
      const img = await decodeImage(files[i]);
      return prepareInput({ image: img.data, width: img.width, height: img.height, boxes: [] }, geometry, p);
    },
  };
}

/** Images from an NHWC float32 tensor of already-normalised pixels (`FILE[:NAME]`). */
async function tensorSource(spec: string, geometry: InputGeometry): Promise<Source> {
  const { file, name, data, shape } = await readTensorBatch(spec);
  const [b, h, w] = shape;
  if (geometry.kind !== 'native' || geometry.maxSide !== undefined) {
    throw new CliError('--tensor: the tensor is fed as is; --size and --max-side do not apply');
  }
  return {
    names: Array.from({ length: b }, (_, i) => `${file}:${name}[${i}]`),
    load: async (i, p) => {
      const img = data.subarray(i * h * w * 3, (i + 1) * h * w * 3);
      // Back to 8-bit RGB for pictures; the model reads the tensor itself.
      const rgb = Uint8Array.from(img, (v, k) => Math.round((v * IMAGENET_STD[k % 3] + IMAGENET_MEAN[k % 3]) * 255));
      const ph = Math.ceil(h / p) * p, pw = Math.ceil(w / p) * p;
      const padded = new Float32Array(ph * pw * 3);
      for (let y = 0; y < h; y++) padded.set(img.subarray(y * w * 3, (y + 1) * w * 3), y * pw * 3);
      return { data: padded, paddedHeight: ph, paddedWidth: pw, width: w, height: h, rgb, boxes: [], scale: [1, 1] };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Resumable results

/** Records already in results.jsonl; a torn last line (interrupted write) is cut off. */
async function readResults(path: string): Promise<DiscoveryRecord[]> {
  if (!existsSync(path)) return [];
  const text = await readFile(path, 'utf8');
  const out: DiscoveryRecord[] = [];
  let good = 0;
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      good += line.length + 1;
      continue;
    }
    try {
      out.push(JSON.parse(line) as DiscoveryRecord);
      good += Buffer.byteLength(line) + 1;
    } catch {
      break;
    }
  }
  if (good < Buffer.byteLength(text)) await truncate(path, good);
  return out;
}

async function appendLines(path: string, lines: string[]): Promise<void> {
  await appendFile(path, lines.map((l) => l + '\n').join(''));
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

interface RunSettings {
  weights: string;
  features: 'keys' | 'values';
  kPatches: number;
  geometry: InputGeometry;
}

/** Run LOST over `source` for one checkpoint into `out`; returns CorLoc when boxes are known. */
async function discoverOne(model: Encoder, source: Source, out: string, s: RunSettings, opts: { batchSize: number; pictures: boolean }) {
  await ensureDir(out);
  const runFile = join(out, 'run.json');
  const settings = { weights: resolve(s.weights), features: s.features, kPatches: s.kPatches, geometry: s.geometry, config: model.config };
  if (existsSync(runFile)) {
    const prev = JSON.parse(await readFile(runFile, 'utf8'));
    for (const key of ['weights', 'features', 'kPatches', 'geometry'] as const) {
      if (JSON.stringify(prev[key]) !== JSON.stringify(settings[key])) {
        throw new CliError(`--out ${out}: holds results of a run with ${key} ${JSON.stringify(prev[key])}, not ${JSON.stringify(settings[key])}; use another --out`);
      }
    }
  }
  await writeJsonAtomic(runFile, settings);
  const resultsFile = join(out, 'results.jsonl');
  const records = await readResults(resultsFile);
  const done = new Set(records.map((r) => r.image));
  const todo = source.names.map((n, i) => [n, i] as const).filter(([n]) => !done.has(n));
  const p = model.config.patch_size;
  if (opts.pictures) await ensureDir(join(out, 'pictures'));
  const progress = new Progress({ total: todo.length, label: `discover ${stem(s.weights)}`, unit: 'img' });
  let hits = records.filter((r) => r.hit).length;
  let scored = records.filter((r) => r.hit !== undefined).length;
  // Batches of consecutive images of equal padded size; an image that does not fit starts the next one.
  let carry: { input: ModelInput; name: string } | null = null;
  for (let start = 0; start < todo.length || carry; ) {
    const inputs: ModelInput[] = [];
    const names: string[] = [];
    if (carry) {
      inputs.push(carry.input);
      names.push(carry.name);
      carry = null;
    }
    while (start < todo.length && inputs.length < opts.batchSize) {
      const [name, i] = todo[start++];
      const input = await source.load(i, p);
      if (inputs.length > 0 && (input.paddedHeight !== inputs[0].paddedHeight || input.paddedWidth !== inputs[0].paddedWidth)) {
        carry = { input, name };
        break;
      }
      inputs.push(input);
      names.push(name);
    }
    const results = await discoverEncoded(model, inputs, { features: s.features, kPatches: s.kPatches }).catch((err: Error) => {
      throw err instanceof CliError ? err : new CliError(err.message);
    });
    const lines: string[] = [];
    for (const [j, r] of results.entries()) {
      const grid: [number, number] = [inputs[j].paddedHeight / p, inputs[j].paddedWidth / p];
      const rec = discoveryRecord(names[j], inputs[j], r, grid);
      lines.push(JSON.stringify(rec));
      records.push(rec);
      if (rec.hit !== undefined) {
        scored++;
        if (rec.hit) hits++;
      }
      if (opts.pictures) {
        const c = drawDiscovery(inputs[j].rgb, inputs[j].width, inputs[j].height, r, grid, p, inputs[j].boxes);
        const file = join(out, 'pictures', `${basename(names[j]).replace(/[^A-Za-z0-9._-]+/g, '_')}.png`);
        await writeFileAtomic(file, await encodePng(c.data, c.width, c.height));
      }
    }
    await appendLines(resultsFile, lines);
    progress.tick(results.length, scored > 0 ? `CorLoc ${((100 * hits) / scored).toFixed(1)}%` : undefined);
  }
  progress.done();
  const wanted = new Set(source.names);
  const scoredRecords = records.filter((r) => r.hit !== undefined && wanted.has(r.image));
  if (scoredRecords.length === 0) return null;
  const c = corloc(scoredRecords.map((r) => r.hit === true));
  await writeJsonAtomic(join(out, 'corloc.json'), { ...c, weights: s.weights, features: s.features, kPatches: s.kPatches, geometry: s.geometry });
  return c;
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
  --k-patches N      LOST's k (default 100)
  --pictures         draw the result on every image
  --batch-size N     images per forward pass (default 1; only equal-size images are batched)
  --backend B        ${BACKEND_NAMES.join(' | ')} (tfjs: the engine with --engine tfjs, and LOST itself)
  --gpu N            the webgpu backend's adapter (default $VITREG_GPU, else 0)
${engineUsage(21)}
${ttrUsage(21)}
  --out DIR          output folder
`;

export const discover: Command = {
  summary: 'LOST object discovery and CorLoc on VOC, COCO, synthetic data or image files',
  usage: USAGE,
  async run(argv) {
    const { values, positionals } = parseCommandArgs('discover', argv, {
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
    const weights = values.weights ?? [];
    if (weights.length === 0) throw new CliError('--weights FILE is required (see vitreg discover --help)');
    if (!values.out) throw new CliError('--out DIR is required (see vitreg discover --help)');
    const given = [values.data !== undefined, positionals.length > 0, values.tensor !== undefined].filter(Boolean).length;
    if (given !== 1) throw new CliError('give exactly one input: --data SRC, image files, or --tensor FILE.safetensors[:NAME]');
    const features = choiceFlag('features', values.features, ['keys', 'values'] as const, 'keys');
    const kPatches = intFlag('k-patches', values['k-patches'], 100);
    const batchSize = intFlag('batch-size', values['batch-size'], 1);
    if (values.size !== undefined && values['max-side'] !== undefined) throw new CliError('--size and --max-side exclude each other');
    const geometry: InputGeometry = values.size !== undefined
      ? { kind: 'square', size: intFlag('size', values.size, 224) }
      : values['max-side'] !== undefined ? { kind: 'native', maxSide: intFlag('max-side', values['max-side'], 0) } : { kind: 'native' };
    const config = configFlag(values.config);
    const ttr = ttrFlags(values);
    const engine = ttrEngine(engineFlags(values), ttr, weights, { onnx: true });
    await startBackend(values.backend, values.gpu);
    const source = values.tensor !== undefined
      ? await tensorSource(values.tensor, geometry)
      : positionals.length > 0
        ? await fileSource(positionals, geometry)
        : datasetSource(await openDataset(values.data!, values), geometry);
    if (source.names.length === 0) throw new CliError('no images to process');
    const rows: Record<string, string | number | null>[] = [];
    const dirs = checkpointNames(weights);
    for (const [i, w] of weights.entries()) {
      const model = ttr ? await ttrEncoder(ttr, { weights: w, model: values.model, config, engine }) : await loadEncoder(w, { model: values.model, config }, engine);
      try {
        if (geometry.kind === 'square' && geometry.size % model.config.patch_size !== 0) {
          throw new CliError(`--size ${geometry.size} is not a multiple of the patch size ${model.config.patch_size}`);
        }
        const out = weights.length > 1 ? join(values.out, dirs[i]) : values.out;
        const c = await discoverOne(model, source, out, { weights: w, features, kPatches, geometry }, { batchSize, pictures: values.pictures === true });
        rows.push({ checkpoint: w, registers: model.config.num_register_tokens, corloc: c?.corloc ?? null, hits: c?.hits ?? null, images: source.names.length });
        if (c) process.stderr.write(`${w}: CorLoc ${(100 * c.corloc).toFixed(2)}% (${c.hits}/${c.images})\n`);
      } finally {
        await model.dispose();
      }
    }
    if (weights.length > 1 && rows.some((r) => r.corloc !== null)) {
      await writeSweep(values.out, rows, { x: 'registers', metrics: ['corloc'] });
    }
  },
};
