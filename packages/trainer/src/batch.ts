/**
 * Host-side preparation of one rank's batch, the same whatever step engine computes the step:
 *   sampler refs -> dataset items -> augmentation (supervised: DeiT-III's recipe, then mixup / cutmix
 *   or label smoothing; DINO: DINOv2's multi-crop, then the iBOT masks) -> plain Float32Arrays (NHWC
 *   images, soft targets, masks) and each image's drop-path generator.
 *
 * Randomness never depends on which rank handles an image: each image's augmentation and drop path
 * are drawn from (seed, epoch, image index, copy under repeated augmentation), batch-level draws
 * (mixup / cutmix, iBOT masks) from (seed, step, rank). So a checkpoint needs no generator state.
 */
import { Rng, type DatasetItem, type SampleRef } from '@vitreg/core';
import { multiCrop, supervisedAugment } from './augment.js';
import { modelConfig, type TrainConfig } from './config.js';
import { collateMasks, MaskingGenerator, type MaskBatch } from './masking.js';
import { mixupCutmix, smoothOneHot } from './mixup.js';

/** Rng streams derived from train.seed: per image (augment, dropPath) or per step and rank (mix, masks). */
export const STREAMS = { init: 1, augment: 2, mix: 3, masks: 4, dropPath: 5 } as const;

/** One rank's supervised batch. */
export interface SupervisedBatch {
  objective: 'supervised';
  /** Images in the batch (B). */
  size: number;
  /** Side of the square images (crops.global_crops_size). */
  imageSize: number;
  /** [B, imageSize, imageSize, 3] NHWC float32, normalised; mixed when mixup / cutmix is on. */
  images: Float32Array;
  /** Soft targets [B, numClasses] (label smoothing and mixing applied; each row sums to 1). */
  targets: Float32Array;
  numClasses: number;
  /** Per image: the generator of its drop path in the student's forward pass. */
  dropPath: Rng[];
  /** Batch-level values for the step's metrics (`mix_lambda` when mixing). */
  metrics: Record<string, number>;
}

/** One rank's DINO batch: 2 global crops and `localCrops` local crops per image, iBOT masks. */
export interface DinoBatch {
  objective: 'dino';
  /** Images in the batch (B). */
  size: number;
  globalSize: number;
  localSize: number;
  localCrops: number;
  /** [2B, globalSize, globalSize, 3]: global crop 0 of every image, then crop 1 (DINOv2's collate order). */
  globals: Float32Array;
  /** [localCrops x B, localSize, localSize, 3]: local crop k of every image, then crop k + 1; null without local crops. */
  locals: Float32Array | null;
  /**
   * iBOT masks of the 2B global crops (`masks` [2B x patches] with 1 = masked, the masked patches' flat
   * indices and weights 1 / masked patches of their crop); null when iBOT is off. `indices` may be empty.
   */
  masks: MaskBatch | null;
  /**
   * Per image: the generator of its drop path. Crop k of image i draws from `dropPath[i].fork(k)`: global
   * crops k = 0, 1, local crops k = 2 ... 1 + localCrops.
   */
  dropPath: Rng[];
  /** Batch-level values for the step's metrics (`masked_patches`). */
  metrics: Record<string, number>;
}

export type PreparedBatch = SupervisedBatch | DinoBatch;

/** The generator of a run's initial weights (engines draw the student and heads from it). */
export function initRng(config: TrainConfig): Rng {
  return new Rng(config.train.seed).fork(STREAMS.init);
}

/** The images of `arrays` (each one image's values) one after the other. */
function concat(arrays: Float32Array[]): Float32Array {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let off = 0;
  for (const a of arrays) {
    out.set(a, off);
    off += a.length;
  }
  return out;
}

/** Turns a rank's items into a PreparedBatch (see the module comment). */
export class BatchPreparer {
  private readonly root: Rng;
  private readonly maskGen?: MaskingGenerator;

  constructor(
    readonly config: TrainConfig,
    readonly numClasses: number,
  ) {
    this.root = new Rng(config.train.seed);
    if (config.objective === 'dino' && config.ibot.loss_weight > 0) {
      const size = config.crops.global_crops_size;
      const patch = modelConfig(config).patch_size;
      const grid = size / patch;
      // DINOv2's train.py: max_num_patches=0.5 * img_size // patch_size * img_size // patch_size, floored
      // left to right (half the grid when it is even; 666 rather than 684.5 for 37 x 37 at 518 px).
      const maxNumPatches = Math.floor((Math.floor((0.5 * size) / patch) * size) / patch);
      this.maskGen = new MaskingGenerator(grid, grid, { maxNumPatches });
    }
  }

