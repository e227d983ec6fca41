/**
 * Training augmentations in plain JS on 8-bit RGB HWC images, driven by a seeded `Rng`: the same
 * generator state always gives the same output, so augmentations replay exactly on resume.
 *
 * Every pixel operation follows torchvision's PIL path (uint8 in, uint8 out), as the DINOv2 and
 * DeiT-III training code runs it on PIL images, and is checked against values computed by Pillow 9.4 /
 * torchvision 0.14 (test/fixtures/pil-reference.json, written by test/fixtures/make_pil_reference.py):
 * - geometry: PIL crop + PIL BICUBIC resize (`resizedCrop`, `randomResizedCrop`, `evalTransform`),
 *   horizontal flip, reflect padding;
 * - colour: `Image.blend` with a float32 factor and truncation (brightness / contrast / saturation),
 *   hue through PIL's 8-bit HSV, grayscale as PIL's "L", `ImageOps.solarize`;
 * - blur: torchvision's `GaussianBlur(kernel_size=9)` (`gaussianBlur`, DINOv2) and PIL's
 *   `ImageFilter.GaussianBlur` (`pilGaussianBlur`, DeiT-III's 3-Augment), which are different filters;
 * - `normalize` ends in float32 HWC with the ImageNet mean / std (ToTensor + Normalize).
 * The pixel operations are in augment-geometry.ts, augment-colour.ts and augment-blur.ts, batch mixing in
 * mixup.ts. The recipes here:
 * - `supervisedAugment`: DeiT-III (bicubic random resized crop or simple random crop, flip,
 *   3-Augment = one of grayscale / solarize / PIL blur chosen uniformly, colour jitter 0.3);
 * - `multiCrop`: the DINOv2 multi-crop recipe (2 global + N local crops), as the released code runs it;
 * - `evalTransform`: bicubic resize of the shorter side, centre crop (crop ratio option for DeiT-III);
 * and in mixup.ts `mixupCutmix`, timm's batch-mode mixup / cutmix with label-smoothed soft targets.
 */
import { applyPlan, planTransform, type Rng, type RgbImage } from '@vitreg/core';
import { checkImage } from './augment-pixels.js';
import { randomGaussianBlur, randomPilGaussianBlur } from './augment-blur.js';
import { colorJitter, grayscale, normalize, solarize } from './augment-colour.js';
import { hflip, randomResizedCrop, simpleRandomCrop, type ResizedCropOptions } from './augment-geometry.js';

export interface SupervisedAugmentOptions extends ResizedCropOptions {
  /** Output side (default 224). */
  size?: number;
  /**
   * The first transform: 'rrc' (default) = bicubic `RandomResizedCrop(size, scale)`; 'src' = DeiT-III's
   * simple random crop (`--src`: bicubic resize of the shorter side, reflect-pad 4, random crop).
   */
  crop?: 'rrc' | 'src';
  /** Probability of a horizontal flip (default 0.5). */
  hflip?: number;
  /** DeiT-III 3-Augment: one of grayscale / solarize / PIL gaussian blur, chosen uniformly (default true). */
  threeAugment?: boolean;
  /** Colour jitter strength for brightness, contrast and saturation (default 0.3; 0 disables). */
  colorJitter?: number;
}

/**
 * DeiT-III's training transform (deit/augment.py `new_data_aug_generator`): bicubic random resized crop
 * (or simple random crop), horizontal flip, 3-Augment (grayscale, solarize or PIL `GaussianBlur` with
 * radius in [0.1, 2]), `ColorJitter(cj, cj, cj)`, ImageNet normalisation. Float32 HWC `size`^2 x 3.
 */
export function supervisedAugment(
  rgb: Uint8Array,
  width: number,
  height: number,
  rng: Rng,
  opts: SupervisedAugmentOptions = {},
): Float32Array {
  const size = opts.size ?? 224;
  const source = { data: rgb, width, height };
  const crop = opts.crop ?? 'rrc';
  if (crop !== 'rrc' && crop !== 'src') throw new Error(`supervisedAugment: crop must be 'rrc' or 'src', got '${crop}'`);
  let img = crop === 'src' ? simpleRandomCrop(source, rng, size) : randomResizedCrop(source, rng, size, opts);
  if (rng.float() < (opts.hflip ?? 0.5)) img = hflip(img);
  if (opts.threeAugment ?? true) {
    const choice = rng.int(3);
    img = choice === 0 ? grayscale(img) : choice === 1 ? solarize(img) : randomPilGaussianBlur(img, rng);
  }
  const cj = opts.colorJitter ?? 0.3;
  if (cj > 0) img = colorJitter(img, rng, { brightness: cj, contrast: cj, saturation: cj });
  return normalize(img);
}

export interface EvalTransformOptions {
  /** The shorter side is resized to this (default 256, or int(crop / cropRatio) when `cropRatio` is given). */
  resize?: number;
  /** Then a centred square crop of this side (default 224). */
  crop?: number;
  /**
   * DeiT's `--eval-crop-ratio`: resize the shorter side to int(crop / cropRatio). 0.875 gives the
   * DINOv2 / ImageNet 256 -> 224; DeiT-III evaluates with 1.0 (resize straight to the crop size).
   * Give either this or `resize`.
   */
  cropRatio?: number;
}

