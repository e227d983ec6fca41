/**
 * The redundancy of the patches outliers sit on (paper Fig. 5a): how similar each patch's input
 * embedding is to its 4-neighbours, and the mean over outlier and other patches.
 */
import { l2Norms } from './norms.js';

/**
 * Mean cosine similarity of each patch's input embedding ([P, dim], row-major over `grid`) to its
 * 4-neighbours (up, down, left, right; fewer at the border).
 */
export function neighbourSimilarity(embeddings: ArrayLike<number>, grid: [number, number], dim: number): Float32Array {
  const [rows, cols] = grid;
  const p = rows * cols;
  if (embeddings.length !== p * dim) {
    throw new Error(`neighbourSimilarity: embeddings hold ${embeddings.length} values, expected ${rows}x${cols} patches x ${dim}`);
  }
  const norms = l2Norms(embeddings, dim);
  const cos = (i: number, j: number): number => {
    let s = 0;
    for (let k = 0; k < dim; k++) s += embeddings[i * dim + k] * embeddings[j * dim + k];
    const d = norms[i] * norms[j];
    return d > 0 ? s / d : 0;
  };
  const out = new Float32Array(p);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      let s = 0;
      let m = 0;
      for (const [dr, dc] of [
        [-1, 0],
        [1, 0],
        [0, -1],
        [0, 1],
      ]) {
        const rr = r + dr;
        const cc = c + dc;
        if (rr < 0 || rr >= rows || cc < 0 || cc >= cols) continue;
        s += cos(i, rr * cols + cc);
        m++;
      }
      out[i] = m > 0 ? s / m : 0;
    }
  }
  return out;
}

export interface Redundancy {
  /** Per patch: mean cosine similarity of its input embedding to its 4-neighbours. */
  similarity: Float32Array;
  /** Mean over outlier patches (null when there are none). */
  outlierMean: number | null;
  /** Mean over the other patches. */
  normalMean: number;
}

export function redundancy(similarity: Float32Array, outliers: number[]): Redundancy {
  const isOut = new Set(outliers);
  let so = 0;
  let sn = 0;
  for (let i = 0; i < similarity.length; i++) {
    if (isOut.has(i)) so += similarity[i];
    else sn += similarity[i];
  }
  const nn = similarity.length - isOut.size;
  return { similarity, outlierMean: isOut.size > 0 ? so / isOut.size : null, normalMean: nn > 0 ? sn / nn : 0 };
}
