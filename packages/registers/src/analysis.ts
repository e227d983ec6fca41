/**
 * Token analysis for "Vision Transformers Need Registers": per-token L2 norms, high-norm outlier
 * ("artifact") detection, the layer where outliers appear, the redundancy of the patches they sit on
 * (paper Fig. 5a) and what the register tokens attend to.
 *
 * Everything but `tokenNorms` and `tokenDataFromOutput` is a pure function on plain arrays, so it can be
 * checked against reference tensors without a model. Token order everywhere: [CLS, registers..., patches...];
 * patches are row-major over the patch grid.
 *
 * Automatic outlier threshold (the rule, see `testBimodality`; defaults in `DEFAULT_OUTLIER_RULE`):
 * take log norms and fit a two-component 1-D Gaussian mixture by EM, started from Otsu's split, the
 * widest gap and a few upper quantiles (best likelihood wins). Call the distribution bimodal only if
 *   (a) the mixture beats a single Gaussian by BIC,
 *   (b) the components are separated by Ashman's D >= `minSeparation` (2),
 *       D = sqrt(2) |mu1 - mu2| / sqrt(s1^2 + s2^2),
 *   (c) the high mode is at least `minRatio` (3) times the low one: exp(mu_high - mu_low) >= 3, the
 *       ratio of the two modes' geometric-mean norms. D is scale-free, so two narrow clusters a few
 *       percent apart pass (b); artifacts in the paper sit about an order of magnitude above the
 *       normal tokens (norm > 150 against 0-100 for DINOv2-g), so 3 leaves a wide margin below them
 *       while rejecting any split of one mode,
 *   (d) there is a valley: around the threshold t (between the means, equally many standard
 *       deviations from each) the density of values within min(s1, s2) / 2 of t is at most
 *       `maxValley` (0.5) times the density within s2 of the high mean. This rejects flat
 *       distributions, which a two-Gaussian fit also splits, and
 *   (e) the high component holds at most `maxFraction` (20%) of the tokens: artifacts are a
 *       minority (~2% in the paper).
 * Outliers are the tokens with norm > exp(t). Fewer than `minCount` (8) tokens, or all equal, is never
 * bimodal. A unimodal distribution therefore yields no outliers at all, whatever its spread or skew.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ViTOutput } from './model.js';

// ---------------------------------------------------------------------------------------------
// Norms

/** L2 norm of each consecutive `dim`-long row of `data`. */
export function l2Norms(data: ArrayLike<number>, dim: number): Float32Array {
  if (!Number.isInteger(dim) || dim <= 0 || data.length % dim !== 0) {
    throw new Error(`l2Norms: data length ${data.length} is not a multiple of dim ${dim}`);
  }
  const n = data.length / dim;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = i * dim, e = j + dim; j < e; j++) s += data[j] * data[j];
    out[i] = Math.sqrt(s);
  }
  return out;
}

/** L2 norm over the last axis, on the device: [..., D] -> [...]. */
export function tokenNorms<T extends tf.Tensor>(tokens: T): tf.Tensor {
  return tf.tidy(() => tf.sqrt(tf.sum(tf.square(tokens), -1)));
}

// ---------------------------------------------------------------------------------------------
// Outliers

/** The parameters of the automatic outlier rule (see the top of this file). */
export interface BimodalityRule {
  /** Fewer values than this are never bimodal. */
  minCount: number;
  /** The high component may hold at most this fraction of the tokens. */
  maxFraction: number;
  /** Minimal Ashman's D between the two components. */
  minSeparation: number;
  /** Minimal ratio of the modes' geometric-mean norms, exp(mu_high - mu_low). */
  minRatio: number;
  /** Maximal density at the threshold relative to the density at the high mode. */
  maxValley: number;
}

/** The defaults of the automatic rule: at least 8 tokens, at most 20% outliers, D >= 2, modes >= 3x apart, valley <= 0.5. */
export const DEFAULT_OUTLIER_RULE: Readonly<BimodalityRule> = Object.freeze({
  minCount: 8,
  maxFraction: 0.2,
  minSeparation: 2,
  minRatio: 3,
  maxValley: 0.5,
});

