/**
 * Training augmentations in plain JS on 8-bit RGB HWC images, driven by a seeded `Rng`: the same
 * generator state always gives the same output, so augmentations replay exactly on resume.
 *
 * Building blocks follow torchvision's PIL path (uint8 in, uint8 out, rounding after each step):
 * random resized crop with antialiased bilinear resampling, horizontal flip, colour jitter,
 * grayscale, solarize, gaussian blur; `normalize` ends in float32 HWC with the ImageNet mean / std.
 * Recipes on top:
 * - `supervisedAugment`: DeiT-III (random resized crop, flip, 3-Augment = one of grayscale /
 *   solarize / blur chosen uniformly, colour jitter 0.3);
 * - `multiCrop`: the DINOv2 multi-crop recipe (2 global + N local crops);
 * - `evalTransform`: resize the shorter side, centre crop;
 * - `mixupCutmix`: timm's batch-mode mixup / cutmix with label-smoothed soft targets.
 */
import { normalizeRgb, planTransform, type Rng, type RgbImage } from '@vitreg/core';

/** A crop in source pixels; fractional edges are allowed. */
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

function clamp255(v: number): number {
  return v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v);
}

// ---------------------------------------------------------------------------------------------
// Geometry

/**
 * Resampling weights for one axis (PIL's bilinear `ImagingResample`): the triangle filter widened
 * by the downscale factor, so shrinking averages every source pixel (antialiasing).
 */
function axisWeights(inSize: number, start: number, length: number, outSize: number): { first: Int32Array; count: Int32Array; weights: Float64Array; taps: number } {
  const scale = length / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale; // the triangle filter has support 1
  const taps = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * taps);
  for (let o = 0; o < outSize; o++) {
    const center = start + (o + 0.5) * scale;
    const lo = Math.max(Math.floor(center - support + 0.5), 0);
    const hi = Math.min(Math.floor(center + support + 0.5), inSize);
    let total = 0;
    for (let i = lo; i < hi; i++) {
      const w = Math.max(0, 1 - Math.abs((i + 0.5 - center) / filterScale));
      weights[o * taps + i - lo] = w;
      total += w;
    }
    if (total === 0) {
      // the window fell outside the image: use the nearest edge pixel
      const edge = Math.min(Math.max(Math.floor(center), 0), inSize - 1);
      first[o] = edge;
      count[o] = 1;
      weights[o * taps] = 1;
      continue;
    }
    for (let i = lo; i < hi; i++) weights[o * taps + i - lo] /= total;
    first[o] = lo;
    count[o] = hi - lo;
  }
  return { first, count, weights, taps };
}

/** Crops `box` out of `img` and resizes it to `outWidth` x `outHeight` (antialiased bilinear). */
export function resizedCrop(img: RgbImage, box: CropBox, outWidth: number, outHeight: number): RgbImage {
  checkImage(img, 'resizedCrop');
  if (!Number.isInteger(outWidth) || !Number.isInteger(outHeight) || outWidth < 1 || outHeight < 1) {
    throw new Error(`resizedCrop: output size must be positive integers, got ${outWidth}x${outHeight}`);
  }
  if (!(box.width > 0 && box.height > 0)) throw new Error(`resizedCrop: crop box must have a positive size, got ${JSON.stringify(box)}`);
  const { width, height, data } = img;
  const h = axisWeights(width, box.x, box.width, outWidth);
  const v = axisWeights(height, box.y, box.height, outHeight);
  // rows the vertical pass reads
  let rowLo = height, rowHi = 0;
  for (let o = 0; o < outHeight; o++) {
    rowLo = Math.min(rowLo, v.first[o]);
    rowHi = Math.max(rowHi, v.first[o] + v.count[o]);
  }
  const tmp = new Float32Array((rowHi - rowLo) * outWidth * 3);
  for (let y = rowLo; y < rowHi; y++) {
    const src = y * width * 3;
    const dst = (y - rowLo) * outWidth * 3;
    for (let o = 0; o < outWidth; o++) {
      let r = 0, g = 0, b = 0;
      const f = h.first[o], base = o * h.taps;
      for (let k = 0; k < h.count[o]; k++) {
        const w = h.weights[base + k];
        const p = src + (f + k) * 3;
        r += w * data[p];
        g += w * data[p + 1];
        b += w * data[p + 2];
      }
      tmp[dst + o * 3] = r;
      tmp[dst + o * 3 + 1] = g;
      tmp[dst + o * 3 + 2] = b;
    }
  }
  const out = new Uint8Array(outWidth * outHeight * 3);
  for (let o = 0; o < outHeight; o++) {
    const f = v.first[o] - rowLo, base = o * v.taps;
    for (let x = 0; x < outWidth * 3; x++) {
      let acc = 0;
      for (let k = 0; k < v.count[o]; k++) acc += v.weights[base + k] * tmp[(f + k) * outWidth * 3 + x];
      out[o * outWidth * 3 + x] = clamp255(acc);
    }
  }
  return { data: out, width: outWidth, height: outHeight };
}

