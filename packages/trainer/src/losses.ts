/**
 * Training objectives as pure tensor functions, with the formulas of DINOv2's `DINOLoss`,
 * `iBOTPatchLoss.forward_masked` and `KoLeoLoss`, plus a soft-target cross-entropy for
 * supervised training (label smoothing, mixup/cutmix targets).
 */
import * as tf from '@tensorflow/tfjs-core';

/**
 * Cross-entropy against soft targets [B, C] (one-hot labels or mixup/cutmix mixtures), with label
 * smoothing: targets <- targets (1 - s) + s / C; loss = mean over the batch of -sum(t log softmax(z)).
 */
export function softTargetCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor2D, labelSmoothing = 0): tf.Scalar {
  return tf.tidy(() => {
    const c = logits.shape[1];
    const t = labelSmoothing > 0 ? tf.add(tf.mul(targets, 1 - labelSmoothing), labelSmoothing / c) : targets;
    return tf.neg(tf.mean(tf.sum(tf.mul(tf.logSoftmax(logits), t), 1))) as tf.Scalar;
  });
}

/** One-hot targets [B, C] from integer labels. */
export function oneHotTargets(labels: ArrayLike<number>, numClasses: number): tf.Tensor2D {
  return tf.tidy(() => tf.cast(tf.oneHot(tf.tensor1d(Array.from(labels), 'int32'), numClasses), 'float32') as tf.Tensor2D);
}

/** Teacher centering and sharpening: softmax((teacher - center) / temperature) along the last axis. */
export function teacherSoftmaxCenter(teacher: tf.Tensor, center: tf.Tensor, temperature: number): tf.Tensor {
  return tf.tidy(() => tf.softmax(tf.div(tf.sub(teacher, center), temperature)));
}

/**
 * DINOLoss.forward: -sum over student outputs s and teacher probabilities t of
 * mean_rows(sum(t * log_softmax(s / studentTemp))). Every pair is taken; the caller leaves out the
 * same-view pairs (see `dinoGlobalLocalLoss`).
 */
export function dinoCrossEntropy(students: tf.Tensor2D[], teachers: tf.Tensor2D[], studentTemp: number): tf.Scalar {
  return tf.tidy(() => {
    let total: tf.Tensor = tf.scalar(0);
    for (const s of students) {
      const lsm = tf.logSoftmax(tf.div(s, studentTemp));
      for (const t of teachers) total = tf.sub(total, tf.mean(tf.sum(tf.mul(t, lsm), -1)));
    }
    return total as tf.Scalar;
  });
}

/**
 * The DINO terms of DINOv2's SSLMetaArch for 2 global crops. `studentGlobal` [2B, K] holds the
 * student's head outputs for global crop 1 then 2; `teacherProbs` [2B, K] the centred, sharpened
 * teacher outputs in SWAPPED order (crop 2 then crop 1) so that row i pairs the two different
 * views; `studentLocal` the head outputs of each local crop [B, K]. Both terms are divided by the
 * number of pairs (2 global-global + 2 * nLocal local-global).
 */
export function dinoGlobalLocalLoss(
  studentGlobal: tf.Tensor2D,
  teacherProbs: tf.Tensor2D,
  studentLocal: tf.Tensor2D[],
  studentTemp: number,
): { global: tf.Scalar; local: tf.Scalar } {
  if (teacherProbs.shape[0] % 2 !== 0) {
    throw new Error(`dinoGlobalLocalLoss: teacher rows (${teacherProbs.shape[0]}) must be even (2 global crops)`);
  }
  return tf.tidy(() => {
    const terms = 2 + Math.max(studentLocal.length * 2, 1);
    // Each local crop is compared with both global views (order is irrelevant: all pairs are summed).
    const teacherViews = tf.split(teacherProbs, 2, 0) as tf.Tensor2D[];
    const local = studentLocal.length > 0 ? tf.div(dinoCrossEntropy(studentLocal, teacherViews, studentTemp), terms) : tf.scalar(0);
    const global = tf.div(tf.mul(dinoCrossEntropy([studentGlobal], [teacherProbs], studentTemp), 2), terms);
    return { global: global as tf.Scalar, local: local as tf.Scalar };
  });
}

/**
 * iBOTPatchLoss.forward_masked: student head outputs of the masked patches [M, K], teacher
 * probabilities of the same patches [M, K], weights [M] (1 / number of masked patches of the
 * patch's image): -sum(w * sum(t * log_softmax(s / temp))) / nImages.
 */
export function ibotMaskedLoss(
  student: tf.Tensor2D,
  teacherProbs: tf.Tensor2D,
  weights: tf.Tensor1D,
  nImages: number,
  studentTemp: number,
): tf.Scalar {
  return tf.tidy(() => {
    const perPatch = tf.sum(tf.mul(teacherProbs, tf.logSoftmax(tf.div(student, studentTemp))), -1);
    return tf.div(tf.neg(tf.sum(tf.mul(perPatch, weights))), nImages) as tf.Scalar;
  });
}

/**
 * KoLeo regulariser (Sablayrolles et al. 2018) on a batch of vectors [B, D]: L2-normalise, find
 * each row's nearest other row by inner product, loss = -mean(log(||x_i - x_nn(i) + eps|| + eps)).
 * The neighbour is picked by a one-hot matrix product so the gradient needs no gather.
 */
