/**
 * PCA colour maps of patch features: the first three principal components as RGB (the DINOv2
 * papers' figures). The PCA is fitted jointly over all given images, so the same colour means the
 * same feature direction in every image.
 *
 * The top components come from subspace (block power) iteration on the centred data, X^T (X V),
 * never forming the D x D covariance: O(rows x D x k) per iteration, fine for ViT-g widths in JS.
 *
 * Foreground trick (DINOv2 README): fit PCA on all patches, min-max scale the first component over
 * all images, and keep the patches above a threshold as foreground; then fit a second PCA on the
 * foreground patches only and colour them, background black. The first component's sign is
 * arbitrary, so it is chosen such that the foreground is the smaller side (objects usually cover
 * less of an image than background).
 */

export interface Pca {
  mean: Float64Array;
  /** k unit vectors of length dim, by decreasing variance. */
  components: Float64Array[];
  /** Variance along each component. */
  variances: number[];
}

/** Rows of several [n_i x dim] feature blocks, optionally filtered by a mask per block. */
interface Rows {
  blocks: ArrayLike<number>[];
  masks?: (Uint8Array | null)[];
  dim: number;
}

function forEachRow(r: Rows, fn: (block: ArrayLike<number>, offset: number) => void): void {
  r.blocks.forEach((b, k) => {
    const n = b.length / r.dim;
    const mask = r.masks?.[k];
    for (let i = 0; i < n; i++) if (!mask || mask[i]) fn(b, i * r.dim);
  });
}

/** Orthonormalise columns in place (modified Gram-Schmidt). */
function orthonormalise(v: Float64Array[]): void {
  for (let j = 0; j < v.length; j++) {
    for (let i = 0; i < j; i++) {
      let d = 0;
      for (let t = 0; t < v[j].length; t++) d += v[j][t] * v[i][t];
      for (let t = 0; t < v[j].length; t++) v[j][t] -= d * v[i][t];
    }
    let n = 0;
    for (let t = 0; t < v[j].length; t++) n += v[j][t] ** 2;
    n = Math.sqrt(n) || 1;
    for (let t = 0; t < v[j].length; t++) v[j][t] /= n;
  }
}

/** Fit the top-k principal components of the rows of `blocks` (each [n_i x dim]). */
export function fitPca(
  blocks: ArrayLike<number>[],
  dim: number,
  k = 3,
  opts: { masks?: (Uint8Array | null)[]; iterations?: number } = {},
): Pca {
  const rows: Rows = { blocks, masks: opts.masks, dim };
  for (const b of blocks) if (b.length % dim !== 0) throw new Error(`fitPca: a block of ${b.length} values is not rows of ${dim}`);
  const mean = new Float64Array(dim);
  let count = 0;
  forEachRow(rows, (b, o) => {
    for (let t = 0; t < dim; t++) mean[t] += b[o + t];
    count++;
  });
  if (count < 2) throw new Error(`fitPca: need at least 2 rows, got ${count}`);
  for (let t = 0; t < dim; t++) mean[t] /= count;
  k = Math.min(k, dim);
  // Deterministic start: a fixed pseudo-random basis.
  let seed = 12345;
  const v = Array.from({ length: k }, () =>
    Float64Array.from({ length: dim }, () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5),
  );
  orthonormalise(v);
  const proj = new Float64Array(k);
  let variances = new Array(k).fill(0);
  for (let it = 0; it < (opts.iterations ?? 60); it++) {
    const w = Array.from({ length: k }, () => new Float64Array(dim));
    forEachRow(rows, (b, o) => {
      for (let j = 0; j < k; j++) {
        let s = 0;
        for (let t = 0; t < dim; t++) s += (b[o + t] - mean[t]) * v[j][t];
        proj[j] = s;
      }
      for (let j = 0; j < k; j++) {
        const p = proj[j];
        for (let t = 0; t < dim; t++) w[j][t] += (b[o + t] - mean[t]) * p;
      }
    });
    // Rayleigh quotients v^T C v = v^T w / count.
    variances = v.map((vj, j) => vj.reduce((s, x, t) => s + x * w[j][t], 0) / count);
    orthonormalise(w);
    let change = 0;
    for (let j = 0; j < k; j++) change = Math.max(change, 1 - Math.abs(w[j].reduce((s, x, t) => s + x * v[j][t], 0)));
    for (let j = 0; j < k; j++) v[j] = w[j];
    if (change < 1e-10) break;
  }
  const order = variances.map((x, j) => j).sort((a, b) => variances[b] - variances[a]);
  const components = order.map((j) => {
    const c = v[j];
    // Sign convention: the largest-magnitude coefficient is positive.
    let m = 0;
    for (let t = 1; t < dim; t++) if (Math.abs(c[t]) > Math.abs(c[m])) m = t;
    if (c[m] < 0) for (let t = 0; t < dim; t++) c[t] = -c[t];
    return c;
  });
  return { mean, components, variances: order.map((j) => variances[j]) };
}

