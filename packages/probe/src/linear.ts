/**
 * Linear probes on frozen features.
 *
 * - Classification: multinomial logistic (softmax) regression trained with Adam in tfjs, full batch
 *   when the rows fit in `batchSize`, seeded mini-batches otherwise. The gradient is written out
 *   ((softmax - onehot) / n through the linear map), so only forward ops run: no gradient registry,
 *   and every matMul is a plain 2-D one (the fast path on wasm). Inputs are standardised with the
 *   training rows' mean and std. The L2 weight decay is swept: each value is trained on the training
 *   rows minus a held-out part, the best held-out accuracy wins (ties: the first value in the list),
 *   and the probe is retrained with it on all training rows.
 * - Regression: ridge regression in closed form (Cholesky in float64 on the host), the ridge strength
 *   swept the same way on held-out mean squared error.
 */
import * as tf from '@tensorflow/tfjs-core';
import {
  checkFeatures,
  fitStandardizer,
  permutation,
  selectRows,
  splitIndices,
  standardize,
  subsetLabelled,
  subsetRegression,
  type FeatureSet,
  type LabelledFeatures,
  type RegressionFeatures,
  type Standardizer,
} from './features.js';

/** A trained linear classifier: logits = ((x - mean) / std) W + b, W row-major [dim, classes]. */
export interface SoftmaxModel {
  weight: Float32Array;
  bias: Float32Array;
  numClasses: number;
  standardizer: Standardizer;
}

export interface SoftmaxOptions {
  numClasses: number;
  /** L2 penalty coefficient on W (loss = mean cross-entropy + weightDecay * ||W||^2). */
  weightDecay?: number;
  /** Optimizer steps (default 300). */
  steps?: number;
  /** Adam learning rate (default 0.01). */
  learningRate?: number;
  /** Rows per step; full batch when n <= batchSize (default 4096). */
  batchSize?: number;
  /** Seed of the mini-batch order and of the held-out split (default 0). */
  seed?: number;
}

/** Train one softmax-regression probe. */
export function fitSoftmax(train: LabelledFeatures, opts: SoftmaxOptions): SoftmaxModel {
  checkFeatures('softmax probe training set', train);
  const { numClasses } = opts;
  if (!(Number.isInteger(numClasses) && numClasses >= 2)) throw new Error(`softmax probe: numClasses must be >= 2, got ${numClasses}`);
  for (const y of train.y) {
    if (!(y >= 0 && y < numClasses)) throw new Error(`softmax probe: label ${y} is outside [0, ${numClasses})`);
  }
  if (train.n === 0) throw new Error('softmax probe: the training set is empty');
  const steps = opts.steps ?? 300;
  const wd = opts.weightDecay ?? 0;
  const batchSize = Math.min(opts.batchSize ?? 4096, train.n);
  const standardizer = fitStandardizer(train);
  const xs = standardize(train.x, standardizer);
  const lr = opts.learningRate ?? 0.01;
  const [beta1, beta2, eps] = [0.9, 0.999, 1e-8];
  // Parameters and Adam moments, replaced (and the old ones disposed) at every step.
  let w: tf.Tensor2D = tf.zeros([train.dim, numClasses]);
  let b: tf.Tensor1D = tf.zeros([numClasses]);
  let mw: tf.Tensor2D = tf.zeros([train.dim, numClasses]);
  let vw: tf.Tensor2D = tf.zeros([train.dim, numClasses]);
  let mb: tf.Tensor1D = tf.zeros([numClasses]);
  let vb: tf.Tensor1D = tf.zeros([numClasses]);
  const order = permutation(train.n, opts.seed ?? 0);
  let cursor = 0;
  // The full batch stays on the device; mini-batches are cut on the host.
  const full = batchSize === train.n ? makeBatch(xs, train.y, train.dim, numClasses) : undefined;
  try {
    for (let step = 1; step <= steps; step++) {
      let batch = full;
      if (!batch) {
        const idx = new Int32Array(batchSize);
        for (let i = 0; i < batchSize; i++) idx[i] = order[(cursor + i) % train.n];
        cursor = (cursor + batchSize) % train.n;
        batch = makeBatch(
          selectRows(xs, train.dim, idx),
          Int32Array.from(idx, (i) => train.y[i]),
          train.dim,
          numClasses,
        );
      }
      const { x, xT, onehot } = batch;
      const next = tf.tidy(() => {
        // d(mean cross-entropy)/d logits = (softmax - onehot) / n; the penalty adds 2 wd W.
        const dLogits = tf.div(tf.sub(tf.softmax(tf.add(tf.matMul(x, w), b)), onehot), x.shape[0]);
        let gw: tf.Tensor2D = tf.matMul(xT, dLogits);
        if (wd > 0) gw = tf.add(gw, tf.mul(w, 2 * wd));
        const gb = tf.sum(dLogits, 0);
        const c1 = lr / (1 - beta1 ** step);
        const c2 = 1 / (1 - beta2 ** step);
        const adam = <T extends tf.Tensor>(p: T, m: T, v: T, g: T): [T, T, T] => {
          const m2 = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1)) as T;
          const v2 = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2)) as T;
          const p2 = tf.sub(p, tf.div(tf.mul(m2, c1), tf.add(tf.sqrt(tf.mul(v2, c2)), eps))) as T;
          return [p2, m2, v2];
        };
        return [...adam(w, mw, vw, gw), ...adam(b, mb, vb, gb)];
      });
      tf.dispose([w, mw, vw, b, mb, vb]);
      [w, mw, vw] = next.slice(0, 3) as tf.Tensor2D[];
      [b, mb, vb] = next.slice(3) as tf.Tensor1D[];
      if (batch !== full) tf.dispose([x, xT, onehot]);
    }
    return { weight: w.dataSync().slice() as Float32Array, bias: b.dataSync().slice() as Float32Array, numClasses, standardizer };
  } finally {
    if (full) tf.dispose([full.x, full.xT, full.onehot]);
    tf.dispose([w, mw, vw, b, mb, vb]);
  }
}

