/**
 * Per-layer summaries of patch-token norms: mean, median, max and the outliers each block's output holds,
 * and the first layer where outliers appear (the paper: mid-network, around layer 15 of 40); and the
 * automatic outlier share of every block over many images pooled (`layerOutlierShares`), where a second
 * mode of a few tokens per image shows even when one image's few dozen patches are too few to test.
 */
import { detectOutliers, type OutlierOptions } from './outliers.js';

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

/** One block's patch-token norms over many images pooled, with the automatic rule's verdict. */
export interface LayerOutlierShare {
  /** Block index (0 = output of the first block). */
  layer: number;
  /** Patch tokens pooled (images x patches). */
  tokens: number;
  /** Tokens above the automatic threshold, and their share of `tokens`. */
  outliers: number;
  share: number;
  /** The automatic threshold (null: no second mode by the rule). */
  threshold: number | null;
  median: number;
  max: number;
  /** The fitted modes' ratio, exp(mu_high - mu_low), whether or not the rule calls it bimodal (1 without a fit). */
  modeRatio: number;
  /** BIC(one Gaussian) - BIC(two) on the log norms: positive favours two modes. */
  deltaBic: number;
  /** Why the rule did or did not call the pooled norms bimodal. */
  reason: string;
}

/**
 * The automatic outlier rule (`detectOutliers` with threshold 'auto') on every block's patch-token norms,
 * pooled over images: `perImage[i][l]` holds image i's patch norms after block l (every image the same
 * number of blocks). Returns one entry per block, so a second mode that appears mid-network and fades
 * by the output is seen where it is.
 */
export function layerOutlierShares(perImage: ArrayLike<number>[][], opts: OutlierOptions = {}): LayerOutlierShare[] {
  if (perImage.length === 0) return [];
  const depth = perImage[0].length;
  perImage.forEach((layers, i) => {
    if (layers.length !== depth) throw new Error(`layerOutlierShares: image ${i} has ${layers.length} blocks, image 0 has ${depth}`);
  });
  const out: LayerOutlierShare[] = [];
  for (let l = 0; l < depth; l++) {
    const pooled = Float64Array.from(perImage.flatMap((layers) => Array.from(layers[l])));
    const det = detectOutliers(pooled, null, { ...opts, threshold: 'auto' });
    const bm = det.bimodality!;
    let max = -Infinity;
    for (const v of pooled) max = Math.max(max, v);
    out.push({
      layer: l,
      tokens: pooled.length,
      outliers: det.indices.length,
      share: det.fraction,
      threshold: det.threshold,
      median: pooled.length ? median(pooled) : 0,
      max: pooled.length ? max : 0,
      modeRatio: bm.ratio,
      deltaBic: bm.deltaBic,
      reason: bm.reason,
    });
  }
  return out;
}
