/**
 * Sinkhorn-Knopp centering of the teacher's outputs (DINOv2's `sinkhorn_knopp_teacher` of
 * dinov2/loss/dino_clstoken_loss.py and ibot_patch_loss.py), the `train.centering: sinkhorn_knopp` of
 * the ViT-L/g training configs. The softmax centering (an EMA centre) is `teacherSoftmaxCenter` and
 * `Center` in losses.ts.
 *
 * With Q = exp(logits / temperature)^T (K prototypes x N rows), over every rank's rows:
 *   Q /= sum(Q);  repeat n times { Q /= rowSums(Q) (all ranks); Q /= K; Q /= colSums(Q); Q /= N };  Q *= N
 * and the result is Q^T: each row sums to 1 and every prototype gets the same total weight. The sums over
 * ranks are collectives of the training's GradientSync, so each rank's targets equal those of one process
 * holding every rank's rows.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { GradientSync } from './sync.js';

/** Sums each tensor over the ranks (in order, bit-identical on every rank), as new tensors. */
export type ReduceSum = (tensors: tf.Tensor[]) => Promise<tf.Tensor[]>;

/**
 * A ReduceSum from a GradientSync: each tensor's values go to the host, through the sync's in-place
 * all-reduce (a mean), and come back as new tensors times the world size.
 */
export function reduceSumOf(sync: GradientSync): ReduceSum {
  return async (tensors) => {
    if (sync.worldSize === 1) return tensors.map((t) => tf.clone(t));
    const buffers = tensors.map((t) => Float32Array.from(t.dataSync()));
    await sync.allReduce(buffers);
    return buffers.map((b, i) => tf.tidy(() => tf.mul(tf.tensor(b, tensors[i]!.shape, 'float32'), sync.worldSize)));
  };
}

export interface SinkhornInput {
  /** Teacher head outputs [N, K] of this rank (N may be 0 on some ranks, e.g. no masked patches). */
  logits: tf.Tensor2D;
  temperature: number;
}

/**
 * Sinkhorn-Knopp targets [N, K] for several teacher outputs at once (the DINO CLS outputs and the iBOT
 * patch outputs share each collective). The number of columns N of the official formula is the total
 * over the ranks: for DINO the official code uses rows x world size (every rank has the same count), for
 * iBOT it all-reduces the masked-patch count; both are the summed row count here. An input whose rows
 * total 0 over all ranks gives an empty [0, K] result.
 */
export async function sinkhornKnopp(inputs: SinkhornInput[], reduceSum: ReduceSum, iterations = 3): Promise<tf.Tensor2D[]> {
  if (!Number.isInteger(iterations) || iterations < 1)
    throw new Error(`sinkhornKnopp: iterations must be a positive integer, got ${iterations}`);
  const K = inputs.map((x) => x.logits.shape[1]);
  // Q: K x N per input, float32 as the official code casts.
  let qs = inputs.map((x) => tf.tidy(() => tf.transpose(tf.exp(tf.div(tf.cast(x.logits, 'float32'), x.temperature)))) as tf.Tensor2D);
  const owned: tf.Tensor[] = [];
  try {
    const first = await reduceAndDispose(
      reduceSum,
      qs.flatMap((q) => [tf.sum(q), tf.scalar(q.shape[1])]),
    );
    owned.push(...first);
    const sums = inputs.map((_, i) => first[2 * i]!.dataSync()[0]!);
    const counts = inputs.map((_, i) => first[2 * i + 1]!.dataSync()[0]!);
    // An input with no rows on any rank needs no case of its own: its [K, 0] Q stays empty through every
    // division (no element is ever 0 / 0) and the result is [0, K].
    qs = qs.map((q, i) => swap(q, tf.div(q, sums[i]!)));
    for (let it = 0; it < iterations; it++) {
      const rows = await reduceAndDispose(
        reduceSum,
        qs.map((q) => tf.sum(q, 1, true)),
      );
      owned.push(...rows);
      qs = qs.map((q, i) =>
        swap(
          q,
          tf.tidy(() => {
            const byRow = tf.div(tf.div(q, rows[i]!), K[i]!);
            return tf.div(tf.div(byRow, tf.sum(byRow, 0, true)), counts[i]!);
          }),
        ),
      );
    }
    return qs.map((q, i) => tf.tidy(() => tf.transpose(tf.mul(q, counts[i]!))) as tf.Tensor2D);
  } finally {
    tf.dispose([...qs, ...owned]);
  }
}

/** reduceSum of new tensors, which are disposed after (the results are new tensors). */
async function reduceAndDispose(reduceSum: ReduceSum, tensors: tf.Tensor[]): Promise<tf.Tensor[]> {
  try {
    return await reduceSum(tensors);
  } finally {
    tf.dispose(tensors);
  }
}

/** Disposes `old` and returns `next` (a step of an in-place update). */
function swap<T extends tf.Tensor>(old: tf.Tensor, next: T): T {
  old.dispose();
  return next;
}