export interface OutlierOptions extends Partial<BimodalityRule> {
  /** 'auto' (default): bimodality rule on log norms. A number: norms strictly above it (paper: 150 for DINOv2-g). */
  threshold?: 'auto' | number;
}

/** The automatic rule's parameters: `opts` over `DEFAULT_OUTLIER_RULE`, each checked. */
export function outlierRule(opts: OutlierOptions = {}): BimodalityRule {
  const r: BimodalityRule = {
    minCount: opts.minCount ?? DEFAULT_OUTLIER_RULE.minCount,
    maxFraction: opts.maxFraction ?? DEFAULT_OUTLIER_RULE.maxFraction,
    minSeparation: opts.minSeparation ?? DEFAULT_OUTLIER_RULE.minSeparation,
    minRatio: opts.minRatio ?? DEFAULT_OUTLIER_RULE.minRatio,
    maxValley: opts.maxValley ?? DEFAULT_OUTLIER_RULE.maxValley,
  };
  const bad = (field: keyof BimodalityRule, expected: string) => {
    throw new Error(`outlier options: ${field} must be ${expected}, got ${r[field]}`);
  };
  if (!Number.isInteger(r.minCount) || r.minCount < 2) bad('minCount', 'an integer >= 2');
  if (!(r.maxFraction > 0 && r.maxFraction <= 1)) bad('maxFraction', 'in (0, 1]');
  if (!(r.minSeparation >= 0 && Number.isFinite(r.minSeparation))) bad('minSeparation', 'a finite number >= 0');
  if (!(r.minRatio >= 1 && Number.isFinite(r.minRatio))) bad('minRatio', 'a finite number >= 1');
  if (!(r.maxValley >= 0 && Number.isFinite(r.maxValley))) bad('maxValley', 'a finite number >= 0');
  return r;
}

/** One Gaussian component of a fit on log norms. */
export interface Component {
  mean: number;
  std: number;
  weight: number;
}

/** The evidence behind an automatic threshold, all on natural-log norms. */
export interface Bimodality {
  bimodal: boolean;
  /** Why the distribution was or was not called bimodal. */
  reason: string;
  /** BIC(one Gaussian) - BIC(two Gaussians): positive favours two. */
  deltaBic: number;
  /** Ashman's D between the two fitted components. */
  separation: number;
  /** Ratio of the modes' geometric-mean norms, exp(high.mean - low.mean) (1 without a fit). */
  ratio: number;
  /** Density near the threshold / density at the high mode (null when not measured). */
  valley: number | null;
  low: Component;
  high: Component;
  /** Otsu's split of the log norms (one of the EM starts). */
  otsu: number;
  /** Threshold between the components (log space), equally many stds from both means; null when not bimodal. */
  logThreshold: number | null;
  /** The rule's parameters this test used. */
  rule: BimodalityRule;
}

export interface OutlierResult {
  method: 'fixed' | 'auto';
  /** Norm threshold: tokens with norm > threshold are outliers. Null when auto found no bimodality. */
  threshold: number | null;
  /** Outlier indices into the given norms (patch indices when given patch norms), ascending. */
  indices: number[];
  /** [row, col] of each outlier on the patch grid. */
  positions: [number, number][];
  /** indices.length / number of tokens. */
  fraction: number;
  /** Auto only: the bimodality test. */
  bimodality: Bimodality | null;
}

/**
 * Otsu's threshold of `values`, computed exactly over every split of the sorted values (no histogram
 * bins): maximises the between-class variance w0 w1 (m0 - m1)^2. Returns the midpoint between the two
 * sorted values at the best split. Needs at least 2 distinct values (else returns the single value).
 */
export function otsuThreshold(values: ArrayLike<number>): number {
  const v = Float64Array.from(values).sort();
  const n = v.length;
  if (n === 0) throw new Error('otsuThreshold: no values');
  let total = 0;
  for (let i = 0; i < n; i++) total += v[i];
  let best = -1;
  let split = -1;
  let left = 0;
  for (let k = 1; k < n; k++) {
    left += v[k - 1];
    if (v[k] === v[k - 1]) continue;
    const m0 = left / k;
    const m1 = (total - left) / (n - k);
    const score = (k / n) * ((n - k) / n) * (m0 - m1) ** 2;
    if (score > best) {
      best = score;
      split = k;
    }
  }
  return split < 0 ? v[0] : (v[split - 1] + v[split]) / 2;
}