function makeBatch(x: Float32Array, y: Int32Array, dim: number, numClasses: number) {
  const n = y.length;
  const onehot = new Float32Array(n * numClasses);
  for (let i = 0; i < n; i++) onehot[i * numClasses + y[i]] = 1;
  const xt = tf.tensor2d(x, [n, dim]);
  return { x: xt, xT: tf.transpose(xt), onehot: tf.tensor2d(onehot, [n, numClasses]) };
}

/** Logits [n, classes] of a softmax model, row-major. */
export function softmaxLogits(model: SoftmaxModel, f: FeatureSet): Float32Array {
  checkFeatures('softmax probe input', f);
  if (f.dim !== model.standardizer.mean.length) {
    throw new Error(`softmax probe: features have dim ${f.dim}, the probe was trained on dim ${model.standardizer.mean.length}`);
  }
  const xs = standardize(f.x, model.standardizer);
  const c = model.numClasses;
  const out = tf.tidy(() =>
    tf.add(tf.matMul(tf.tensor2d(xs, [f.n, f.dim]), tf.tensor2d(model.weight, [f.dim, c])), tf.tensor1d(model.bias)),
  );
  const data = out.dataSync().slice() as Float32Array;
  out.dispose();
  return data;
}

/** Index of the largest value of each row of a [n, c] matrix. */
export function argmaxRows(m: Float32Array, c: number): Int32Array {
  const n = m.length / c;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < c; j++) if (m[i * c + j] > m[i * c + best]) best = j;
    out[i] = best;
  }
  return out;
}

/** Share of equal entries. */
export function accuracy(pred: ArrayLike<number>, truth: ArrayLike<number>): number {
  if (pred.length !== truth.length) throw new Error(`accuracy: ${pred.length} predictions for ${truth.length} labels`);
  let ok = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === truth[i]) ok++;
  return pred.length > 0 ? ok / pred.length : 0;
}

/** Default sweep of the softmax probe's weight decay. */
export const DEFAULT_WEIGHT_DECAYS = [0, 1e-4, 1e-3, 1e-2];

export interface ClassificationProbeOptions extends Omit<SoftmaxOptions, 'weightDecay'> {
  /** Weight decays to try (default DEFAULT_WEIGHT_DECAYS). */
  weightDecays?: number[];
  /** Fraction of the training rows held out to pick the weight decay (default 0.2). */
  heldOutFraction?: number;
}

export interface ClassificationProbeResult {
  /** Top-1 accuracy on the test rows. */
  accuracy: number;
  /** Chosen weight decay and the held-out accuracy of every value tried. */
  weightDecay: number;
  sweep: { weightDecay: number; heldOutAccuracy: number }[];
  predictions: Int32Array;
  model: SoftmaxModel;
}

