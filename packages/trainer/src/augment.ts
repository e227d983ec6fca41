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
 * Recipes on top:
 * - `supervisedAugment`: DeiT-III (bicubic random resized crop or simple random crop, flip,
 *   3-Augment = one of grayscale / solarize / PIL blur chosen uniformly, colour jitter 0.3);
 * - `multiCrop`: the DINOv2 multi-crop recipe (2 global + N local crops), as the released code runs it;
 * - `evalTransform`: bicubic resize of the shorter side, centre crop (crop ratio option for DeiT-III);
 * - `mixupCutmix`: timm's batch-mode mixup / cutmix with label-smoothed soft targets.
 */
import { applyPlan, cropRgb, normalizeRgb, planTransform, resizeBicubic, type Rng, type RgbImage } from '@vitreg/core';

/** A crop in source pixels (integers, inside the image). */
export interface CropBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

function checkImage(img: RgbImage, what: string): void {
  const { width, height, data } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1 || data.length !== width * height * 3) {
    throw new Error(`${what}: expected an RGB image of width x height x 3 bytes, got ${width}x${height} with ${data.length} bytes`);
  }
}

function uniform(rng: Rng, lo: number, hi: number): number {
  return lo + (hi - lo) * rng.float();
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const f32 = Math.fround;

// ---------------------------------------------------------------------------------------------
// Geometry

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
  if (![x, y, width, height].every(Number.isInteger) || width < 1 || height < 1 || x < 0 || y < 0 || x + width > img.width || y + height > img.height) {
    throw new Error(`resizedCrop: crop box must have integer edges inside the ${img.width}x${img.height} image and a positive size, got ${JSON.stringify(box)}`);
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
  if (!(sLo > 0 && sLo <= sHi && sHi <= 1)) throw new Error(`randomResizedCrop: scale must satisfy 0 < min <= max <= 1, got [${sLo}, ${sHi}]`);
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
  let w = width, h = height;
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
      const s = (y * width + x) * 3, d = (y * width + width - 1 - x) * 3;
      out[d] = data[s];
      out[d + 1] = data[s + 1];
      out[d + 2] = data[s + 2];
    }
  }
  return { data: out, width, height };
}

/** Index `i` reflected into [0, n) without repeating the edge (numpy / torch "reflect"). */
function reflectIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  const m = ((i % period) + period) % period;
  return m < n ? m : period - m;
}

