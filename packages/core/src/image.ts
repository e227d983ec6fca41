/**
 * Image input: decode with sharp (libvips) to 8-bit RGB, resize and crop the way the DINOv2 / ImageNet
 * evaluation does, normalise with the ImageNet mean and std, and stack into NHWC float32 batches.
 *
 * Decoding follows PIL's `Image.open(path).convert('RGB')`, which DINOv2's data loaders use: grayscale
 * becomes RGB, an alpha channel is dropped (not composited), 16-bit samples are scaled to 8 bits, and the
 * EXIF orientation is NOT applied. Resizing is Pillow's BICUBIC resampling re-implemented bit for bit
 * (`resizeBicubic`): sharp's own cubic resize differs from Pillow by up to 2 levels when shrinking and
 * up to 18 when enlarging, which would move the model's features away from the reference.
 *
 * Finding image files by extension, folder or pattern is image-files.ts's job.
 */
import sharp from 'sharp';

/** ImageNet RGB mean and std (torchvision / DINOv2). */
export const IMAGENET_MEAN: readonly [number, number, number] = [0.485, 0.456, 0.406];
export const IMAGENET_STD: readonly [number, number, number] = [0.229, 0.224, 0.225];

/**
 * - `eval`: the DINOv2 / ImageNet evaluation transform: resize the shorter side to `resize` (default 256;
 *   the longer one to int(resize * long / short)), then centre-crop `crop` x `crop` (default 224).
 * - `keep-aspect`: keep the aspect ratio, round each side to a multiple of `patchSize` (at least one
 *   patch), after shrinking so the longer side is at most `maxSide` when given.
 * - `resize`: resize to exactly `height` x `width`.
 */
export type ImageTransform =
  | { kind: 'eval'; resize?: number; crop?: number }
  | { kind: 'keep-aspect'; patchSize: number; maxSide?: number }
  | { kind: 'resize'; height: number; width: number };

/** 8-bit RGB pixels, row-major HWC. */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** A normalised image ready for the model: float32 HWC. */
export interface LoadedImage {
  data: Float32Array;
  height: number;
  width: number;
  path: string;
}

/** Where a transform resizes an image to, and the box it then keeps. */
export interface TransformPlan {
  resizeWidth: number;
  resizeHeight: number;
  crop: { left: number; top: number; width: number; height: number };
}

/**
 * The most pixels (width x height) an input image may declare: 2^26, 8192 x 8192 (a 61-megapixel photo
 * fits), decoded to at most 192 MiB of RGB. sharp's own default (16383 x 16383, 268 M pixels) would let a
 * 427 KB PNG of zeros declaring 12000 x 12000 decode to 432 MB (3 s, 524 MB RSS here); images over the
 * limit are refused from their header, before any pixel is decoded. `VITREG_MAX_IMAGE_PIXELS` (a
 * positive integer) replaces it. Mutable, for tests.
 */
export const IMAGE_LIMITS = { maxPixels: 2 ** 26 };

/** The pixel limit in force: VITREG_MAX_IMAGE_PIXELS, else IMAGE_LIMITS.maxPixels. */
export function maxImagePixels(): number {
  const env = Number(process.env.VITREG_MAX_IMAGE_PIXELS);
  return Number.isSafeInteger(env) && env > 0 ? env : IMAGE_LIMITS.maxPixels;
}

/** Decode any image sharp reads into 8-bit RGB (see the module comment for the rules); refuses one over maxImagePixels(). */
export async function decodeImage(file: string): Promise<RgbImage> {
  const limit = maxImagePixels();
  try {
    const { data, info } = await sharp(file, { failOn: 'error', limitInputPixels: limit })
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
  } catch (err) {
    // libvips repeats its warnings on further lines: keep the error one line.
    const first = String((err as Error)?.message ?? err)
      .split('\n')[0]!
      .trim();
    if (/exceeds pixel limit/i.test(first)) {
      // sharp refused it from the header: name its size (the header again, nothing decoded)
      const meta = await sharp(file, { limitInputPixels: false })
        .metadata()
        .catch(() => undefined);
      const size = meta?.width && meta.height ? `${meta.width}x${meta.height} (${meta.width * meta.height} pixels)` : 'over the limit';
      throw new Error(
        `${file}: image is ${size}, more than the limit of ${limit} pixels (a decompression bomb, or an image to shrink first; VITREG_MAX_IMAGE_PIXELS raises the limit)`,
        { cause: err },
      );
    }
    throw new Error(`${file}: cannot decode image (truncated or not an image): ${first}`, { cause: err });
  }
}

