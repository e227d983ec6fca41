/**
 * Geometric augmentations on 8-bit RGB HWC images, as torchvision runs them on PIL images: PIL crop +
 * PIL BICUBIC resize (`resizedCrop`, `randomResizedCrop` with torchvision's 10 attempts and centred
 * fallback), horizontal flip, reflect padding and DeiT-III's simple random crop.
 */
import { cropRgb, planTransform, resizeBicubic, type Rng, type RgbImage } from '@vitreg/core';
import { checkImage, uniform, roundHalfEven, reflectIndex } from './augment-pixels.js';

/** A crop in source pixels (integers, inside the image). */
export interface CropBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

/**
 * torchvision `F.resized_crop` on a PIL image: `img.crop(box)` then `resize((outWidth, outHeight),
 * BICUBIC)`; Pillow's resampling is bit-exact (core's `resizeBicubic`). The box must have integer
 * edges inside the image (torchvision's crop parameters always do).
 */
export function resizedCrop(img: RgbImage, box: CropBox, outWidth: number, outHeight: number): RgbImage {
  checkImage(img, 'resizedCrop');
  if (!Number.isInteger(outWidth) || !Number.isInteger(outHeight) || outWidth < 1 || outHeight < 1) {
    throw new Error(`resizedCrop: output size must be positive integers, got ${outWidth}x${outHeight}`);
  }
  const { x, y, width, height } = box;
  if (
    ![x, y, width, height].every(Number.isInteger) ||
    width < 1 ||
    height < 1 ||
    x < 0 ||
    y < 0 ||
    x + width > img.width ||
    y + height > img.height
  ) {
    throw new Error(
      `resizedCrop: crop box must have integer edges inside the ${img.width}x${img.height} image and a positive size, got ${JSON.stringify(box)}`,
    );
  }
  return resizeBicubic(cropRgb(img, { left: x, top: y, width, height }), outWidth, outHeight);
}

export interface ResizedCropOptions {
  /** Range of the crop's area as a fraction of the image (default [0.08, 1]). */
  scale?: [number, number];
  /** Range of the crop's aspect ratio width / height, sampled log-uniformly (default [3/4, 4/3]). */
  ratio?: [number, number];
}

/**
 * torchvision's `RandomResizedCrop.get_params` (and timm's `RandomResizedCropAndInterpolation`, the
 * same rule): up to 10 draws of (area, log-aspect), the first that fits wins, at a uniform position;
 * otherwise the fallback: the whole image, cut down to the nearest allowed aspect ratio and centred.
 */
export function randomResizedCropBox(width: number, height: number, rng: Rng, opts: ResizedCropOptions = {}): CropBox {
  const [sLo, sHi] = opts.scale ?? [0.08, 1];
  const [rLo, rHi] = opts.ratio ?? [3 / 4, 4 / 3];
  if (!(sLo > 0 && sLo <= sHi && sHi <= 1))
    throw new Error(`randomResizedCrop: scale must satisfy 0 < min <= max <= 1, got [${sLo}, ${sHi}]`);
  if (!(rLo > 0 && rLo <= rHi)) throw new Error(`randomResizedCrop: ratio must satisfy 0 < min <= max, got [${rLo}, ${rHi}]`);
  const area = width * height;
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * uniform(rng, sLo, sHi);
    const aspect = Math.exp(uniform(rng, Math.log(rLo), Math.log(rHi)));
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const y = rng.int(height - h + 1);
      const x = rng.int(width - w + 1);
      return { x, y, width: w, height: h };
    }
  }
  const inRatio = width / height;
  let w = width,
    h = height;
  if (inRatio < rLo) {
    h = roundHalfEven(w / rLo);
  } else if (inRatio > rHi) {
    w = roundHalfEven(h * rHi);
  }
  return { x: Math.floor((width - w) / 2), y: Math.floor((height - h) / 2), width: w, height: h };
}

/**
 * torchvision `RandomResizedCrop(size, scale, ratio, interpolation=BICUBIC)` on a PIL image, as
 * DINOv2 and DeiT-III train with: `size` x `size` (`size` may be `[width, height]`).
 */
export function randomResizedCrop(img: RgbImage, rng: Rng, size: number | [number, number], opts: ResizedCropOptions = {}): RgbImage {
  const [ow, oh] = typeof size === 'number' ? [size, size] : size;
  return resizedCrop(img, randomResizedCropBox(img.width, img.height, rng, opts), ow, oh);
}

/** Mirror left-right (PIL `FLIP_LEFT_RIGHT`). */
export function hflip(img: RgbImage): RgbImage {
  checkImage(img, 'hflip');
  const { width, height, data } = img;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const s = (y * width + x) * 3,
        d = (y * width + width - 1 - x) * 3;
      out[d] = data[s];
      out[d + 1] = data[s + 1];
      out[d + 2] = data[s + 2];
    }
  }
  return { data: out, width, height };
}

/** Pads `pad` pixels on every side by reflection (torchvision `F.pad(img, pad, padding_mode='reflect')`). */
export function reflectPad(img: RgbImage, pad: number): RgbImage {
  checkImage(img, 'reflectPad');
  if (!Number.isInteger(pad) || pad < 0) throw new Error(`reflectPad: pad must be a non-negative integer, got ${pad}`);
  const { width, height, data } = img;
  const ow = width + 2 * pad,
    oh = height + 2 * pad;
  const out = new Uint8Array(ow * oh * 3);
  for (let y = 0; y < oh; y++) {
    const sy = reflectIndex(y - pad, height);
    for (let x = 0; x < ow; x++) {
      const s = (sy * width + reflectIndex(x - pad, width)) * 3,
        d = (y * ow + x) * 3;
      out[d] = data[s];
      out[d + 1] = data[s + 1];
      out[d + 2] = data[s + 2];
    }
  }
  return { data: out, width: ow, height: oh };
}

/**
 * DeiT-III's "simple random crop" (`--src`): `Resize(size, BICUBIC)` of the shorter side, then
 * `RandomCrop(size, padding=4, padding_mode='reflect')`, as deit/augment.py `new_data_aug_generator`.
 */
export function simpleRandomCrop(img: RgbImage, rng: Rng, size: number, padding = 4): RgbImage {
  checkImage(img, 'simpleRandomCrop');
  const plan = planTransform(img.width, img.height, { kind: 'eval', resize: size, crop: size });
  const padded = reflectPad(resizeBicubic(img, plan.resizeWidth, plan.resizeHeight), padding);
  if (padded.width === size && padded.height === size) return padded;
  const top = rng.int(padded.height - size + 1);
  const left = rng.int(padded.width - size + 1);
  return cropRgb(padded, { left, top, width: size, height: size });
}
