/**
 * `vitreg analyze`: find and show the high-norm artifact tokens of a ViT on some images, optionally
 * comparing two models (A/B, e.g. without and with registers).
 *
 * Per image: one forward pass per model (last-block attention and every block's tokens), the token
 * analysis of @vitreg/registers (norms, outliers, per-layer view, redundancy, register statistics),
 * and the figures of @vitreg/viz. PCA maps are fitted jointly over all images, per model, after the
 * last image; that keeps every image's patch features in memory (P x D x 4 bytes per image and model).
 *
 * Layout of OUT: report.html, summary.json, and per image OUT/<name>/{input,norms,attention,
 * registers,pca,histogram,layers}.png and stats.json for model A; model B's files go to OUT/<name>/b/.
 */
import { join } from 'node:path';
import {
  ensureDir, loadImage, log, Progress, stem, uniqueNames, writeFileAtomic, writeJsonAtomic,
  type ImageTransform,
} from '@vitreg/core';
import {
  analysisToJson, analyzeTokens, disposeOutput, outputTensors, tokenDataFromOutput, type Encoder, type TokenAnalysis,
} from '@vitreg/registers';
import {
  attentionFigure, imageFromNormalized, layerFigure, normFigure, normHistogram, pcaColors, pcaFigure, registerFigure, renderReport,
  reportNumbers, savePng, type Canvas, type ReportEntry, type ReportImage,
} from '@vitreg/viz';
import { choiceFlag, CliError, intFlag, numberFlag, parseCommandArgs, type Command } from '../cli.js';
import { BACKEND_FLAGS, configFlag, ENGINE_FLAGS, engineUsage, engineFlags, imageFiles, loadEncoder, readTensorBatch, startBackend } from '../inputs.js';
import { TTR_FLAGS, ttrEncoder, ttrEngine, ttrFlags, ttrUsage } from '../ttr.js';

const USAGE = `
Usage: vitreg analyze (IMAGE... | --tensor FILE.safetensors[:NAME]) --weights FILE [--weights-b FILE]
                      [--test-time-registers neurons.json [--ttr-top-k K]] --out DIR [options]

Finds high-norm outlier ("artifact") tokens and shows them: norm maps, CLS and register attention,
PCA maps, norm histograms and per-layer curves, in OUT/report.html with numbers in OUT/summary.json
and OUT/<image>/stats.json. Images are files, folders or glob patterns; an unreadable image is
reported and skipped, and the command then exits with code 1 naming it.

Options:
  --weights FILE        model A: .safetensors, .pth or .onnx (DINOv2, timm, HF, DINO, DeiT-III or
                        CLIP names; OpenAI CLIP: --model clip_vitb16 or
                        --config '{"act_layer":"quick_gelu"}')
  --weights-b FILE      model B, shown side by side with A (e.g. the same model with registers);
                        its files go to OUT/<image>/b/
  --model NAME          named config for the weights (default: inferred from the tensors)
  --config JSON         config fields overriding the inferred ones, e.g. '{"num_heads": 3}'
  --out DIR             output folder (created)
  --threshold T         auto (default: bimodality of log norms with the high mode >= 3x the low
                        one, none otherwise; the rule is in stats.json and the report) or a number
                        (outliers have norm > T; the paper uses 150 for DINOv2-g output tokens)
  --source S            norms that decide outliers: postnorm (default, output tokens after the
                        final LayerNorm) or prenorm (last block's output)
  --size N              resize the shorter side to N and centre-crop N x N (default 224; N must be a
                        multiple of the patch size)
  --keep-aspect         keep the whole image and its aspect ratio, sides rounded to multiples of the
                        patch size; with --size N the longer side is first shrunk to at most N
  --pca-foreground T    PCA maps with the DINOv2 foreground trick: threshold T in (0, 1) on the
                        scaled first component, then PCA on the foreground only
  --tensor FILE[:NAME]  already-normalised NHWC float32 images [B, H, W, 3] from a safetensors
                        file (NAME may be left out when it holds one tensor); fed as is
  --backend B           auto (default), tensorflow-gpu, webgpu, tensorflow, wasm or cpu (tfjs: the
                        engine with --engine tfjs, and the token analysis either way)
  --gpu N               the webgpu backend's adapter (default $VITREG_GPU, else 0)
${engineUsage(24)}
${ttrUsage(24)}
                        model A with its test-time register is shown beside A (and B): its
                        files go to OUT/<image>/ttr/
`;

/** One input: a display name, where it came from, and how to get its normalised pixels. */
interface Input {
  name: string;
  source: string;
  load(): Promise<{ data: Float32Array; height: number; width: number }>;
}

