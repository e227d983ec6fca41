/**
 * Per-layer summaries of patch-token norms: mean, median, max and the outliers each block's output holds,
 * and the first layer where outliers appear (the paper: mid-network, around layer 15 of 40).
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
