/**
 * The supervised step on tfjs (DeiT-III): the student's CLS through a linear head, soft-target
 * cross-entropy (or BCE on the binarised targets) against the batch's targets, split into
 * micro-batches when `train.micro_batch_size` is set (each part's loss weighted by its share).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { VisionTransformer } from '@vitreg/registers';
import type { SupervisedBatch } from '../batch.js';
import type { TrainConfig } from '../config.js';
import type { ClassifierHead } from '../heads.js';
import { binaryCrossEntropyLoss, softTargetCrossEntropy } from '../losses.js';
import type { LossFn, StepRecord } from './record.js';

export interface SupervisedModels {
  student: VisionTransformer;
  head: ClassifierHead;
}

/** The record of a supervised step on `batch` (see the module comment). */
export function supervisedStep(m: SupervisedModels, batch: SupervisedBatch, config: TrainConfig): StepRecord {
  const s = config.supervised;
  const B = batch.size;
  const S = batch.imageSize;
  const images = tf.tensor4d(batch.images, [B, S, S, 3]);
  const y = tf.tensor2d(batch.targets, [B, batch.numClasses]);
  const part = s.bce_loss ? 'loss_bce' : 'loss_ce';
  const mb = config.train.micro_batch_size > 0 ? Math.min(config.train.micro_batch_size, B) : B;
  const losses: LossFn[] = [];
  for (let start = 0; start < B; start += mb) {
    const n = Math.min(mb, B - start);
    losses.push(() => {
      const xi = n === B ? images : tf.slice(images, [start, 0, 0, 0], [n, -1, -1, -1]);
      const yi = n === B ? y : (tf.slice(y, [start, 0], [n, -1]) as tf.Tensor2D);
      const out = m.student.forward(xi, { training: true, rng: batch.dropPath.slice(start, start + n) });
      const logits = m.head.forward(out.cls);
      // Label smoothing is already in the targets (smoothOneHot / mixupCutmix).
      const perBatch = s.bce_loss ? binaryCrossEntropyLoss(logits, yi) : softTargetCrossEntropy(logits, yi);
      const loss = tf.mul(perBatch, n / B) as tf.Scalar;
      return { total: loss, parts: { [part]: loss } };
    });
  }
  return { losses, inputs: [images, y], means: [], metrics: {}, update: { teacherMomentum: null, centres: [] } };
}
