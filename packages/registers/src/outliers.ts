/**
 * High-norm outlier ("artifact") tokens: which of a set of token norms are outliers, by a fixed
 * threshold or by the automatic rule below, with the evidence behind it. Pure functions on plain arrays.
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
  const starts = [
    otsu,
    (sorted[gap] + sorted[gap + 1]) / 2,
    ...[0.5, 0.75, 0.9, 0.95, 0.98, 0.99].map((q) => sorted[Math.floor(q * (n - 1))]),
  ];
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
  const valley = top > 0 ? mid / half / (top / high.std) : Infinity;
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
    if (!Number.isFinite(norms[i]) || norms[i] < 0)
      throw new Error(`detectOutliers: norm ${i} is ${norms[i]} (expected a finite value >= 0)`);
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
  return {
    method: mode === 'auto' ? 'auto' : 'fixed',
    threshold,
    indices,
    positions,
    fraction: n > 0 ? indices.length / n : 0,
    bimodality,
  };
}
