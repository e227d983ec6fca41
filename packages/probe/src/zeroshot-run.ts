/**
 * Zero-shot evaluation of a dataset part (what `vitreg probe --task zeroshot` runs): images through CLIP's
 * eval transform (shorter side resized to `size`, bicubic; centre crop `size`; OpenAI CLIP's mean and std),
 * batched, into `zeroShotEval`; the class names default to the dataset's own. `runZeroShotTask` is the
 * whole task of one checkpoint into a results file, resumable: it loads the CLIP checkpoint and the
 * tokenizer, reads the class names and templates, runs `runZeroShot` and writes the report with its
 * settings, or reuses a results file that records the same settings (core's `readFinishedResult`).
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { applyPlan, InputError, planTransform, readFinishedResult, writeJsonAtomic, type Dataset } from '@vitreg/core';
import { ClipTokenizer, loadClip, type ClipModel } from '@vitreg/registers';
import { CLIP_MEAN, CLIP_STD, parseLines, zeroShotEval, type ZeroShotResult } from './zeroshot.js';
import { IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES } from './zeroshot-metadata.js';

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

/**
 * An input `runZeroShotTask` refused, tagged with which one: `weights` (the CLIP checkpoint does not
 * load), `tokenizer` (the vocabulary file does not load) or `vocabulary` (it does not fit the text tower).
 * The message names the file.
 */
export class ZeroShotInputError extends InputError {
  constructor(
    readonly input: 'weights' | 'tokenizer' | 'vocabulary',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ZeroShotInputError';
  }
}

export interface ZeroShotTaskOptions {
  /** The results file (JSON). */
  file: string;
  /**
   * What identifies the run besides the task's own options (the weights, the data, counts: the caller
   * knows them); the task adds `tokenizer` (resolved), `classes`, `templates` and `quickGelu`, and the
   * whole is recorded in the results file.
   */
  settings: Record<string, unknown>;
  /** CLIP's BPE vocabulary file (bpe_simple_vocab_16e6.txt.gz). */
  tokenizer: string;
  /** Class names: null (default, the data's), 'imagenet' (ImageNet-1k's) or a file of one name per line. */
  classes?: string | null;
  /** Templates: 'openai' (default, OpenAI's 80), 'simple' (open_clip's 7) or a file of one per line. */
  templates?: string;
  /** OpenAI's weights: QuickGELU activations (default false). */
  quickGelu?: boolean;
  /** The data source as given: recorded in the report as `data`. */
  data: string;
  /** Input side (default 224), images per forward pass (default 8). */
  size?: number;
  batchSize?: number;
}

/** What `runZeroShotTask` writes to its results file. */
export interface ZeroShotTaskReport extends ZeroShotResult {
  task: 'zeroshot';
  weights: string;
  data: string;
  tokenizer: string;
  classSource: string;
  templateSource: string;
  size: number;
  /** The image tower's register tokens. */
  registers: number;
  settings: Record<string, unknown>;
}

async function readLines(file: string, what: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new InputError(`${file}: cannot read the ${what} (${(err as Error).message})`, { cause: err });
  }
  try {
    return parseLines(text, file, what);
  } catch (err) {
    throw new InputError((err as Error).message, { cause: err });
  }
}

/**
 * Zero-shot top-1 / top-5 of the CLIP checkpoint `weights` (both towers) on a data part, into `o.file`
 * (see the module comment); `reused` when the file already held this run's result (nothing loaded). A
 * results file made with other settings is core's SettingsMismatchError; a checkpoint or tokenizer that
 * does not load or fit is a ZeroShotInputError; other bad input (class-name or template files, more
 * classes in the data than names) an InputError.
 */
export async function runZeroShotTask(
  weights: string,
  part: { dataset: Dataset; indices?: number[] },
  o: ZeroShotTaskOptions,
): Promise<{ report: ZeroShotTaskReport; reused: boolean; settings: Record<string, unknown> }> {
  const classes = o.classes ?? null;
  const templateSource = o.templates ?? 'openai';
  const quickGelu = o.quickGelu ?? false;
  const size = o.size ?? 224;
  const settings = { ...o.settings, tokenizer: resolve(o.tokenizer), classes, templates: templateSource, quickGelu, size };
  const prev = await readFinishedResult<ZeroShotTaskReport>(o.file, settings);
  if (prev) return { report: prev, reused: true, settings };
  let model;
  try {
    model = await loadClip(weights, quickGelu ? { act_layer: 'quick_gelu' } : {});
  } catch (err) {
    throw new ZeroShotInputError('weights', `${weights}: ${(err as Error).message}`, { cause: err });
  }
  try {
    let tokenizer: ClipTokenizer;
    try {
      tokenizer = await ClipTokenizer.fromFile(o.tokenizer, { contextLength: model.config.text.context_length });
    } catch (err) {
      throw new ZeroShotInputError('tokenizer', (err as Error).message, { cause: err });
    }
    if (tokenizer.vocabSize !== model.config.text.vocab_size)
      throw new ZeroShotInputError(
        'vocabulary',
        `${o.tokenizer}: a vocabulary of ${tokenizer.vocabSize} tokens, the text tower of ${weights} has ${model.config.text.vocab_size}`,
      );
    const classNames =
      classes === null ? undefined : classes === 'imagenet' ? IMAGENET_CLASSNAMES : await readLines(classes, 'class names');
    const templates =
      templateSource === 'openai'
        ? OPENAI_IMAGENET_TEMPLATES
        : templateSource === 'simple'
          ? SIMPLE_IMAGENET_TEMPLATES
          : await readLines(templateSource, 'templates');
    let r: ZeroShotResult;
    try {
      r = await runZeroShot(model, tokenizer, part, { classNames, templates, size, batchSize: o.batchSize ?? 8 });
    } catch (err) {
      throw new InputError(`zeroshot: ${(err as Error).message}`, { cause: err });
    }
    const report: ZeroShotTaskReport = {
      task: 'zeroshot',
      weights: resolve(weights),
      data: o.data,
      tokenizer: resolve(o.tokenizer),
      classSource: classes ?? 'data',
      templateSource,
      size,
      ...r,
      registers: model.config.vision.num_register_tokens,
      settings,
    };
    await writeJsonAtomic(o.file, report);
    return { report, reused: false, settings };
  } finally {
    model.dispose();
  }
}
