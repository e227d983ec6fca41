/**
 * The text-supervised (CLIP / SigLIP) step on tfjs for a @vitreg/registers ClipModel, one rank's share of a
 * data-parallel batch, as open_clip's training computes it with `--local-loss --gather-with-grad`:
 *   1. both towers' normalised features of this rank's images and token ids, without a gradient tape;
 *   2. `contrastiveStep` (clip-loss.ts): the features of every rank gathered, this rank's loss, and the
 *      gradients on this rank's features summed over every rank's loss (all_gather's backward);
 *   3. the towers' forward again under the tape, back-propagating those feature gradients (the gradient of
 *      sum(features x feature gradients)); logit_scale and logit_bias take the loss's own gradients.
 * The towers run twice (as GradCache does) because the feature gradients need every rank's features, which
 * arrive through an asynchronous collective that a tfjs gradient tape cannot wait for. Drop path draws the
 * same factors in both passes (one Rng state per pass, copied). The returned gradients are this rank's;
 * their mean over the ranks (the loop's allReduce) is the gradient of the mean loss, as DDP's.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { l2Normalize, type ClipModel } from '@vitreg/registers';
import { contrastiveStep, type ContrastiveLoss } from '../clip-loss.js';
import type { GradientSync } from '../sync.js';

export interface ClipBatch {
  /** Normalised NHWC images [size, imageSize, imageSize, 3]. */
  images: Float32Array;
  size: number;
  imageSize: number;
  /** Token ids [size, L] row-major (the tokenizer's rows). */
  ids: Int32Array;
  /** Drop-path random state of the image tower (a seed); the same draws in both passes. */
  dropPathSeed?: number;
}

export interface ClipStepResult {
  /** This rank's loss. */
  loss: number;
  /** d loss / d each of `model.variables()`, in that order (zeros where none reached). */
  gradients: Float32Array[];
}

/** Both towers' normalised features of a batch (training mode: drop path from `seed`). */
function features(model: ClipModel, batch: ClipBatch): { img: tf.Tensor2D; txt: tf.Tensor2D } {
  const S = batch.imageSize;
  const x = tf.tensor4d(batch.images, [batch.size, S, S, 3]);
  const rng = batch.dropPathSeed === undefined ? undefined : new Rng(batch.dropPathSeed);
  const img = l2Normalize(model.encodeImage(x, { training: true, rng }));
  const txt = l2Normalize(model.encodeText(batch.ids, batch.size));
  x.dispose();
  return { img, txt };
}

/** One rank's loss and gradients of a CLIP (`kind` 'clip') or SigLIP ('siglip') step (see the module comment). */
export async function clipStep(model: ClipModel, batch: ClipBatch, kind: ContrastiveLoss, sync: GradientSync): Promise<ClipStepResult> {
  if (kind === 'siglip' && !model.logitBias) throw new Error('clip step: the SigLIP loss needs a model with logit_bias (init_logit_bias)');
  const E = model.config.vision.proj_dim!;
  const first = tf.tidy(() => features(model, batch));
  const img = Float32Array.from(await first.img.data());
  const txt = Float32Array.from(await first.txt.data());
  tf.dispose([first.img, first.txt]);
  const logScale = (await model.logitScale.data())[0]!;
  const bias = model.logitBias ? (await model.logitBias.data())[0]! : 0;
  const c = await contrastiveStep(kind, img, txt, E, logScale, bias, sync);
  const towers = [...model.visual.variables(), ...model.text.variables()].filter((v) => v.trainable);
  const gImg = tf.tensor2d(c.gradImage, [batch.size, E]);
  const gTxt = tf.tensor2d(c.gradText, [batch.size, E]);
  const { grads, value } = tf.variableGrads(() => {
    const f = features(model, batch);
    return tf.add(tf.sum(tf.mul(f.img, gImg)), tf.sum(tf.mul(f.txt, gTxt))) as tf.Scalar;
  }, towers);
  const gradients = model.variables().map((v) => {
    if (v === model.logitScale) return Float32Array.of(c.gradLogScale);
    if (v === model.logitBias) return Float32Array.of(c.gradBias);
    const g = grads[v.name];
    return g ? Float32Array.from(g.dataSync()) : new Float32Array(v.size);
  });
  tf.dispose([gImg, gTxt, value, ...Object.values(grads)]);
  return { loss: c.loss, gradients };
}
