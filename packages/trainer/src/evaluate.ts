/**
 * A run's evaluation, on any step engine (through its `encode` / `classify` / `teacherProbs` hooks):
 * images of the val split (and, self-supervised, `train.knn_train_size` training images) through the
 * eval transform at the training size (centre crop, `crops.eval_crop_ratio`), then
 * - supervised: the accuracy of the student's classifier on the val split;
 * - self-supervised: the k-NN accuracy of the teacher's CLS (DINO's weighted k-NN, knn.ts) and the
 *   teacher's collapse indicators (mean row entropy of its targets and entropy of their mean).
 * It reads no Rng and no sync: rank 0 alone runs it.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Dataset, DatasetItem } from '@vitreg/core';
import { evalTransform } from './augment.js';
import type { TrainConfig } from './config.js';
import type { TrainData } from './data.js';
import type { StepEngine } from './engine.js';
import { knnClassify } from './knn.js';
import { entropies } from './losses.js';

export interface EvalResult {
  step: number;
  num_classes: number;
  /** Supervised: accuracy of the classifier on the val split. */
  val_accuracy?: number;
  /** Self-supervised: k-NN accuracy of the teacher's CLS on the val split. */
  knn_accuracy?: number;
  /** Self-supervised: teacher collapse indicators on the val split (nats). */
  teacher_entropy?: number;
  teacher_batch_entropy?: number;
}

/** Images per forward pass of the evaluation. */
const EVAL_BATCH = 64;

async function loadItems(ds: Dataset, indices: number[]): Promise<DatasetItem[]> {
  return Promise.all(indices.map((i) => ds.get(i)));
}

/**
 * CLS features [n, D] of the first `count` items of `ds` through `model`, eval transform at the training
 * size; `onBatch` sees each batch's features and labels.
 */
async function features(
  engine: StepEngine,
  config: TrainConfig,
  dim: number,
  model: 'student' | 'teacher',
  ds: Dataset,
  count: number,
  onBatch?: (cls: Float32Array, labels: number[]) => Promise<void>,
): Promise<{ features: Float32Array; labels: number[] }> {
  const S = config.crops.global_crops_size;
  const n = Math.min(count, ds.length);
  const out = new Float32Array(n * dim);
  const labels: number[] = [];
  for (let start = 0; start < n; start += EVAL_BATCH) {
    const idx = Array.from({ length: Math.min(EVAL_BATCH, n - start) }, (_, i) => start + i);
    const items = await loadItems(ds, idx);
    const images = new Float32Array(items.length * S * S * 3);
    const transform = { cropRatio: config.crops.eval_crop_ratio, crop: S };
    items.forEach((it, i) => images.set(evalTransform(it.image, it.width, it.height, transform), i * S * S * 3));
    const cls = await engine.encode(model, images, items.length, S);
    out.set(cls, start * dim);
    const ys = items.map((it) => it.label);
    labels.push(...ys);
    await onBatch?.(cls, ys);
  }
  return { features: out, labels };
}

/** Val accuracy (supervised) or k-NN accuracy of the teacher's CLS (self-supervised) at step `step`; see the module comment. */
export async function evaluate(engine: StepEngine, config: TrainConfig, data: TrainData, dim: number, step: number): Promise<EvalResult> {
  const res: EvalResult = { step, num_classes: data.numClasses };
  if (config.objective === 'supervised') {
    let correct = 0;
    let total = 0;
    await features(engine, config, dim, 'student', data.val, data.val.length, async (cls, labels) => {
      const p = await engine.classify(cls, labels.length);
      labels.forEach((y, i) => {
        if (p[i] === y) correct++;
        total++;
      });
    });
    res.val_accuracy = correct / total;
    return res;
  }
  const bank = await features(engine, config, dim, 'teacher', data.train, config.train.knn_train_size);
  const probs: Float32Array[] = [];
  const val = await features(engine, config, dim, 'teacher', data.val, data.val.length, async (cls, labels) => {
    probs.push(await engine.teacherProbs(cls, labels.length));
  });
  const rows = (f: { features: Float32Array; labels: ArrayLike<number> }) => ({
    x: f.features,
    y: Int32Array.from(f.labels),
    n: f.labels.length,
    dim,
  });
  const t = config.train;
  res.knn_accuracy = knnClassify(rows(bank), rows(val), { numClasses: data.numClasses, k: t.knn_k, temperature: t.knn_temperature }).top1;
  const K = config.dino.head_n_prototypes;
  const all = new Float32Array(probs.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of probs) {
    all.set(p, off);
    off += p.length;
  }
  const allT = tf.tensor2d(all, [all.length / K, K]);
  const ent = entropies(allT);
  allT.dispose();
  res.teacher_entropy = ent.rows;
  res.teacher_batch_entropy = ent.batch;
  return res;
}