  /** The generator of one image's draws of `stream` (augmentation, drop path): the same on any rank. */
  imageRng(stream: number, ref: SampleRef): Rng {
    const base = this.root.fork(stream).fork(ref.epoch).fork(ref.index);
    return ref.repeat === undefined ? base : base.fork(ref.repeat);
  }

  /** The generator of rank `rank`'s batch-level draws of `stream` (mixup, masks) at `step`. */
  stepRng(stream: number, step: number, rank: number): Rng {
    return this.root.fork(stream).fork(step).fork(rank);
  }

  /** The batch of step `step` on rank `rank`: `items[i]` is the image of `refs[i]`. */
  prepare(items: DatasetItem[], refs: SampleRef[], step: number, rank: number): PreparedBatch {
    if (items.length !== refs.length) throw new Error(`batch: ${items.length} items for ${refs.length} sampler refs`);
    const augment = refs.map((r) => this.imageRng(STREAMS.augment, r));
    const dropPath = refs.map((r) => this.imageRng(STREAMS.dropPath, r));
    return this.config.objective === 'supervised'
      ? this.supervised(items, augment, dropPath, step, rank)
      : this.dino(items, augment, dropPath, step, rank);
  }

  private supervised(items: DatasetItem[], augment: Rng[], dropPath: Rng[], step: number, rank: number): SupervisedBatch {
    const c = this.config;
    const S = c.crops.global_crops_size;
    const s = c.supervised;
    const imgs = items.map((it, i) =>
      supervisedAugment(it.image, it.width, it.height, augment[i]!, {
        size: S,
        scale: c.crops.global_crops_scale,
        hflip: s.hflip,
        threeAugment: s.three_augment,
        colorJitter: s.color_jitter,
        crop: s.simple_random_crop ? 'src' : 'rrc',
      }),
    );
    const labels = items.map((it) => it.label);
    const C = this.numClasses;
    let images = concat(imgs);
    let targets: Float32Array;
    const metrics: Record<string, number> = {};
    if (s.mixup_alpha > 0 || s.cutmix_alpha > 0) {
      const mixed = mixupCutmix(images, [imgs.length, S, S, 3], labels, C, this.stepRng(STREAMS.mix, step, rank), {
        mixupAlpha: s.mixup_alpha,
        cutmixAlpha: s.cutmix_alpha,
        prob: s.mix_prob,
        labelSmoothing: s.label_smoothing,
      });
      images = mixed.images;
      targets = mixed.targets;
      metrics.mix_lambda = mixed.lambda;
    } else targets = smoothOneHot(labels, C, s.label_smoothing);
    return { objective: 'supervised', size: items.length, imageSize: S, images, targets, numClasses: C, dropPath, metrics };
  }

  private dino(items: DatasetItem[], augment: Rng[], dropPath: Rng[], step: number, rank: number): DinoBatch {
    const c = this.config;
    const B = items.length;
    const cr = c.crops;
    const crops = items.map((it, i) =>
      multiCrop(it.image, it.width, it.height, augment[i]!, {
        globalSize: cr.global_crops_size,
        localSize: cr.local_crops_size,
        localCrops: cr.local_crops_number,
        globalScale: cr.global_crops_scale,
        localScale: cr.local_crops_scale,
      }),
    );
    // DINOv2's collate order: crop k of every image, then crop k + 1.
    const globals = concat([...crops.map((x) => x.global[0]!), ...crops.map((x) => x.global[1]!)]);
    const nLocal = cr.local_crops_number;
    const locals = nLocal > 0 ? concat(Array.from({ length: nLocal }, (_, k) => crops.map((x) => x.local[k]!)).flat()) : null;
    const masks = this.maskGen
      ? collateMasks(
          2 * B,
          this.maskGen,
          c.ibot.mask_ratio_min_max,
          c.ibot.mask_sample_probability,
          this.stepRng(STREAMS.masks, step, rank),
        )
      : null;
    return {
      objective: 'dino',
      size: B,
      globalSize: cr.global_crops_size,
      localSize: cr.local_crops_size,
      localCrops: nLocal,
      globals,
      locals,
      masks,
      dropPath,
      metrics: { masked_patches: masks ? masks.indices.length : 0 },
    };
  }
}