/**
 * The evaluation transform of DINOv2 (`make_classification_eval_transform`) and DeiT (`build_transform`):
 * bicubic `Resize` of the shorter side, `CenterCrop`, normalise; float32 HWC. Bit-exact with PIL.
 */
export function evalTransform(rgb: Uint8Array, width: number, height: number, opts: EvalTransformOptions = {}): Float32Array {
  const crop = opts.crop ?? 224;
  let resize = opts.resize;
  if (opts.cropRatio !== undefined) {
    if (resize !== undefined) throw new Error(`evalTransform: give either resize (${resize}) or cropRatio (${opts.cropRatio}), not both`);
    if (!(opts.cropRatio > 0 && opts.cropRatio <= 1)) throw new Error(`evalTransform: cropRatio must be in (0, 1], got ${opts.cropRatio}`);
    resize = Math.floor(crop / opts.cropRatio);
  }
  const img = { data: rgb, width, height };
  checkImage(img, 'evalTransform');
  return normalize(applyPlan(img, planTransform(width, height, { kind: 'eval', resize, crop })));
}

/**
 * Gaussian blur probabilities of DINOv2's three crop kinds [global crop 1, global crop 2, local crops].
 * The code that trained the released models passes p = 1.0 / 0.1 / 0.5 to its `GaussianBlur`, which
 * hands `1 - p` to torchvision's `RandomApply` (a probability of applying): it blurs with 0.0 / 0.9 / 0.5.
 */
export const DINOV2_BLUR_AS_RUN: readonly [number, number, number] = [0.0, 0.9, 0.5];
/** The probabilities DINOv2's code and paper name (and DINO v1 / BYOL apply): 1.0 / 0.1 / 0.5. */
export const DINOV2_BLUR_AS_WRITTEN: readonly [number, number, number] = [1.0, 0.1, 0.5];

export interface MultiCropOptions {
  /** Side of the 2 global crops (default 224). */
  globalSize?: number;
  /** Side of the local crops (default 96). */
  localSize?: number;
  /** Number of local crops (default 8, as DINOv2). */
  localCrops?: number;
  globalScale?: [number, number];
  localScale?: [number, number];
  /**
   * Blur probability of [global crop 1, global crop 2, local crops]: default `DINOV2_BLUR_AS_RUN`
   * (0.0, 0.9, 0.5); `DINOV2_BLUR_AS_WRITTEN` (1.0, 0.1, 0.5) gives the nominal recipe.
   */
  blurProbabilities?: readonly [number, number, number];
}

export interface MultiCrops {
  /** 2 global crops, float32 HWC `globalSize`^2 x 3 each. */
  global: Float32Array[];
  /** `localCrops` local crops, float32 HWC `localSize`^2 x 3 each. */
  local: Float32Array[];
  globalSize: number;
  localSize: number;
}

/**
 * DINOv2's `DataAugmentationDINO` (dinov2/data/augmentations.py) as the released code runs it: each crop
 * gets a bicubic random resized crop (global scale [0.32, 1], local [0.05, 0.32]) and a flip (p 0.5),
 * colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p = 0.8, grayscale with
 * p = 0.2; then gaussian blur (torchvision, kernel 9, sigma in [0.1, 2]) with `blurProbabilities`
 * (default 0.0 on global crop 1, 0.9 on global crop 2, 0.5 on local crops), solarize (threshold 128)
 * with p = 0.2 on global crop 2 only, and ImageNet normalisation.
 */
export function multiCrop(rgb: Uint8Array, width: number, height: number, rng: Rng, opts: MultiCropOptions = {}): MultiCrops {
  const globalSize = opts.globalSize ?? 224;
  const localSize = opts.localSize ?? 96;
  const localCrops = opts.localCrops ?? 8;
  if (!Number.isInteger(localCrops) || localCrops < 0)
    throw new Error(`multiCrop: localCrops must be a non-negative integer, got ${localCrops}`);
  const blur = opts.blurProbabilities ?? DINOV2_BLUR_AS_RUN;
  if (blur.length !== 3 || !blur.every((p) => p >= 0 && p <= 1)) {
    throw new Error(`multiCrop: blurProbabilities must be 3 probabilities in [0, 1] (global 1, global 2, local), got [${blur.join(', ')}]`);
  }
  const source: RgbImage = { data: rgb, width, height };
  checkImage(source, 'multiCrop');
  const crop = (size: number, scale: [number, number]): RgbImage => {
    let img = randomResizedCrop(source, rng, size, { scale });
    if (rng.float() < 0.5) img = hflip(img);
    if (rng.float() < 0.8) img = colorJitter(img, rng, { brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1 });
    if (rng.float() < 0.2) img = grayscale(img);
    return img;
  };
  const maybeBlur = (img: RgbImage, p: number): RgbImage => (rng.float() < p ? randomGaussianBlur(img, rng) : img);
  const globalScale = opts.globalScale ?? [0.32, 1];
  const localScale = opts.localScale ?? [0.05, 0.32];
  const g1 = maybeBlur(crop(globalSize, globalScale), blur[0]);
  let g2 = maybeBlur(crop(globalSize, globalScale), blur[1]);
  if (rng.float() < 0.2) g2 = solarize(g2);
  const local: Float32Array[] = [];
  for (let k = 0; k < localCrops; k++) local.push(normalize(maybeBlur(crop(localSize, localScale), blur[2])));
  return { global: [normalize(g1), normalize(g2)], local, globalSize, localSize };
}