function meanStd(v: ArrayLike<number>, from = 0, to = v.length): { mean: number; std: number } {
  let s = 0;
  for (let i = from; i < to; i++) s += v[i];
  const mean = s / (to - from);
  let q = 0;
  for (let i = from; i < to; i++) q += (v[i] - mean) ** 2;
  return { mean, std: Math.sqrt(q / (to - from)) };
}

const LOG_SQRT_2PI = 0.5 * Math.log(2 * Math.PI);

function logGauss(x: number, c: Component): number {
  const z = (x - c.mean) / c.std;
  return -0.5 * z * z - Math.log(c.std) - LOG_SQRT_2PI;
}

/**
 * Two-component 1-D Gaussian mixture by EM, started from the two classes of `split`. Each std is
 * floored at `minStd` so a single far value cannot collapse a component to zero width.
 */
export function fitTwoGaussians(
  values: ArrayLike<number>,
  split: number,
  minStd: number,
  maxIter = 300,
): { low: Component; high: Component; logLikelihood: number } {
  const v = Float64Array.from(values).sort();
  const n = v.length;
  let k = 0;
  while (k < n && v[k] <= split) k++;
  if (k === 0 || k === n) throw new Error('fitTwoGaussians: the split leaves one class empty');
  const a = meanStd(v, 0, k);
  const b = meanStd(v, k, n);
  let low: Component = { mean: a.mean, std: Math.max(a.std, minStd), weight: k / n };
  let high: Component = { mean: b.mean, std: Math.max(b.std, minStd), weight: (n - k) / n };
  const r = new Float64Array(n); // responsibility of `high`
  let prev = -Infinity;
  let ll = -Infinity;
  for (let it = 0; it < maxIter; it++) {
    ll = 0;
    for (let i = 0; i < n; i++) {
      const la = Math.log(low.weight) + logGauss(v[i], low);
      const lb = Math.log(high.weight) + logGauss(v[i], high);
      const m = Math.max(la, lb);
      const lse = m + Math.log(Math.exp(la - m) + Math.exp(lb - m));
      r[i] = Math.exp(lb - lse);
      ll += lse;
    }
    if (ll - prev < 1e-6 * n) break;
    prev = ll;
    let w1 = 0;
    let s1 = 0;
    let s0 = 0;
    for (let i = 0; i < n; i++) {
      w1 += r[i];
      s1 += r[i] * v[i];
      s0 += (1 - r[i]) * v[i];
    }
    const w0 = n - w1;
    if (w1 < 1e-9 || w0 < 1e-9) break; // one component emptied: keep the last proper fit
    const m1 = s1 / w1;
    const m0 = s0 / w0;
    let q1 = 0;
    let q0 = 0;
    for (let i = 0; i < n; i++) {
      q1 += r[i] * (v[i] - m1) ** 2;
      q0 += (1 - r[i]) * (v[i] - m0) ** 2;
    }
    low = { mean: m0, std: Math.max(Math.sqrt(q0 / w0), minStd), weight: w0 / n };
    high = { mean: m1, std: Math.max(Math.sqrt(q1 / w1), minStd), weight: w1 / n };
  }
  if (low.mean > high.mean) [low, high] = [high, low];
  return { low, high, logLikelihood: ll };
}

/**
 * The bimodality test on (natural-log) norms described at the top of this file. `logValues` need not
 * be sorted. When the test fails, `reason` names every criterion that failed, with the measured value.
 */
