/**
 * LOST object discovery over a whole source of images into a results folder, resumably (what `vitreg
 * discover` runs for each checkpoint): where the images come from (a dataset, image files, a tensor),
 * batches of equal-size inputs through an Encoder (discoverEncoded), one line per image appended to
 * OUT/results.jsonl as it goes, optional pictures, and CorLoc when ground-truth boxes are known.
 *
 * Layout of OUT: run.json (the settings: weights, features, kPatches, geometry, and the model config),
 * results.jsonl (DiscoveryRecord lines), corloc.json (with ground truth), pictures/<image>.png. Started
 * again on the same OUT it skips the images already in results.jsonl (a torn last line is redone); other
 * settings are refused (a SettingsMismatchError of @vitreg/core).
 */
import { basename, join, resolve } from 'node:path';
import {
  asInputError,
  CocoDataset,
  decodeImage,
  encodePng,
  ensureDir,
  IMAGENET_MEAN,
  IMAGENET_STD,
  JsonLinesLog,
  Progress,
  stampSettings,
  stem,
  SyntheticDataset,
  VocDataset,
  writeFileAtomic,
  writeJsonAtomic,
  type Dataset,
} from '@vitreg/core';
import type { Encoder } from '@vitreg/registers';
import { corloc, type CorLoc } from './corloc.js';
import { discoveryRecord, discoverEncoded, type DiscoveryRecord, type LostFeatureKind } from './discover.js';
import { drawDiscovery } from './draw.js';
import { prepareInput, type InputGeometry, type ModelInput } from './extract.js';
import { LOST_K_PATCHES } from './lost.js';

/** Where the images of a discovery run come from: a name per image and a way to get it ready. */
export interface DiscoverSource {
  /** One stable name per image (the key of its line in results.jsonl). */
  names: string[];
  /** How the images are resized and padded (recorded in run.json). */
  geometry: InputGeometry;
  /** The model input of image i (boxes empty when there is no ground truth). */
  load(i: number, patchSize: number): Promise<ModelInput>;
}

/** Stable item ids known without loading the items: VOC ids, COCO image ids, `synthetic-<split>-<i>`, else indices. */
export function datasetItemNames(ds: Dataset): string[] {
  if (ds instanceof VocDataset) return [...ds.ids];
  if (ds instanceof CocoDataset) return ds.images.map((im) => String(im.id));
  if (ds instanceof SyntheticDataset) return Array.from({ length: ds.length }, (_, i) => `synthetic-${ds.split}-${i}`);
  return Array.from({ length: ds.length }, (_, i) => String(i));
}

/** The items of a dataset (their ground-truth boxes scored), prepared as `geometry` says. */
export function datasetSource(ds: Dataset, geometry: InputGeometry): DiscoverSource {
  return { names: datasetItemNames(ds), geometry, load: async (i, p) => prepareInput(await ds.get(i), geometry, p) };
}

/** Image files (named by their paths; no ground truth), decoded when needed. */
export function fileSource(files: string[], geometry: InputGeometry): DiscoverSource {
  return {
    names: files,
    geometry,
    load: async (i, p) => {
      const img = await decodeImage(files[i]);
      return prepareInput({ image: img.data, width: img.width, height: img.height, boxes: [] }, geometry, p);
    },
  };
}

/**
 * Already-normalised NHWC float32 images [B, H, W, 3], fed as is (padded right and bottom to the patch
 * size), named `<label>[i]`; their pictures show the pixels the normalisation undone.
 */
export function tensorSource(batch: { data: Float32Array; shape: readonly number[] }, label: string): DiscoverSource {
  const [b, h, w] = batch.shape as [number, number, number, number];
  return {
    names: Array.from({ length: b }, (_, i) => `${label}[${i}]`),
    geometry: { kind: 'native' },
    load: async (i, p) => {
      const img = batch.data.subarray(i * h * w * 3, (i + 1) * h * w * 3);
      // Back to 8-bit RGB for pictures; the model reads the tensor itself.
      const rgb = Uint8Array.from(img, (v, k) => Math.round((v * IMAGENET_STD[k % 3] + IMAGENET_MEAN[k % 3]) * 255));
      const ph = Math.ceil(h / p) * p,
        pw = Math.ceil(w / p) * p;
      const padded = new Float32Array(ph * pw * 3);
      for (let y = 0; y < h; y++) padded.set(img.subarray(y * w * 3, (y + 1) * w * 3), y * pw * 3);
      return { data: padded, paddedHeight: ph, paddedWidth: pw, width: w, height: h, rgb, boxes: [], scale: [1, 1] };
    },
  };
}

