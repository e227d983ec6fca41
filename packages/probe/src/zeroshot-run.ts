/**
 * Zero-shot evaluation of a dataset part (what `vitreg probe --task zeroshot` runs): images through CLIP's
 * eval transform (shorter side resized to `size`, bicubic; centre crop `size`; OpenAI CLIP's mean and std),
 * batched, into `zeroShotEval`; the class names default to the dataset's own.
 */
import { applyPlan, planTransform, type Dataset } from '@vitreg/core';
import type { ClipModel, ClipTokenizer } from '@vitreg/registers';
import { CLIP_MEAN, CLIP_STD, zeroShotEval, type ZeroShotResult } from './zeroshot.js';

/** Labelled batches of a dataset part, CLIP-normalised NHWC at `size` x `size`. */
export async function* clipImageBatches(
  dataset: Dataset,
  indices: readonly number[],
  size: number,
  batchSize: number,
): AsyncGenerator<{ images: Float32Array; count: number; size: number; labels: number[] }> {
  for (let start = 0; start < indices.length; start += batchSize) {
    const ids = indices.slice(start, start + batchSize);
    const items = await Promise.all(ids.map((i) => dataset.get(i)));
    const images = new Float32Array(items.length * size * size * 3);
    items.forEach((item, k) => {
      const rgb = applyPlan(
        { data: item.image, width: item.width, height: item.height },
        planTransform(item.width, item.height, { kind: 'eval', resize: size, crop: size }),
      );
      const off = k * size * size * 3;
      for (let p = 0; p < size * size; p++) {
        for (let c = 0; c < 3; c++) images[off + p * 3 + c] = (rgb.data[p * 3 + c]! / 255 - CLIP_MEAN[c]!) / CLIP_STD[c]!;
      }
    });
    yield { images, count: items.length, size, labels: items.map((it) => it.label) };
  }
}

export interface ZeroShotRunOptions {
  /** Class names in label order (default: the dataset's). */
  classNames?: readonly string[];
  templates: readonly string[];
  /** Input side (default: the image tower's img_size). */
  size?: number;
  batchSize?: number;
}

/** Zero-shot top-1 / top-5 of `model` on a dataset part (all items unless `indices`). */
export async function runZeroShot(
  model: ClipModel,
  tokenizer: ClipTokenizer,
  part: { dataset: Dataset; indices?: number[] },
  opts: ZeroShotRunOptions,
): Promise<ZeroShotResult> {
  const classNames = opts.classNames ?? part.dataset.classNames;
  if (opts.classNames && part.dataset.numClasses > opts.classNames.length)
    throw new Error(`zero-shot: the data has ${part.dataset.numClasses} classes, the class names ${opts.classNames.length}`);
  const indices = part.indices ?? Array.from({ length: part.dataset.length }, (_, i) => i);
  const size = opts.size ?? model.config.vision.img_size;
  return zeroShotEval(model, tokenizer, classNames, opts.templates, clipImageBatches(part.dataset, indices, size, opts.batchSize ?? 16));
}