export function testBimodality(logValues: ArrayLike<number>, opts: OutlierOptions = {}): Bimodality {
  const rule = outlierRule(opts);
  const n = logValues.length;
  const all = meanStd(logValues);
  const none = (reason: string, extra: Partial<Bimodality> = {}): Bimodality => ({
    bimodal: false,
    reason,
    deltaBic: 0,
    separation: 0,
    ratio: 1,
    valley: null,
    low: { mean: all.mean, std: all.std, weight: 1 },
    high: { mean: all.mean, std: all.std, weight: 0 },
    otsu: all.mean,
    logThreshold: null,
    rule,
    ...extra,
  });
  if (n < rule.minCount) return none(`only ${n} values (need ${rule.minCount})`);
  if (!(all.std > 1e-12 * Math.max(1, Math.abs(all.mean)))) return none('all values equal');
  const otsu = otsuThreshold(logValues);
  const minStd = 0.05 * all.std;
  // EM from several starts, best likelihood wins: Otsu's split (balanced classes), the widest gap
  // between sorted values, and upper quantiles (Otsu alone splits the bulk when outliers are few).
  const sorted = Float64Array.from(logValues).sort();
  let gap = 0;
  for (let i = 1; i < n; i++) if (sorted[i] - sorted[i - 1] > sorted[gap + 1] - sorted[gap]) gap = i - 1;
  const starts = [otsu, (sorted[gap] + sorted[gap + 1]) / 2, ...[0.5, 0.75, 0.9, 0.95, 0.98, 0.99].map((q) => sorted[Math.floor(q * (n - 1))])];
  let best: ReturnType<typeof fitTwoGaussians> | null = null;
  for (const split of starts) {
    if (!(split >= sorted[0] && split < sorted[n - 1])) continue;
    const f = fitTwoGaussians(sorted, split, minStd);
    if (!best || f.logLikelihood > best.logLikelihood) best = f;
  }
  const { low, high, logLikelihood } = best!;
  let ll1 = 0;
  const single: Component = { mean: all.mean, std: all.std, weight: 1 };
  for (let i = 0; i < n; i++) ll1 += logGauss(logValues[i], single);
  const deltaBic = -2 * ll1 + 2 * Math.log(n) - (-2 * logLikelihood + 5 * Math.log(n));
  const separation = (Math.SQRT2 * (high.mean - low.mean)) / Math.sqrt(low.std ** 2 + high.std ** 2);
  const ratio = Math.exp(high.mean - low.mean);
  // The threshold lies equally many standard deviations from both means.
  const logThreshold = (low.mean * high.std + high.mean * low.std) / (low.std + high.std);
  // Valley: the data must be sparse at the threshold. Compare the density of values within
  // min(s1, s2) / 2 of the threshold with the density within s2 of the high mean.
  const half = 0.5 * Math.min(low.std, high.std);
  let mid = 0;
  let top = 0;
  for (let i = 0; i < n; i++) {
    if (Math.abs(logValues[i] - logThreshold) <= half) mid++;
    if (Math.abs(logValues[i] - high.mean) <= high.std) top++;
  }
  const valley = top > 0 ? (mid / half) / (top / high.std) : Infinity;
  const fit = { deltaBic, separation, ratio, valley, low, high, otsu };
  const failed: string[] = [];
  if (!(deltaBic > 0)) failed.push(`one Gaussian fits better (BIC difference ${deltaBic.toFixed(2)})`);
  if (!(separation >= rule.minSeparation)) failed.push(`components overlap (Ashman's D ${separation.toFixed(2)} < ${rule.minSeparation})`);
  if (!(ratio >= rule.minRatio)) failed.push(`modes too close (high/low mode ratio ${ratio.toFixed(3)} < ${rule.minRatio})`);
  if (!(valley <= rule.maxValley)) failed.push(`no valley between the components (density ratio ${valley.toFixed(2)} > ${rule.maxValley})`);
  if (!(high.weight <= rule.maxFraction)) {
    failed.push(`high component holds ${(high.weight * 100).toFixed(1)}% of tokens (> ${rule.maxFraction * 100}%)`);
  }
  if (failed.length > 0) return none(failed.join('; '), fit);
  return {
    bimodal: true,
    reason: `two components: mode ratio ${ratio.toFixed(2)}, D ${separation.toFixed(2)}, BIC difference ${deltaBic.toFixed(2)}, valley ${valley.toFixed(2)}, high weight ${(high.weight * 100).toFixed(1)}%`,
    ...fit,
    logThreshold,
    rule,
  };
}

/**
 * The outlier rule in words, with its parameters: "norm > T" for a fixed threshold, else the automatic
 * rule's criteria (what stats.json and the report show).
 */
