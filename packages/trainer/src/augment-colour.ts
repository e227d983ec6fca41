/**
 * Colour augmentations on 8-bit RGB HWC images with Pillow's own arithmetic: grayscale as PIL's "L",
 * `ImageOps.solarize`, `ImageEnhance` brightness / contrast / saturation (`Image.blend` with a float32
 * factor and truncation), hue through PIL's 8-bit HSV, torchvision's `ColorJitter` (random order), and
 * the final normalisation to float32 with the ImageNet mean / std.
 */
import { normalizeRgb, type Rng, type RgbImage } from '@vitreg/core';
import { checkImage, uniform, f32 } from './augment-pixels.js';

/** PIL's "L" conversion: (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point, rounded. */
function luma(r: number, g: number, b: number): number {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

/** Grayscale replicated to 3 channels (torchvision `Grayscale(num_output_channels=3)` = PIL `convert('L')`). */
export function grayscale(img: RgbImage): RgbImage {
  checkImage(img, 'grayscale');
  const { data } = img;
  const out = new Uint8Array(data.length);
  for (let p = 0; p < data.length; p += 3) {
    const l = luma(data[p], data[p + 1], data[p + 2]);
    out[p] = out[p + 1] = out[p + 2] = l;
  }
  return { data: out, width: img.width, height: img.height };
}

/** Inverts every value >= `threshold` (PIL `ImageOps.solarize`, default threshold 128). */
export function solarize(img: RgbImage, threshold = 128): RgbImage {
  checkImage(img, 'solarize');
  const out = img.data.map((v) => (v >= threshold ? 255 - v : v));
  return { data: out, width: img.width, height: img.height };
}

/**
 * PIL's `Image.blend(degenerate, img, factor)` (libImaging/Blend.c): the factor is a C float, each value
 * is `degenerate + factor * (img - degenerate)` in float32, truncated toward zero (not rounded), and
 * clipped to [0, 255] only when the factor lies outside [0, 1].
 */
function pilBlend(img: RgbImage, factor: number, degenerate: (data: Uint8Array, p: number, c: number) => number, what: string): RgbImage {
  checkImage(img, what);
  if (!Number.isFinite(factor)) throw new Error(`${what}: factor must be a finite number, got ${factor}`);
  const alpha = f32(factor);
  const interpolate = alpha >= 0 && alpha <= 1;
  const { data } = img;
  const out = new Uint8Array(data.length);
  for (let p = 0; p < data.length; p += 3) {
    for (let c = 0; c < 3; c++) {
      const d = degenerate(data, p, c);
      if (alpha === 0) {
        out[p + c] = d;
        continue;
      }
      if (alpha === 1) {
        out[p + c] = data[p + c];
        continue;
      }
      const t = f32(d + f32(alpha * (data[p + c] - d)));
      out[p + c] = interpolate ? Math.trunc(t) : t <= 0 ? 0 : t >= 255 ? 255 : Math.trunc(t);
    }
  }
  return { data: out, width: img.width, height: img.height };
}

/** torchvision `adjust_brightness` = PIL `ImageEnhance.Brightness`: blend with black. */
export function adjustBrightness(img: RgbImage, factor: number): RgbImage {
  return pilBlend(img, factor, () => 0, 'adjustBrightness');
}

/**
 * torchvision `adjust_contrast` = PIL `ImageEnhance.Contrast`: blend with a flat image at the mean of
 * the "L" image, rounded (`int(mean + 0.5)`).
 */
export function adjustContrast(img: RgbImage, factor: number): RgbImage {
  checkImage(img, 'adjustContrast');
  const { data } = img;
  let sum = 0;
  for (let p = 0; p < data.length; p += 3) sum += luma(data[p], data[p + 1], data[p + 2]);
  const mean = Math.floor(sum / (data.length / 3) + 0.5);
  return pilBlend(img, factor, () => mean, 'adjustContrast');
}

/** torchvision `adjust_saturation` = PIL `ImageEnhance.Color`: blend with the "L" image. */
export function adjustSaturation(img: RgbImage, factor: number): RgbImage {
  return pilBlend(img, factor, (d, p) => luma(d[p], d[p + 1], d[p + 2]), 'adjustSaturation');
}

/** PIL's RGB -> HSV (libImaging/Convert.c `rgb2hsv_row`): 8-bit H, S, V with its float32 steps. */
function rgbToHsv(r: number, g: number, b: number, out: number[]): void {
  const max = Math.max(r, g, b),
    min = Math.min(r, g, b);
  out[2] = max;
  if (max === min) {
    out[0] = 0;
    out[1] = 0;
    return;
  }
  const cr = max - min;
  const s = f32(cr / max);
  const rc = f32((max - r) / cr),
    gc = f32((max - g) / cr),
    bc = f32((max - b) / cr);
  let h: number;
  if (r === max) h = f32(bc - gc);
  else if (g === max) h = f32(2 + rc - bc);
  else h = f32(4 + gc - rc);
  h = f32((h / 6 + 1) % 1);
  out[0] = Math.min(255, Math.max(0, Math.trunc(h * 255)));
  out[1] = Math.min(255, Math.max(0, Math.trunc(s * 255)));
}

function clip255(x: number): number {
  return x < 0 ? 0 : x > 255 ? 255 : x;
}

/** C's round(): halves away from zero. */
function roundHalfAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/** PIL's HSV -> RGB (libImaging/Convert.c `hsv2rgb`). */
function hsvToRgb(h: number, s: number, v: number, out: Uint8Array, at: number): void {
  if (s === 0) {
    out[at] = out[at + 1] = out[at + 2] = v;
    return;
  }
  const i = Math.floor((h * 6) / 255);
  const f = f32((h * 6) / 255 - i);
  const fs = f32(s / 255);
  const p = clip255(roundHalfAway(v * (1 - fs)));
  const q = clip255(roundHalfAway(v * (1 - f32(fs * f))));
  const t = clip255(roundHalfAway(v * (1 - fs * (1 - f))));
  let r: number, g: number, b: number;
  switch (i % 6) {
    case 0:
      r = v;
      g = t;
      b = p;
      break;
    case 1:
      r = q;
      g = v;
      b = p;
      break;
    case 2:
      r = p;
      g = v;
      b = t;
      break;
    case 3:
      r = p;
      g = q;
      b = v;
      break;
    case 4:
      r = t;
      g = p;
      b = v;
      break;
    default:
      r = v;
      g = p;
      b = q;
  }
  out[at] = r;
  out[at + 1] = g;
  out[at + 2] = b;
}

/**
 * torchvision `adjust_hue` on a PIL image: convert to PIL's 8-bit HSV, add `uint8(shift * 255)` to H
 * modulo 256 (truncated toward zero, negative shifts wrap as older numpy did), convert back. `shift` is
 * in turns, within [-0.5, 0.5]. Like PIL, a shift of 0 still rounds every colour through 8-bit HSV.
 */
export function adjustHue(img: RgbImage, shift: number): RgbImage {
  checkImage(img, 'adjustHue');
  if (!(shift >= -0.5 && shift <= 0.5)) throw new Error(`adjustHue: shift must be in [-0.5, 0.5], got ${shift}`);
  const delta = ((Math.trunc(shift * 255) % 256) + 256) % 256;
  const { data } = img;
  const out = new Uint8Array(data.length);
  const hsv = [0, 0, 0];
  for (let p = 0; p < data.length; p += 3) {
    rgbToHsv(data[p], data[p + 1], data[p + 2], hsv);
    hsvToRgb((hsv[0] + delta) & 255, hsv[1], hsv[2], out, p);
  }
  return { data: out, width: img.width, height: img.height };
}

export interface ColorJitterOptions {
  /** Factor drawn from [max(0, 1 - b), 1 + b]. */
  brightness?: number;
  contrast?: number;
  saturation?: number;
  /** Hue shift drawn from [-hue, hue] turns, hue <= 0.5. */
  hue?: number;
}

/** torchvision `ColorJitter`: the four adjustments in a random order, each with a random strength. */
export function colorJitter(img: RgbImage, rng: Rng, opts: ColorJitterOptions): RgbImage {
  const order = rng.shuffle([0, 1, 2, 3]);
  const factor = (s: number | undefined): number | null => (s ? uniform(rng, Math.max(0, 1 - s), 1 + s) : null);
  const b = factor(opts.brightness);
  const c = factor(opts.contrast);
  const s = factor(opts.saturation);
  if (opts.hue !== undefined && !(opts.hue >= 0 && opts.hue <= 0.5))
    throw new Error(`colorJitter: hue must be in [0, 0.5], got ${opts.hue}`);
  const h = opts.hue ? uniform(rng, -opts.hue, opts.hue) : null;
  let out = img;
  for (const k of order) {
    if (k === 0 && b !== null) out = adjustBrightness(out, b);
    else if (k === 1 && c !== null) out = adjustContrast(out, c);
    else if (k === 2 && s !== null) out = adjustSaturation(out, s);
    else if (k === 3 && h !== null) out = adjustHue(out, h);
  }
  return out;
}

/** Float32 HWC normalised with the ImageNet mean and std (ToTensor + Normalize, float32 steps). */
export function normalize(img: RgbImage): Float32Array {
  return normalizeRgb(img.data, img.height, img.width);
}