/** The resize size and crop box `transform` gives for a `width` x `height` image (torchvision's rules). */
export function planTransform(width: number, height: number, transform: ImageTransform): TransformPlan {
  switch (transform.kind) {
    case 'eval': {
      const resize = transform.resize ?? 256;
      const crop = transform.crop ?? 224;
      positiveInt(resize, 'eval transform: resize');
      positiveInt(crop, 'eval transform: crop');
      if (crop > resize) throw new Error(`eval transform: crop (${crop}) must not exceed resize (${resize})`);
      // torchvision Resize(int): the shorter side becomes `resize`, the longer int(resize * long / short).
      const short = Math.min(width, height);
      const long = Math.max(width, height);
      const newLong = Math.floor((resize * long) / short);
      const [rw, rh] = width <= height ? [resize, newLong] : [newLong, resize];
      // torchvision CenterCrop: top = int(round((h - crop) / 2)), Python's round (half to even).
      return {
        resizeWidth: rw,
        resizeHeight: rh,
        crop: { left: roundHalfEven((rw - crop) / 2), top: roundHalfEven((rh - crop) / 2), width: crop, height: crop },
      };
    }
    case 'keep-aspect': {
      const p = transform.patchSize;
      positiveInt(p, 'keep-aspect transform: patchSize');
      let scale = 1;
      let limit = Infinity;
      if (transform.maxSide !== undefined) {
        positiveInt(transform.maxSide, 'keep-aspect transform: maxSide');
        if (transform.maxSide < p) throw new Error(`keep-aspect transform: maxSide (${transform.maxSide}) is below patchSize (${p})`);
        scale = Math.min(1, transform.maxSide / Math.max(width, height));
        limit = Math.floor(transform.maxSide / p) * p;
      }
      const side = (n: number) => Math.min(limit, Math.max(p, Math.round((n * scale) / p) * p));
      const rw = side(width);
      const rh = side(height);
      return { resizeWidth: rw, resizeHeight: rh, crop: { left: 0, top: 0, width: rw, height: rh } };
    }
    case 'resize': {
      positiveInt(transform.width, 'resize transform: width');
      positiveInt(transform.height, 'resize transform: height');
      const { width: w, height: h } = transform;
      return { resizeWidth: w, resizeHeight: h, crop: { left: 0, top: 0, width: w, height: h } };
    }
    default:
      throw new Error(`unknown image transform kind '${(transform as { kind: string }).kind}': expected eval, keep-aspect or resize`);
  }
}

/** Resize (bicubic) and crop 8-bit RGB pixels as `plan` says. */
export function applyPlan(image: RgbImage, plan: TransformPlan): RgbImage {
  const resized = resizeBicubic(image, plan.resizeWidth, plan.resizeHeight);
  return cropRgb(resized, plan.crop);
}

/** Cut a box out of 8-bit RGB pixels; the box must lie inside the image. */
export function cropRgb(image: RgbImage, box: TransformPlan['crop']): RgbImage {
  const { left, top, width, height } = box;
  if (left === 0 && top === 0 && width === image.width && height === image.height) return image;
  if (left < 0 || top < 0 || left + width > image.width || top + height > image.height) {
    throw new Error(`cropRgb: box ${width}x${height} at (${left}, ${top}) is outside the ${image.width}x${image.height} image`);
  }
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * image.width + left) * 3;
    data.set(image.data.subarray(from, from + width * 3), y * width * 3);
  }
  return { data, width, height };
}

/**
 * Resize 8-bit RGB pixels with PIL's BICUBIC resampling (Pillow's Resample.c, bit for bit): a separable
 * convolution with the a = -0.5 cubic kernel, widened by the scale factor when shrinking (antialias),
 * 22-bit fixed-point weights, horizontal pass first, each pass rounded and clipped to 8 bits.
 */
export function resizeBicubic(image: RgbImage, width: number, height: number): RgbImage {
  positiveInt(width, 'resizeBicubic: width');
  positiveInt(height, 'resizeBicubic: height');
  if (width === image.width && height === image.height) return image;
  const vert = resampleCoefficients(image.height, height);
  const horiz = resampleCoefficients(image.width, width);
  // Horizontal pass over only the source rows the vertical pass reads.
  const firstRow = vert.bounds[0];
  const lastRow = vert.bounds[2 * (height - 1)] + vert.bounds[2 * (height - 1) + 1];
  const rows = lastRow - firstRow;
  let src = image.data;
  let srcWidth = image.width;
  let rowOffset = firstRow;
  if (width !== image.width) {
    const tmp = new Uint8Array(rows * width * 3);
    for (let y = 0; y < rows; y++) {
      const inRow = (y + firstRow) * image.width * 3;
      const outRow = y * width * 3;
      for (let x = 0; x < width; x++) {
        const min = horiz.bounds[2 * x];
        const n = horiz.bounds[2 * x + 1];
        const k = x * horiz.size;
        let r = HALF,
          g = HALF,
          b = HALF;
        for (let i = 0; i < n; i++) {
          const w = horiz.weights[k + i];
          const p = inRow + (min + i) * 3;
          r += src[p] * w;
          g += src[p + 1] * w;
          b += src[p + 2] * w;
        }
        tmp[outRow + 3 * x] = clip8(r);
        tmp[outRow + 3 * x + 1] = clip8(g);
        tmp[outRow + 3 * x + 2] = clip8(b);
      }
    }
    src = tmp;
    srcWidth = width;
    rowOffset = 0;
    if (height === image.height) return { data: tmp, width, height };
  }
  const out = new Uint8Array(width * height * 3);
  const rowStride = srcWidth * 3;
  for (let y = 0; y < height; y++) {
    const min = vert.bounds[2 * y] - firstRow + rowOffset;
    const n = vert.bounds[2 * y + 1];
    const k = y * vert.size;
    for (let x = 0; x < width * 3; x++) {
      let acc = HALF;
      for (let i = 0; i < n; i++) acc += src[(min + i) * rowStride + x] * vert.weights[k + i];
      out[y * width * 3 + x] = clip8(acc);
    }
  }
  return { data: out, width, height };
}