/** Pads `pad` pixels on every side by reflection (torchvision `F.pad(img, pad, padding_mode='reflect')`). */
export function reflectPad(img: RgbImage, pad: number): RgbImage {
  checkImage(img, 'reflectPad');
  if (!Number.isInteger(pad) || pad < 0) throw new Error(`reflectPad: pad must be a non-negative integer, got ${pad}`);
  const { width, height, data } = img;
  const ow = width + 2 * pad, oh = height + 2 * pad;
  const out = new Uint8Array(ow * oh * 3);
  for (let y = 0; y < oh; y++) {
    const sy = reflectIndex(y - pad, height);
    for (let x = 0; x < ow; x++) {
      const s = (sy * width + reflectIndex(x - pad, width)) * 3, d = (y * ow + x) * 3;
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

// ---------------------------------------------------------------------------------------------
// Colour

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
      if (alpha === 0) { out[p + c] = d; continue; }
      if (alpha === 1) { out[p + c] = data[p + c]; continue; }
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
  const max = Math.max(r, g, b), min = Math.min(r, g, b);
  out[2] = max;
  if (max === min) {
    out[0] = 0;
    out[1] = 0;
    return;
  }
  const cr = max - min;
  const s = f32(cr / max);
  const rc = f32((max - r) / cr), gc = f32((max - g) / cr), bc = f32((max - b) / cr);
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
    case 0: r = v; g = t; b = p; break;
    case 1: r = q; g = v; b = p; break;
    case 2: r = p; g = v; b = t; break;
    case 3: r = p; g = q; b = v; break;
    case 4: r = t; g = p; b = v; break;
    default: r = v; g = p; b = q;
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
  if (opts.hue !== undefined && !(opts.hue >= 0 && opts.hue <= 0.5)) throw new Error(`colorJitter: hue must be in [0, 0.5], got ${opts.hue}`);
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

// ---------------------------------------------------------------------------------------------
// Blur

/**
 * torchvision's `gaussian_blur` on a PIL image (`transforms.GaussianBlur(kernel_size, sigma)` as DINOv2
 * uses it, kernel_size 9): float32 kernel `exp(-0.5 (x / sigma)^2)` over x = -(k-1)/2 .. (k-1)/2,
 * normalised; reflected borders (torch "reflect", no edge repeat); the result rounded half to even.
 * torchvision convolves in float32 and this in float64, so a value that lands within ~1e-5 of a .5
 * may round the other way (at most 1 level).
 */
export function gaussianBlur(img: RgbImage, sigma: number, kernelSize = 9): RgbImage {
  checkImage(img, 'gaussianBlur');
  if (!(sigma > 0)) throw new Error(`gaussianBlur: sigma must be positive, got ${sigma}`);
  if (!Number.isInteger(kernelSize) || kernelSize < 1 || kernelSize % 2 === 0) {
    throw new Error(`gaussianBlur: kernelSize must be a positive odd integer, got ${kernelSize}`);
  }
  const radius = (kernelSize - 1) / 2;
  const s = f32(sigma);
  const kernel = new Float64Array(kernelSize);
  let total = 0;
  for (let k = 0; k < kernelSize; k++) {
    const q = f32((k - radius) / s);
    total += kernel[k] = f32(Math.exp(f32(-0.5 * f32(q * q))));
  }
  const sum = f32(total);
  for (let k = 0; k < kernelSize; k++) kernel[k] = f32(kernel[k] / sum);
  const { width, height, data } = img;
  // source offsets of every tap, borders reflected
  const xs = new Int32Array(width * kernelSize), ys = new Int32Array(height * kernelSize);
  for (let x = 0; x < width; x++) for (let k = 0; k < kernelSize; k++) xs[x * kernelSize + k] = reflectIndex(x + k - radius, width) * 3;
  for (let y = 0; y < height; y++) for (let k = 0; k < kernelSize; k++) ys[y * kernelSize + k] = reflectIndex(y + k - radius, height) * width * 3;
  const tmp = new Float64Array(data.length);
  for (let y = 0; y < height; y++) {
    const row = y * width * 3;
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < kernelSize; k++) {
        const w = kernel[k], p = row + xs[x * kernelSize + k];
        r += w * data[p];
        g += w * data[p + 1];
        b += w * data[p + 2];
      }
      const o = row + x * 3;
      tmp[o] = r;
      tmp[o + 1] = g;
      tmp[o + 2] = b;
    }
  }
  const out = new Uint8Array(data.length);
  const stride = width * 3;
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < stride; i++) {
      let acc = 0;
      for (let k = 0; k < kernelSize; k++) acc += kernel[k] * tmp[ys[y * kernelSize + k] + i];
      const v = roundHalfEven(acc);
      out[y * stride + i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return { data: out, width, height };
}

/** Pillow's `_gaussian_blur_radius`: the extended-box radius whose `passes` passes give variance radius^2. */
function boxRadius(radius: number, passes: number): number {
  const sigma2 = f32(f32(radius * radius) / passes);
  const L = f32(Math.sqrt(12 * sigma2 + 1));
  const l = f32(Math.floor((L - 1) / 2));
  let a = f32(f32(2 * l + 1) * f32(f32(l * f32(l + 1)) - f32(3 * sigma2)));
  a = f32(a / f32(6 * f32(sigma2 - f32(f32(l + 1) * f32(l + 1)))));
  return f32(l + a);
}

/**
 * One pass of Pillow's extended box blur (libImaging/BoxBlur.c `ImagingLineBoxBlur`) along `n` values
 * read at `get(i)`: the 2r+1 inner values (edges repeated) weigh `ww`, the two next ones `fw`, in 24-bit
 * fixed point, rounded to 8 bits.
 */
function boxBlurLine(line: Uint8Array, n: number, floatRadius: number, out: Uint8Array): void {
  const radius = Math.trunc(floatRadius);
  const ww = Math.trunc(f32(16777216 / f32(floatRadius * 2 + 1)));
  const fw = Math.floor((16777216 - (radius * 2 + 1) * ww) / 2);
  const at = (i: number): number => line[i < 0 ? 0 : i >= n ? n - 1 : i];
  let acc = 0;
  for (let i = -radius - 1; i < radius; i++) acc += at(i);
  for (let x = 0; x < n; x++) {
    acc += at(x + radius) - at(x - radius - 1);
    const bulk = acc * ww + (at(x - radius - 1) + at(x + radius + 1)) * fw;
    out[x] = Math.floor((bulk + 8388608) / 16777216);
  }
}

/**
 * PIL's `ImageFilter.GaussianBlur(radius)` (DeiT-III's 3-Augment blur): not a sampled gaussian but 3
 * passes of an extended box blur of the same variance, each rounded to 8 bits, all horizontal passes
 * first, edges repeated. `radius` is the standard deviation, a C float as in Pillow.
 */
export function pilGaussianBlur(img: RgbImage, radius: number, passes = 3): RgbImage {
  checkImage(img, 'pilGaussianBlur');
  if (!(radius >= 0)) throw new Error(`pilGaussianBlur: radius must be >= 0, got ${radius}`);
  if (!Number.isInteger(passes) || passes < 1) throw new Error(`pilGaussianBlur: passes must be a positive integer, got ${passes}`);
  const { width, height } = img;
  const data = img.data.slice();
  const r = boxRadius(f32(radius), passes);
  if (r === 0) return { data, width, height };
  const n = Math.max(width, height);
  const line = new Uint8Array(n), out = new Uint8Array(n);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) line[x] = data[(y * width + x) * 3 + c];
      for (let k = 0; k < passes; k++) {
        boxBlurLine(line, width, r, out);
        line.set(out.subarray(0, width));
      }
      for (let x = 0; x < width; x++) data[(y * width + x) * 3 + c] = line[x];
    }
    for (let x = 0; x < width; x++) {
      for (let y = 0; y < height; y++) line[y] = data[(y * width + x) * 3 + c];
      for (let k = 0; k < passes; k++) {
        boxBlurLine(line, height, r, out);
        line.set(out.subarray(0, height));
      }
      for (let y = 0; y < height; y++) data[(y * width + x) * 3 + c] = line[y];
    }
  }
  return { data, width, height };
}

