/**
 * Host-side inputs of the training graphs (graphs.ts), from the loop's PreparedBatch: the drop-path
 * factors (drawn from each image's generator exactly as the tfjs model draws them, so both engines drop
 * the same paths), and the iBOT rows padded to a bucket size so that an engine caches a few sessions
 * rather than one per step (padding rows: index 0, weight 0, target 0, which change nothing).
 */
import { forwardDropPathFactors, type ViTConfig } from '@vitreg/registers';
import type { Rng } from '@vitreg/core';
import type { DinoBatch } from '../batch.js';
import type { MaskBatch } from '../masking.js';

/**
 * The bucket of `n` masked patches: 0 for none, else n rounded up to a multiple of 2^max(3, floor(log2 n) - 3)
 * (at most 1/8 of padding above 64 rows; about 8 buckets per doubling, so a run's masked-patch counts,
 * which vary by some tens of percent, fall in a handful of them).
 */
export function maskRowBucket(n: number): number {
  if (!(Number.isInteger(n) && n >= 0)) throw new Error(`maskRowBucket: expected a non-negative integer, got ${n}`);
  if (n === 0) return 0;
  const q = 2 ** Math.max(3, Math.floor(Math.log2(n)) - 3);
  return Math.ceil(n / q) * q;
}

/** The iBOT inputs `mask_index` (int64) and `mask_weight` of a step, padded to `rows` (index 0, weight 0). */
export function padMaskRows(masks: MaskBatch, rows: number): { index: BigInt64Array; weight: Float32Array } {
  const n = masks.indices.length;
  if (rows < n) throw new Error(`padMaskRows: ${n} masked patches do not fit in ${rows} rows`);
  const index = new BigInt64Array(rows);
  masks.indices.forEach((v, i) => {
    index[i] = BigInt(v);
  });
  const weight = new Float32Array(rows);
  weight.set(masks.weights.subarray(0, n));
  return { index, weight };
}

/** `values` [n, cols] padded with zero rows to [rows, cols] (the iBOT targets of padding rows). */
export function padRows(values: Float32Array, rows: number, cols: number): Float32Array {
  if (values.length % cols !== 0 || values.length / cols > rows)
    throw new Error(`padRows: ${values.length} values do not fit in [${rows}, ${cols}]`);
  if (values.length === rows * cols) return values;
  const out = new Float32Array(rows * cols);
  out.set(values);
  return out;
}

/**
 * The `drop_path` input [depth, 2, n] of a supervised step (or micro-batch) whose images draw from
 * `rngs` (the batch's `dropPath` slice), or null when the model has no drop path.
 */
export function supervisedDropPath(vit: ViTConfig, rngs: Rng[]): Float32Array | null {
  return vit.drop_path_rate > 0 ? forwardDropPathFactors(vit, rngs, rngs.length) : null;
}

/**
 * The `drop_path_global` [depth, 2, 2B] and `drop_path_local` [depth, 2, nLocal B] inputs of a DINO step,
 * as steps/dino.ts draws them: crop k of image i from `batch.dropPath[i].fork(k)` (k = 0, 1 global, 2.. local),
 * the global forward first. Null when the model has no drop path.
 */
export function dinoDropPath(vit: ViTConfig, batch: DinoBatch): { global: Float32Array; local: Float32Array | null } | null {
  if (!(vit.drop_path_rate > 0)) return null;
  const crop = (k: number) => batch.dropPath.map((r) => r.fork(k));
  const global = forwardDropPathFactors(vit, [...crop(0), ...crop(1)], 2 * batch.size);
  const localRngs = Array.from({ length: batch.localCrops }, (_, k) => crop(2 + k)).flat();
  const local = batch.locals && batch.localCrops > 0 ? forwardDropPathFactors(vit, localRngs, localRngs.length) : null;
  return { global, local };
}
