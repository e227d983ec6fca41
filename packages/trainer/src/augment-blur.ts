/**
 * Blurs on 8-bit RGB HWC images: torchvision's `GaussianBlur(kernel_size=9)` (DINOv2's multi-crop) and
 * PIL's `ImageFilter.GaussianBlur` (an extended box blur, DeiT-III's 3-Augment), which are different
 * filters, each with its random-sigma / random-radius form.
 */
import type { Rng, RgbImage } from '@vitreg/core';
import { checkImage, uniform, roundHalfEven, f32, reflectIndex } from './augment-pixels.js';

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
  const xs = new Int32Array(width * kernelSize),
    ys = new Int32Array(height * kernelSize);
  for (let x = 0; x < width; x++) for (let k = 0; k < kernelSize; k++) xs[x * kernelSize + k] = reflectIndex(x + k - radius, width) * 3;
  for (let y = 0; y < height; y++)
    for (let k = 0; k < kernelSize; k++) ys[y * kernelSize + k] = reflectIndex(y + k - radius, height) * width * 3;
  const tmp = new Float64Array(data.length);
  for (let y = 0; y < height; y++) {
    const row = y * width * 3;
    for (let x = 0; x < width; x++) {
      let r = 0,
        g = 0,
        b = 0;
      for (let k = 0; k < kernelSize; k++) {
        const w = kernel[k],
          p = row + xs[x * kernelSize + k];
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
  const line = new Uint8Array(n),
    out = new Uint8Array(n);
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
