/**
 * The analysis of high-norm artifact tokens end to end (what `vitreg analyze` runs), for one model or
 * several side by side (A/B, or a model with its test-time register): per image, one forward pass per
 * model (last-block attention and every block's tokens), the token analysis of @vitreg/registers (norms,
 * outliers, per-layer view, redundancy, register statistics), this package's figures, and in the end the
 * HTML report and the numbers as JSON. It lives here, beside the report it makes, as the last step of
 * the data flow images -> core -> registers (forward, analysis) -> viz.
 *
 * PCA maps are fitted jointly over all images, per model, after the last image; that keeps every
 * image's patch features in memory (P x D x 4 bytes per image and model).
 *
 * summary.json also holds, per model, `layerOutliers`: the automatic outlier rule on every block's patch
 * norms pooled over all images (@vitreg/registers' layerOutlierShares), the share per block.
 *
 * Layout of OUT: report.html, summary.json, and per image OUT/<name>/input.png and, per model, in
 * OUT/<name>/<subdir>/ (the first model: OUT/<name>/): norms, attention, registers (models with
 * registers), pca, histogram and layers .png, and stats.json.
 */
import { join } from 'node:path';
import {
  ensureDir,
  getBackendName,
  InputError,
  loadImage,
  Progress,
  stem,
  uniqueNames,
  writeFileAtomic,
  writeJsonAtomic,
  type ImageTransform,
} from '@vitreg/core';
import {
  analysisToJson,
  analyzeTokens,
  disposeOutput,
  layerOutlierShares,
  outputTensors,
  tokenDataFromOutput,
  type Encoder,
  type LayerOutlierShare,
  type TokenAnalysis,
} from '@vitreg/registers';
import type { Canvas } from './canvas.js';
import { attentionFigure, imageFromNormalized, layerFigure, normFigure, normHistogram, pcaFigure, registerFigure } from './figures.js';
import { pcaColors } from './pca.js';
import { savePng } from './png.js';
import { renderReport, reportNumbers, type ReportEntry, type ReportImage } from './report.js';

/** Normalised NHWC float32 pixels of one image [H, W, 3]. */
export interface AnalysisImage {
  data: Float32Array;
  height: number;
  width: number;
}

/** One input: a display (and folder) name, where it came from, and how to get its normalised pixels. */
export interface AnalysisInput {
  name: string;
  source: string;
  load(): Promise<AnalysisImage>;
}

/** Image files decoded with `transform` when needed; folder names from their stems, made unique. */
export function imageFileInputs(files: string[], transform: ImageTransform): AnalysisInput[] {
  const names = uniqueNames(files.map(stem));
  return files.map((f, i) => ({ name: names[i], source: f, load: () => loadImage(f, transform) }));
}

/**
 * The images of an already-normalised NHWC float32 batch [B, H, W, 3] (tensor `name` of `file`), fed as
 * is: named `<name>-<i>`, from `<file>:<name>[i]`.
 */
export function tensorInputs(
  batch: { data: Float32Array; shape: readonly number[] },
  from: { file: string; name: string },
): AnalysisInput[] {
  const [b, h, w] = batch.shape as [number, number, number, number];
  const names = uniqueNames(Array.from({ length: b }, (_, i) => `${from.name}-${i}`));
  return names.map((n, i) => ({
    name: n,
    source: `${from.file}:${from.name}[${i}]`,
    load: async () => ({ data: batch.data.subarray(i * h * w * 3, (i + 1) * h * w * 3), height: h, width: w }),
  }));
}

/** One model of the analysis. */
export interface AnalysisModel {
  /** Its name in the report and the JSON files, e.g. 'A', 'A+TTR', 'B'. */
  label: string;
  /** Where its weights came from. */
  weights: string;
  /** The model on any engine (not disposed here). */
  encoder: Encoder;
  /** Sub-folder of each image's folder for this model's files, e.g. 'b' (default: the image's folder). */
  subdir?: string;
}

export interface AnalyzeImagesOptions {
  /** Outlier rule: 'auto' (default, the bimodality test) or a norm (outliers have norm > T). */
  threshold?: 'auto' | number;
  /** Norms that decide outliers: 'postnorm' (default) or 'prenorm'. */
  source?: 'postnorm' | 'prenorm';
  /** PCA maps with DINOv2's foreground trick at this threshold in (0, 1). */
  pcaForeground?: number;
  /** How the inputs were made, recorded in the report and summary.json ('tensor as is' for tensors). */
  transform: ImageTransform | 'tensor as is';
  /** More settings recorded first in summary.json (e.g. the test-time registers file). */
  settings?: Record<string, unknown>;
  /** The report's title (default 'vitreg analyze: high-norm tokens'). */
  title?: string;
  /** A progress line on stderr (default true). */
  progress?: boolean;
}

