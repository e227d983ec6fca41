/**
 * LOST object discovery (Siméoni et al., "Localizing Objects with Self-Supervised Transformers and no
 * Labels", BMVC 2021), as used in "Vision Transformers Need Registers" (Table 3).
 *
 * Given one feature vector per patch (keys of the last block, prefix tokens dropped, heads
 * concatenated), LOST:
 *  1. builds the patch similarity A = F F^T;
 *  2. scores each patch by its degree: the number of OTHER patches j with A[i, j] > 0 (LOST zeroes the
 *     diagonal and clamps negatives before counting);
 *  3. takes as seed the patch of lowest degree; ties go to the lower patch index (a stable sort, so
 *     results are reproducible; LOST's torch.argsort leaves tie order unspecified);
 *  4. expands the seed: among the k lowest-degree patches ("potentials", seed included) keeps those
 *     with A[seed, j] > 0 ("similars");
 *  5. sums the rows A[similars] and keeps patches whose sum is > 0 (the mask);
 *  6. keeps the 4-connected component of the mask holding the seed (scipy.ndimage.label's default
 *     structure);
 *  7. returns the component's bounding box in pixels: [x0, y0, x1, y1] = [cmin, rmin, cmax + 1,
 *     rmax + 1] * patch size (LOST's "+1 because excluded max"), clipped to the image size when the
 *     input was padded to a multiple of the patch size.
 *
 * Every step is exported on its own, working on plain row-major Float32Arrays, so each can be checked
 * against a straightforward implementation. `lost` runs them all; `affinity` computes A with tfjs.
 */
import * as tf from '@tensorflow/tfjs-core';

/** A box [x0, y0, x1, y1] in pixels (x1, y1 exclusive, continuous coordinates as in LOST). */
export type Box = [number, number, number, number];

/** LOST's defaults: k = 100 potentials. */
export const LOST_K_PATCHES = 100;

/**
 * Patch similarity A = F F^T of a [P, D] feature matrix, as a row-major P*P Float32Array. The
 * transpose is explicit so the product is a plain 2-D matMul (the fast path on wasm).
 */
export function affinity(features: tf.Tensor2D): Float32Array {
  const a = tf.tidy(() => tf.matMul(features, tf.transpose(features)));
  const data = a.dataSync() as Float32Array;
  a.dispose();
  return data;
}

/** The same A = F F^T on the host, for small feature sets (row-major [P, D] in, P*P out). */
export function affinityHost(features: Float32Array, numPatches: number, dim: number): Float32Array {
  checkLength('features', features, numPatches * dim, `[${numPatches}, ${dim}]`);
  const a = new Float32Array(numPatches * numPatches);
  for (let i = 0; i < numPatches; i++) {
    for (let j = i; j < numPatches; j++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += features[i * dim + d] * features[j * dim + d];
      a[i * numPatches + j] = s;
      a[j * numPatches + i] = s;
    }
  }
  return a;
}

/** Degree of every patch: how many other patches j have A[i, j] > 0 (the diagonal is not counted). */
export function degrees(a: Float32Array, numPatches: number): Int32Array {
  checkLength('affinity', a, numPatches * numPatches, `[${numPatches}, ${numPatches}]`);
  const deg = new Int32Array(numPatches);
  for (let i = 0; i < numPatches; i++) {
    let c = 0;
    const row = i * numPatches;
    for (let j = 0; j < numPatches; j++) if (j !== i && a[row + j] > 0) c++;
    deg[i] = c;
  }
  return deg;
}

/** Patch indices sorted by increasing degree; equal degrees keep increasing index (stable). */
export function lowestDegreeOrder(deg: Int32Array): Int32Array {
  const order = Array.from({ length: deg.length }, (_, i) => i);
  order.sort((i, j) => deg[i] - deg[j] || i - j);
  return Int32Array.from(order);
}

/**
 * Seed expansion: the patches among the k first of `order` (the potentials) whose similarity with the
 * seed is positive, in `order`'s order. The seed is order[0] and belongs to it unless its own feature
 * is zero.
 */
export function expandSeed(a: Float32Array, numPatches: number, order: Int32Array, k = LOST_K_PATCHES): Int32Array {
  if (!(Number.isInteger(k) && k >= 1)) throw new Error(`LOST: kPatches must be an integer >= 1, got ${k}`);
  const seed = order[0];
  const out: number[] = [];
  for (let t = 0; t < Math.min(k, order.length); t++) {
    const j = order[t];
    if (a[seed * numPatches + j] > 0) out.push(j);
  }
  return Int32Array.from(out);
}

/** Summed similarity of every patch to the expanded seed set: M[j] = sum over s of A[s, j]. */
export function seedScores(a: Float32Array, numPatches: number, similars: Int32Array): Float32Array {
  const m = new Float32Array(numPatches);
  for (const s of similars) {
    const row = s * numPatches;
    for (let j = 0; j < numPatches; j++) m[j] += a[row + j];
  }
  return m;
}

/** The LOST mask: 1 where the summed similarity is positive. */
export function scoreMask(scores: Float32Array): Uint8Array {
  return Uint8Array.from(scores, (v) => (v > 0 ? 1 : 0));
}

