/**
 * `vitreg analyze`: find and show the high-norm artifact tokens of a ViT on some images, optionally
 * comparing two models (A/B, e.g. without and with registers) and model A with its test-time register:
 * flags, the models and inputs, then @vitreg/viz's analyzeImages (the forward passes, token analysis,
 * figures, report.html and summary.json).
 *
 * Layout of OUT: report.html, summary.json, and per image OUT/<name>/{input,norms,attention,
 * registers,pca,histogram,layers}.png and stats.json for model A; model B's files go to OUT/<name>/b/,
 * A with its test-time register's to OUT/<name>/ttr/.
 */
import { join } from 'node:path';
import { log, type ImageTransform } from '@vitreg/core';
import type { Encoder } from '@vitreg/registers';
import { analyzeImages, imageFileInputs, tensorInputs, type AnalysisInput } from '@vitreg/viz';
import { CliError, inputAsCliError, parseFlags, type Command } from '../cli.js';
import {
  BACKEND_FLAGS,
  checkBackendFlags,
  configFlag,
  DEFAULT_ENGINE,
  ENGINE_FLAGS,
  engineUsage,
  engineFlags,
  imageFiles,
  loadEncoder,
  readTensorBatch,
  startBackend,
} from '../inputs.js';
import { TTR_FLAGS, ttrEncoder, ttrEngine, ttrFlags, ttrUsage } from '../ttr.js';

const USAGE = `
Usage: vitreg analyze (IMAGE... | --tensor FILE.safetensors[:NAME]) --weights FILE [--weights-b FILE]
                      [--test-time-registers neurons.json [--ttr-top-k K]] --out DIR [options]

Finds high-norm outlier ("artifact") tokens and shows them: norm maps, CLS and register attention,
PCA maps, norm histograms and per-layer curves, in OUT/report.html with numbers in OUT/summary.json
and OUT/<image>/stats.json. Besides each image's outliers (by --threshold and --source), it prints
and writes (summary.json layerOutliers) the automatic rule's outlier share of every block, on the
patch norms of all images pooled: artifacts that appear mid-network show where they are. Images are files, folders or glob patterns; an unreadable image is
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
  --verbose             say why the faster backends were skipped (default: one line, e.g. backend: wasm (auto))
${engineUsage(24)}
${ttrUsage(24)}
                        model A with its test-time register is shown beside A (and B): its
                        files go to OUT/<image>/ttr/
`;

export const analyze: Command = {
  summary: 'find and show high-norm artifact tokens: norm maps, attention, PCA, HTML report',
  usage: USAGE,
  async run(argv) {
    const f = parseFlags('analyze', argv, {
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
    const { values, positionals } = f;
    const weightsA = f.require('weights', '--weights FILE is required (see vitreg analyze --help)');
    const out = f.require('out', '--out DIR is required');
    if (positionals.length > 0 === (values.tensor !== undefined)) {
      f.fail('give either image files / folders / globs, or --tensor FILE.safetensors[:NAME] (not both)');
    }
    if (values.tensor !== undefined && (values.size !== undefined || values['keep-aspect'])) {
      f.fail('--tensor: the tensor is fed as is; --size and --keep-aspect do not apply');
    }
    const thresholdValue = values.threshold ?? 'auto';
    const threshold = thresholdValue === 'auto' ? 'auto' : f.number('threshold', 1);
    if (threshold !== 'auto' && threshold <= 0) f.fail(`--threshold: expected auto or a number > 0, got "${thresholdValue}"`);
    const source = f.choice('source', ['postnorm', 'prenorm'] as const, 'postnorm');
    const size = f.int('size', 224);
    const foreground = values['pca-foreground'] === undefined ? undefined : f.number('pca-foreground', 0.5);
    if (foreground !== undefined && !(foreground > 0 && foreground < 1)) {
      f.fail(`--pca-foreground: expected a number in (0, 1), got "${values['pca-foreground']}"`);
    }
    checkBackendFlags(f);
    const config = f.check(() => configFlag(values.config), undefined);
    const ttr = f.check(() => ttrFlags(values), null);
    const engine = f.check(() => ttrEngine(engineFlags(values), ttr, [weightsA, values['weights-b']], { onnx: true }), DEFAULT_ENGINE);
    // done() checks the weights, --tensor and --test-time-registers files; the images are listed after the
    // model loads (--size is checked against its patch size first).
    f.done();

    await startBackend(values.backend, values.gpu, values.verbose);
    // Models: A, A with test-time registers (--test-time-registers), B (--weights-b).
    const kinds = ['A', ...(ttr ? ['A+TTR'] : []), ...(values['weights-b'] ? ['B'] : [])];
    const weights = kinds.map((kind) => (kind === 'B' ? values['weights-b']! : weightsA));
    const models: Encoder[] = [];
    for (const [k, w] of weights.entries()) {
      models.push(
        kinds[k] === 'A+TTR'
          ? await ttrEncoder(ttr!, models[0])
          : await loadEncoder(w, { model: values.model, config }, engine, kinds[k] === 'B' ? 'weights-b' : 'weights'),
      );
    }
    const patch = models[0].config.patch_size;
    if (models.some((m) => m.config.patch_size !== patch)) {
      throw new CliError(
        `--weights-b: patch size ${models[models.length - 1].config.patch_size} differs from model A's ${patch}; A/B needs the same input grid`,
      );
    }
    let transform: ImageTransform;
    if (values['keep-aspect']) transform = { kind: 'keep-aspect', patchSize: patch, maxSide: values.size === undefined ? undefined : size };
    else {
      if (size % patch !== 0) throw new CliError(`--size: ${size} is not a multiple of the patch size ${patch}`);
      transform = { kind: 'eval', resize: size, crop: size };
    }
    let inputs: AnalysisInput[];
    if (values.tensor !== undefined) {
      const t = await readTensorBatch(values.tensor, patch);
      inputs = tensorInputs(t, { file: t.file, name: t.name });
    } else inputs = imageFileInputs(await imageFiles(positionals), transform);

    const subdirs: Record<string, string | undefined> = { A: undefined, 'A+TTR': 'ttr', B: 'b' };
    let result;
    try {
      result = await analyzeImages(
        models.map((encoder, k) => ({ label: kinds[k], weights: weights[k], encoder, subdir: subdirs[kinds[k]] })),
        inputs,
        out,
        {
          threshold,
          source,
          pcaForeground: foreground,
          transform: values.tensor !== undefined ? 'tensor as is' : transform,
          settings: ttr ? { testTimeRegisters: ttr.path, ttrTopK: ttr.topK ?? null } : {},
        },
      );
    } catch (err) {
      throw inputAsCliError(err);
    }
    const { images: done, failed } = result;
    for (const m of models) await m.dispose();
    for (const [k, layers] of result.layerOutliers.entries()) {
      const shares = layers.map((l) => `${(100 * l.share).toFixed(1)}%`).join(' ');
      log(`${kinds[k]}: automatic outlier share per block (${layers[0]?.tokens ?? 0} patch tokens pooled each): ${shares}`);
    }
    log(`wrote ${join(out, 'report.html')} (${done} image${done === 1 ? '' : 's'})`);
    if (failed.length > 0) {
      process.stderr.write(
        `vitreg analyze: skipped ${failed.length} unreadable input${failed.length === 1 ? '' : 's'}: ${failed.map((f) => `${f.path} (${f.error})`).join('; ')}\n`,
      );
      return 1;
    }
    return 0;
  },
};