export function describeOutlierRule(o: Pick<OutlierResult, 'method' | 'threshold' | 'bimodality'>): string {
  if (o.method === 'fixed' || !o.bimodality) return `fixed: norm > ${o.threshold}`;
  const r = o.bimodality.rule;
  return (
    'auto: 2-Gaussian mixture on log norms; outliers only if BIC favours two components, ' +
    `Ashman's D >= ${r.minSeparation}, high/low mode ratio >= ${r.minRatio}, valley <= ${r.maxValley}, ` +
    `high component <= ${r.maxFraction * 100}% of tokens, >= ${r.minCount} tokens`
  );
}

/**
 * Outlier (high-norm) tokens among `norms`. `grid` = [rows, cols] gives positions (row-major);
 * pass null when the norms are not patch tokens.
 */
export function detectOutliers(norms: ArrayLike<number>, grid: [number, number] | null, opts: OutlierOptions = {}): OutlierResult {
  const n = norms.length;
  if (grid && grid[0] * grid[1] !== n) {
    throw new Error(`detectOutliers: ${n} norms do not fill a ${grid[0]}x${grid[1]} grid`);
  }
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(norms[i]) || norms[i] < 0) throw new Error(`detectOutliers: norm ${i} is ${norms[i]} (expected a finite value >= 0)`);
  }
  const mode = opts.threshold ?? 'auto';
  let threshold: number | null;
  let bimodality: Bimodality | null = null;
  if (mode === 'auto') {
    const logs = Float64Array.from(norms, (x) => Math.log(Math.max(x, 1e-12)));
    bimodality = testBimodality(logs, opts);
    threshold = bimodality.logThreshold === null ? null : Math.exp(bimodality.logThreshold);
  } else {
    if (!Number.isFinite(mode)) throw new Error(`detectOutliers: threshold must be 'auto' or a finite number, got ${mode}`);
    threshold = mode;
  }
  const indices: number[] = [];
  if (threshold !== null) for (let i = 0; i < n; i++) if (norms[i] > threshold) indices.push(i);
  const positions = grid ? indices.map((i): [number, number] => [Math.floor(i / grid[1]), i % grid[1]]) : [];
  return { method: mode === 'auto' ? 'auto' : 'fixed', threshold, indices, positions, fraction: n > 0 ? indices.length / n : 0, bimodality };
}

// ---------------------------------------------------------------------------------------------
// Per layer

export interface LayerSummary {
  /** Block index (0 = output of the first block). */
  layer: number;
  mean: number;
  median: number;
  max: number;
  /** Outliers found at this layer by the automatic rule (always auto: norm scales change with depth). */
  outliers: number;
  threshold: number | null;
  /** Mean norm of the final outlier tokens at this layer (null when there are none). */
  outlierMean: number | null;
  /** Mean norm of the other patch tokens at this layer. */
  normalMean: number;
}

function median(v: ArrayLike<number>): number {
  const s = Float64Array.from(v).sort();
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Per-layer summary of patch-token norms. `patchNorms[l]` holds the P patch norms after block l;
 * `finalOutliers` are patch indices (from the output) followed back through the layers.
 */
export function layerSummaries(patchNorms: ArrayLike<number>[], finalOutliers: number[], opts: OutlierOptions = {}): LayerSummary[] {
  const isOut = new Set(finalOutliers);
  return patchNorms.map((norms, layer) => {
    const det = detectOutliers(norms, null, { ...opts, threshold: 'auto' });
    let max = -Infinity;
    let sum = 0;
    let so = 0;
    let sn = 0;
    for (let i = 0; i < norms.length; i++) {
      max = Math.max(max, norms[i]);
      sum += norms[i];
      if (isOut.has(i)) so += norms[i];
      else sn += norms[i];
    }
    const no = isOut.size;
    return {
      layer,
      mean: sum / norms.length,
      median: median(norms),
      max,
      outliers: det.indices.length,
      threshold: det.threshold,
      outlierMean: no > 0 ? so / no : null,
      normalMean: norms.length > no ? sn / (norms.length - no) : 0,
    };
  });
}

/** First layer whose own norm distribution is bimodal (outliers separated from normal tokens), or null. */
export function firstOutlierLayer(summaries: LayerSummary[]): number | null {
  const s = summaries.find((l) => l.outliers > 0);
  return s ? s.layer : null;
}

// ---------------------------------------------------------------------------------------------
// Redundancy (paper Fig. 5a)

/**
 * Mean cosine similarity of each patch's input embedding ([P, dim], row-major over `grid`) to its
 * 4-neighbours (up, down, left, right; fewer at the border).
 */
export function neighbourSimilarity(embeddings: ArrayLike<number>, grid: [number, number], dim: number): Float32Array {
  const [rows, cols] = grid;
  const p = rows * cols;
  if (embeddings.length !== p * dim) {
    throw new Error(`neighbourSimilarity: embeddings hold ${embeddings.length} values, expected ${rows}x${cols} patches x ${dim}`);
  }
  const norms = l2Norms(embeddings, dim);
  const cos = (i: number, j: number): number => {
    let s = 0;
    for (let k = 0; k < dim; k++) s += embeddings[i * dim + k] * embeddings[j * dim + k];
    const d = norms[i] * norms[j];
    return d > 0 ? s / d : 0;
  };
  const out = new Float32Array(p);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      let s = 0;
      let m = 0;
      for (const [dr, dc] of [[-1, 0], [1, 0], [0, -1], [0, 1]]) {
        const rr = r + dr;
        const cc = c + dc;
        if (rr < 0 || rr >= rows || cc < 0 || cc >= cols) continue;
        s += cos(i, rr * cols + cc);
        m++;
      }
      out[i] = m > 0 ? s / m : 0;
    }
  }
  return out;
}

