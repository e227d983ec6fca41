/**
 * LOST on a model: forward a batch, take the last block's keys (or values) of the patch tokens, run
 * LOST per image, and score the boxes against ground truth when there is some. `discoverBatch` drives a
 * tfjs VisionTransformer, `discoverEncoded` an Encoder of any engine (discover-run.ts runs it over a
 * dataset, resumably).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Box } from '@vitreg/core';
import { disposeOutput, outputTensors, type Encoder, type VisionTransformer } from '@vitreg/registers';
import { bestIou } from './corloc.js';
import { batchTensor, lostFeatures, type ModelInput } from './extract.js';
import { imageBatch } from './run.js';
import { affinity, lostFromAffinity, LOST_K_PATCHES, type LostResult } from './lost.js';

export type LostFeatureKind = 'keys' | 'values';

export interface DiscoverOptions {
  /** Keys (LOST's default, used by the paper for DINO / DINOv2) or values (DeiT-III, OpenCLIP). */
  features?: LostFeatureKind;
  kPatches?: number;
}

/** LOST on a batch of inputs of equal padded size; each box is clipped to its unpadded image. */
export function discoverBatch(model: VisionTransformer, inputs: ModelInput[], opts: DiscoverOptions = {}): LostResult[] {
  const which = opts.features ?? 'keys';
  const images = batchTensor(inputs, { model });
  const feats = tf.tidy(() => {
    const out = model.forward(images, which === 'keys' ? { keys: true } : { values: true });
    return { f: lostFeatures(out, which), grid: out.grid };
  });
  images.dispose();
  try {
    return inputs.map((inp, i) => {
      const a = tf.tidy(() => tf.squeeze(tf.slice(feats.f, [i, 0, 0], [1, -1, -1]), [0]) as tf.Tensor2D);
      const sim = affinity(a);
      a.dispose();
      return lostFromAffinity(sim, feats.grid, model.config.patch_size, {
        kPatches: opts.kPatches ?? LOST_K_PATCHES,
        imageSize: { width: inp.width, height: inp.height },
      });
    });
  } finally {
    feats.f.dispose();
  }
}

/**
 * discoverBatch on an Encoder of any engine: the encoder returns the last block's keys (or values), LOST
 * runs per image on tfjs. The inputs must have one padded size.
 */
export async function discoverEncoded(model: Encoder, inputs: ModelInput[], opts: DiscoverOptions = {}): Promise<LostResult[]> {
  const which = opts.features ?? 'keys';
  const encoded = await model.encode(imageBatch(inputs), which === 'keys' ? { keys: true } : { values: true });
  const out = outputTensors(encoded);
  const feats = lostFeatures(out, which);
  disposeOutput(out);
  try {
    return inputs.map((inp, i) => {
      const a = tf.tidy(() => tf.squeeze(tf.slice(feats, [i, 0, 0], [1, -1, -1]), [0]) as tf.Tensor2D);
      const sim = affinity(a);
      a.dispose();
      return lostFromAffinity(sim, encoded.grid, model.config.patch_size, {
        kPatches: opts.kPatches ?? LOST_K_PATCHES,
        imageSize: { width: inp.width, height: inp.height },
      });
    });
  } finally {
    feats.dispose();
  }
}

/** One line of results.jsonl. */
export interface DiscoveryRecord {
  image: string;
  /** Predicted box [x0, y0, x1, y1] in pixels of the model input. */
  box: Box;
  /** Seed patch [row, col]. */
  seed: [number, number];
  /** Model input size (unpadded) and patch grid. */
  width: number;
  height: number;
  grid: [number, number];
  /** With ground truth: the boxes in the model-input frame, the best IoU and whether it is >= 0.5. */
  gt?: Box[];
  iou?: number;
  hit?: boolean;
}

/** The record of one image; ground truth is scored when `input.boxes` is non-empty. */
export function discoveryRecord(image: string, input: ModelInput, r: LostResult, grid: [number, number]): DiscoveryRecord {
  const rec: DiscoveryRecord = { image, box: r.box, seed: r.seed, width: input.width, height: input.height, grid };
  if (input.boxes.length > 0) {
    const iou = bestIou(r.box, input.boxes);
    rec.gt = input.boxes.map((b) => b.map((v) => Math.round(v * 1000) / 1000) as Box);
    rec.iou = iou;
    rec.hit = iou >= 0.5;
  }
  return rec;
}