export interface AnalyzeImagesResult {
  /** Images analysed. */
  images: number;
  /** Inputs that could not be read (skipped, named in the report and summary.json). */
  failed: { path: string; error: string }[];
  /** Paths of report.html and summary.json. */
  report: string;
  summary: string;
  /** Per model (in `models` order), the automatic outlier share of every block over all images pooled. */
  layerOutliers: LayerOutlierShare[][];
}

/** Forward one image through one model and analyse it; returns the analysis and the patch features. */
async function analyzeOne(
  model: Encoder,
  img: AnalysisImage,
  opts: Parameters<typeof analyzeTokens>[1],
): Promise<{ analysis: TokenAnalysis; features: Float32Array; layerPatchNorms: Float32Array[] }> {
  const batch = { data: img.data, shape: [1, img.height, img.width, 3] as [number, number, number, number] };
  const encoded = await model.encode(batch, { attention: 'last', layers: true, embeddings: true });
  const out = outputTensors(encoded);
  try {
    const [data] = await tokenDataFromOutput(out);
    const first = 1 + data.numRegisters;
    const layerPatchNorms = (data.layerNorms ?? []).map((l) => l.slice(first));
    return { analysis: analyzeTokens(data, opts), features: data.patches!, layerPatchNorms };
  } finally {
    disposeOutput(out);
  }
}

/** One model's numbers on one image, for summary.json. */
function summaryOf(a: TokenAnalysis, label: string): Record<string, unknown> {
  const norms = Float64Array.from(a.source === 'prenorm' ? a.norms.patches.prenorm : a.norms.patches.postnorm).sort();
  const r = (x: number | null | undefined) => (x === null || x === undefined ? null : Number(x.toPrecision(5)));
  return {
    label,
    outliers: a.outliers.indices.length,
    fraction: r(a.outliers.fraction),
    threshold: r(a.outliers.threshold),
    positions: a.outliers.positions,
    medianNorm: r(norms[norms.length >> 1]),
    maxNorm: r(norms[norms.length - 1]),
    firstOutlierLayer: a.firstOutlierLayer,
    clsAttentionOnOutliers: r(a.cls?.stats.outlierMass),
    neighbourCosOutliers: r(a.redundancy?.outlierMean),
    neighbourCosNormal: r(a.redundancy?.normalMean),
  };
}

/** A model in one line: its config and engine. */
export function describeEncoder(m: Encoder): string {
  const c = m.config;
  const shape = `dim ${c.embed_dim}, depth ${c.depth}, ${c.num_heads} heads, patch ${c.patch_size}`;
  return `${shape}, ${c.num_register_tokens} registers, ${c.ffn_layer}; ${m.description}`;
}

/**
 * Analyses every input with every model into `out` (see the module comment). An input that cannot be
 * read is skipped and listed in `failed`; a model that fails on an input is an InputError naming it. The
 * models must share one patch size (one input grid).
 */
