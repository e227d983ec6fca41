/**
 * A compact text-supervised training run of a @vitreg/registers ClipModel, open_clip's recipe on vitreg's
 * parts, until the `clip` objective is wired into the generic loop (config, engines, checkpoints, resume):
 * - data: any random-access source of (RGB image, caption) pairs (`captionSource`: the synthetic shapes with
 *   generated captions, or a CSV / TSV table), each rank taking its share of a seeded shuffle per epoch;
 * - augmentation: open_clip's training transform, RandomResizedCrop(scale 0.9-1) to the image size, then
 *   OpenAI CLIP's mean and std; captions through the ClipTokenizer;
 * - step: `clipStep` (CLIP or SigLIP loss, features gathered across the ranks of `sync`), gradients averaged
 *   with `sync.allReduce` (DDP), AdamW (open_clip's params.py: beta2 0.98, eps 1e-6, weight decay 0.2 with
 *   open_clip's no-decay rule, `clipParamSpecs`), a linear warm-up and cosine learning rate, then logit_scale
 *   clamped to [0, log 100];
 * - `zeroShotTop1`: the accuracy of class prompts (mean of the normalised embeddings of every template).
 */
import * as tf from '@tensorflow/tfjs-core';
import { decodeImage, Rng, SyntheticDataset, type RgbImage } from '@vitreg/core';
import { l2Normalize, type ClipModel, type ClipTokenizer } from '@vitreg/registers';
import { randomResizedCrop } from './augment-geometry.js';
import type { ContrastiveLoss } from './clip-loss.js';
import { syntheticCaption, type CaptionEntry } from './data-captions.js';
import { AdamW } from './optim.js';
import type { ParamSpec } from './param-groups.js';
import { cosineSchedule } from './schedules.js';
import { clipStep } from './steps/clip.js';
import { LocalGradientSync, type GradientSync } from './sync.js';

/** OpenAI CLIP's pixel mean and std. */
const MEAN = [0.48145466, 0.4578275, 0.40821073];
const STD = [0.26862954, 0.26130258, 0.27577711];

/** Random-access (image, caption, label) pairs; label -1 where there is none. */
export interface CaptionSource {
  length: number;
  get(index: number): Promise<{ image: RgbImage; caption: string; label: number }>;
}

/** The synthetic shapes with generated captions, or the rows of a caption table (images decoded on demand). */
export function captionSource(from: SyntheticDataset | CaptionEntry[]): CaptionSource {
  if (from instanceof SyntheticDataset) {
    return {
      length: from.length,
      get: async (i) => {
        const item = await from.get(i);
        return {
          image: { data: item.image, width: item.width, height: item.height },
          caption: syntheticCaption(from, i),
          label: item.label,
        };
      },
    };
  }
  return { length: from.length, get: async (i) => ({ image: await decodeImage(from[i]!.image), caption: from[i]!.caption, label: -1 }) };
}

