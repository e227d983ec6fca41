/**
 * Test-time registers (Jiang, Dravid, Efros, Gandelsman, "Vision Transformers Don't Need Trained
 * Registers", 2025; code: github.com/nickjiang2378/test-time-registers): find the few MLP "register
 * neurons" that create the high-norm outlier tokens of a model trained without registers, and move their
 * activation into one extra token at inference (the forward option `testTimeRegisters` of model.ts).
 *
 * - findRegisterNeurons: the reference's shared/algorithms.py `find_register_neurons` (+ shared/utils.py
 *   `filter_layers` and the top-k cut of its notebook), on batches, with vitreg's automatic threshold as
 *   an alternative to a fixed one.
 * - TTR_PRESETS: the reference's configs/*.yaml per family.
 * - A small JSON file (ranking, settings, model fingerprint) that refuses to apply to another model.
 */
import { createHash } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs-core';

import { ffnHiddenDim, type ViTConfig } from './config.js';
import type { ForwardOptions, ViTOutput, VisionTransformer } from './model.js';
import { detectOutliers } from './outliers.js';

/** One MLP hidden unit: block index (0-based) and neuron index in the block's hidden layer. */
export interface RegisterNeuron {
  layer: number;
  neuron: number;
  /** Mean |activation| at the outlier tokens, averaged over the images with outliers. */
  score: number;
}

/** Settings of findRegisterNeurons (the reference's argument names in brackets). */
export interface FindRegisterNeuronsOptions {
  /** Block whose output norms decide the outliers, negative from the end (detect_outliers_layer; default -1). */
  layer?: number;
  /** Outlier rule: tokens with an L2 norm strictly above a number (register_norm_threshold), or 'auto' (default). */
  threshold?: number | 'auto';
  /** Keep neurons of blocks <= this one; -1 (default) keeps all (filter_layers' highest_layer). */
  highestLayer?: number;
  /** Neurons kept after the layer filter (the notebook's top_k; default 50). */
  topK?: number;
  /**
   * The reference's sparsity filter (apply_sparsity_filter): per image and block, only neurons whose
   * activation is below `activation` (0.5) on at least `fraction` (0.5) of the tokens keep their score.
   */
  sparsity?: boolean | { fraction?: number; activation?: number };
  /** Images per forward pass (default 8); results do not depend on it. */
  batchSize?: number;
}

/** The settings as saved: every option resolved. */
export interface RegisterNeuronSettings {
  layer: number;
  threshold: number | 'auto';
  highestLayer: number;
  topK: number;
  sparsity: { fraction: number; activation: number } | null;
}

export interface RegisterNeuronResult {
  /** The top-k neurons of blocks <= highestLayer, best first. */
  neurons: RegisterNeuron[];
  /** Every neuron of every block, best first (ties: lower block, then lower neuron first). */
  ranking: RegisterNeuron[];
  settings: RegisterNeuronSettings;
  /** Images with at least one outlier (those scored) and without (skipped). */
  images: { used: number; skipped: number };
}

/** The reference's settings per model (its configs/dinov2_large.yaml, openclip_base.yaml, openai_clip_base.yaml). */
export const TTR_PRESETS: Readonly<Record<string, Readonly<Omit<RegisterNeuronSettings, 'sparsity'>>>> = Object.freeze({
  dinov2_vitl14: { layer: -2, threshold: 150, highestLayer: 17, topK: 50 },
  openclip_vitb16: { layer: -1, threshold: 30, highestLayer: 5, topK: 10 },
  clip_vitb16: { layer: -1, threshold: 30, highestLayer: 5, topK: 10 },
});

/** Resolves and checks the options; errors name the option. */
export function registerNeuronSettings(config: ViTConfig, opts: FindRegisterNeuronsOptions = {}): RegisterNeuronSettings {
  const layer = opts.layer ?? -1;
  if (!Number.isInteger(layer) || layer < -config.depth || layer >= config.depth) {
    throw new Error(`layer: expected an integer in [${-config.depth}, ${config.depth - 1}], got ${layer}`);
  }
  const threshold = opts.threshold ?? 'auto';
  if (threshold !== 'auto' && !(typeof threshold === 'number' && Number.isFinite(threshold) && threshold >= 0)) {
    throw new Error(`threshold: expected 'auto' or a number >= 0, got ${threshold}`);
  }
  const highestLayer = opts.highestLayer ?? -1;
  if (!Number.isInteger(highestLayer) || highestLayer < -1 || highestLayer >= config.depth) {
    throw new Error(`highestLayer: expected -1 (all) or an integer in [0, ${config.depth - 1}], got ${highestLayer}`);
  }
  const topK = opts.topK ?? 50;
  if (!Number.isInteger(topK) || topK < 1) throw new Error(`topK: expected an integer >= 1, got ${topK}`);
  let sparsity: RegisterNeuronSettings['sparsity'] = null;
  if (opts.sparsity) {
    const s = opts.sparsity === true ? {} : opts.sparsity;
    sparsity = { fraction: s.fraction ?? 0.5, activation: s.activation ?? 0.5 };
    if (!(sparsity.fraction >= 0 && sparsity.fraction <= 1))
      throw new Error(`sparsity.fraction: expected a number in [0, 1], got ${sparsity.fraction}`);
    if (!Number.isFinite(sparsity.activation)) throw new Error(`sparsity.activation: expected a finite number, got ${sparsity.activation}`);
  }
  return { layer, threshold, highestLayer, topK, sparsity };
}