export async function analyzeImages(
  models: AnalysisModel[],
  inputs: AnalysisInput[],
  out: string,
  opts: AnalyzeImagesOptions,
): Promise<AnalyzeImagesResult> {
  const threshold = opts.threshold ?? 'auto';
  const source = opts.source ?? 'postnorm';
  const foreground = opts.pcaForeground;
  await ensureDir(out);
  const subdir = (name: string, k: number) => (models[k].subdir ? `${name}/${models[k].subdir}` : name);
  const started = performance.now();
  const failed: { path: string; error: string }[] = [];
  const done: { input: AnalysisInput; image: Canvas; grid: [number, number]; analyses: TokenAnalysis[] }[] = [];
  const features: Float32Array[][] = models.map(() => []);
  // per model, per image, per block: the patch-token norms (for the pooled per-block outlier shares)
  const layerNorms: Float32Array[][][] = models.map(() => []);
  const progress = opts.progress === false ? undefined : new Progress({ total: inputs.length, label: 'analyze', unit: 'img' });
  for (const input of inputs) {
    let img: AnalysisImage;
    try {
      img = await input.load();
    } catch (err) {
      failed.push({ path: input.source, error: (err as Error).message });
      progress?.tick(1, `skipped ${input.source}`);
      continue;
    }
    const analyses: TokenAnalysis[] = [];
    for (let k = 0; k < models.length; k++) {
      const r = await analyzeOne(models[k].encoder, img, { threshold, source }).catch((err: Error) => {
        throw new InputError(`${input.source}: ${err.message}`, { cause: err });
      });
      analyses.push(r.analysis);
      features[k].push(r.features);
      layerNorms[k].push(r.layerPatchNorms);
    }
    const image = imageFromNormalized(img.data, img.height, img.width);
    await ensureDir(join(out, input.name));
    await savePng(join(out, input.name, 'input.png'), image);
    for (let k = 0; k < models.length; k++) {
      const a = analyses[k];
      const dir = join(out, subdir(input.name, k));
      await ensureDir(dir);
      await savePng(join(dir, 'norms.png'), normFigure(image, a));
      await savePng(join(dir, 'attention.png'), attentionFigure(image, a));
      if (a.numRegisters > 0) await savePng(join(dir, 'registers.png'), registerFigure(image, a));
      await savePng(join(dir, 'histogram.png'), normHistogram(a));
      await savePng(join(dir, 'layers.png'), layerFigure(a));
      await writeJsonAtomic(join(dir, 'stats.json'), {
        image: input.name,
        input: input.source,
        size: [img.height, img.width],
        model: models[k].label,
        weights: models[k].weights,
        config: models[k].encoder.config,
        ...analysisToJson(a),
      });
    }
    done.push({ input, image, grid: analyses[0].grid, analyses });
    const n = analyses[0].outliers.indices.length;
    progress?.tick(1, `${input.name}: ${n} outlier${n === 1 ? '' : 's'}`);
  }
  progress?.done();

  // PCA maps, fitted jointly over all images per model.
  if (done.length > 0) {
    for (let k = 0; k < models.length; k++) {
      const { colors } = pcaColors(features[k], models[k].encoder.config.embed_dim, { foreground });
      for (let i = 0; i < done.length; i++) {
        await savePng(join(out, subdir(done[i].input.name, k), 'pca.png'), pcaFigure(done[i].image, done[i].grid, colors[i]));
      }
    }
  }

  const images: ReportImage[] = done.map((d) => ({
    name: d.input.name,
    source: d.input.source,
    input: `${d.input.name}/input.png`,
    results: d.analyses.map((a, k): ReportEntry => {
      const dir = subdir(d.input.name, k);
      const figures: Record<string, string> = { 'patch norms (outliers outlined)': `${dir}/norms.png` };
      figures['CLS attention, last block (mean, heads)'] = `${dir}/attention.png`;
      if (a.numRegisters > 0) figures['register attention, last block'] = `${dir}/registers.png`;
      figures['PCA of patch features'] = `${dir}/pca.png`;
      figures['norm histogram'] = `${dir}/histogram.png`;
      figures['norms per layer'] = `${dir}/layers.png`;
      return { figures, numbers: reportNumbers(a) };
    }),
  }));
  const settings = { ...opts.settings, threshold, source, transform: opts.transform, pcaForeground: foreground ?? null };
  const input = typeof opts.transform === 'string' ? opts.transform : JSON.stringify(opts.transform);
  const auto = 'automatic (bimodality of log norms, modes >= 3x apart; per image: mode ratio, verdict, rule)';
  const rule = threshold === 'auto' ? auto : `norm > ${threshold}`;
  const report = join(out, 'report.html');
  await writeFileAtomic(
    report,
    renderReport({
      title: opts.title ?? 'vitreg analyze: high-norm tokens',
      models: models.map((m) => ({ label: m.label, weights: m.weights, description: describeEncoder(m.encoder) })),
      images,
      failed,
      notes: [
        `threshold: ${rule}; norms: ${source}; input: ${input}`,
        // Which engine did what: the models' forward passes (each model's line above), the rest on tfjs.
        `forward passes: ${[...new Set(models.map((m) => m.encoder.description))].join('; ')}; token analysis and figures: tfjs ${getBackendName() ?? 'not started'}`,
      ],
    }),
  );
  const layerOutliers = layerNorms.map((perImage) => layerOutlierShares(perImage));
  const rnd = (x: number | null) => (x === null ? null : Number(x.toPrecision(5)));
  const summary = join(out, 'summary.json');
  await writeJsonAtomic(summary, {
    models: models.map((m) => ({ label: m.label, weights: m.weights, config: m.encoder.config, engine: m.encoder.description })),
    settings,
    images: done.map((d) => ({
      name: d.input.name,
      source: d.input.source,
      grid: d.grid,
      models: d.analyses.map((a, k) => summaryOf(a, models[k].label)),
    })),
    failed,
    layerOutliers: models.map((m, k) => ({
      label: m.label,
      rule: "auto, on every block's patch-token norms pooled over the images",
      layers: layerOutliers[k].map((l) => ({
        layer: l.layer,
        tokens: l.tokens,
        outliers: l.outliers,
        share: rnd(l.share),
        threshold: rnd(l.threshold),
        median: rnd(l.median),
        max: rnd(l.max),
        modeRatio: rnd(l.modeRatio),
        deltaBic: rnd(l.deltaBic),
        reason: l.reason,
      })),
    })),
    seconds: Number(((performance.now() - started) / 1000).toFixed(2)),
  });
  return { images: done.length, failed, report, summary, layerOutliers };
}
