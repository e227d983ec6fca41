/**
 * From images to what the probes and LOST read: model inputs with their geometry, and per-image token
 * features on the host.
 *
 * Two input geometries:
 * - `square` (probes, and `discover --size`): resize (PIL bicubic) to size x size; ground-truth boxes
 *   are scaled by (size / width, size / height).
 * - `native` (LOST's protocol, the default of `discover`): keep the image's pixels (after an optional
 *   shrink so the longer side is at most `maxSide`, boxes scaled by the same factor), normalise, then
 *   pad right and bottom with zeros (the mean colour) to a multiple of the patch size. LOST clips
 *   its box to the unpadded size.
 * Either way boxes, predicted and ground truth, are in pixels of the model input.
 */
import * as tf from '@tensorflow/tfjs-core';
import { normalizeRgb, resizeBicubic, type Box, type DatasetItem, type Rng } from '@vitreg/core';
import { checkVitFits, detectOutliers, type ViTConfig, type ViTOutput } from '@vitreg/registers';

export type InputGeometry = { kind: 'square'; size: number } | { kind: 'native'; maxSide?: number };

/** One image ready for the model. */
export interface ModelInput {
  /** Normalised HWC float32, `paddedHeight` x `paddedWidth`. */
  data: Float32Array;
  paddedHeight: number;
  paddedWidth: number;
  /** The image's extent inside the padded input (no padding: equal to the padded size). */
  width: number;
  height: number;
  /** The resized 8-bit RGB image (width x height), for pictures and pixel targets. */
  rgb: Uint8Array;
  /** Ground-truth boxes scaled into the input frame. */
  boxes: Box[];
  /** Scale factors applied to x and y. */
  scale: [number, number];
}

/** Resize / pad an item as `geometry` says (see the module comment). */
export function prepareInput(
  item: Pick<DatasetItem, 'image' | 'width' | 'height' | 'boxes'>,
  geometry: InputGeometry,
  patchSize: number,
): ModelInput {
  let w: number, h: number;
  if (geometry.kind === 'square') {
    w = h = geometry.size;
    if (geometry.size % patchSize !== 0) throw new Error(`input size ${geometry.size} is not a multiple of the patch size ${patchSize}`);
  } else {
    const s = geometry.maxSide !== undefined ? Math.min(1, geometry.maxSide / Math.max(item.width, item.height)) : 1;
    w = Math.max(1, Math.round(item.width * s));
    h = Math.max(1, Math.round(item.height * s));
  }
  const rgb = resizeBicubic({ data: item.image, width: item.width, height: item.height }, w, h).data;
  const sx = w / item.width,
    sy = h / item.height;
  const pw = Math.ceil(w / patchSize) * patchSize,
    ph = Math.ceil(h / patchSize) * patchSize;
  const norm = normalizeRgb(rgb, h, w);
  let data = norm;
  if (pw !== w || ph !== h) {
    data = new Float32Array(ph * pw * 3);
    for (let y = 0; y < h; y++) data.set(norm.subarray(y * w * 3, (y + 1) * w * 3), y * pw * 3);
  }
  const boxes = item.boxes.map((b): Box => [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]);
  return { data, paddedHeight: ph, paddedWidth: pw, width: w, height: h, rgb, boxes, scale: [sx, sy] };
}

/** The model a batch is for and what its forward returns besides the last block's tokens (batchTensor's memory check). */
export interface BatchFit {
  model: { config: ViTConfig };
  outputs?: { attention?: 'none' | 'last' | 'all'; layers?: boolean };
}

/**
 * Stack inputs of equal padded size into an NHWC tensor. With `fit`, first refuse a batch whose tfjs
 * forward cannot fit the backend (checkVitFits: the weights, the activations at this batch and input
 * size, the outputs asked for), with the numbers and the largest batch that fits, before anything of it
 * is allocated (Encoders check their own batches).
 */
export function batchTensor(inputs: ModelInput[], fit?: BatchFit): tf.Tensor4D {
  const { paddedHeight: h, paddedWidth: w } = inputs[0];
  if (fit) checkVitFits(fit.model.config, { batch: inputs.length, imageSize: [h, w], outputs: fit.outputs, what: 'the probe forward' });
  const data = new Float32Array(inputs.length * h * w * 3);
  inputs.forEach((inp, i) => {
    if (inp.paddedHeight !== h || inp.paddedWidth !== w) {
      throw new Error(`batch: input ${i} is ${inp.paddedWidth}x${inp.paddedHeight}, expected ${w}x${h} like the first`);
    }
    data.set(inp.data, i * h * w * 3);
  });
  return tf.tensor4d(data, [inputs.length, h, w, 3]);
}

/**
 * The LOST features of a forward pass run with `{ keys: true }` or `{ values: true }`: the last block's
 * keys (or values) of the patch tokens, CLS and registers dropped, heads concatenated: [B, P, H * hd].
 */
export function lostFeatures(out: ViTOutput, which: 'keys' | 'values'): tf.Tensor3D {
  const kv = which === 'keys' ? out.keys : out.values;
  if (!kv) throw new Error(`LOST: the forward pass did not return ${which} (run it with { ${which}: true })`);
  const [b, heads, n, hd] = kv.shape;
  const p = out.grid[0] * out.grid[1];
  return tf.tidy(() => {
    const patches = tf.slice(kv, [0, 0, n - p, 0], [b, heads, p, hd]);
    return tf.reshape(tf.transpose(patches, [0, 2, 1, 3]), [b, p, heads * hd]);
  });
}