export interface DiscoveryRunOptions {
  /** The checkpoint's path: in run.json (resolved; compared on a rerun), corloc.json and the progress label. */
  weights: string;
  /** Keys (default) or values of the last block. */
  features?: LostFeatureKind;
  /** LOST's k (default 100). */
  kPatches?: number;
  /** Images per forward pass (default 1; consecutive images of equal padded size only). */
  batchSize?: number;
  /** Draw every result to OUT/pictures/<image>.png. */
  pictures?: boolean;
  /** A progress line on stderr (default true). */
  progress?: boolean;
}

/** The keys of run.json a rerun must match. */
const RUN_KEYS = ['weights', 'features', 'kPatches', 'geometry'] as const;

/**
 * LOST over `source` for one model into `out` (see the module comment); returns CorLoc over the source's
 * images when boxes are known, else null. Errors of the model or LOST on an input are InputErrors; a
 * folder made with other settings is a SettingsMismatchError. The model is not disposed.
 */
export async function runDiscovery(model: Encoder, source: DiscoverSource, out: string, opts: DiscoveryRunOptions): Promise<CorLoc | null> {
  const s = {
    weights: opts.weights,
    features: opts.features ?? 'keys',
    kPatches: opts.kPatches ?? LOST_K_PATCHES,
    geometry: source.geometry,
  };
  const batchSize = opts.batchSize ?? 1;
  await ensureDir(out);
  await stampSettings(join(out, 'run.json'), { ...s, weights: resolve(s.weights), config: model.config }, RUN_KEYS);
  const log = new JsonLinesLog<DiscoveryRecord>(join(out, 'results.jsonl'));
  const records = await log.read();
  const done = new Set(records.map((r) => r.image));
  const todo = source.names.map((n, i) => [n, i] as const).filter(([n]) => !done.has(n));
  const p = model.config.patch_size;
  if (opts.pictures) await ensureDir(join(out, 'pictures'));
  const label = `discover ${stem(s.weights)}`;
  const progress = opts.progress === false ? undefined : new Progress({ total: todo.length, label, unit: 'img' });
  let hits = records.filter((r) => r.hit).length;
  let scored = records.filter((r) => r.hit !== undefined).length;
  // Batches of consecutive images of equal padded size; an image that does not fit starts the next one.
  let carry: { input: ModelInput; name: string } | null = null;
  for (let start = 0; start < todo.length || carry;) {
    const inputs: ModelInput[] = [];
    const names: string[] = [];
    if (carry) {
      inputs.push(carry.input);
      names.push(carry.name);
      carry = null;
    }
    while (start < todo.length && inputs.length < batchSize) {
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
      throw asInputError(err);
    });
    const batch: DiscoveryRecord[] = [];
    for (const [j, r] of results.entries()) {
      const grid: [number, number] = [inputs[j].paddedHeight / p, inputs[j].paddedWidth / p];
      const rec = discoveryRecord(names[j], inputs[j], r, grid);
      batch.push(rec);
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
    await log.append(batch);
    progress?.tick(results.length, scored > 0 ? `CorLoc ${((100 * hits) / scored).toFixed(1)}%` : undefined);
  }
  progress?.done();
  const wanted = new Set(source.names);
  const scoredRecords = records.filter((r) => r.hit !== undefined && wanted.has(r.image));
  if (scoredRecords.length === 0) return null;
  const c = corloc(scoredRecords.map((r) => r.hit === true));
  await writeJsonAtomic(join(out, 'corloc.json'), { ...c, ...s });
  return c;
}