/** Outlier token indices of one image's token norms [N] (CLS and registers included), by the settings' rule. */
export function outlierTokens(norms: ArrayLike<number>, threshold: number | 'auto'): number[] {
  return detectOutliers(norms, null, { threshold }).indices;
}

type ImageInput = tf.Tensor4D | Iterable<tf.Tensor4D> | AsyncIterable<tf.Tensor4D>;

async function* batchesOf(images: ImageInput, batchSize: number): AsyncGenerator<tf.Tensor4D> {
  if (images instanceof tf.Tensor) {
    const B = images.shape[0];
    for (let i = 0; i < B; i += batchSize) {
      const n = Math.min(batchSize, B - i);
      yield tf.slice(images, [i, 0, 0, 0], [n, -1, -1, -1]);
    }
    return;
  }
  for await (const b of images as AsyncIterable<tf.Tensor4D>) yield b;
}

/**
 * Ranks every MLP neuron of every block as the reference's `find_register_neurons`: per image, the L2
 * norm of every token (CLS and registers included) at the output of block `layer` (before the final
 * norm); outliers are the tokens above the threshold; each neuron scores its mean |activation| (after
 * the MLP activation) at the outlier tokens (times the sparsity mask when on); images without outliers
 * are skipped; scores are averaged over the remaining images and sorted. Then the neurons of blocks
 * <= highestLayer, top-k. `images` are normalised NHWC batches (one tensor, or an iterable of batches
 * the caller owns; a single tensor is cut into `batchSize` batches). Throws when no image has outliers,
 * as the reference does.
 */