export function koleoLoss(x: tf.Tensor2D, eps = 1e-8): tf.Scalar {
  return tf.tidy(() => {
    const n = x.shape[0];
    if (n < 2) throw new Error(`koleoLoss: expected at least 2 rows, got ${n}`);
    const xn = tf.div(x, tf.maximum(tf.norm(x, 'euclidean', 1, true), eps)) as tf.Tensor2D;
    const nearest = tf.tidy(() => {
      const dots = tf.matMul(xn, xn, false, true);
      const eye = tf.eye(n);
      // Diagonal filled with -1 as DINOv2 does.
      const masked = tf.sub(tf.mul(dots, tf.sub(1, eye)), eye);
      return tf.cast(tf.oneHot(tf.argMax(masked, 1), n), 'float32');
    });
    const neighbours = tf.matMul(nearest, xn);
    const dist = tf.sqrt(tf.sum(tf.square(tf.add(tf.sub(xn, neighbours), eps)), 1));
    return tf.neg(tf.mean(tf.log(tf.add(dist, eps)))) as tf.Scalar;
  });
}

/**
 * One rank's part of a centre's update, all-reduced with the gradients: the mean of its rows [N, dim]
 * followed by 1, or, for a rank without rows (no masked patch for the iBOT centre), dim zeros followed by
 * 0. Every rank sends the same length whatever it masked, and `Center.updateFromRanks` divides the
 * averaged means by the averaged share: the mean over the ranks that had rows.
 */
export function rankMean(rows: tf.Tensor2D | null | undefined, dim: number): tf.Tensor1D {
  return tf.tidy(() =>
    rows && rows.shape[0] > 0 ? (tf.concat([tf.mean(rows, 0), tf.ones([1])]) as tf.Tensor1D) : (tf.zeros([dim + 1]) as tf.Tensor1D),
  );
}

/**
 * Exponential moving average of the teacher's outputs (DINOv2 centering): after each step
 * center <- center * m + batchMean * (1 - m). Kept on the host so it checkpoints as is.
 */
export class Center {
  value: Float32Array;

  constructor(
    readonly dim: number,
    readonly momentum = 0.9,
  ) {
    this.value = new Float32Array(dim);
  }

  tensor(): tf.Tensor1D {
    return tf.tensor1d(this.value);
  }

  /**
   * Folds in `rankMean`s averaged over the ranks: the mean over the ranks that had rows (the last value is
   * their share), nothing when no rank had any.
   */
  updateFromRanks(averaged: Float32Array): void {
    if (averaged.length !== this.dim + 1) {
      throw new Error(`Center.updateFromRanks: expected ${this.dim} values and a share, got ${averaged.length} values`);
    }
    const share = averaged[this.dim]!;
    if (share === 0) return;
    this.update(averaged.subarray(0, this.dim).map((v) => v / share));
  }

  /** Fold in the batch mean of the teacher outputs (already averaged over replicas). */
  update(batchMean: Float32Array): void {
    if (batchMean.length !== this.dim) throw new Error(`Center.update: expected ${this.dim} values, got ${batchMean.length}`);
    const m = this.momentum;
    const next = new Float32Array(this.dim);
    for (let i = 0; i < this.dim; i++) next[i] = Math.fround(this.value[i]! * m) + Math.fround(batchMean[i]! * (1 - m));
    this.value = next;
  }
}

/**
 * DeiT-III's `--bce-loss` targets (deit/engine.py): `targets.gt(0.0)` as floats, so that every class
 * with a positive weight in a mixup/cutmix mixture becomes a positive label (1) and the rest 0.
 * With label smoothing > 0 every off value is positive too, so every target becomes 1: the DeiT-III
 * ImageNet-1k recipe uses --smoothing 0.0 with --bce-loss.
 */
export function binaryCrossEntropyTargets(targets: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => tf.cast(tf.greater(targets, 0), 'float32') as tf.Tensor2D);
}

/**
 * torch.nn.BCEWithLogitsLoss() (reduction 'mean'): the mean over all B x C elements of
 * max(z, 0) - z t + log(1 + exp(-|z|)), the stable form of -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))).
 */
export function bceWithLogits(logits: tf.Tensor2D, targets: tf.Tensor2D): tf.Scalar {
  if (logits.shape.join() !== targets.shape.join()) {
    throw new Error(`bceWithLogits: logits [${logits.shape}] and targets [${targets.shape}] must have the same shape`);
  }
  return tf.tidy(
    () => tf.mean(tf.add(tf.sub(tf.relu(logits), tf.mul(logits, targets)), tf.log1p(tf.exp(tf.neg(tf.abs(logits)))))) as tf.Scalar,
  );
}

/**
 * DeiT-III's classification loss with `--bce-loss` (deit/engine.py + main.py): the mixup/cutmix
 * targets [B, C] binarised by `binaryCrossEntropyTargets`, then `bceWithLogits` (BCEWithLogitsLoss, mean).
 */
export function binaryCrossEntropyLoss(logits: tf.Tensor2D, softTargets: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => bceWithLogits(logits, binaryCrossEntropyTargets(softTargets)));
}

/**
 * Collapse indicators of probabilities p [N, K] (nats): the mean entropy of the rows (0 when each row
 * is one-hot) and the entropy of their mean (0 when every row picks the same prototype; ln K at best).
 */
export function entropies(p: tf.Tensor2D): { rows: number; batch: number } {
  const [rows, batch] = tf.tidy(() => {
    const h = (q: tf.Tensor) => tf.neg(tf.sum(tf.mul(q, tf.log(tf.add(q, 1e-12))), -1));
    return [tf.mean(h(p)), h(tf.mean(p, 0))];
  });
  const out = { rows: rows!.dataSync()[0]!, batch: batch!.dataSync()[0]! };
  rows!.dispose();
  batch!.dispose();
  return out;
}