export interface ResizedCropOptions {
  /** Range of the crop's area as a fraction of the image (default [0.08, 1]). */
  scale?: [number, number];
  /** Range of the crop's aspect ratio width / height, sampled log-uniformly (default [3/4, 4/3]). */
  ratio?: [number, number];
}

/**
 * torchvision's `RandomResizedCrop.get_params`: up to 10 draws of (area, log-aspect), the first
 * that fits wins, at a uniform position; otherwise the fallback: the whole image, cut down to the
 * nearest allowed aspect ratio and centred.
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

/** A random resized crop of `img` to `size` x `size` (`size` may be `[width, height]`). */
export function randomResizedCrop(img: RgbImage, rng: Rng, size: number | [number, number], opts: ResizedCropOptions = {}): RgbImage {
  const [ow, oh] = typeof size === 'number' ? [size, size] : size;
  return resizedCrop(img, randomResizedCropBox(img.width, img.height, rng, opts), ow, oh);
}

/** Mirror left-right. */
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

// ---------------------------------------------------------------------------------------------
// Colour

/** PIL's "L" conversion: (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point, rounded. */
function luma(r: number, g: number, b: number): number {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

/** Grayscale replicated to 3 channels (torchvision `Grayscale(num_output_channels=3)`). */
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

/** Blends each pixel with `other(p)`: out = other + factor * (img - other), rounded and clipped. */
function blend(img: RgbImage, factor: number, other: (data: Uint8Array, p: number, c: number) => number): RgbImage {
  const { data } = img;
  const out = new Uint8Array(data.length);
  for (let p = 0; p < data.length; p += 3) {
    for (let c = 0; c < 3; c++) {
      const o = other(data, p, c);
      out[p + c] = clamp255(o + factor * (data[p + c] - o));
    }
  }
  return { data: out, width: img.width, height: img.height };
}

/** Multiplies by `factor` (blend with black). */
export function adjustBrightness(img: RgbImage, factor: number): RgbImage {
  return blend(img, factor, () => 0);
}

/** Blends with the mean gray level of the image (PIL `ImageEnhance.Contrast`). */
export function adjustContrast(img: RgbImage, factor: number): RgbImage {
  const { data } = img;
  let sum = 0;
  for (let p = 0; p < data.length; p += 3) sum += luma(data[p], data[p + 1], data[p + 2]);
  const mean = Math.floor(sum / (data.length / 3) + 0.5);
  return blend(img, factor, () => mean);
}

/** Blends with the grayscale image (PIL `ImageEnhance.Color`). */
export function adjustSaturation(img: RgbImage, factor: number): RgbImage {
  return blend(img, factor, (d, p) => luma(d[p], d[p + 1], d[p + 2]));
}

/** Rotates the hue by `shift` turns (in [-0.5, 0.5]) in HSV space. */
export function adjustHue(img: RgbImage, shift: number): RgbImage {
  if (!(shift >= -0.5 && shift <= 0.5)) throw new Error(`adjustHue: shift must be in [-0.5, 0.5], got ${shift}`);
  const { data } = img;
  const out = new Uint8Array(data.length);
  for (let p = 0; p < data.length; p += 3) {
    const r = data[p], g = data[p + 1], b = data[p + 2];
    const max = Math.max(r, g, b), min = Math.min(r, g, b);
    const delta = max - min;
    if (delta === 0) {
      out[p] = r; out[p + 1] = g; out[p + 2] = b;
      continue;
    }
    let hue: number;
    if (max === r) hue = (g - b) / delta;
    else if (max === g) hue = 2 + (b - r) / delta;
    else hue = 4 + (r - g) / delta;
    hue = (((hue / 6 + shift) % 1) + 1) % 1;
    // back to RGB with the same value (max) and saturation (delta / max)
    const h6 = hue * 6;
    const sector = Math.floor(h6) % 6;
    const f = h6 - Math.floor(h6);
    const pv = min, qv = max - delta * f, tv = min + delta * f;
    let ro: number, go: number, bo: number;
    switch (sector) {
      case 0: ro = max; go = tv; bo = pv; break;
      case 1: ro = qv; go = max; bo = pv; break;
      case 2: ro = pv; go = max; bo = tv; break;
      case 3: ro = pv; go = qv; bo = max; break;
      case 4: ro = tv; go = pv; bo = max; break;
      default: ro = max; go = pv; bo = qv;
    }
    out[p] = clamp255(ro); out[p + 1] = clamp255(go); out[p + 2] = clamp255(bo);
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

/** Separable gaussian blur with standard deviation `sigma`, `kernelSize` taps, reflected borders. */
export function gaussianBlur(img: RgbImage, sigma: number, kernelSize = 9): RgbImage {
  checkImage(img, 'gaussianBlur');
  if (!(sigma > 0)) throw new Error(`gaussianBlur: sigma must be positive, got ${sigma}`);
  if (!Number.isInteger(kernelSize) || kernelSize < 1 || kernelSize % 2 === 0) {
    throw new Error(`gaussianBlur: kernelSize must be a positive odd integer, got ${kernelSize}`);
  }
  const radius = (kernelSize - 1) / 2;
  const kernel = new Float64Array(kernelSize);
  let total = 0;
  for (let k = 0; k < kernelSize; k++) total += kernel[k] = Math.exp(-((k - radius) ** 2) / (2 * sigma * sigma));
  for (let k = 0; k < kernelSize; k++) kernel[k] /= total;
  const reflect = (i: number, n: number): number => {
    if (n === 1) return 0;
    const period = 2 * (n - 1);
    const m = ((i % period) + period) % period;
    return m < n ? m : period - m;
  };
  const { width, height, data } = img;
  const tmp = new Float32Array(data.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (let k = 0; k < kernelSize; k++) acc += kernel[k] * data[(y * width + reflect(x + k - radius, width)) * 3 + c];
        tmp[(y * width + x) * 3 + c] = acc;
      }
    }
  }
  const out = new Uint8Array(data.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (let k = 0; k < kernelSize; k++) acc += kernel[k] * tmp[(reflect(y + k - radius, height) * width + x) * 3 + c];
        out[(y * width + x) * 3 + c] = clamp255(acc);
      }
    }
  }
  return { data: out, width, height };
}