async function tensorInputs(spec: string, patchSize: number): Promise<Input[]> {
  const { file, name, data, shape } = await readTensorBatch(spec, patchSize);
  const [b, h, w] = shape;
  const names = uniqueNames(Array.from({ length: b }, (_, i) => `${name}-${i}`));
  return names.map((n, i) => ({
    name: n,
    source: `${file}:${name}[${i}]`,
    load: async () => ({ data: data.subarray(i * h * w * 3, (i + 1) * h * w * 3), height: h, width: w }),
  }));
}

async function imageInputs(patterns: string[], transform: ImageTransform): Promise<Input[]> {
  const files = await imageFiles(patterns);
  const names = uniqueNames(files.map(stem));
  return files.map((f, i) => ({ name: names[i], source: f, load: () => loadImage(f, transform) }));
}

/** Forward one image through one model and analyse it; returns the analysis and the patch features. */
async function analyzeOne(model: Encoder, img: { data: Float32Array; height: number; width: number }, opts: Parameters<typeof analyzeTokens>[1]): Promise<{ analysis: TokenAnalysis; features: Float32Array }> {
  const encoded = await model.encode({ data: img.data, shape: [1, img.height, img.width, 3] }, { attention: 'last', layers: true, embeddings: true });
  const out = outputTensors(encoded);
  try {
    const [data] = await tokenDataFromOutput(out);
    return { analysis: analyzeTokens(data, opts), features: data.patches! };
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

function describe(m: Encoder): string {
  const c = m.config;
  return `dim ${c.embed_dim}, depth ${c.depth}, ${c.num_heads} heads, patch ${c.patch_size}, ${c.num_register_tokens} registers, ${c.ffn_layer}; ${m.description}`;
}

export const analyze: Command = {
  summary: 'find and show high-norm artifact tokens: norm maps, attention, PCA, HTML report',
  usage: USAGE,
  async run(argv) {
    const { values, positionals } = parseCommandArgs('analyze', argv, {
      weights: { type: 'string' },
      'weights-b': { type: 'string' },
      model: { type: 'string' },
      config: { type: 'string' },
      out: { type: 'string' },
      threshold: { type: 'string' },
      source: { type: 'string' },
      size: { type: 'string' },
      'keep-aspect': { type: 'boolean' },
      'pca-foreground': { type: 'string' },
      tensor: { type: 'string' },
      ...BACKEND_FLAGS,
      ...ENGINE_FLAGS,
      ...TTR_FLAGS,
    });
    if (!values.weights) throw new CliError('--weights FILE is required (see vitreg analyze --help)');
    if (!values.out) throw new CliError('--out DIR is required');
    if ((positionals.length > 0) === (values.tensor !== undefined)) {
      throw new CliError('give either image files / folders / globs, or --tensor FILE.safetensors[:NAME] (not both)');
    }
    if (values.tensor !== undefined && (values.size !== undefined || values['keep-aspect'])) {
      throw new CliError('--tensor: the tensor is fed as is; --size and --keep-aspect do not apply');
    }
    const thresholdValue = values.threshold ?? 'auto';
    const threshold = thresholdValue === 'auto' ? 'auto' : numberFlag('threshold', thresholdValue, 0);
    if (threshold !== 'auto' && threshold <= 0) throw new CliError(`--threshold: expected auto or a number > 0, got "${thresholdValue}"`);
    const source = choiceFlag('source', values.source, ['postnorm', 'prenorm'] as const, 'postnorm');
    const size = intFlag('size', values.size, 224);
    const foreground = values['pca-foreground'] === undefined ? undefined : numberFlag('pca-foreground', values['pca-foreground'], 0.5);
    if (foreground !== undefined && !(foreground > 0 && foreground < 1)) {
      throw new CliError(`--pca-foreground: expected a number in (0, 1), got "${values['pca-foreground']}"`);
    }
    const config = configFlag(values.config);
    const ttr = ttrFlags(values);
    const engine = ttrEngine(engineFlags(values), ttr, [values.weights, values['weights-b']], { onnx: true });

    await startBackend(values.backend, values.gpu);
    // Models: A, A with test-time registers (--test-time-registers), B (--weights-b).
    const kinds = ['A', ...(ttr ? ['A+TTR'] : []), ...(values['weights-b'] ? ['B'] : [])];
    const weights = kinds.map((kind) => (kind === 'B' ? values['weights-b']! : values.weights!));
    const models: Encoder[] = [];
    for (const [k, w] of weights.entries()) {
      models.push(kinds[k] === 'A+TTR' ? await ttrEncoder(ttr!, models[0]) : await loadEncoder(w, { model: values.model, config }, engine, kinds[k] === 'B' ? 'weights-b' : 'weights'));
    }
    const patch = models[0].config.patch_size;
    if (models.some((m) => m.config.patch_size !== patch)) {
      throw new CliError(`--weights-b: patch size ${models[models.length - 1].config.patch_size} differs from model A's ${patch}; A/B needs the same input grid`);
    }
    let transform: ImageTransform;
    if (values['keep-aspect']) transform = { kind: 'keep-aspect', patchSize: patch, maxSide: values.size === undefined ? undefined : size };
    else {
      if (size % patch !== 0) throw new CliError(`--size: ${size} is not a multiple of the patch size ${patch}`);
      transform = { kind: 'eval', resize: size, crop: size };
    }
    const inputs = values.tensor !== undefined ? await tensorInputs(values.tensor, patch) : await imageInputs(positionals, transform);

    const out = values.out;
    await ensureDir(out);
    const labels = kinds;
    const subdir = (name: string, k: number) => (k === 0 ? name : `${name}/${kinds[k] === 'B' ? 'b' : 'ttr'}`);
    const started = performance.now();
    const failed: { path: string; error: string }[] = [];
    const done: { input: Input; image: Canvas; grid: [number, number]; analyses: TokenAnalysis[] }[] = [];
    const features: Float32Array[][] = models.map(() => []);
    const progress = new Progress({ total: inputs.length, label: 'analyze', unit: 'img' });
    for (const input of inputs) {
      let img: { data: Float32Array; height: number; width: number };
      try {
        img = await input.load();
      } catch (err) {
        failed.push({ path: input.source, error: (err as Error).message });
        progress.tick(1, `skipped ${input.source}`);
        continue;
      }
      const analyses: TokenAnalysis[] = [];
      for (let k = 0; k < models.length; k++) {
        const r = await analyzeOne(models[k], img, { threshold, source }).catch((err: Error) => {
          throw new CliError(`${input.source}: ${err.message}`);
        });
        analyses.push(r.analysis);
        features[k].push(r.features);
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
          model: labels[k],
          weights: weights[k],
          config: models[k].config,
          ...analysisToJson(a),
        });
      }
      done.push({ input, image, grid: analyses[0].grid, analyses });
      const n = analyses[0].outliers.indices.length;
      progress.tick(1, `${input.name}: ${n} outlier${n === 1 ? '' : 's'}`);
    }
    progress.done();

    // PCA maps, fitted jointly over all images per model.
    if (done.length > 0) {
      for (let k = 0; k < models.length; k++) {
        const { colors } = pcaColors(features[k], models[k].config.embed_dim, { foreground });
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
    const settings = {
      ...(ttr ? { testTimeRegisters: ttr.path, ttrTopK: ttr.topK ?? null } : {}),
      threshold,
      source,
      transform: values.tensor !== undefined ? 'tensor as is' : transform,
      pcaForeground: foreground ?? null,
    };
    await writeFileAtomic(join(out, 'report.html'), renderReport({
      title: 'vitreg analyze: high-norm tokens',
      models: models.map((m, k) => ({ label: labels[k], weights: weights[k], description: describe(m) })),
      images,
      failed,
      notes: [`threshold: ${threshold === 'auto' ? 'automatic (bimodality of log norms, modes >= 3x apart; per image: mode ratio, verdict, rule)' : `norm > ${threshold}`}; norms: ${source}; input: ${values.tensor !== undefined ? 'tensor as is' : JSON.stringify(transform)}`],
    }));
    await writeJsonAtomic(join(out, 'summary.json'), {
      models: models.map((m, k) => ({ label: labels[k], weights: weights[k], config: m.config, engine: m.description })),
      settings,
      images: done.map((d) => ({
        name: d.input.name,
        source: d.input.source,
        grid: d.grid,
        models: d.analyses.map((a, k) => summaryOf(a, labels[k])),
      })),
      failed,
      seconds: Number(((performance.now() - started) / 1000).toFixed(2)),
    });
    for (const m of models) await m.dispose();
    log(`wrote ${join(out, 'report.html')} (${done.length} image${done.length === 1 ? '' : 's'})`);
    if (failed.length > 0) {
      process.stderr.write(`vitreg analyze: skipped ${failed.length} unreadable input${failed.length === 1 ? '' : 's'}: ${failed.map((f) => `${f.path} (${f.error})`).join('; ')}\n`);
      return 1;
    }
    return 0;
  },
};
