/**
 * The contrastive losses of text-supervised training, as open_clip's `loss.py` computes them on each rank:
 * - `ClipLoss(local_loss=True, gather_with_grad=True)`: this rank's B image and text features against every
 *   rank's (W B of each), labels rank B + i, (CE(logits_per_image) + CE(logits_per_text)) / 2. Memory stays
 *   linear in the global batch (B x W B logits per rank); the mean over the ranks equals the loss of the full
 *   W B x W B matrix on one rank.
 * - `SigLipLoss`: -sum(log sigmoid(label (scale img . txt + bias))) / B over this rank's images and every
 *   rank's texts, label +1 for the image's own caption and -1 for every other (open_clip exchanges the text
 *   features with its neighbours, with gradients; gathering them all computes the same).
 * Both take exp(logit_scale) as open_clip's training loop passes it.
 *
 * Across ranks, `contrastiveStep` gathers the features through `GradientSync.allReduce` (each rank's features
 * in its own slot of a zero buffer: the mean times W is the concatenation; GradientSync has no all-gather) and
 * gives back the gradients PyTorch leaves on this rank's features with gather_with_grad: this rank's own
 * loss's, plus the sum over the ranks of every loss's gradient through the gathered copies (the backward of
 * all_gather is a reduce-scatter of the sum; here one more allReduce of the gathered copies' gradients). The
 * step then back-propagates those feature gradients into the towers (steps/clip.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { GradientSync } from './sync.js';

export type ContrastiveLoss = 'clip' | 'siglip';

/** One-hot labels [B, N] at column offset + i of row i. */
function diagonal(B: number, N: number, offset: number): tf.Tensor2D {
  const m = new Float32Array(B * N);
  for (let i = 0; i < B; i++) m[i * N + offset + i] = 1;
  return tf.tensor2d(m, [B, N]);
}

/** Mean over rows of the cross-entropy of logits [B, N] against one-hot rows (no gather kernel: its gradient is missing on wasm). */
function crossEntropy(logits: tf.Tensor2D, onehot: tf.Tensor2D): tf.Scalar {
  return tf.neg(tf.mean(tf.sum(tf.mul(tf.logSoftmax(logits), onehot), 1))) as tf.Scalar;
}

/**
 * open_clip's ClipLoss on rank `rank` (local_loss, gather_with_grad): `img`, `txt` [B, E] this rank's
 * normalised features, `allImg`, `allTxt` [W B, E] every rank's in rank order, `scale` = exp(logit_scale).
 */
export function clipLoss(
  img: tf.Tensor2D,
  txt: tf.Tensor2D,
  allImg: tf.Tensor2D,
  allTxt: tf.Tensor2D,
  scale: tf.Scalar,
  rank: number,
): tf.Scalar {
  return tf.tidy(() => {
    const B = img.shape[0];
    const labels = diagonal(B, allTxt.shape[0], rank * B);
    const perImage = tf.mul(scale, tf.matMul(img, allTxt, false, true)) as tf.Tensor2D;
    const perText = tf.mul(scale, tf.matMul(txt, allImg, false, true)) as tf.Tensor2D;
    return tf.div(tf.add(crossEntropy(perImage, labels), crossEntropy(perText, labels)), 2) as tf.Scalar;
  });
}

/**
 * open_clip's SigLipLoss on rank `rank`: `img` [B, E] this rank's normalised image features, `allTxt` [W B, E]
 * every rank's text features, `scale` = exp(logit_scale), `bias` logit_bias.
 */
export function sigLipLoss(img: tf.Tensor2D, allTxt: tf.Tensor2D, scale: tf.Scalar, bias: tf.Scalar, rank: number): tf.Scalar {
  return tf.tidy(() => {
    const B = img.shape[0];
    const signs = tf.sub(tf.mul(diagonal(B, allTxt.shape[0], rank * B), 2), 1);
    const logits = tf.add(tf.mul(scale, tf.matMul(img, allTxt, false, true)), bias);
    // -log sigmoid(z) = softplus(-z) (tf.logSigmoid's custom gradient loses its saved input inside a tidy).
    return tf.div(tf.sum(tf.softplus(tf.neg(tf.mul(signs, logits)))), B) as tf.Scalar;
  });
}