/** Gaussian blur with sigma uniform in [0.1, 2.0] (the DINO / DeiT-III `GaussianBlur`). */
export function randomGaussianBlur(img: RgbImage, rng: Rng): RgbImage {
  return gaussianBlur(img, uniform(rng, 0.1, 2.0));
}

/** Float32 HWC normalised with the ImageNet mean and std. */
export function normalize(img: RgbImage): Float32Array {
  return normalizeRgb(img.data, img.height, img.width);
}

// ---------------------------------------------------------------------------------------------
// Recipes

export interface SupervisedAugmentOptions extends ResizedCropOptions {
  /** Output side (default 224). */
  size?: number;
  /** Probability of a horizontal flip (default 0.5). */
  hflip?: number;
  /** DeiT-III 3-Augment: one of grayscale / solarize / blur, chosen uniformly (default true). */
  threeAugment?: boolean;
  /** Colour jitter strength for brightness, contrast and saturation (default 0.3; 0 disables). */
  colorJitter?: number;
}

/**
 * DeiT-III's training transform: random resized crop, horizontal flip, 3-Augment, colour jitter,
 * ImageNet normalisation. Returns float32 HWC of `size` x `size` x 3.
 */
export function supervisedAugment(rgb: Uint8Array, width: number, height: number, rng: Rng, opts: SupervisedAugmentOptions = {}): Float32Array {
  const size = opts.size ?? 224;
  let img = randomResizedCrop({ data: rgb, width, height }, rng, size, opts);
  if (rng.float() < (opts.hflip ?? 0.5)) img = hflip(img);
  if (opts.threeAugment ?? true) {
    const choice = rng.int(3);
    img = choice === 0 ? grayscale(img) : choice === 1 ? solarize(img) : randomGaussianBlur(img, rng);
  }
  const cj = opts.colorJitter ?? 0.3;
  if (cj > 0) img = colorJitter(img, rng, { brightness: cj, contrast: cj, saturation: cj });
  return normalize(img);
}

