/**
 * Zero-shot classification with a CLIP model, as open_clip's `build_zero_shot_classifier` and
 * `zero_shot_eval`: every class name in every template ("a photo of a {}."), tokenized, through the text
 * tower; per class the mean of the normalised text embeddings, normalised again; an image's logits are
 * 100 x the cosine of its normalised image embedding with each class embedding; top-1 and top-5 accuracy
 * (open_clip's `accuracy`: the label among the k largest logits).
 *
 * Images are preprocessed as CLIP's eval transform: shorter side resized to the input size (bicubic), centre
 * crop, normalised with OpenAI's CLIP mean and std (`CLIP_MEAN`, `CLIP_STD`), not ImageNet's.
 */
import * as tf from '@tensorflow/tfjs-core';
import { l2Normalize, type ClipModel, type ClipTokenizer } from '@vitreg/registers';

/** OpenAI CLIP's pixel mean and std (open_clip's OPENAI_DATASET_MEAN / _STD). */
export const CLIP_MEAN: readonly [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD: readonly [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

/** A template with its class name: Python's `template.format(name)` for templates with one `{}`. */
export function fillTemplate(template: string, name: string): string {
  const parts = template.split('{}');
  if (parts.length !== 2) throw new Error(`template ${JSON.stringify(template)}: expected exactly one "{}" where the class name goes`);
  return `${parts[0]!.replaceAll('{{', '{').replaceAll('}}', '}')}${name}${parts[1]!.replaceAll('{{', '{').replaceAll('}}', '}')}`;
}

/**
 * open_clip's `build_zero_shot_classifier`: [classes, embed] row-major, row c the normalised mean over
 * `templates` of the normalised text embeddings of template(c). `classesPerBatch` classes go through the text
 * tower at a time (open_clip's num_classes_per_batch, 10); the result does not depend on it.
 */
export function buildZeroShotClassifier(
  model: ClipModel,
  tokenizer: ClipTokenizer,
  classNames: readonly string[],
  templates: readonly string[],
  opts: { classesPerBatch?: number } = {},
): Float32Array {
  if (classNames.length === 0) throw new Error('zero-shot: no class names');
  if (templates.length === 0) throw new Error('zero-shot: no templates');
  const E = model.config.text.proj_dim ?? model.config.text.width;
  const T = templates.length;
  const per = opts.classesPerBatch ?? 10;
  const ctx = model.config.text.context_length;
  const out = new Float32Array(classNames.length * E);
  for (let start = 0; start < classNames.length; start += per) {
    const names = classNames.slice(start, start + per);
    const texts = names.flatMap((c) => templates.map((t) => fillTemplate(t, c)));
    const ids = tokenizer.tokenize(texts, ctx);
    const rows = tf.tidy(() => {
      const emb = l2Normalize(model.encodeText(ids, texts.length));
      const mean = tf.mean(tf.reshape(emb, [names.length, T, E]), 1) as tf.Tensor2D;
      return l2Normalize(mean);
    });
    out.set(rows.dataSync(), start * E);
    rows.dispose();
  }
  return out;
}

/** 100 x cosine logits [count, classes] of image features [count, E] (unnormalised) against a classifier [classes, E]. */
export function zeroShotLogits(imageFeatures: Float32Array, classifier: Float32Array, count: number, embed: number): Float32Array {
  const C = classifier.length / embed;
  const logits = tf.tidy(() => {
    const img = l2Normalize(tf.tensor2d(imageFeatures, [count, embed]));
    return tf.mul(100, tf.matMul(img, tf.tensor2d(classifier, [C, embed]), false, true));
  });
  const out = Float32Array.from(logits.dataSync());
  logits.dispose();
  return out;
}

/** Top-1 and top-5 accuracy of logits [count, classes] (open_clip's `accuracy`: the label among the k largest; ties by lower index). */
export function topKAccuracy(logits: Float32Array, labels: ArrayLike<number>, classes: number): { top1: number; top5: number } {
  const n = labels.length;
  if (logits.length !== n * classes) throw new Error(`zero-shot: ${logits.length} logits for ${n} images x ${classes} classes`);
  let top1 = 0;
  let top5 = 0;
  for (let i = 0; i < n; i++) {
    const row = logits.subarray(i * classes, (i + 1) * classes);
    const y = labels[i]!;
    // Rank of the label: classes strictly above it, and equal ones before it.
    let rank = 0;
    for (let c = 0; c < classes; c++) if (row[c]! > row[y]! || (row[c] === row[y] && c < y)) rank++;
    if (rank < 1) top1++;
    if (rank < 5) top5++;
  }
  return { top1: n > 0 ? top1 / n : 0, top5: n > 0 ? top5 / n : 0 };
}

export interface ZeroShotResult {
  top1: number;
  top5: number;
  /** Images evaluated, classes, templates. */
  count: number;
  classes: number;
  templates: number;
}

/**
 * Zero-shot accuracy of `model` on labelled image batches (normalised NHWC with CLIP_MEAN / CLIP_STD, each
 * `{ images, count, size, labels }`), with the classifier of `classNames` x `templates`.
 */
export async function zeroShotEval(
  model: ClipModel,
  tokenizer: ClipTokenizer,
  classNames: readonly string[],
  templates: readonly string[],
  batches:
    | AsyncIterable<{ images: Float32Array; count: number; size: number; labels: ArrayLike<number> }>
    | Iterable<{
        images: Float32Array;
        count: number;
        size: number;
        labels: ArrayLike<number>;
      }>,
): Promise<ZeroShotResult> {
  const E = model.config.vision.proj_dim!;
  const C = classNames.length;
  const classifier = buildZeroShotClassifier(model, tokenizer, classNames, templates);
  let n = 0;
  let top1 = 0;
  let top5 = 0;
  for await (const b of batches) {
    for (let i = 0; i < b.count; i++) {
      const y = b.labels[i]!;
      if (!(Number.isInteger(y) && y >= 0 && y < C)) throw new Error(`zero-shot: label ${y} is outside the ${C} class names`);
    }
    const x = tf.tensor4d(b.images, [b.count, b.size, b.size, 3]);
    const feats = model.encodeImage(x);
    const host = Float32Array.from(await feats.data());
    tf.dispose([x, feats]);
    const acc = topKAccuracy(zeroShotLogits(host, classifier, b.count, E), b.labels, C);
    top1 += acc.top1 * b.count;
    top5 += acc.top5 * b.count;
    n += b.count;
  }
  return { top1: n ? top1 / n : 0, top5: n ? top5 / n : 0, count: n, classes: C, templates: templates.length };
}

/** Class names or templates from a text file: one per line, blank lines and `#` comments skipped. */
export function parseLines(text: string, file: string, what: string): string[] {
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  if (lines.length === 0) throw new Error(`${file}: no ${what} (one per line)`);
  return lines;
}