export async function findRegisterNeurons(
  model: VisionTransformer,
  images: ImageInput,
  opts: FindRegisterNeuronsOptions = {},
): Promise<RegisterNeuronResult> {
  const c = model.config;
  const settings = registerNeuronSettings(c, opts);
  const batchSize = opts.batchSize ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize: expected an integer >= 1, got ${batchSize}`);
  const hidden = ffnHiddenDim(c);
  const outLayer = settings.layer < 0 ? c.depth + settings.layer : settings.layer;
  const sums = new Float64Array(c.depth * hidden);
  let used = 0;
  let skipped = 0;
  const own = images instanceof tf.Tensor;
  for await (const batch of batchesOf(images, batchSize)) {
    const out = model.forward(batch, { layers: true, mlpActivations: true });
    try {
      const [B, N] = out.layers![outLayer].shape;
      const norms = tf.tidy(() => tf.norm(out.layers![outLayer], 'euclidean', 2));
      const normData = (await norms.data()) as Float32Array;
      norms.dispose();
      // Weights [B, 1, N]: 1 / count at each image's outlier tokens.
      const weights = new Float32Array(B * N);
      const keep: number[] = [];
      for (let b = 0; b < B; b++) {
        const idx = outlierTokens(normData.subarray(b * N, (b + 1) * N), settings.threshold);
        if (idx.length === 0) {
          skipped++;
          continue;
        }
        keep.push(b);
        for (const i of idx) weights[b * N + i] = 1 / idx.length;
      }
      used += keep.length;
      if (keep.length === 0) continue;
      const scores = tf.tidy(() => {
        const w = tf.tensor3d(weights, [B, 1, N]);
        const per = out.mlpActivations!.map((act) => {
          let s = tf.reshape(tf.matMul(w, tf.abs(act)), [B, hidden]);
          if (settings.sparsity) {
            const below = tf.sum(tf.cast(tf.less(act, settings.sparsity.activation), 'float32'), 1);
            s = tf.mul(s, tf.cast(tf.greaterEqual(below, settings.sparsity.fraction * N), 'float32'));
          }
          return s;
        });
        return tf.stack(per, 1); // [B, depth, hidden]
      });
      const data = (await scores.data()) as Float32Array;
      scores.dispose();
      for (const b of keep) {
        const row = data.subarray(b * c.depth * hidden, (b + 1) * c.depth * hidden);
        for (let j = 0; j < row.length; j++) sums[j] += row[j];
      }
    } finally {
      tf.dispose([out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...(out.layers ?? []), ...(out.mlpActivations ?? [])]);
      if (out.pooled) out.pooled.dispose();
      if (own) batch.dispose();
    }
  }
  if (used === 0) {
    throw new Error(
      `findRegisterNeurons: no image has outlier tokens at block ${outLayer} (threshold ${settings.threshold}, ${skipped} images): lower the threshold or give more images`,
    );
  }
  const ranking: RegisterNeuron[] = Array.from(sums, (s, j) => ({
    layer: Math.floor(j / hidden),
    neuron: j % hidden,
    score: Math.fround(s / used),
  }));
  ranking.sort((a, b) => b.score - a.score || a.layer - b.layer || a.neuron - b.neuron);
  return { neurons: selectNeurons(ranking, settings.highestLayer, settings.topK), ranking, settings, images: { used, skipped } };
}

/** filter_layers(ranking, highest_layer)[:top_k] of the reference: the best `topK` neurons of blocks <= highestLayer (-1: all). */
export function selectNeurons(ranking: readonly RegisterNeuron[], highestLayer: number, topK: number): RegisterNeuron[] {
  return ranking.filter((r) => highestLayer === -1 || r.layer <= highestLayer).slice(0, topK);
}

/**
 * The model's fingerprint: SHA-256 of its config (fields in sorted order) and, per parameter in
 * state-dict order, its name, shape and up to 4096 evenly spaced float32 values (so that a model with the
 * same architecture and other weights differs without reading gigabytes).
 */
export async function modelFingerprint(model: VisionTransformer): Promise<string> {
  const h = createHash('sha256');
  const cfg = model.config as unknown as Record<string, unknown>;
  h.update(
    JSON.stringify(
      Object.keys(cfg)
        .sort()
        .map((k) => [k, cfg[k]]),
    ),
  );
  for (const v of model.variables()) {
    const name = v.name.replace(/^vitreg\//, '').replace(/\/\d+$/, '');
    h.update(`${name}:${v.shape.join('x')};`);
    const n = v.size;
    const k = Math.min(n, 4096);
    const idx = Int32Array.from({ length: k }, (_, i) => Math.floor((i * n) / k));
    const sample = tf.tidy(() => tf.gather(tf.reshape(v, [n]), tf.tensor1d(idx, 'int32')));
    const data = (await sample.data()) as Float32Array;
    sample.dispose();
    h.update(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }
  return `sha256:${h.digest('hex')}`;
}

/** The saved form of a register-neuron search (format "vitreg-test-time-registers", version 1). */
export interface TestTimeRegistersFile {
  format: 'vitreg-test-time-registers';
  version: 1;
  /** modelFingerprint of the model searched, its config, and where its weights came from (informative). */
  model: { fingerprint: string; config: ViTConfig; weights?: string };
  settings: RegisterNeuronSettings;
  images: { used: number; skipped: number };
  /** The selected neurons (top-k of blocks <= highestLayer). */
  neurons: RegisterNeuron[];
  /** The whole ranking as [layer, neuron, score] rows, best first. */
  ranking: [number, number, number][];
}

/** The file contents for a result (no I/O but the fingerprint). */
export async function testTimeRegistersFile(
  model: VisionTransformer,
  result: RegisterNeuronResult,
  weights?: string,
): Promise<TestTimeRegistersFile> {
  return {
    format: 'vitreg-test-time-registers',
    version: 1,
    model: { fingerprint: await modelFingerprint(model), config: model.config, ...(weights ? { weights } : {}) },
    settings: result.settings,
    images: result.images,
    neurons: result.neurons,
    ranking: result.ranking.map((r) => [r.layer, r.neuron, r.score]),
  };
}

/** Writes the JSON (atomically: a temporary file renamed over the target). */
export async function saveTestTimeRegisters(path: string, file: TestTimeRegistersFile): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, JSON.stringify(file) + '\n');
  await rename(tmp, path);
}

function isInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x);
}

/** Parses and checks a test-time registers JSON; every error names the file and the field. */
export function parseTestTimeRegisters(text: string, file: string): TestTimeRegistersFile {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  const bad = (field: string, expected: string): never => {
    throw new Error(`${file}: ${field}: expected ${expected}`);
  };
  if (typeof j !== 'object' || j === null) bad('(top level)', 'an object');
  if (j.format !== 'vitreg-test-time-registers') bad('format', '"vitreg-test-time-registers" (written by vitreg registers find)');
  if (j.version !== 1) bad('version', '1');
  const m = j.model as Record<string, unknown> | undefined;
  if (!m || typeof m.fingerprint !== 'string' || !m.fingerprint.startsWith('sha256:')) bad('model.fingerprint', 'a "sha256:..." string');
  if (!m || typeof m.config !== 'object' || m.config === null) bad('model.config', 'an object');
  const cfg = m!.config as ViTConfig;
  const hidden = ffnHiddenDim(cfg);
  const checkNeuron = (n: unknown, field: string) => {
    const r = n as Record<string, unknown>;
    if (!r || !isInt(r.layer) || r.layer < 0 || r.layer >= cfg.depth) bad(`${field}.layer`, `an integer in [0, ${cfg.depth - 1}]`);
    if (!isInt(r.neuron) || r.neuron < 0 || r.neuron >= hidden) bad(`${field}.neuron`, `an integer in [0, ${hidden - 1}]`);
    if (typeof r.score !== 'number') bad(`${field}.score`, 'a number');
  };
  if (!Array.isArray(j.neurons)) bad('neurons', 'an array of {layer, neuron, score}');
  (j.neurons as unknown[]).forEach((n, i) => checkNeuron(n, `neurons[${i}]`));
  if (!Array.isArray(j.ranking)) bad('ranking', 'an array of [layer, neuron, score] rows');
  (j.ranking as unknown[]).forEach((r, i) => {
    if (!Array.isArray(r) || r.length !== 3) bad(`ranking[${i}]`, 'a [layer, neuron, score] row');
    const [layer, neuron, score] = r as unknown[];
    checkNeuron({ layer, neuron, score }, `ranking[${i}]`);
  });
  const s = j.settings as Record<string, unknown> | undefined;
  if (!s || !isInt(s.highestLayer) || !isInt(s.topK) || !isInt(s.layer))
    bad('settings', 'an object with integer layer, highestLayer and topK');
  return j as unknown as TestTimeRegistersFile;
}

/** Reads a test-time registers JSON (see parseTestTimeRegisters). */
export async function loadTestTimeRegisters(path: string): Promise<TestTimeRegistersFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new Error(`${path}: cannot read the test-time registers file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, {
      cause: e,
    });
  }
  return parseTestTimeRegisters(text, path);
}