export interface Redundancy {
  /** Per patch: mean cosine similarity of its input embedding to its 4-neighbours. */
  similarity: Float32Array;
  /** Mean over outlier patches (null when there are none). */
  outlierMean: number | null;
  /** Mean over the other patches. */
  normalMean: number;
}

export function redundancy(similarity: Float32Array, outliers: number[]): Redundancy {
  const isOut = new Set(outliers);
  let so = 0;
  let sn = 0;
  for (let i = 0; i < similarity.length; i++) {
    if (isOut.has(i)) so += similarity[i];
    else sn += similarity[i];
  }
  const nn = similarity.length - isOut.size;
  return { similarity, outlierMean: isOut.size > 0 ? so / isOut.size : null, normalMean: nn > 0 ? sn / nn : 0 };
}

// ---------------------------------------------------------------------------------------------
// Attention

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

// ---------------------------------------------------------------------------------------------
// Whole-image analysis

/** What the analysis needs from one image's forward pass, on the host. */
export interface TokenData {
  grid: [number, number];
  numRegisters: number;
  dim: number;
  /** Norms of the last block's output before the final norm, [N]. */
  prenormNorms: Float32Array;
  /** Norms of the normalised output tokens [CLS, registers, patches], [N]. */
  postnormNorms: Float32Array;
  /** Per block, the norms of its output tokens, [N] each. */
  layerNorms?: Float32Array[];
  /** Patch embeddings before the positional embedding, [P * dim]. */
  embeddings?: Float32Array;
  /** Normalised patch features [P * dim] (for PCA maps). */
  patches?: Float32Array;
  /** Last block's softmax attention [heads * N * N]. */
  attention?: { heads: number; data: Float32Array };
}

/** The parts of a forward pass's output that the analysis reads. */
export type AnalysisSource = Pick<ViTOutput, 'cls' | 'registers' | 'patches' | 'prenorm' | 'grid' | 'embeddings' | 'attention' | 'layers'>;

/**
 * Pull what the analysis needs out of a forward pass (run with `attention: 'last'` and `layers: true`
 * for the full analysis), one TokenData per image. Norms are computed on the device; only the norms,
 * patch embeddings, patch features and the last attention come to the host. Does not dispose `out`.
 */