/** Every rank's `local` values in rank order, through allReduce (each rank's values in its slot of zeros; mean x W). */
export async function allGather(sync: GradientSync, local: Float32Array): Promise<Float32Array> {
  const W = sync.worldSize;
  if (W === 1) return Float32Array.from(local);
  const buf = new Float32Array(W * local.length);
  buf.set(local, sync.rank * local.length);
  await sync.allReduce([buf]);
  for (let i = 0; i < buf.length; i++) buf[i]! *= W;
  return buf;
}

export interface ContrastiveStep {
  /** This rank's loss. */
  loss: number;
  /** d (sum of every rank's loss) / d this rank's image features [B, E] (what gather_with_grad leaves on them). */
  gradImage: Float32Array;
  /** The same for the text features. */
  gradText: Float32Array;
  /** d this rank's loss / d logit_scale (the log; DDP then averages it over the ranks). */
  gradLogScale: number;
  /** d this rank's loss / d logit_bias (SigLIP; 0 for CLIP). */
  gradBias: number;
}

/**
 * The loss and feature gradients of one rank (see the module comment): `img`, `txt` [B, E] this rank's
 * normalised features on the host, `logScale` the logit_scale parameter (the loss sees its exp), `bias` the
 * logit_bias (SigLIP). Two collectives, in the same order on every rank: the gather, then the sum of the
 * gathered copies' gradients. Every rank must have the same B.
 */
export async function contrastiveStep(
  kind: ContrastiveLoss,
  img: Float32Array,
  txt: Float32Array,
  dim: number,
  logScale: number,
  bias: number,
  sync: GradientSync,
): Promise<ContrastiveStep> {
  const B = img.length / dim;
  if (!Number.isInteger(B) || txt.length !== img.length)
    throw new Error(`contrastive loss: ${img.length} image and ${txt.length} text values for dim ${dim}`);
  const W = sync.worldSize;
  const r = sync.rank;
  const all = await allGather(sync, concat(img, txt));
  const allImg = new Float32Array(W * B * dim);
  const allTxt = new Float32Array(W * B * dim);
  for (let k = 0; k < W; k++) {
    allImg.set(all.subarray(2 * k * B * dim, (2 * k + 1) * B * dim), k * B * dim);
    allTxt.set(all.subarray((2 * k + 1) * B * dim, (2 * k + 2) * B * dim), k * B * dim);
  }
  const inputs = [
    tf.tensor2d(img, [B, dim]),
    tf.tensor2d(txt, [B, dim]),
    tf.tensor2d(allImg, [W * B, dim]),
    tf.tensor2d(allTxt, [W * B, dim]),
    tf.scalar(logScale),
    tf.scalar(bias),
  ] as const;
  // tf.valueAndGrads needs every input reached: the ones a loss does not read enter times 0.
  const unused = (...ts: tf.Tensor[]) => tf.mul(0, tf.addN(ts.map((t) => tf.sum(t))));
  const f = (i: tf.Tensor, t: tf.Tensor, ai: tf.Tensor, at: tf.Tensor, s: tf.Tensor, b: tf.Tensor) =>
    kind === 'clip'
      ? tf.add(clipLoss(i as tf.Tensor2D, t as tf.Tensor2D, ai as tf.Tensor2D, at as tf.Tensor2D, tf.exp(s) as tf.Scalar, r), unused(b))
      : tf.add(sigLipLoss(i as tf.Tensor2D, at as tf.Tensor2D, tf.exp(s) as tf.Scalar, b as tf.Scalar, r), unused(t, ai));
  const { value, grads } = tf.valueAndGrads(f as (...args: tf.Tensor[]) => tf.Scalar)([...inputs]);
  const host = grads.map((g) => Float32Array.from(g.dataSync()));
  const loss = value.dataSync()[0]!;
  tf.dispose([...inputs, value, ...grads]);
  // Gradients through the gathered copies, summed over the ranks (all_gather's backward): this rank's slot.
  const through = concat(host[2]!, host[3]!);
  await sync.allReduce([through]);
  const gradImage = host[0]!;
  const gradText = host[1]!;
  for (let j = 0; j < B * dim; j++) {
    gradImage[j]! += W * through[r * B * dim + j]!;
    gradText[j]! += W * through[W * B * dim + r * B * dim + j]!;
  }
  return { loss, gradImage, gradText, gradLogScale: host[4]![0]!, gradBias: kind === 'siglip' ? host[5]![0]! : 0 };
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