/** Sweep the weight decay on a held-out part of `train`, retrain on all of it, evaluate on `test`. */
export function classificationProbe(
  train: LabelledFeatures,
  test: LabelledFeatures,
  opts: ClassificationProbeOptions,
): ClassificationProbeResult {
  checkFeatures('probe test set', test);
  const decays = opts.weightDecays ?? DEFAULT_WEIGHT_DECAYS;
  if (decays.length === 0) throw new Error('probe: weightDecays is empty');
  let chosen = decays[0];
  const sweep: ClassificationProbeResult['sweep'] = [];
  if (decays.length > 1) {
    const { train: tr, heldOut } = splitIndices(train.n, opts.heldOutFraction ?? 0.2, opts.seed ?? 0);
    const fitPart = subsetLabelled(train, tr);
    const valPart = subsetLabelled(train, heldOut);
    let best = -1;
    for (const weightDecay of decays) {
      const m = fitSoftmax(fitPart, { ...opts, weightDecay });
      const acc = accuracy(argmaxRows(softmaxLogits(m, valPart), m.numClasses), valPart.y);
      sweep.push({ weightDecay, heldOutAccuracy: acc });
      if (acc > best) {
        best = acc;
        chosen = weightDecay;
      }
    }
  }
  const model = fitSoftmax(train, { ...opts, weightDecay: chosen });
  const predictions = argmaxRows(softmaxLogits(model, test), model.numClasses);
  return { accuracy: accuracy(predictions, test.y), weightDecay: chosen, sweep, predictions, model };
}

/** A ridge regressor: y = ((x - mean) / std) W + b, W row-major [dim, targetDim]. */
export interface RidgeModel {
  weight: Float32Array;
  bias: Float32Array;
  targetDim: number;
  standardizer: Standardizer;
}

/**
 * Ridge regression in closed form: W = (Xs^T Xs + lambda n I)^-1 Xs^T (Y - mean Y), b = mean Y, where
 * Xs are the standardised (so centred) features. lambda is per row, so its scale does not depend on n.
 */
export function fitRidge(train: RegressionFeatures, lambda: number): RidgeModel {
  checkFeatures('ridge training set', train);
  if (!(lambda >= 0)) throw new Error(`ridge: lambda must be >= 0, got ${lambda}`);
  if (train.n === 0) throw new Error('ridge: the training set is empty');
  const { n, dim, targetDim } = train;
  const standardizer = fitStandardizer(train);
  const xs = standardize(train.x, standardizer);
  const ymean = new Float64Array(targetDim);
  for (let i = 0; i < n; i++) for (let t = 0; t < targetDim; t++) ymean[t] += train.targets[i * targetDim + t];
  for (let t = 0; t < targetDim; t++) ymean[t] /= n;
  // Gram matrix and right-hand side in float64.
  const g = new Float64Array(dim * dim);
  const rhs = new Float64Array(dim * targetDim);
  for (let i = 0; i < n; i++) {
    const row = xs.subarray(i * dim, (i + 1) * dim);
    for (let a = 0; a < dim; a++) {
      const xa = row[a];
      if (xa === 0) continue;
      const ga = a * dim;
      for (let c = a; c < dim; c++) g[ga + c] += xa * row[c];
      const ra = a * targetDim;
      for (let t = 0; t < targetDim; t++) rhs[ra + t] += xa * (train.targets[i * targetDim + t] - ymean[t]);
    }
  }
  for (let a = 0; a < dim; a++) {
    for (let c = 0; c < a; c++) g[a * dim + c] = g[c * dim + a];
    g[a * dim + a] += lambda * n + 1e-9 * n;
  }
  const w = choleskySolve(g, dim, rhs, targetDim);
  return { weight: Float32Array.from(w), bias: Float32Array.from(ymean), targetDim, standardizer };
}

/** Solve G X = B for symmetric positive definite G [d, d] and B [d, m] (row-major, float64). */
export function choleskySolve(g: Float64Array, d: number, b: Float64Array, m: number): Float64Array {
  const l = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let s = g[i * d + j];
      for (let k = 0; k < j; k++) s -= l[i * d + k] * l[j * d + k];
      if (i === j) {
        if (!(s > 0)) throw new Error(`Cholesky: matrix is not positive definite (pivot ${i} = ${s})`);
        l[i * d + i] = Math.sqrt(s);
      } else {
        l[i * d + j] = s / l[j * d + j];
      }
    }
  }
  const x = Float64Array.from(b);
  // Forward: L Z = B, then backward: L^T X = Z, for all m columns at once.
  for (let i = 0; i < d; i++) {
    for (let k = 0; k < i; k++) {
      const lik = l[i * d + k];
      if (lik === 0) continue;
      for (let t = 0; t < m; t++) x[i * m + t] -= lik * x[k * m + t];
    }
    for (let t = 0; t < m; t++) x[i * m + t] /= l[i * d + i];
  }
  for (let i = d - 1; i >= 0; i--) {
    for (let k = i + 1; k < d; k++) {
      const lki = l[k * d + i];
      if (lki === 0) continue;
      for (let t = 0; t < m; t++) x[i * m + t] -= lki * x[k * m + t];
    }
    for (let t = 0; t < m; t++) x[i * m + t] /= l[i * d + i];
  }
  return x;
}

