/**
 * A dense probe end to end: run a frozen model once over the training and test images (batched),
 * keep the patch features DINOv2's linear heads read, train the head (dense.ts) and score it at the
 * labels' resolution.
 *
 * Features (as DINOv2's evaluation code takes them from `get_intermediate_layers`):
 * - segmentation: the patch tokens after the final norm (`norm=True`), of the last block or of the
 *   last 4 blocks concatenated (dinov2_vit*14_ade20k_linear / linear4 configs: out_indices [8..11] of
 *   12 blocks, in_index [3] or all four);
 * - depth: the patch tokens and the CLS token before the final norm (`norm=False`, dinov2/hub/
 *   depthers.py), of the last block or of 4 blocks spread over the depth (2, 5, 8, 11 for 12 blocks;
 *   4, 11, 17, 23 for 24; 9, 19, 29, 39 for 40; otherwise round((k + 1) depth / 4) - 1).
 * Images are resized (PIL bicubic) to size x size; training targets are resized to trainLabelSize
 * (nearest, as mmcv's imresize for maps); evaluation is at each image's own label resolution.
 *
 * Resumable: with `cacheDir`, features (and training targets) are appended to files there after every
 * batch, with a JSON record of how many images are done (core's RowFiles); a rerun with the same
 * settings skips them. Opening the dense datasets from a spec is in dense-source.ts.
 *
 * Over 450 lines: one job, the probe's run (features with their resumable cache, the head's training,
 * the scores), whose steps share the options and the report; the head and the datasets are apart.
 */
import * as tf from '@tensorflow/tfjs-core';
import { RowFiles, type DenseDataset, type DenseItem, type DenseTarget, type DenseTask, type HostTensor } from '@vitreg/core';
import { layerNorm, outputTensors, type Encoder, type ViTConfig, type ViTOutput, type VisionTransformer } from '@vitreg/registers';
import { batchTensor, prepareInput } from './extract.js';
import { imageBatch, isEncoder, type ProbeModel } from './run.js';
import {
  depthHeadTensors,
  evaluateDepth,
  evaluateSegmentation,
  segmentationHeadTensors,
  trainDepthHead,
  trainSegmentationHead,
  type DenseFeatures,
  type DepthHead,
  type DepthHeadMode,
  type SegmentationHead,
} from './dense.js';
import {
  addSegmentation,
  depthEvalMask,
  depthScores,
  meanDepthScores,
  resizeNearest,
  segmentationScores,
  segmentationTotals,
  type DepthScores,
} from './dense-metrics.js';

/** Which items of a dense dataset to use. */
export interface DensePart {
  dataset: DenseDataset;
  /** Item indices (default: all). */
  indices?: number[];
}

export interface DenseProbeOptions {
  task: DenseTask;
  /** Square input side (a multiple of the patch size; default 224). */
  size?: number;
  /** Blocks whose features the head reads: 1 (the last, default) or 4 (see the module comment). */
  layers?: 1 | 4;
  /** Images per forward pass (default 8). */
  batchSize?: number;
  /** Images per head training step (default 4). */
  headBatchSize?: number;
  /** Head training steps (default 1000). */
  steps?: number;
  /** AdamW lr and weight decay (default: segmentation 1e-3 / 1e-4, depth 5e-3 / 0.01). */
  lr?: number;
  weightDecay?: number;
  /** Depth head: 'bins' (default, the official one) or 'regression'. */
  depthHead?: DepthHeadMode;
  /** Side of the square training targets (default: size). */
  trainLabelSize?: number;
  seed?: number;
  /** Folder for resumable feature extraction (see the module comment). */
  cacheDir?: string;
  /** Anything that identifies the model (e.g. its weights path); part of the cache's settings. */
  cacheKey?: unknown;
  onProgress?: (phase: 'extract' | 'train' | 'evaluate', done: number, total: number) => void;
}