export interface EvalTransformOptions {
  /** The shorter side is resized to this (default 256). */
  resize?: number;
  /** Then a centred square crop of this side (default 224). */
  crop?: number;
}

/** Resize the shorter side, centre crop, normalise (torchvision's eval transform); float32 HWC. */
export function evalTransform(rgb: Uint8Array, width: number, height: number, opts: EvalTransformOptions = {}): Float32Array {
  const plan = planTransform(width, height, { kind: 'eval', resize: opts.resize, crop: opts.crop });
  const sx = width / plan.resizeWidth, sy = height / plan.resizeHeight;
  const box = { x: plan.crop.left * sx, y: plan.crop.top * sy, width: plan.crop.width * sx, height: plan.crop.height * sy };
  return normalize(resizedCrop({ data: rgb, width, height }, box, plan.crop.width, plan.crop.height));
}

export interface MultiCropOptions {
  /** Side of the 2 global crops (default 224). */
  globalSize?: number;
  /** Side of the local crops (default 96). */
  localSize?: number;
  /** Number of local crops (default 8, as DINOv2). */
  localCrops?: number;
  globalScale?: [number, number];
  localScale?: [number, number];
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
 * DINOv2's `DataAugmentationDINO`: each crop gets a random resized crop and flip, colour jitter
 * (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p = 0.8 and grayscale with p = 0.2;
 * then blur with p = 1.0 on the first global crop, blur p = 0.1 and solarize p = 0.2 on the
 * second, blur p = 0.5 on the local crops.
 */
export function multiCrop(rgb: Uint8Array, width: number, height: number, rng: Rng, opts: MultiCropOptions = {}): MultiCrops {
  const globalSize = opts.globalSize ?? 224;
  const localSize = opts.localSize ?? 96;
  const localCrops = opts.localCrops ?? 8;
  if (!Number.isInteger(localCrops) || localCrops < 0) throw new Error(`multiCrop: localCrops must be a non-negative integer, got ${localCrops}`);
  const source: RgbImage = { data: rgb, width, height };
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
  const g1 = maybeBlur(crop(globalSize, globalScale), 1.0);
  let g2 = maybeBlur(crop(globalSize, globalScale), 0.1);
  if (rng.float() < 0.2) g2 = solarize(g2);
  const local: Float32Array[] = [];
  for (let k = 0; k < localCrops; k++) local.push(normalize(maybeBlur(crop(localSize, localScale), 0.5)));
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
