/**
 * Feature matrices on the host: a row-major [n, dim] Float32Array with its labels or targets, plus the
 * small helpers every probe shares (standardisation, seeded splits, row selection).
 */
import { Rng } from '@vitreg/core';

/** n feature rows of `dim` values, row-major. */
export interface FeatureSet {
  x: Float32Array;
  n: number;
  dim: number;
}

/** Features with a class label per row. */
export interface LabelledFeatures extends FeatureSet {
  y: Int32Array;
}

/** Features with a real-valued target vector per row ([n, targetDim], row-major). */
export interface RegressionFeatures extends FeatureSet {
  targets: Float32Array;
  targetDim: number;
}

/** Throws unless the arrays have the lengths their shapes promise. */
export function checkFeatures(name: string, f: FeatureSet): void {
  if (!(Number.isInteger(f.n) && f.n >= 0 && Number.isInteger(f.dim) && f.dim >= 1)) {
    throw new Error(`${name}: expected integer n >= 0 and dim >= 1, got n=${f.n}, dim=${f.dim}`);
  }
  if (f.x.length !== f.n * f.dim) {
    throw new Error(`${name}: features hold ${f.x.length} values, expected n*dim = ${f.n}*${f.dim} = ${f.n * f.dim}`);
  }
  const y = (f as Partial<LabelledFeatures>).y;
  if (y !== undefined && y.length !== f.n) throw new Error(`${name}: ${y.length} labels for ${f.n} rows`);
  const r = f as Partial<RegressionFeatures>;
  if (r.targets !== undefined && r.targets.length !== f.n * (r.targetDim ?? 0)) {
    throw new Error(`${name}: targets hold ${r.targets.length} values, expected n*targetDim = ${f.n}*${r.targetDim}`);
  }
}

/** Per-column mean and standard deviation (std floored at 1e-6 so constant columns stay finite). */
export interface Standardizer {
  mean: Float32Array;
  std: Float32Array;
}

export function fitStandardizer(f: FeatureSet): Standardizer {
  const mean = new Float64Array(f.dim);
  const sq = new Float64Array(f.dim);
  for (let i = 0; i < f.n; i++) {
    for (let d = 0; d < f.dim; d++) mean[d] += f.x[i * f.dim + d];
  }
  for (let d = 0; d < f.dim; d++) mean[d] /= Math.max(1, f.n);
  for (let i = 0; i < f.n; i++) {
    for (let d = 0; d < f.dim; d++) {
      const v = f.x[i * f.dim + d] - mean[d];
      sq[d] += v * v;
    }
  }
  const std = Float32Array.from(sq, (s) => Math.max(Math.sqrt(s / Math.max(1, f.n)), 1e-6));
  return { mean: Float32Array.from(mean), std };
}

/** (x - mean) / std, row by row, as a new array. */
export function standardize(x: Float32Array, s: Standardizer): Float32Array {
  const dim = s.mean.length;
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = (x[i] - s.mean[i % dim]) / s.std[i % dim];
  return out;
}

/** The rows `idx` of a [n, dim] matrix. */
export function selectRows(x: Float32Array, dim: number, idx: ArrayLike<number>): Float32Array {
  const out = new Float32Array(idx.length * dim);
  for (let i = 0; i < idx.length; i++) out.set(x.subarray(idx[i] * dim, (idx[i] + 1) * dim), i * dim);
  return out;
}

/** Labelled rows `idx`. */
export function subsetLabelled(f: LabelledFeatures, idx: ArrayLike<number>): LabelledFeatures {
  return { x: selectRows(f.x, f.dim, idx), y: Int32Array.from(Array.from(idx, (i) => f.y[i])), n: idx.length, dim: f.dim };
}

/** Regression rows `idx`. */
export function subsetRegression(f: RegressionFeatures, idx: ArrayLike<number>): RegressionFeatures {
  return {
    x: selectRows(f.x, f.dim, idx),
    targets: selectRows(f.targets, f.targetDim, idx),
    targetDim: f.targetDim,
    n: idx.length,
    dim: f.dim,
  };
}

/** A seeded permutation of 0..n-1 (core's Rng, Fisher-Yates), so splits are reproducible. */
export function permutation(n: number, seed: number): Int32Array {
  return Int32Array.from(new Rng(seed).shuffle(Array.from({ length: n }, (_, i) => i)));
}

/**
 * Split 0..n-1 into a held-out part (`fraction` of the rows, at least one) and the rest, after a
 * seeded shuffle. Returns sorted index lists.
 */
export function splitIndices(n: number, fraction: number, seed: number): { train: Int32Array; heldOut: Int32Array } {
  if (!(fraction > 0 && fraction < 1)) throw new Error(`split fraction must be in (0, 1), got ${fraction}`);
  if (n < 2) throw new Error(`cannot split ${n} rows into two non-empty parts`);
  const p = permutation(n, seed);
  const k = Math.min(n - 1, Math.max(1, Math.round(n * fraction)));
  return { heldOut: p.slice(0, k).sort(), train: p.slice(k).sort() };
}