/** Project each row of `block` ([n x dim]) on the components: [n x k]. */
export function projectPca(pca: Pca, block: ArrayLike<number>): Float32Array {
  const dim = pca.mean.length;
  const n = block.length / dim;
  const k = pca.components.length;
  const out = new Float32Array(n * k);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j++) {
      let s = 0;
      const c = pca.components[j];
      for (let t = 0; t < dim; t++) s += (block[i * dim + t] - pca.mean[t]) * c[t];
      out[i * k + j] = s;
    }
  }
  return out;
}

export interface PcaColorOptions {
  /** Foreground trick: threshold on the min-max scaled first component, in (0, 1). */
  foreground?: number;
  iterations?: number;
}

export interface PcaColors {
  /** Per image: [n x 3] RGB bytes, one colour per patch. */
  colors: Uint8Array[];
  /** Per image: 1 = foreground patch (all ones without the foreground trick). */
  foreground: Uint8Array[];
}

/** Min-max scale each of the 3 components over all images (masked rows only) to bytes. */
function toColors(projs: Float32Array[], masks: Uint8Array[]): Uint8Array[] {
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  projs.forEach((p, k) => {
    for (let i = 0; i < masks[k].length; i++) {
      if (!masks[k][i]) continue;
      for (let c = 0; c < 3; c++) {
        lo[c] = Math.min(lo[c], p[i * 3 + c]);
        hi[c] = Math.max(hi[c], p[i * 3 + c]);
      }
    }
  });
  return projs.map((p, k) => {
    const out = new Uint8Array(masks[k].length * 3);
    for (let i = 0; i < masks[k].length; i++) {
      if (!masks[k][i]) continue;
      for (let c = 0; c < 3; c++) {
        const span = hi[c] - lo[c];
        out[i * 3 + c] = span > 0 ? Math.round((255 * (p[i * 3 + c] - lo[c])) / span) : 128;
      }
    }
    return out;
  });
}

/**
 * PCA colours for the patch features of several images (each [P_i x dim], row-major over its grid),
 * fitted jointly over all of them.
 */
export function pcaColors(features: ArrayLike<number>[], dim: number, opts: PcaColorOptions = {}): PcaColors {
  const all = features.map((f) => new Uint8Array(f.length / dim).fill(1));
  const first = fitPca(features, dim, 3, { iterations: opts.iterations });
  let masks = all;
  let pca = first;
  if (opts.foreground !== undefined) {
    const t = opts.foreground;
    if (!(t > 0 && t < 1)) throw new Error(`pcaColors: foreground threshold must be in (0, 1), got ${t}`);
    const pc1 = features.map((f) => {
      const p = projectPca(first, f);
      return Float32Array.from({ length: p.length / first.components.length }, (_, i) => p[i * first.components.length]);
    });
    let lo = Infinity;
    let hi = -Infinity;
    for (const p of pc1) for (const x of p) [lo, hi] = [Math.min(lo, x), Math.max(hi, x)];
    const span = hi - lo || 1;
    const above = pc1.map((p) => Uint8Array.from(p, (x) => ((x - lo) / span > t ? 1 : 0)));
    const below = pc1.map((p) => Uint8Array.from(p, (x) => ((hi - x) / span > t ? 1 : 0)));
    const count = (m: Uint8Array[]) => m.reduce((s, a) => s + a.reduce((u, x) => u + x, 0), 0);
    masks = count(above) <= count(below) ? above : below;
    if (count(masks) >= 2) pca = fitPca(features, dim, 3, { masks, iterations: opts.iterations });
  }
  const projs = features.map((f) => projectPca(pca, f));
  return { colors: toColors(projs, masks), foreground: masks };
}