/** Predictions [n, targetDim] of a ridge model. */
export function ridgePredict(model: RidgeModel, f: FeatureSet): Float32Array {
  checkFeatures('ridge input', f);
  const dim = model.standardizer.mean.length;
  if (f.dim !== dim) throw new Error(`ridge: features have dim ${f.dim}, the model was fitted on dim ${dim}`);
  const xs = standardize(f.x, model.standardizer);
  const m = model.targetDim;
  const out = new Float32Array(f.n * m);
  for (let i = 0; i < f.n; i++) {
    for (let t = 0; t < m; t++) out[i * m + t] = model.bias[t];
    for (let a = 0; a < dim; a++) {
      const xa = xs[i * dim + a];
      for (let t = 0; t < m; t++) out[i * m + t] += xa * model.weight[a * m + t];
    }
  }
  return out;
}

/** Regression errors: mean squared error per value and mean L2 norm of the per-row error vector. */
export function regressionErrors(pred: Float32Array, truth: Float32Array, targetDim: number): { mse: number; l2: number } {
  if (pred.length !== truth.length) throw new Error(`regression: ${pred.length} predictions for ${truth.length} targets`);
  const n = truth.length / targetDim;
  let se = 0,
    l2 = 0;
  for (let i = 0; i < n; i++) {
    let row = 0;
    for (let t = 0; t < targetDim; t++) {
      const e = pred[i * targetDim + t] - truth[i * targetDim + t];
      row += e * e;
    }
    se += row;
    l2 += Math.sqrt(row);
  }
  return { mse: n > 0 ? se / (n * targetDim) : 0, l2: n > 0 ? l2 / n : 0 };
}

/** Default sweep of the ridge strength (per row, on standardised features). */
export const DEFAULT_RIDGE_LAMBDAS = [1e-4, 1e-3, 1e-2, 1e-1, 1];

export interface RegressionProbeResult {
  mse: number;
  l2: number;
  lambda: number;
  sweep: { lambda: number; heldOutMse: number }[];
  model: RidgeModel;
}

/** Sweep lambda on a held-out part of `train` (lowest MSE wins), refit on all of it, evaluate on `test`. */
export function regressionProbe(
  train: RegressionFeatures,
  test: RegressionFeatures,
  opts: { lambdas?: number[]; heldOutFraction?: number; seed?: number } = {},
): RegressionProbeResult {
  checkFeatures('probe test set', test);
  const lambdas = opts.lambdas ?? DEFAULT_RIDGE_LAMBDAS;
  if (lambdas.length === 0) throw new Error('ridge probe: lambdas is empty');
  let chosen = lambdas[0];
  const sweep: RegressionProbeResult['sweep'] = [];
  if (lambdas.length > 1) {
    const { train: tr, heldOut } = splitIndices(train.n, opts.heldOutFraction ?? 0.2, opts.seed ?? 0);
    const fitPart = subsetRegression(train, tr);
    const valPart = subsetRegression(train, heldOut);
    let best = Infinity;
    for (const lambda of lambdas) {
      const { mse } = regressionErrors(ridgePredict(fitRidge(fitPart, lambda), valPart), valPart.targets, train.targetDim);
      sweep.push({ lambda, heldOutMse: mse });
      if (mse < best) {
        best = mse;
        chosen = lambda;
      }
    }
  }
  const model = fitRidge(train, chosen);
  const errors = regressionErrors(ridgePredict(model, test), test.targets, test.targetDim);
  return { ...errors, lambda: chosen, sweep, model };
}

/**
 * Metrics of a position probe over a rows x cols grid: top-1 accuracy of the predicted cell and the
 * mean Euclidean distance, in patches, between predicted and true cells.
 */
export function positionMetrics(pred: ArrayLike<number>, truth: ArrayLike<number>, cols: number): { top1: number; meanDistance: number } {
  let dist = 0;
  for (let i = 0; i < truth.length; i++) {
    const dr = Math.floor(pred[i] / cols) - Math.floor(truth[i] / cols);
    const dc = (pred[i] % cols) - (truth[i] % cols);
    dist += Math.sqrt(dr * dr + dc * dc);
  }
  return { top1: accuracy(pred, truth), meanDistance: truth.length > 0 ? dist / truth.length : 0 };
}