export interface DenseProbeReport {
  task: DenseTask;
  train: number;
  test: number;
  size: number;
  grid: [number, number];
  /** Blocks read (0-based). */
  blocks: number[];
  /** Channels per position the head reads (CLS included for depth). */
  featureDim: number;
  steps: number;
  trainLabelSize: number;
  /** Images whose features came from the cache. */
  resumed: number;
  segmentation?: { miou: number; accuracy: number; meanAccuracy: number; iou: (number | null)[]; classNames: string[] };
  depth?: DepthScores & { head: DepthHeadMode; images: number };
  /**
   * What a feature-blind predictor scores: segmentation, the training set's most frequent class
   * everywhere; depth, the geometric mean of the training depths everywhere (the constant SigLoss
   * prefers).
   */
  baseline: { miou?: number; accuracy?: number; rmse?: number; delta1?: number; absRel?: number };
}

/** A dense probe's report, its trained head, and the head as PyTorch-named tensors (DINOv2's names). */
export interface DenseProbeResult {
  report: DenseProbeReport;
  head: SegmentationHead | DepthHead;
  tensors: Record<string, HostTensor>;
}

/** Blocks a dense head reads for a model of `depth` blocks (see the module comment). */
export function denseBlocks(depth: number, task: DenseTask, layers: 1 | 4): number[] {
  if (layers === 1) return [depth - 1];
  if (layers !== 4) throw new Error(`dense probe: layers must be 1 or 4, got ${layers as number}`);
  if (depth < 4) throw new Error(`dense probe: 4 layers need a model of at least 4 blocks, this one has ${depth}`);
  if (task === 'segmentation') return [depth - 4, depth - 3, depth - 2, depth - 1];
  const hub: Record<number, number[]> = { 12: [2, 5, 8, 11], 24: [4, 11, 17, 23], 40: [9, 19, 29, 39] };
  return hub[depth] ?? [0, 1, 2, 3].map((k) => Math.round(((k + 1) * depth) / 4) - 1);
}

/**
 * The features of one batch of model inputs: x [B, gh, gw, L * D] (the blocks' patch tokens side by
 * side) and, for depth, cls [B, L * D].
 */
export function extractDenseFeatures(
  model: VisionTransformer,
  images: tf.Tensor4D,
  task: DenseTask,
  blocks: number[],
): { x: Float32Array; cls?: Float32Array; grid: [number, number] } {
  const c = model.config;
  const last = blocks.length === 1 && blocks[0] === c.depth - 1;
  const out = model.forward(images, { layers: !last });
  return denseFeaturesOf(out, c, task, blocks, () => ({ weight: model.param('norm.weight'), bias: model.param('norm.bias') }));
}

/**
 * extractDenseFeatures on an Encoder of any engine (async `encode`, with `{ layers: true }` where the
 * heads read blocks before the last); segmentation over several blocks needs the encoder's finalNorm.
 */
export async function encodeDenseFeatures(
  encoder: Encoder,
  images: tf.Tensor4D | ReturnType<typeof imageBatch>,
  task: DenseTask,
  blocks: number[],
): Promise<{ x: Float32Array; cls?: Float32Array; grid: [number, number] }> {
  const c = encoder.config;
  const last = blocks.length === 1 && blocks[0] === c.depth - 1;
  const batch =
    images instanceof tf.Tensor
      ? { data: (await images.data()) as Float32Array, shape: images.shape as [number, number, number, number] }
      : images;
  let norm: { weight: tf.Tensor1D; bias: tf.Tensor1D } | undefined;
  if (task === 'segmentation' && !last) {
    const n = await encoder.finalNorm?.();
    if (!n)
      throw new Error(
        `dense probe: segmentation over blocks ${blocks.join(', ')} needs the final norm's weights, which ${encoder.description} does not hold (an .onnx file): give the .safetensors or .pth weights`,
      );
    norm = { weight: tf.tensor1d(n.weight), bias: tf.tensor1d(n.bias) };
  }
  const out = outputTensors(await encoder.encode(batch, { layers: !last }));
  try {
    return denseFeaturesOf(out, c, task, blocks, () => norm!);
  } finally {
    if (norm) tf.dispose([norm.weight, norm.bias]);
  }
}