/** One image's output tokens on the host. */
export interface ImageTokens {
  grid: [number, number];
  dim: number;
  numRegisters: number;
  /** Normalised output tokens: CLS [dim], registers [R * dim], patches [P * dim] (row-major grid). */
  cls: Float32Array;
  registers: Float32Array;
  patches: Float32Array;
  /** L2 norms of the normalised patch tokens [P] (the outlier criterion of the analysis). */
  patchNorms: Float32Array;
}

/** Copy a forward pass's output tokens to the host, one ImageTokens per image (does not dispose `out`). */
export async function imageTokens(out: Pick<ViTOutput, 'cls' | 'registers' | 'patches' | 'grid'>): Promise<ImageTokens[]> {
  const [b, p, dim] = out.patches.shape;
  const r = out.registers.shape[1];
  const norms = tf.tidy(() => tf.sqrt(tf.sum(tf.square(out.patches), -1)));
  const [cls, regs, patches, pn] = (await Promise.all([
    out.cls.data(),
    out.registers.data(),
    out.patches.data(),
    norms.data(),
  ])) as Float32Array[];
  norms.dispose();
  return Array.from({ length: b }, (_, i) => ({
    grid: out.grid,
    dim,
    numRegisters: r,
    cls: cls.slice(i * dim, (i + 1) * dim),
    registers: regs.slice(i * r * dim, (i + 1) * r * dim),
    patches: patches.slice(i * p * dim, (i + 1) * p * dim),
    patchNorms: pn.slice(i * p, (i + 1) * p),
  }));
}

/** Which token a global probe reads. */
export type TokenChoice = 'cls' | 'normal' | 'outlier' | 'register' | 'cls+mean';
export const TOKEN_CHOICES: readonly TokenChoice[] = ['cls', 'normal', 'outlier', 'register', 'cls+mean'];

export interface OutlierChoice {
  /** Patch index of the chosen outlier. */
  patch: number;
  /** False when the automatic rule found no outlier and the max-norm patch was taken instead. */
  detected: boolean;
}

/**
 * The outlier patch of an image: the highest-norm patch among those `detectOutliers` flags (threshold
 * 'auto' = bimodality of the log norms, or a fixed norm); when none is flagged, the max-norm patch.
 */
export function pickOutlier(t: ImageTokens, threshold: 'auto' | number = 'auto'): OutlierChoice {
  const found = detectOutliers(t.patchNorms, t.grid, { threshold }).indices;
  const candidates = found.length > 0 ? found : Array.from(t.patchNorms.keys());
  let best = candidates[0];
  for (const i of candidates) if (t.patchNorms[i] > t.patchNorms[best]) best = i;
  return { patch: best, detected: found.length > 0 };
}

/** A uniformly random patch that is not an outlier (any patch when all are). */
export function pickNormal(t: ImageTokens, rng: Rng, threshold: 'auto' | number = 'auto'): number {
  const outliers = new Set(detectOutliers(t.patchNorms, t.grid, { threshold }).indices);
  const normal = Array.from(t.patchNorms.keys()).filter((i) => !outliers.has(i));
  const pool = normal.length > 0 ? normal : Array.from(t.patchNorms.keys());
  return pool[rng.int(pool.length)];
}

export interface SelectedToken {
  feature: Float32Array;
  /** Patch index for 'normal' / 'outlier', else null. */
  patch: number | null;
  /** 'outlier' only: whether a real outlier was found (see pickOutlier). */
  detected: boolean | null;
}

/**
 * The feature a global probe reads from one image: CLS; a random normal patch; the outlier patch;
 * register `register` (default 0); or CLS concatenated with the mean patch token (DINOv2's linear head).
 */
export function selectToken(
  t: ImageTokens,
  choice: TokenChoice,
  opts: { rng: Rng; threshold?: 'auto' | number; register?: number },
): SelectedToken {
  const d = t.dim;
  const patch = (i: number) => t.patches.slice(i * d, (i + 1) * d);
  switch (choice) {
    case 'cls':
      return { feature: t.cls.slice(), patch: null, detected: null };
    case 'normal': {
      const i = pickNormal(t, opts.rng, opts.threshold);
      return { feature: patch(i), patch: i, detected: null };
    }
    case 'outlier': {
      const o = pickOutlier(t, opts.threshold);
      return { feature: patch(o.patch), patch: o.patch, detected: o.detected };
    }
    case 'register': {
      const r = opts.register ?? 0;
      if (t.numRegisters === 0) throw new Error("token 'register': the model has no register tokens");
      if (!(Number.isInteger(r) && r >= 0 && r < t.numRegisters)) {
        throw new Error(`token 'register': register index ${r} is outside [0, ${t.numRegisters})`);
      }
      return { feature: t.registers.slice(r * d, (r + 1) * d), patch: null, detected: null };
    }
    case 'cls+mean': {
      const p = t.patches.length / d;
      const f = new Float32Array(2 * d);
      f.set(t.cls, 0);
      for (let i = 0; i < p; i++) for (let k = 0; k < d; k++) f[d + k] += t.patches[i * d + k] / p;
      return { feature: f, patch: null, detected: null };
    }
    default:
      throw new Error(`unknown token '${choice as string}': expected one of ${TOKEN_CHOICES.join(', ')}`);
  }
}

/**
 * The input values under patch `index` of a normalised HWC image (width `width`): patchSize x
 * patchSize x 3 values, row-major, the target of the pixel probe.
 */
export function patchPixels(data: Float32Array, width: number, grid: [number, number], patchSize: number, index: number): Float32Array {
  const r = Math.floor(index / grid[1]),
    c = index % grid[1];
  const out = new Float32Array(patchSize * patchSize * 3);
  for (let y = 0; y < patchSize; y++) {
    const from = ((r * patchSize + y) * width + c * patchSize) * 3;
    out.set(data.subarray(from, from + patchSize * 3), y * patchSize * 3);
  }
  return out;
}
