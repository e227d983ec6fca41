/**
 * Weighted k-NN classifier of DINO (eval_knn.py): features L2-normalised, cosine similarity to every
 * training row, the k most similar vote for their class with weight exp(similarity / T); the class with
 * the largest summed weight wins. Defaults k = 20, T = 0.07. Similarities are computed with tfjs in
 * chunks of test rows; the top-k is taken on the host (ties: lower training index first).
 *
 * The trainer's evaluation of a self-supervised run uses it, and @vitreg/probe re-exports it (its
 * `LabelledFeatures` are `LabelledRows`).
 */
import * as tf from '@tensorflow/tfjs-core';

/** n labelled rows of `dim` values, row-major (the shape of @vitreg/probe's `LabelledFeatures`). */
export interface LabelledRows {
  x: Float32Array;
  y: Int32Array;
  n: number;
  dim: number;
}

export interface KnnOptions {
  numClasses: number;
  k?: number;
  temperature?: number;
  /** Test rows per similarity matMul (default 256). */
  chunk?: number;
}

export interface KnnResult {
  /** Top-1 and top-5 accuracy on the test rows. */
  top1: number;
  top5: number;
  predictions: Int32Array;
}

/** Throws unless the arrays have the lengths their shapes promise (the messages of @vitreg/probe's checkFeatures). */
function checkRows(name: string, f: LabelledRows): void {
  if (!(Number.isInteger(f.n) && f.n >= 0 && Number.isInteger(f.dim) && f.dim >= 1)) {
    throw new Error(`${name}: expected integer n >= 0 and dim >= 1, got n=${f.n}, dim=${f.dim}`);
  }
  if (f.x.length !== f.n * f.dim) {
    throw new Error(`${name}: features hold ${f.x.length} values, expected n*dim = ${f.n}*${f.dim} = ${f.n * f.dim}`);
  }
  if (f.y.length !== f.n) throw new Error(`${name}: ${f.y.length} labels for ${f.n} rows`);
}

/** Rows scaled to unit L2 norm (zero rows stay zero). */
export function l2NormalizeRows(x: Float32Array, dim: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length / dim; i++) {
    let s = 0;
    for (let d = 0; d < dim; d++) s += x[i * dim + d]! ** 2;
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let d = 0; d < dim; d++) out[i * dim + d] = x[i * dim + d]! * inv;
  }
  return out;
}

/** Classify `test` rows by weighted vote of their k nearest `train` rows. */
export function knnClassify(train: LabelledRows, test: LabelledRows, opts: KnnOptions): KnnResult {
  checkRows('k-NN training set', train);
  checkRows('k-NN test set', test);
  if (train.dim !== test.dim) throw new Error(`k-NN: train dim ${train.dim} differs from test dim ${test.dim}`);
  if (train.n === 0) throw new Error('k-NN: the training set is empty');
  const { numClasses } = opts;
  const k = Math.min(opts.k ?? 20, train.n);
  const temperature = opts.temperature ?? 0.07;
  const chunk = opts.chunk ?? 256;
  const dim = train.dim;
  const trainT = tf.tidy(() => tf.transpose(tf.tensor2d(l2NormalizeRows(train.x, dim), [train.n, dim])));
  const testX = l2NormalizeRows(test.x, dim);
  const predictions = new Int32Array(test.n);
  let top1Hits = 0;
  let top5Hits = 0;
  try {
    for (let start = 0; start < test.n; start += chunk) {
      const rows = Math.min(chunk, test.n - start);
      const simT = tf.tidy(() => tf.matMul(tf.tensor2d(testX.subarray(start * dim, (start + rows) * dim), [rows, dim]), trainT));
      const sim = simT.dataSync();
      simT.dispose();
      for (let r = 0; r < rows; r++) {
        const row = sim.subarray(r * train.n, (r + 1) * train.n);
        const votes = new Float64Array(numClasses);
        for (const j of topK(row, k)) {
          const c = train.y[j]!;
          if (!(c >= 0 && c < numClasses)) throw new Error(`k-NN: training label ${c} is outside [0, ${numClasses})`);
          votes[c] += Math.exp(row[j]! / temperature);
        }
        const ranked = Array.from({ length: numClasses }, (_, c) => c).sort((a, b) => votes[b]! - votes[a]! || a - b);
        predictions[start + r] = ranked[0]!;
        if (ranked[0] === test.y[start + r]) top1Hits++;
        // DINO counts the first min(5, k) classes: with fewer than 5 neighbours, only the classes they voted for.
        if (ranked.slice(0, Math.min(5, k)).includes(test.y[start + r]!)) top5Hits++;
      }
    }
  } finally {
    trainT.dispose();
  }
  return { top1: test.n > 0 ? top1Hits / test.n : 0, top5: test.n > 0 ? top5Hits / test.n : 0, predictions };
}

/** Indices of the k largest values (descending; ties to the lower index). */
export function topK(values: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => values[b]! - values[a]! || a - b);
  return idx.slice(0, k);
}