export async function tokenDataFromOutput(out: AnalysisSource): Promise<TokenData[]> {
  const [b, n, dim] = out.prenorm.shape;
  const numRegisters = out.registers.shape[1];
  const pre = tokenNorms(out.prenorm);
  const post = tf.tidy(() => tf.concat([tf.expandDims(tokenNorms(out.cls), 1), tokenNorms(out.registers), tokenNorms(out.patches)], 1));
  const layers = (out.layers ?? []).map((l) => tokenNorms(l));
  try {
    const preData = (await pre.data()) as Float32Array;
    const postData = (await post.data()) as Float32Array;
    const layerData = await Promise.all(layers.map(async (l) => (await l.data()) as Float32Array));
    const emb = (await out.embeddings.data()) as Float32Array;
    const patches = (await out.patches.data()) as Float32Array;
    const attn = out.attention && out.attention.length > 0 ? out.attention[out.attention.length - 1] : null;
    const attnData = attn ? ((await attn.data()) as Float32Array) : null;
    const p = n - 1 - numRegisters;
    return Array.from({ length: b }, (_, i): TokenData => ({
      grid: out.grid,
      numRegisters,
      dim,
      prenormNorms: preData.slice(i * n, (i + 1) * n),
      postnormNorms: postData.slice(i * n, (i + 1) * n),
      layerNorms: out.layers ? layerData.map((l) => l.slice(i * n, (i + 1) * n)) : undefined,
      embeddings: emb.slice(i * p * dim, (i + 1) * p * dim),
      patches: patches.slice(i * p * dim, (i + 1) * p * dim),
      attention: attn && attnData ? { heads: attn.shape[1], data: attnData.slice(i * attn.shape[1] * n * n, (i + 1) * attn.shape[1] * n * n) } : undefined,
    }));
  } finally {
    pre.dispose();
    post.dispose();
    for (const l of layers) l.dispose();
  }
}

export interface AnalysisOptions extends OutlierOptions {
  /** Which output norms decide outliers: before ('prenorm') or after ('postnorm', default) the final LayerNorm. */
  source?: 'prenorm' | 'postnorm';
}

export interface RegisterStats extends MapStats {
  index: number;
  prenormNorm: number;
  postnormNorm: number;
  /** Mean-over-heads attention of this register to the patches, [P]. */
  map: Float32Array;
  /** Per-head attention maps, [heads][P]. */
  heads: Float32Array[];
}

export interface TokenAnalysis {
  grid: [number, number];
  numRegisters: number;
  source: 'prenorm' | 'postnorm';
  norms: {
    cls: { prenorm: number; postnorm: number };
    registers: { prenorm: number[]; postnorm: number[] };
    patches: { prenorm: Float32Array; postnorm: Float32Array };
  };
  outliers: OutlierResult;
  /** Per-layer summary (null without layer norms). */
  layers: LayerSummary[] | null;
  firstOutlierLayer: number | null;
  redundancy: Redundancy | null;
  /** CLS attention in the last block (null without attention). */
  cls: { heads: Float32Array[]; map: Float32Array; stats: MapStats } | null;
  registers: RegisterStats[];
}

/** The full analysis of one image. */
export function analyzeTokens(data: TokenData, opts: AnalysisOptions = {}): TokenAnalysis {
  const { grid, numRegisters: r, dim } = data;
  const first = 1 + r;
  const p = grid[0] * grid[1];
  const n = first + p;
  if (data.prenormNorms.length !== n || data.postnormNorms.length !== n) {
    throw new Error(`analyzeTokens: expected ${n} token norms (1 + ${r} registers + ${grid[0]}x${grid[1]} patches), got ${data.prenormNorms.length} / ${data.postnormNorms.length}`);
  }
  const source = opts.source ?? 'postnorm';
  const prePatches = data.prenormNorms.slice(first);
  const postPatches = data.postnormNorms.slice(first);
  const outliers = detectOutliers(source === 'prenorm' ? prePatches : postPatches, grid, opts);
  const layers = data.layerNorms ? layerSummaries(data.layerNorms.map((l) => l.slice(first)), outliers.indices, opts) : null;
  const red = data.embeddings ? redundancy(neighbourSimilarity(data.embeddings, grid, dim), outliers.indices) : null;
  let cls: TokenAnalysis['cls'] = null;
  const registers: RegisterStats[] = [];
  for (let i = 0; i < r; i++) {
    registers.push({
      index: i,
      prenormNorm: data.prenormNorms[1 + i],
      postnormNorm: data.postnormNorms[1 + i],
      map: new Float32Array(0),
      heads: [],
      ...mapStatsEmpty(),
    });
  }
  if (data.attention) {
    const { heads, data: attn } = data.attention;
    const clsHeads = attentionToPatches(attn, heads, 0, first);
    const clsMap = meanMap(clsHeads);
    cls = { heads: clsHeads, map: clsMap, stats: mapStats(clsMap, grid, outliers.indices) };
    for (const reg of registers) {
      reg.heads = attentionToPatches(attn, heads, 1 + reg.index, first);
      reg.map = meanMap(reg.heads);
      Object.assign(reg, mapStats(reg.map, grid, outliers.indices));
    }
  }
  return {
    grid,
    numRegisters: r,
    source,
    norms: {
      cls: { prenorm: data.prenormNorms[0], postnorm: data.postnormNorms[0] },
      registers: { prenorm: Array.from(data.prenormNorms.slice(1, first)), postnorm: Array.from(data.postnormNorms.slice(1, first)) },
      patches: { prenorm: prePatches, postnorm: postPatches },
    },
    outliers,
    layers,
    firstOutlierLayer: layers ? firstOutlierLayer(layers) : null,
    redundancy: red,
    cls,
    registers,
  };
}

