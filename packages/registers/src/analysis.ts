/**
 * Token analysis for "Vision Transformers Need Registers": per-token L2 norms, high-norm outlier
 * ("artifact") detection, the layer where outliers appear, the redundancy of the patches they sit on
 * (paper Fig. 5a) and what the register tokens attend to.
 *
 * This file is the whole-image analysis (from a forward pass to one record, and its JSON); its parts:
 * token norms (norms.ts), the outlier rule (outliers.ts), per-layer summaries (layer-summary.ts), the
 * redundancy of outlier patches (redundancy.ts) and attention maps (attention-maps.ts).
 *
 * Everything but `tokenNorms` and `tokenDataFromOutput` is a pure function on plain arrays, so it can be
 * checked against reference tensors without a model. Token order everywhere: [CLS, registers..., patches...];
 * patches are row-major over the patch grid.
 */
import * as tf from '@tensorflow/tfjs-core';
import { attentionToPatches, mapStats, meanMap, type MapStats } from './attention-maps.js';
import { firstOutlierLayer, layerSummaries, type LayerSummary } from './layer-summary.js';
import type { ViTOutput } from './model.js';
import { tokenNorms } from './norms.js';
import { describeOutlierRule, detectOutliers, type OutlierOptions, type OutlierResult } from './outliers.js';
import { neighbourSimilarity, redundancy, type Redundancy } from './redundancy.js';

// Kept for test-time-registers.ts, which imports detectOutliers from here (issue 17 split; to be removed).

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
      attention:
        attn && attnData
          ? { heads: attn.shape[1], data: attnData.slice(i * attn.shape[1] * n * n, (i + 1) * attn.shape[1] * n * n) }
          : undefined,
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
    throw new Error(
      `analyzeTokens: expected ${n} token norms (1 + ${r} registers + ${grid[0]}x${grid[1]} patches), got ${data.prenormNorms.length} / ${data.postnormNorms.length}`,
    );
  }
  const source = opts.source ?? 'postnorm';
  const prePatches = data.prenormNorms.slice(first);
  const postPatches = data.postnormNorms.slice(first);
  const outliers = detectOutliers(source === 'prenorm' ? prePatches : postPatches, grid, opts);
  const layers = data.layerNorms
    ? layerSummaries(
        data.layerNorms.map((l) => l.slice(first)),
        outliers.indices,
        opts,
      )
    : null;
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
    layers:
      a.layers?.map((l) => ({
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
    registers: a.registers.map((r) => ({
      index: r.index,
      prenormNorm: round(r.prenormNorm),
      postnormNorm: round(r.postnormNorm),
      ...(a.cls ? stats(r) : {}),
    })),
  };
}
