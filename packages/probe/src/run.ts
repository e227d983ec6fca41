/**
 * Probe a model end to end: run it over a training and a test dataset, pick one token per image, fit
 * the probe on the training tokens, score it on the test tokens.
 *
 * Tasks (the paper's Table 1 and Fig. 5b):
 * - `class`: the image's class from one token (cls | normal | outlier | register | cls+mean), softmax
 *   probe with a weight-decay sweep, plus DINO's weighted k-NN on the same features;
 * - `position`: the grid cell of a normal or outlier patch token (classification over the P cells:
 *   top-1 and mean distance in patches);
 * - `pixels`: the patch_size x patch_size x 3 normalised input values under a normal or outlier patch
 *   token (ridge regression: mean squared error and mean L2 error per patch).
 * Images are resized to size x size (square geometry), so every image has the same grid.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Rng, type Dataset, type DenseTask } from '@vitreg/core';
import { type Encoder, type ImageBatch, type VisionTransformer } from '@vitreg/registers';
import { batchTensor, imageTokens, patchPixels, prepareInput, selectToken, type ModelInput, type TokenChoice } from './extract.js';
import { knnClassify } from './knn.js';
import {
  classificationProbe,
  positionMetrics,
  regressionProbe,
  type ClassificationProbeResult,
  type RegressionProbeResult,
} from './linear.js';

export type ProbeTask = 'class' | 'position' | 'pixels';

/**
 * What a probe runs: a tfjs VisionTransformer (forward), or any engine's Encoder (encoder.ts: tfjs or
 * ONNX Runtime; its async `encode`).
 */
export type ProbeModel = VisionTransformer | Encoder;

/** Whether a probe model is an Encoder (else a tfjs VisionTransformer). */
export function isEncoder(model: ProbeModel): model is Encoder {
  return typeof (model as Encoder).encode === 'function' && typeof (model as Encoder).engine === 'string';
}

/** Same-size model inputs as one normalised NHWC batch on the host (an Encoder's input). */
export function imageBatch(inputs: ModelInput[]): ImageBatch {
  const { paddedHeight: h, paddedWidth: w } = inputs[0]!;
  const data = new Float32Array(inputs.length * h * w * 3);
  inputs.forEach((inp, i) => {
    if (inp.paddedHeight !== h || inp.paddedWidth !== w) {
      throw new Error(`batch: input ${i} is ${inp.paddedWidth}x${inp.paddedHeight}, expected ${w}x${h} like the first`);
    }
    data.set(inp.data, i * h * w * 3);
  });
  return { data, shape: [inputs.length, h, w, 3] };
}
export const PROBE_TASKS: readonly ProbeTask[] = ['class', 'position', 'pixels'];

/** Every task `vitreg probe` runs: the one-token probes above and the dense probes (dense-run.ts). */
export type AnyProbeTask = ProbeTask | DenseTask;
export const ALL_PROBE_TASKS: readonly AnyProbeTask[] = [...PROBE_TASKS, 'segmentation', 'depth'];

/** Which items of a dataset to use. */
export interface DataPart {
  dataset: Dataset;
  /** Item indices (default: all). */
  indices?: number[];
}

export interface ProbeRunOptions {
  task: ProbeTask;
  token: TokenChoice;
  /** Square input side (a multiple of the patch size; default 224). */
  size?: number;
  batchSize?: number;
  /** Seed of the random normal patches, the held-out split and the mini-batch order. */
  seed?: number;
  /** Outlier rule for normal / outlier tokens ('auto' default, or a norm). */
  threshold?: 'auto' | number;
  /** Register read by token 'register' (default 0). */
  register?: number;
  /** Softmax probe steps (default 300) and weight decays to sweep. */
  steps?: number;
  weightDecays?: number[];
  /** Called after every batch with the number of images done and the total. */
  onProgress?: (done: number, total: number) => void;
}

export interface ProbeReport {
  task: ProbeTask;
  token: TokenChoice;
  train: number;
  test: number;
  size: number;
  grid: [number, number];
  featureDim: number;
  /** Images whose outlier token was the max-norm fallback (no automatic outlier found). */
  outlierFallbacks?: number;
  /** class task. */
  accuracy?: number;
  knn?: { top1: number; top5: number };
  /** position task. */
  top1?: number;
  meanDistance?: number;
  /** pixels task. */
  mse?: number;
  l2?: number;
  /** The chosen regularisation and the held-out score of every value tried. */
  weightDecay?: number;
  lambda?: number;
  sweep: ClassificationProbeResult['sweep'] | RegressionProbeResult['sweep'];
  /** Chance level of the metric (class: 1 / classes; position: 1 / cells). */
  chance?: number;
}

interface Collected {
  x: Float32Array[];
  labels: number[];
  targets: Float32Array[];
  fallbacks: number;
  grid: [number, number];
}