function mapStatsEmpty(): MapStats {
  return { patchMass: 0, peak: [0, 0], centroid: [0, 0], entropy: 0, outlierMass: 0 };
}

const round = (x: number, digits = 5): number => Number(x.toPrecision(digits));
const roundAll = (v: ArrayLike<number>, digits = 5): number[] => Array.from(v, (x) => round(x, digits));

/**
 * A JSON-ready view of an analysis (numbers rounded to 5 significant digits): norms, threshold,
 * outliers with positions, per-layer summary, redundancy and register statistics. Attention maps are
 * left out (they are in the PNGs); per-register peak, centroid, entropy and masses stay.
 */
export function analysisToJson(a: TokenAnalysis): Record<string, unknown> {
  const o = a.outliers;
  const bm = o.bimodality;
  const stats = (s: MapStats) => ({
    patchMass: round(s.patchMass),
    peak: s.peak,
    centroid: s.centroid.map((x) => round(x, 4)),
    entropy: round(s.entropy),
    outlierMass: round(s.outlierMass),
  });
  return {
    grid: a.grid,
    numRegisters: a.numRegisters,
    normSource: a.source,
    norms: {
      cls: { prenorm: round(a.norms.cls.prenorm), postnorm: round(a.norms.cls.postnorm) },
      registers: { prenorm: roundAll(a.norms.registers.prenorm), postnorm: roundAll(a.norms.registers.postnorm) },
      patches: { prenorm: roundAll(a.norms.patches.prenorm), postnorm: roundAll(a.norms.patches.postnorm) },
    },
    outliers: {
      method: o.method,
      rule: describeOutlierRule(o),
      threshold: o.threshold === null ? null : round(o.threshold),
      count: o.indices.length,
      fraction: round(o.fraction),
      indices: o.indices,
      positions: o.positions,
      bimodality: bm && {
        bimodal: bm.bimodal,
        reason: bm.reason,
        deltaBic: round(bm.deltaBic),
        separation: round(bm.separation),
        ratio: round(bm.ratio),
        valley: bm.valley === null ? null : Number.isFinite(bm.valley) ? round(bm.valley) : null,
        logThreshold: bm.logThreshold === null ? null : round(bm.logThreshold),
        low: { mean: round(bm.low.mean), std: round(bm.low.std), weight: round(bm.low.weight) },
        high: { mean: round(bm.high.mean), std: round(bm.high.std), weight: round(bm.high.weight) },
        rule: { ...bm.rule },
      },
    },
    layers: a.layers?.map((l) => ({
      layer: l.layer,
      mean: round(l.mean),
      median: round(l.median),
      max: round(l.max),
      outliers: l.outliers,
      threshold: l.threshold === null ? null : round(l.threshold),
      outlierMean: l.outlierMean === null ? null : round(l.outlierMean),
      normalMean: round(l.normalMean),
    })) ?? null,
    firstOutlierLayer: a.firstOutlierLayer,
    redundancy: a.redundancy && {
      outlierMean: a.redundancy.outlierMean === null ? null : round(a.redundancy.outlierMean),
      normalMean: round(a.redundancy.normalMean),
    },
    cls: a.cls && stats(a.cls.stats),
    registers: a.registers.map((r) => ({ index: r.index, prenormNorm: round(r.prenormNorm), postnormNorm: round(r.postnormNorm), ...(a.cls ? stats(r) : {}) })),
  };
}