/** DINOv2's blur: torchvision `GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))`, sigma drawn uniformly. */
export function randomGaussianBlur(img: RgbImage, rng: Rng): RgbImage {
  return gaussianBlur(img, uniform(rng, 0.1, 2.0), 9);
}

/** DeiT-III's blur: PIL `ImageFilter.GaussianBlur(radius)`, radius drawn uniformly from [0.1, 2.0]. */
export function randomPilGaussianBlur(img: RgbImage, rng: Rng): RgbImage {
  return pilGaussianBlur(img, uniform(rng, 0.1, 2.0));
}

/** Float32 HWC normalised with the ImageNet mean and std (ToTensor + Normalize, float32 steps). */
export function normalize(img: RgbImage): Float32Array {
  return normalizeRgb(img.data, img.height, img.width);
}

// ---------------------------------------------------------------------------------------------
// Recipes

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
export function supervisedAugment(rgb: Uint8Array, width: number, height: number, rng: Rng, opts: SupervisedAugmentOptions = {}): Float32Array {
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
  if (!Number.isInteger(localCrops) || localCrops < 0) throw new Error(`multiCrop: localCrops must be a non-negative integer, got ${localCrops}`);
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

// ---------------------------------------------------------------------------------------------
// Batch mixing

/** Gamma(shape, 1) deviate (Marsaglia & Tsang; shape < 1 through the boost U^(1/shape)). */
function gamma(rng: Rng, shape: number): number {
  if (shape < 1) return gamma(rng, shape + 1) * Math.pow(1 - rng.float(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number, v: number;
    do {
      x = rng.normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = 1 - rng.float();
    if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v;
  }
}

/** Beta(alpha, alpha) deviate. */
function symmetricBeta(rng: Rng, alpha: number): number {
  const a = gamma(rng, alpha);
  const b = gamma(rng, alpha);
  return a / (a + b);
}

/** Label-smoothed one-hot targets [B, C]: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere. */
export function smoothOneHot(labels: ArrayLike<number>, numClasses: number, smoothing = 0): Float32Array {
  const off = smoothing / numClasses;
  const on = 1 - smoothing + off;
  const out = new Float32Array(labels.length * numClasses).fill(off);
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (!Number.isInteger(y) || y < 0 || y >= numClasses) throw new Error(`smoothOneHot: label ${i} is ${y}, expected an integer in [0, ${numClasses})`);
    out[i * numClasses + y] = on;
  }
  return out;
}

export interface MixupCutmixOptions {
  /** Beta(alpha, alpha) for mixup's lambda; 0 disables mixup (default 0.8). */
  mixupAlpha?: number;
  /** Beta(alpha, alpha) for cutmix's area; 0 disables cutmix (default 1.0). */
  cutmixAlpha?: number;
  /** Probability of mixing this batch at all (default 1.0). */
  prob?: number;
  /** With both enabled, probability of cutmix rather than mixup (default 0.5). */
  switchProb?: number;
  /** Label smoothing of the targets (default 0.1). */
  labelSmoothing?: number;
}

export interface MixedBatch {
  /** Mixed images, same shape as the input. */
  images: Float32Array;
  /** Soft targets [B, C]; each row sums to 1. */
  targets: Float32Array;
  /** Weight of each image's own label (1 when the batch was not mixed). */
  lambda: number;
  /** The pasted box [x0, y0, x1, y1] when cutmix was used. */
  box: [number, number, number, number] | null;
}

/**
 * timm's `Mixup` in batch mode: image i is mixed with image B-1-i using one lambda for the whole
 * batch, drawn from Beta(alpha, alpha); cutmix pastes a box whose area is 1 - lambda (lambda is then
 * corrected to the clipped box). Targets: lambda * smooth(y_i) + (1 - lambda) * smooth(y_{B-1-i}).
 * `images` is float32 NHWC with `shape` [B, H, W, C].
 */
export function mixupCutmix(
  images: Float32Array,
  shape: [number, number, number, number],
  labels: ArrayLike<number>,
  numClasses: number,
  rng: Rng,
  opts: MixupCutmixOptions = {},
): MixedBatch {
  const [B, H, W, C] = shape;
  if (images.length !== B * H * W * C) throw new Error(`mixupCutmix: images hold ${images.length} values, shape [${shape}] needs ${B * H * W * C}`);
  if (labels.length !== B) throw new Error(`mixupCutmix: expected ${B} labels, got ${labels.length}`);
  const mixupAlpha = opts.mixupAlpha ?? 0.8;
  const cutmixAlpha = opts.cutmixAlpha ?? 1.0;
  const smoothing = opts.labelSmoothing ?? 0.1;

  let lambda = 1;
  let useCutmix = false;
  if ((mixupAlpha > 0 || cutmixAlpha > 0) && rng.float() < (opts.prob ?? 1)) {
    useCutmix = cutmixAlpha > 0 && (mixupAlpha <= 0 || rng.float() < (opts.switchProb ?? 0.5));
    lambda = symmetricBeta(rng, useCutmix ? cutmixAlpha : mixupAlpha);
  }

  const out = images.slice();
  const imageSize = H * W * C;
  let box: MixedBatch['box'] = null;
  if (lambda < 1 && useCutmix) {
    const cutRatio = Math.sqrt(1 - lambda);
    const cutH = Math.floor(H * cutRatio), cutW = Math.floor(W * cutRatio);
    const cy = rng.int(H), cx = rng.int(W);
    const y0 = Math.min(Math.max(cy - Math.floor(cutH / 2), 0), H), y1 = Math.min(Math.max(cy + Math.floor(cutH / 2), 0), H);
    const x0 = Math.min(Math.max(cx - Math.floor(cutW / 2), 0), W), x1 = Math.min(Math.max(cx + Math.floor(cutW / 2), 0), W);
    box = [x0, y0, x1, y1];
    lambda = 1 - ((y1 - y0) * (x1 - x0)) / (H * W);
    for (let i = 0; i < B; i++) {
      const j = B - 1 - i;
      for (let y = y0; y < y1; y++) {
        const row = (y * W + x0) * C;
        out.set(images.subarray(j * imageSize + row, j * imageSize + row + (x1 - x0) * C), i * imageSize + row);
      }
    }
  } else if (lambda < 1) {
    for (let i = 0; i < B; i++) {
      const a = i * imageSize, b = (B - 1 - i) * imageSize;
      for (let k = 0; k < imageSize; k++) out[a + k] = lambda * images[a + k] + (1 - lambda) * images[b + k];
    }
  }

  const own = smoothOneHot(labels, numClasses, smoothing);
  const targets = new Float32Array(B * numClasses);
  for (let i = 0; i < B; i++) {
    const j = B - 1 - i;
    for (let c = 0; c < numClasses; c++) {
      targets[i * numClasses + c] = lambda * own[i * numClasses + c] + (1 - lambda) * own[j * numClasses + c];
    }
  }
  return { images: out, targets, lambda, box };
}