const PRECISION_BITS = 32 - 8 - 2;
const HALF = 1 << (PRECISION_BITS - 1);

function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's bicubic filter (a = -0.5), support 2. */
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: first tap and tap count per output, fixed-point weights. */
function resampleCoefficients(inSize: number, outSize: number): { bounds: Int32Array; weights: Int32Array; size: number } {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 2 * filterScale;
  const size = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * size);
  const k = new Float64Array(size);
  const ss = 1 / filterScale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    for (let x = 0; x < n; x++) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    for (let x = 0; x < n; x++) {
      const w = total !== 0 ? k[x] / total : k[x];
      weights[xx * size + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = n;
  }
  return { bounds, weights, size };
}

/** Decode, transform and normalise one image file. */
export async function loadImage(file: string, transform: ImageTransform): Promise<LoadedImage> {
  const decoded = await decodeImage(file);
  const out = applyPlan(decoded, planTransform(decoded.width, decoded.height, transform));
  return { data: normalizeRgb(out.data, out.height, out.width), height: out.height, width: out.width, path: file };
}

/** Per-channel lookup tables of (v / 255 - mean) / std, each step rounded to float32 as torchvision does. */
const NORMALIZE_LUT: Float32Array[] = [0, 1, 2].map((c) => {
  const mean = Math.fround(IMAGENET_MEAN[c]);
  const std = Math.fround(IMAGENET_STD[c]);
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = Math.fround(Math.fround(v / 255) - mean) / std;
  return lut;
});

/** 8-bit RGB HWC -> float32 HWC normalised with the ImageNet mean and std. */
export function normalizeRgb(rgb: Uint8Array, height: number, width: number): Float32Array {
  if (rgb.length !== height * width * 3) {
    throw new Error(`normalizeRgb: expected ${height}x${width}x3 = ${height * width * 3} bytes, got ${rgb.length}`);
  }
  const out = new Float32Array(rgb.length);
  const [r, g, b] = NORMALIZE_LUT;
  for (let i = 0; i < rgb.length; i += 3) {
    out[i] = r[rgb[i]];
    out[i + 1] = g[rgb[i + 1]];
    out[i + 2] = b[rgb[i + 2]];
  }
  return out;
}

/** Stack equally sized images into one NHWC batch; an image of another size is an error naming it. */
export function stackImages(images: readonly { data: Float32Array; height: number; width: number; path?: string }[]): {
  data: Float32Array;
  shape: [number, number, number, number];
} {
  if (images.length === 0) throw new Error('stackImages: no images to stack');
  const { height, width } = images[0];
  const size = height * width * 3;
  const data = new Float32Array(images.length * size);
  images.forEach((img, i) => {
    const name = img.path ?? `image ${i}`;
    if (img.height !== height || img.width !== width) {
      const first = images[0].path ?? 'image 0';
      throw new Error(
        `stackImages: ${name} is ${img.height}x${img.width}, but ${first} is ${height}x${width}; use a transform that gives one size`,
      );
    }
    if (img.data.length !== size)
      throw new Error(`stackImages: ${name} has ${img.data.length} values, expected ${height}x${width}x3 = ${size}`);
    data.set(img.data, i * size);
  });
  return { data, shape: [images.length, height, width, 3] };
}

/** Encode 8-bit RGB or RGBA HWC pixels as PNG. */
export async function encodePng(rgb: Uint8Array, width: number, height: number, channels: 3 | 4 = 3): Promise<Buffer> {
  if (rgb.length !== width * height * channels) {
    throw new Error(`encodePng: expected ${height}x${width}x${channels} = ${width * height * channels} bytes, got ${rgb.length}`);
  }
  return sharp(rgb, { raw: { width, height, channels } }).png().toBuffer();
}

function positiveInt(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${what} must be a positive integer, got ${v}`);
}

/** Python's round(): halves go to the even neighbour (torchvision's crop and resize sizes round so). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
