/**
 * Attention maps over the patch grid: one query token's attention to the patches (per head), the mean
 * over heads, and a map's statistics (mass on patches, peak, centroid, entropy, share on outliers).
 */

/**
 * Attention of one query token to the patches, per head: `attention` is one image's [heads, N, N]
 * softmax; patches start at token `firstPatch` (1 + registers). Returns `heads` arrays of P values.
 */
export function attentionToPatches(attention: ArrayLike<number>, heads: number, query: number, firstPatch: number): Float32Array[] {
  const n = Math.round(Math.sqrt(attention.length / heads));
  if (n * n * heads !== attention.length) {
    throw new Error(`attentionToPatches: ${attention.length} values are not ${heads} heads x N x N`);
  }
  if (query < 0 || query >= n || firstPatch < 0 || firstPatch > n) {
    throw new Error(`attentionToPatches: query ${query} / first patch ${firstPatch} out of range for N = ${n}`);
  }
  const out: Float32Array[] = [];
  for (let h = 0; h < heads; h++) {
    const row = (h * n + query) * n;
    out.push(Float32Array.from({ length: n - firstPatch }, (_, j) => attention[row + firstPatch + j]));
  }
  return out;
}

/** Element-wise mean of equally long maps. */
export function meanMap(maps: Float32Array[]): Float32Array {
  const out = new Float32Array(maps[0].length);
  for (const m of maps) for (let i = 0; i < out.length; i++) out[i] += m[i];
  for (let i = 0; i < out.length; i++) out[i] /= maps.length;
  return out;
}

export interface MapStats {
  /** Total attention given to patches (the rest goes to CLS and registers). */
  patchMass: number;
  /** Patch [row, col] with the most attention. */
  peak: [number, number];
  /** Attention-weighted mean [row, col]. */
  centroid: [number, number];
  /** Entropy of the attention over patches, normalised to [0, 1] (1 = uniform, 0 = one patch). */
  entropy: number;
  /** Share of the patch attention that falls on outlier patches. */
  outlierMass: number;
}

/** Statistics of one (mean-over-heads) attention map over the patch grid. */
export function mapStats(map: Float32Array, grid: [number, number], outliers: number[]): MapStats {
  const [, cols] = grid;
  let mass = 0;
  let peak = 0;
  let cr = 0;
  let cc = 0;
  for (let i = 0; i < map.length; i++) {
    mass += map[i];
    if (map[i] > map[peak]) peak = i;
    cr += map[i] * Math.floor(i / cols);
    cc += map[i] * (i % cols);
  }
  let ent = 0;
  for (let i = 0; i < map.length; i++) {
    const p = map[i] / mass;
    if (p > 0) ent -= p * Math.log(p);
  }
  let om = 0;
  for (const i of outliers) om += map[i];
  return {
    patchMass: mass,
    peak: [Math.floor(peak / cols), peak % cols],
    centroid: mass > 0 ? [cr / mass, cc / mass] : [0, 0],
    entropy: map.length > 1 && mass > 0 ? ent / Math.log(map.length) : 0,
    outlierMass: mass > 0 ? om / mass : 0,
  };
}