/** The features of one forward output (disposed here); `norm` gives the final LayerNorm's parameters. */
function denseFeaturesOf(
  out: ViTOutput,
  c: ViTConfig,
  task: DenseTask,
  blocks: number[],
  norm: () => { weight: tf.Tensor; bias: tf.Tensor },
): { x: Float32Array; cls?: Float32Array; grid: [number, number] } {
  const last = blocks.length === 1 && blocks[0] === c.depth - 1;
  try {
    const R = c.num_register_tokens;
    const [B, P, D] = out.patches.shape;
    const feats = tf.tidy(() => {
      const perBlock = blocks.map((k) => {
        if (k < 0 || k >= c.depth) throw new Error(`dense probe: block ${k} is outside [0, ${c.depth})`);
        if (task === 'segmentation') {
          if (last) return { patches: out.patches, cls: out.cls };
          const { weight, bias } = norm();
          const normed = layerNorm(out.layers![k], weight, bias, c.norm_eps);
          return { patches: tf.slice(normed, [0, 1 + R, 0], [B, P, D]), cls: tf.reshape(tf.slice(normed, [0, 0, 0], [B, 1, D]), [B, D]) };
        }
        const raw = last ? out.prenorm : out.layers![k];
        return { patches: tf.slice(raw, [0, 1 + R, 0], [B, P, D]), cls: tf.reshape(tf.slice(raw, [0, 0, 0], [B, 1, D]), [B, D]) };
      });
      return {
        x:
          perBlock.length === 1
            ? tf.clone(perBlock[0].patches)
            : tf.concat(
                perBlock.map((p) => p.patches),
                2,
              ),
        cls:
          perBlock.length === 1
            ? tf.clone(perBlock[0].cls)
            : tf.concat(
                perBlock.map((p) => p.cls),
                1,
              ),
      };
    });
    const x = feats.x.dataSync().slice() as Float32Array;
    const cls = task === 'depth' ? (feats.cls.dataSync().slice() as Float32Array) : undefined;
    tf.dispose([feats.x, feats.cls]);
    return { x, cls, grid: out.grid };
  } finally {
    tf.dispose(
      Object.values(out)
        .flat()
        .filter((v): v is tf.Tensor => v instanceof tf.Tensor),
    );
  }
}