/**
 * The 4-connected component of `mask` (rows x cols, row-major) that holds `seed`, as a 0/1 array.
 * When the seed itself is outside the mask (only possible with a zero seed feature), the component is
 * the seed patch alone, so a box always exists.
 */
export function seedComponent(mask: Uint8Array, rows: number, cols: number, seed: number): Uint8Array {
  checkLength('mask', mask, rows * cols, `[${rows}, ${cols}]`);
  if (!(Number.isInteger(seed) && seed >= 0 && seed < rows * cols)) {
    throw new Error(`LOST: seed ${seed} is outside the ${rows}x${cols} patch grid`);
  }
  const comp = new Uint8Array(rows * cols);
  comp[seed] = 1;
  if (!mask[seed]) return comp;
  const stack = [seed];
  while (stack.length > 0) {
    const p = stack.pop()!;
    const r = Math.floor(p / cols);
    const c = p % cols;
    const next: number[] = [];
    if (r > 0) next.push(p - cols);
    if (r < rows - 1) next.push(p + cols);
    if (c > 0) next.push(p - 1);
    if (c < cols - 1) next.push(p + 1);
    for (const q of next) {
      if (mask[q] && !comp[q]) {
        comp[q] = 1;
        stack.push(q);
      }
    }
  }
  return comp;
}

/**
 * Bounding box of the set patches of `component`, in pixels: [cmin, rmin, cmax + 1, rmax + 1] times
 * the patch size, with x1 / y1 clipped to `imageSize` when given (the unpadded input size).
 */
export function componentBox(
  component: Uint8Array,
  rows: number,
  cols: number,
  patchSize: number,
  imageSize?: { width: number; height: number },
): Box {
  checkLength('component', component, rows * cols, `[${rows}, ${cols}]`);
  let rmin = Infinity,
    rmax = -1,
    cmin = Infinity,
    cmax = -1;
  for (let p = 0; p < rows * cols; p++) {
    if (!component[p]) continue;
    const r = Math.floor(p / cols),
      c = p % cols;
    rmin = Math.min(rmin, r);
    rmax = Math.max(rmax, r);
    cmin = Math.min(cmin, c);
    cmax = Math.max(cmax, c);
  }
  if (rmax < 0) throw new Error('LOST: the component is empty, no box');
  let x1 = (cmax + 1) * patchSize;
  let y1 = (rmax + 1) * patchSize;
  if (imageSize) {
    x1 = Math.min(x1, imageSize.width);
    y1 = Math.min(y1, imageSize.height);
  }
  return [cmin * patchSize, rmin * patchSize, x1, y1];
}

export interface LostOptions {
  /** Number of lowest-degree patches compared with the seed (LOST's k_patches, default 100). */
  kPatches?: number;
  /** Pixel size of the unpadded input; the box is clipped to it (LOST's padding case). */
  imageSize?: { width: number; height: number };
}

export interface LostResult {
  /** [x0, y0, x1, y1] in pixels of the model input. */
  box: Box;
  /** Seed patch as [row, col] and as a flat index. */
  seed: [number, number];
  seedIndex: number;
  /** Degree of every patch (positive similarities with other patches). */
  degrees: Int32Array;
  /** The expanded seed set (flat patch indices). */
  similars: Int32Array;
  /** Summed similarity to the expanded set, the mask (> 0) and the seed's 4-connected component. */
  scores: Float32Array;
  mask: Uint8Array;
  component: Uint8Array;
}

/**
 * LOST on a precomputed similarity matrix A (row-major [P, P], P = rows * cols, patches row-major).
 */
export function lostFromAffinity(a: Float32Array, grid: [number, number], patchSize: number, opts: LostOptions = {}): LostResult {
  const [rows, cols] = grid;
  const n = rows * cols;
  const deg = degrees(a, n);
  const order = lowestDegreeOrder(deg);
  const seedIndex = order[0];
  const similars = expandSeed(a, n, order, opts.kPatches ?? LOST_K_PATCHES);
  const scores = seedScores(a, n, similars);
  const mask = scoreMask(scores);
  const component = seedComponent(mask, rows, cols, seedIndex);
  const box = componentBox(component, rows, cols, patchSize, opts.imageSize);
  return {
    box,
    seed: [Math.floor(seedIndex / cols), seedIndex % cols],
    seedIndex,
    degrees: deg,
    similars,
    scores,
    mask,
    component,
  };
}

/**
 * LOST on patch features [P, D] (a tensor, or a row-major Float32Array with its dim) laid out on a
 * rows x cols grid.
 */
export function lost(
  features: tf.Tensor2D | { data: Float32Array; dim: number },
  grid: [number, number],
  patchSize: number,
  opts: LostOptions = {},
): LostResult {
  const [rows, cols] = grid;
  const n = rows * cols;
  let a: Float32Array;
  if (features instanceof tf.Tensor) {
    if (features.shape[0] !== n) {
      throw new Error(`LOST: features have ${features.shape[0]} rows, expected ${n} patches for a ${rows}x${cols} grid`);
    }
    a = affinity(features);
  } else {
    a = affinityHost(features.data, n, features.dim);
  }
  return lostFromAffinity(a, grid, patchSize, opts);
}

function checkLength(name: string, a: ArrayLike<number>, expected: number, shape: string): void {
  if (a.length !== expected) throw new Error(`LOST: ${name} has ${a.length} values, expected ${expected} for shape ${shape}`);
}