/** Forward every image of `part` and keep the token (and label / pixels) the task needs. */
async function collect(model: ProbeModel, part: DataPart, opts: ProbeRunOptions, rng: Rng, tick: (n: number) => void): Promise<Collected> {
  const size = opts.size ?? 224;
  const p = model.config.patch_size;
  const batchSize = opts.batchSize ?? 8;
  const indices = part.indices ?? Array.from({ length: part.dataset.length }, (_, i) => i);
  const out: Collected = { x: [], labels: [], targets: [], fallbacks: 0, grid: [size / p, size / p] };
  for (let start = 0; start < indices.length; start += batchSize) {
    const items = await Promise.all(indices.slice(start, start + batchSize).map((i) => part.dataset.get(i)));
    const inputs = items.map((it) => prepareInput(it, { kind: 'square', size }, p));
    let fwd: { cls: tf.Tensor2D; registers: tf.Tensor3D; patches: tf.Tensor3D };
    if (isEncoder(model)) {
      const o = await model.encode(imageBatch(inputs));
      const t = <T extends tf.Tensor>(a: { data: Float32Array; shape: number[] }) => tf.tensor(a.data, a.shape, 'float32') as T;
      fwd = { cls: t<tf.Tensor2D>(o.cls), registers: t<tf.Tensor3D>(o.registers), patches: t<tf.Tensor3D>(o.patches) };
    } else {
      const images = batchTensor(inputs, { model });
      fwd = tf.tidy(() => {
        const o = model.forward(images);
        return { cls: o.cls, registers: o.registers, patches: o.patches };
      });
      images.dispose();
    }
    let tokens;
    try {
      tokens = await imageTokens({ ...fwd, grid: out.grid });
    } finally {
      tf.dispose([fwd.cls, fwd.registers, fwd.patches]);
    }
    tokens.forEach((t, j) => {
      const sel = selectToken(t, opts.token, { rng, threshold: opts.threshold, register: opts.register });
      if (sel.detected === false) out.fallbacks++;
      out.x.push(sel.feature);
      if (opts.task === 'class') {
        if (items[j].label < 0) throw new Error(`probe: item ${items[j].id} has no class label (label -1)`);
        out.labels.push(items[j].label);
      } else if (opts.task === 'position') {
        out.labels.push(sel.patch!);
      } else {
        out.targets.push(patchPixels(inputs[j].data, inputs[j].paddedWidth, t.grid, p, sel.patch!));
      }
    });
    tick(items.length);
  }
  return out;
}

function stack(rows: Float32Array[]): Float32Array {
  const dim = rows[0]?.length ?? 0;
  const x = new Float32Array(rows.length * dim);
  rows.forEach((r, i) => x.set(r, i * dim));
  return x;
}

/**
 * Run one probe (see the module comment) on a tfjs model or an Encoder of any engine (the same tokens
 * within the engines' parity). The model is not disposed.
 */
export async function runProbe(model: ProbeModel, train: DataPart, test: DataPart, opts: ProbeRunOptions): Promise<ProbeReport> {
  const size = opts.size ?? 224;
  const p = model.config.patch_size;
  if (!(Number.isInteger(size) && size > 0 && size % p === 0))
    throw new Error(`probe: size ${size} must be a positive multiple of the patch size ${p}`);
  if (opts.task !== 'class' && opts.token !== 'normal' && opts.token !== 'outlier') {
    throw new Error(`probe: task '${opts.task}' reads one patch token: token must be normal or outlier, got '${opts.token}'`);
  }
  if (opts.task === 'class' && train.dataset.classNames.join('\n') !== test.dataset.classNames.join('\n')) {
    throw new Error(
      `probe: the training and test datasets have different classes (${train.dataset.classNames.join(', ')} vs ${test.dataset.classNames.join(', ')})`,
    );
  }
  const rng = new Rng(opts.seed ?? 0);
  const nTrain = train.indices?.length ?? train.dataset.length;
  const nTest = test.indices?.length ?? test.dataset.length;
  if (nTrain < 2 || nTest < 1) throw new Error(`probe: needs at least 2 training and 1 test images, got ${nTrain} and ${nTest}`);
  let done = 0;
  const tick = (n: number) => {
    done += n;
    opts.onProgress?.(done, nTrain + nTest);
  };
  const tr = await collect(model, train, opts, rng, tick);
  const te = await collect(model, test, opts, rng, tick);
  const dim = tr.x[0].length;
  const base = {
    task: opts.task,
    token: opts.token,
    train: nTrain,
    test: nTest,
    size,
    grid: tr.grid,
    featureDim: dim,
    ...(opts.token === 'outlier' ? { outlierFallbacks: tr.fallbacks + te.fallbacks } : {}),
  };
  const seed = opts.seed ?? 0;
  if (opts.task === 'pixels') {
    const targetDim = p * p * 3;
    const r = regressionProbe(
      { x: stack(tr.x), n: nTrain, dim, targets: stack(tr.targets), targetDim },
      { x: stack(te.x), n: nTest, dim, targets: stack(te.targets), targetDim },
      { seed },
    );
    return { ...base, mse: r.mse, l2: r.l2, lambda: r.lambda, sweep: r.sweep };
  }
  const numClasses = opts.task === 'class' ? Math.max(train.dataset.numClasses, 2) : tr.grid[0] * tr.grid[1];
  const trainSet = { x: stack(tr.x), y: Int32Array.from(tr.labels), n: nTrain, dim };
  const testSet = { x: stack(te.x), y: Int32Array.from(te.labels), n: nTest, dim };
  const r = classificationProbe(trainSet, testSet, { numClasses, seed, steps: opts.steps, weightDecays: opts.weightDecays });
  if (opts.task === 'position') {
    const m = positionMetrics(r.predictions, testSet.y, tr.grid[1]);
    return { ...base, top1: m.top1, meanDistance: m.meanDistance, weightDecay: r.weightDecay, sweep: r.sweep, chance: 1 / numClasses };
  }
  const knn = knnClassify(trainSet, testSet, { numClasses });
  return {
    ...base,
    accuracy: r.accuracy,
    knn: { top1: knn.top1, top5: knn.top5 },
    weightDecay: r.weightDecay,
    sweep: r.sweep,
    chance: 1 / train.dataset.numClasses,
  };
}