/**
 * The neurons to apply from a file to `model` (a tfjs model, or anything that computes the same
 * modelFingerprint, e.g. an OnnxEncoder built from weights): refuses (throws, naming the file) a model whose
 * fingerprint differs from the one searched. `topK` re-cuts the saved ranking (blocks <= the saved
 * highestLayer); without it, the saved selection.
 */
export async function testTimeRegisterNeurons(
  file: TestTimeRegistersFile,
  model: VisionTransformer | { fingerprint(): Promise<string> },
  source: string,
  topK?: number,
): Promise<RegisterNeuron[]> {
  const fp =
    'fingerprint' in model && typeof model.fingerprint === 'function'
      ? await model.fingerprint()
      : await modelFingerprint(model as VisionTransformer);
  if (fp !== file.model.fingerprint) {
    throw new Error(
      `${source}: made for another model (fingerprint ${file.model.fingerprint.slice(0, 19)}…${file.model.weights ? `, ${file.model.weights}` : ''}); this model's is ${fp.slice(0, 19)}…: run vitreg registers find on it`,
    );
  }
  if (topK === undefined) return file.neurons;
  if (!Number.isInteger(topK) || topK < 1) throw new Error(`--ttr-top-k: expected an integer >= 1, got ${topK}`);
  const ranking = file.ranking.map(([layer, neuron, score]) => ({ layer, neuron, score }));
  return selectNeurons(ranking, file.settings.highestLayer, topK);
}

/**
 * A view of `model` whose forward always adds test-time registers with `neurons` (for code that takes a
 * model, e.g. TfjsEncoder, analysis, probes and LOST). Its `config` counts the test-time register in
 * num_register_tokens (R + 1), so code that slices tokens by the config sees what the forward returns:
 * [CLS, R + 1 registers, patches]. Everything else is the model's own; disposing the view disposes the
 * model.
 */
export function withTestTimeRegisters(model: VisionTransformer, neurons: readonly { layer: number; neuron: number }[]): VisionTransformer {
  const list = neurons.map((n) => ({ layer: n.layer, neuron: n.neuron }));
  const forward = (images: tf.Tensor4D, opts: ForwardOptions = {}): ViTOutput =>
    model.forward(images, { ...opts, testTimeRegisters: { neurons: list } });
  const config = Object.freeze({ ...model.config, num_register_tokens: model.config.num_register_tokens + 1 });
  return new Proxy(model, {
    get(target, prop) {
      if (prop === 'forward') return forward;
      if (prop === 'config') return config;
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}