/** 0..n-1 in a seeded random order (Fisher-Yates). */
export function shuffled(n: number, rng: Rng): number[] {
  const out = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** CLIP-normalised NHWC pixels of an RGB image already at size x size. */
export function normalized(img: RgbImage, out: Float32Array, offset: number): void {
  for (let p = 0; p < img.width * img.height; p++) {
    for (let c = 0; c < 3; c++) out[offset + p * 3 + c] = (img.data[p * 3 + c]! / 255 - MEAN[c]!) / STD[c]!;
  }
}

/**
 * The parameters open_clip's training leaves undecayed, by vitreg name: open_clip_train/optim.py's
 * `make_wd_exclude` (since open_clip commit 8120efe, 2026-06-11) excludes tensors of at most 1 dimension in
 * open_clip's layout (biases, LayerNorm gains, LayerScale gammas, `class_embedding`, `logit_scale`,
 * `logit_bias`: all rank < 2 here except `visual.cls_token`, [1, 1, D]) and the names `CLIP.no_weight_decay()`
 * declares: `positional_embedding`, `visual.positional_embedding`, `visual.class_embedding`. The token
 * embedding and every projection decay. Two tensors have no open_clip counterpart: `visual.register_tokens`
 * (`visual.register_embedding` in the files; not decayed, as open_clip's text towers declare their
 * `reg_tokens`) and `visual.mask_token` (not used by CLIP, not saved).
 */
const CLIP_NO_DECAY = new Set([
  'visual.cls_token',
  'visual.pos_embed',
  'visual.register_tokens',
  'visual.mask_token',
  'text.positional_embedding',
]);

/** Every parameter of the model in training order, with open_clip's weight-decay rule (`CLIP_NO_DECAY` above). */
export function clipParamSpecs(model: ClipModel): ParamSpec[] {
  const named: [string, tf.Variable][] = [
    ...Object.entries(model.visual.params).map(([k, v]) => [`visual.${k}`, v] as [string, tf.Variable]),
    ...Object.entries(model.text.params).map(([k, v]) => [`text.${k}`, v] as [string, tf.Variable]),
    ['logit_scale', model.logitScale],
    ...(model.logitBias ? [['logit_bias', model.logitBias] as [string, tf.Variable]] : []),
  ];
  return named.map(([name, variable]) => ({
    name,
    variable,
    lrMult: 1,
    wdMult: variable.rank < 2 || CLIP_NO_DECAY.has(name) ? 0 : 1,
    isLastLayer: false,
  }));
}

export interface ClipTrainOptions {
  steps: number;
  /** Pairs per step on this rank. */
  batchSize: number;
  lr: number;
  /** Warm-up steps (linear from 0). */
  warmup?: number;
  weightDecay?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  loss?: ContrastiveLoss;
  seed?: number;
  sync?: GradientSync;
  /** Called after every step with its loss and learning rate. */
  onStep?: (step: number, loss: number, lr: number) => void;
}

/** Trains `model` in place (see the module comment); returns each step's loss on this rank. */
export async function trainClip(model: ClipModel, tokenizer: ClipTokenizer, source: CaptionSource, o: ClipTrainOptions): Promise<number[]> {
  const sync = o.sync ?? new LocalGradientSync();
  const S = model.config.vision.img_size;
  const params = clipParamSpecs(model).filter((p) => p.variable.trainable);
  const order = model.variables();
  const index = params.map((p) => order.indexOf(p.variable));
  const opt = new AdamW(params, { beta1: o.beta1 ?? 0.9, beta2: o.beta2 ?? 0.98, eps: o.eps ?? 1e-6 });
  const lrAt = cosineSchedule({ base: o.lr, final: 0, totalSteps: o.steps, warmupSteps: Math.min(o.warmup ?? 0, o.steps) });
  const rng = new Rng(o.seed ?? 0);
  const W = sync.worldSize;
  const perEpoch = Math.floor(source.length / (W * o.batchSize));
  if (perEpoch < 1) throw new Error(`trainClip: ${source.length} pairs are fewer than one global batch of ${W * o.batchSize}`);
  let perm: number[] = [];
  const losses: number[] = [];
  try {
    for (let step = 0; step < o.steps; step++) {
      const k = step % perEpoch;
      if (k === 0) perm = shuffled(source.length, new Rng(o.seed ?? 0).fork(step / perEpoch + 1));
      const ids = perm.slice((k * W + sync.rank) * o.batchSize, (k * W + sync.rank + 1) * o.batchSize);
      const items = await Promise.all(ids.map((i) => source.get(i)));
      const images = new Float32Array(items.length * S * S * 3);
      items.forEach((it, b) =>
        normalized(randomResizedCrop(it.image, rng.fork(step * 100_003 + b), S, { scale: [0.9, 1] }), images, b * S * S * 3),
      );
      const tokens = tokenizer.tokenize(
        items.map((it) => it.caption),
        model.config.text.context_length,
      );
      const r = await clipStep(model, { images, ids: tokens, size: items.length, imageSize: S }, o.loss ?? 'clip', sync);
      const grads = index.map((i) => r.gradients[i]!);
      await sync.allReduce(grads);
      const lr = lrAt(step);
      const tensors = params.map((p, i) => tf.tensor(grads[i]!, p.variable.shape));
      opt.apply(tensors, { lr, wd: o.weightDecay ?? 0.2 });
      tf.dispose(tensors);
      model.clampLogitScale();
      losses.push(r.loss);
      o.onStep?.(step, r.loss, lr);
    }
  } finally {
    opt.dispose();
  }
  return losses;
}

/**
 * Zero-shot top-1 of `model` on labelled pairs of a source (CLIP's eval: the images as they are, at the
 * model's size): each class's prompts (`prompts(className)`) through the text tower, normalised, averaged,
 * normalised; the class of the largest cosine.
 */
export async function zeroShotTop1(
  model: ClipModel,
  tokenizer: ClipTokenizer,
  source: CaptionSource,
  classNames: readonly string[],
  prompts: (name: string) => string[],
): Promise<number> {
  const S = model.config.vision.img_size;
  const ctx = model.config.text.context_length;
  const classifier = tf.tidy(() =>
    tf.concat(
      classNames.map((c) => {
        const texts = prompts(c);
        return l2Normalize(tf.mean(l2Normalize(model.encodeText(tokenizer.tokenize(texts, ctx), texts.length)), 0, true) as tf.Tensor2D);
      }),
      0,
    ),
  );
  let right = 0;
  for (let start = 0; start < source.length; start += 32) {
    const n = Math.min(32, source.length - start);
    const items = await Promise.all(Array.from({ length: n }, (_, j) => source.get(start + j)));
    const images = new Float32Array(n * S * S * 3);
    items.forEach((it, b) => {
      if (it.image.width !== S || it.image.height !== S)
        throw new Error(`zeroShotTop1: image ${start + b} is ${it.image.width}x${it.image.height}, expected ${S}x${S}`);
      normalized(it.image, images, b * S * S * 3);
    });
    const pred = tf.tidy(() => {
      const f = l2Normalize(model.encodeImage(tf.tensor4d(images, [n, S, S, 3])));
      return tf.argMax(tf.matMul(f, classifier, false, true), 1);
    });
    const p = pred.dataSync();
    pred.dispose();
    items.forEach((it, b) => (right += p[b] === it.label ? 1 : 0));
  }
  classifier.dispose();
  return right / source.length;
}