const bytesOf = (a: Float32Array | Uint8Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

interface Extracted {
  features: DenseFeatures;
  /** Training targets [n, L, L] (segmentation: classes; depth: metres). */
  targets?: Uint8Array | Float32Array;
  resumed: number;
}

async function extract(
  model: ProbeModel,
  part: DensePart,
  split: string,
  opts: DenseProbeOptions,
  blocks: number[],
  withTargets: boolean,
  tick: (n: number) => void,
): Promise<Extracted> {
  const size = opts.size ?? 224;
  const p = model.config.patch_size;
  const g = size / p;
  const D = model.config.embed_dim * blocks.length;
  const L = opts.trainLabelSize ?? size;
  const indices = part.indices ?? Array.from({ length: part.dataset.length }, (_, i) => i);
  const n = indices.length;
  const seg = opts.task === 'segmentation';
  const rowBytes = { x: g * g * D * 4, cls: seg ? 0 : D * 4, t: withTargets ? L * L * (seg ? 1 : 4) : 0 };
  const x = new Float32Array(n * g * g * D);
  const cls = seg ? undefined : new Float32Array(n * D);
  const targets = withTargets ? (seg ? new Uint8Array(n * L * L) : new Float32Array(n * L * L)) : undefined;
  const settings = {
    task: opts.task,
    size,
    blocks,
    trainLabelSize: L,
    withTargets,
    items: indices,
    length: part.dataset.length,
    key: opts.cacheKey ?? null,
  };
  const cache = opts.cacheDir
    ? new RowFiles({
        dir: opts.cacheDir,
        name: split,
        settings,
        files: { x: 'x.f32', cls: 'cls.f32', t: 'targets.bin' },
        label: 'dense probe: the feature cache',
        unit: 'images',
      })
    : undefined;
  let done = 0;
  if (cache) {
    const prev = await cache.load(rowBytes);
    done = prev.count;
    bytesOf(x).set(prev.rows.x);
    if (cls) bytesOf(cls).set(prev.rows.cls);
    if (targets) bytesOf(targets).set(prev.rows.t);
    if (done > 0) tick(done);
  }
  const resumed = done;
  const batchSize = opts.batchSize ?? 8;
  for (let start = done; start < n; start += batchSize) {
    const ids = indices.slice(start, start + batchSize);
    const items: DenseItem[] = await Promise.all(ids.map((i) => part.dataset.get(i)));
    const inputs = items.map((it) => prepareInput(it, { kind: 'square', size }, p));
    let f;
    if (isEncoder(model)) f = await encodeDenseFeatures(model, imageBatch(inputs), opts.task, blocks);
    else {
      const images = batchTensor(inputs, { model, outputs: { layers: !(blocks.length === 1 && blocks[0] === model.config.depth - 1) } });
      try {
        f = extractDenseFeatures(model, images, opts.task, blocks);
      } finally {
        images.dispose();
      }
    }
    x.set(f.x, start * g * g * D);
    if (cls) cls.set(f.cls!, start * D);
    if (targets) items.forEach((it, k) => targets.set(trainTarget(it.target, opts.task, L, it.id), (start + k) * L * L));
    const end = start + ids.length;
    await cache?.append(
      {
        x: bytesOf(x.subarray(start * g * g * D, end * g * g * D)),
        cls: cls ? bytesOf(cls.subarray(start * D, end * D)) : new Uint8Array(0),
        t: targets ? bytesOf(targets.subarray(start * L * L, end * L * L)) : new Uint8Array(0),
      },
      end,
    );
    tick(ids.length);
  }
  return { features: { n, grid: [g, g], dim: D, x, cls, groups: blocks.length }, targets, resumed };
}

/** A target resized (nearest) to L x L for training. */
function trainTarget(t: DenseTarget, task: DenseTask, L: number, id: string): Uint8Array | Float32Array {
  const map = task === 'segmentation' ? t.segmentation : t.depth;
  if (!map) throw new Error(`dense probe: item ${id} has no ${task} target`);
  return resizeNearest(map, t.height, t.width, L, L);
}

/**
 * Run one dense probe (see the module comment) on a tfjs model or an Encoder of any engine. The model is
 * not disposed.
 */
export async function runDenseProbe(
  model: ProbeModel,
  train: DensePart,
  test: DensePart,
  opts: DenseProbeOptions,
): Promise<DenseProbeResult> {
  const { task } = opts;
  const size = opts.size ?? 224;
  const p = model.config.patch_size;
  if (task !== 'segmentation' && task !== 'depth')
    throw new Error(`dense probe: task must be segmentation or depth, got '${task as string}'`);
  if (!(Number.isInteger(size) && size > 0 && size % p === 0))
    throw new Error(`dense probe: size ${size} must be a positive multiple of the patch size ${p}`);
  for (const [name, part] of [
    ['training', train],
    ['test', test],
  ] as const) {
    if (!part.dataset.tasks.includes(task))
      throw new Error(`dense probe: the ${name} dataset has no ${task} targets (it has: ${part.dataset.tasks.join(', ') || 'none'})`);
  }
  if (task === 'segmentation' && train.dataset.classNames.join('\n') !== test.dataset.classNames.join('\n')) {
    throw new Error('dense probe: the training and test datasets have different classes');
  }
  const nTrain = train.indices?.length ?? train.dataset.length;
  const nTest = test.indices?.length ?? test.dataset.length;
  if (nTrain < 1 || nTest < 1) throw new Error(`dense probe: needs at least 1 training and 1 test image, got ${nTrain} and ${nTest}`);
  const blocks = denseBlocks(model.config.depth, task, opts.layers ?? 1);
  const L = opts.trainLabelSize ?? size;
  if (!(Number.isInteger(L) && L >= 1)) throw new Error(`dense probe: trainLabelSize must be a positive integer, got ${L}`);
  const steps = opts.steps ?? 1000;
  let done = 0;
  const tick = (k: number) => {
    done += k;
    opts.onProgress?.('extract', done, nTrain + nTest);
  };
  const tr = await extract(model, train, 'train', opts, blocks, true, tick);
  const te = await extract(model, test, 'test', opts, blocks, false, tick);
  const trainStep = (s: number) => opts.onProgress?.('train', s, steps);
  const testIndex = (i: number) => test.indices?.[i] ?? i;
  const evalTick = (k: number) => opts.onProgress?.('evaluate', k, nTest);
  const base = {
    task,
    train: nTrain,
    test: nTest,
    size,
    grid: tr.features.grid,
    blocks,
    steps,
    trainLabelSize: L,
    resumed: tr.resumed + te.resumed,
  };
  const common = {
    steps,
    batchSize: opts.headBatchSize ?? 4,
    seed: opts.seed ?? 0,
    onStep: trainStep,
    ...(opts.lr !== undefined ? { lr: opts.lr } : {}),
    ...(opts.weightDecay !== undefined ? { weightDecay: opts.weightDecay } : {}),
  };

  if (task === 'segmentation') {
    const labels = tr.targets as Uint8Array;
    const C = train.dataset.numClasses;
    const head: SegmentationHead = trainSegmentationHead(tr.features, labels, [L, L], { ...common, numClasses: C });
    // baseline: the most frequent training class everywhere
    const freq = new Float64Array(C);
    for (const v of labels) if (v < C) freq[v]++;
    const majority = freq.indexOf(Math.max(...freq));
    const baseTotals = segmentationTotals(C);
    const r = await evaluateSegmentation(
      head,
      te.features,
      [size, size],
      async (i) => {
        const t = await test.dataset.target(testIndex(i));
        if (!t.segmentation) throw new Error(`dense probe: test item ${testIndex(i)} has no segmentation`);
        addSegmentation(baseTotals, new Uint8Array(t.segmentation.length).fill(majority), t.segmentation);
        return { width: t.width, height: t.height, segmentation: t.segmentation };
      },
      evalTick,
    );
    const b = segmentationScores(baseTotals);
    const report: DenseProbeReport = {
      ...base,
      featureDim: tr.features.dim,
      segmentation: {
        miou: r.scores.miou,
        accuracy: r.scores.accuracy,
        meanAccuracy: r.scores.meanAccuracy,
        iou: r.scores.iou.map((v) => (Number.isNaN(v) ? null : v)),
        classNames: train.dataset.classNames,
      },
      baseline: { miou: b.miou, accuracy: b.accuracy },
    };
    return { report, head, tensors: segmentationHeadTensors(head) };
  }

  const range = test.dataset.depthRange ?? [1e-3, 10];
  const depths = tr.targets as Float32Array;
  const head: DepthHead = trainDepthHead(tr.features, depths, [L, L], {
    ...common,
    mode: opts.depthHead ?? 'bins',
    minDepth: range[0],
    maxDepth: range[1],
  });
  let logSum = 0,
    count = 0;
  for (const v of depths) {
    if (v > 0) {
      logSum += Math.log(v);
      count++;
    }
  }
  const constant = count > 0 ? Math.exp(logSum / count) : (range[0] + range[1]) / 2;
  const baseScores: DepthScores[] = [];
  const perImage = await evaluateDepth(
    head,
    te.features,
    range,
    async (i) => {
      const t = await test.dataset.target(testIndex(i));
      if (!t.depth) throw new Error(`dense probe: test item ${testIndex(i)} has no depth map`);
      baseScores.push(depthScores(t.depth, new Float32Array(t.depth.length).fill(constant), depthEvalMask(t, range)));
      return { width: t.width, height: t.height, depth: t.depth, evalCrop: t.evalCrop };
    },
    evalTick,
  );
  const m = meanDepthScores(perImage);
  const b = meanDepthScores(baseScores);
  const report: DenseProbeReport = {
    ...base,
    featureDim: head.dim,
    depth: { ...m, head: head.mode, images: perImage.filter((s) => !Number.isNaN(s.rmse)).length },
    baseline: { rmse: b.rmse, delta1: b.delta1, absRel: b.absRel },
  };
  return { report, head, tensors: depthHeadTensors(head) };
}
