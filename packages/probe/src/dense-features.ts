/**
 * Frozen dense features of images on a patch grid (`DenseFeatures`: patch tokens of one or several
 * blocks, optionally each image's CLS tokens), the batches the dense heads read from them, and the
 * bilinear resize (as matrices) their losses use. The heads: dense-segmentation.ts, dense-depth.ts.
 */
import * as tf from '@tensorflow/tfjs-core';

/** Frozen features of n images on one gh x gw patch grid. */
export interface DenseFeatures {
  n: number;
  grid: [number, number];
  /** Channels per position in `x`: `groups` blocks of `dim / groups` channels. */
  dim: number;
  /** [n, gh, gw, dim], row-major. */
  x: Float32Array;
  /**
   * Optional per-image vectors [n, dim] (the CLS token of each block), appended by the depth head:
   * position features become [x_g0, cls_g0, x_g1, cls_g1, ...] as DINOv2's BNHead concatenates them.
   */
  cls?: Float32Array;
  /** Number of blocks whose features are concatenated in `x` (and `cls`); default 1. */
  groups?: number;
}

/** Throws unless the arrays have the sizes the shape promises. */
export function checkDenseFeatures(name: string, f: DenseFeatures): void {
  const [gh, gw] = f.grid;
  if (!(
    Number.isInteger(f.n) &&
    f.n >= 0 &&
    Number.isInteger(gh) &&
    gh >= 1 &&
    Number.isInteger(gw) &&
    gw >= 1 &&
    Number.isInteger(f.dim) &&
    f.dim >= 1
  )) {
    throw new Error(`${name}: expected integers n >= 0, grid >= 1 and dim >= 1, got n=${f.n}, grid=${f.grid}, dim=${f.dim}`);
  }
  if (f.x.length !== f.n * gh * gw * f.dim) {
    throw new Error(`${name}: features hold ${f.x.length} values, expected n*gh*gw*dim = ${f.n}*${gh}*${gw}*${f.dim}`);
  }
  const groups = f.groups ?? 1;
  if (!(Number.isInteger(groups) && groups >= 1 && f.dim % groups === 0))
    throw new Error(`${name}: ${groups} groups do not divide dim ${f.dim}`);
  if (f.cls && f.cls.length !== f.n * f.dim) throw new Error(`${name}: cls holds ${f.cls.length} values, expected n*dim = ${f.n}*${f.dim}`);
}

/** Position features of images `idx` as [B, gh, gw, C] (C = dim, or 2 dim interleaved with CLS). */
export function denseBatch(f: DenseFeatures, idx: ArrayLike<number>, withCls: boolean): Float32Array {
  const [gh, gw] = f.grid;
  const P = gh * gw,
    D = f.dim;
  if (!withCls) {
    const out = new Float32Array(idx.length * P * D);
    for (let b = 0; b < idx.length; b++) out.set(f.x.subarray(idx[b] * P * D, (idx[b] + 1) * P * D), b * P * D);
    return out;
  }
  if (!f.cls) throw new Error('dense head: the features have no CLS tokens to append');
  const groups = f.groups ?? 1,
    g = D / groups,
    C = 2 * D;
  const out = new Float32Array(idx.length * P * C);
  for (let b = 0; b < idx.length; b++) {
    const cls = f.cls.subarray(idx[b] * D, (idx[b] + 1) * D);
    for (let p = 0; p < P; p++) {
      const src = (idx[b] * P + p) * D,
        dst = (b * P + p) * C;
      for (let k = 0; k < groups; k++) {
        out.set(f.x.subarray(src + k * g, src + (k + 1) * g), dst + 2 * k * g);
        out.set(cls.subarray(k * g, (k + 1) * g), dst + (2 * k + 1) * g);
      }
    }
  }
  return out;
}

/**
 * Bilinear resize of [B, h, w, C] to [B, H, W, C] with 1-D matrices my [H, h], mx [W, w]; with
 * `columnsFirst` the result is left as [W, B, H, C] (one transpose of the large tensor fewer, for a
 * loss that sums over pixels anyway). Matrices rather than tf.image.resizeBilinear: its values match
 * PyTorch with halfPixelCenters, but tfjs's ResizeBilinearGrad ignores halfPixelCenters.
 */
export function resizeBilinearTf(x: tf.Tensor4D, my: tf.Tensor2D, mx: tf.Tensor2D, columnsFirst = false): tf.Tensor4D {
  return tf.tidy(() => {
    const [B, h, w, C] = x.shape;
    const H = my.shape[0],
      W = mx.shape[0];
    const rows = tf.reshape(tf.matMul(my, tf.reshape(tf.transpose(x, [1, 0, 2, 3]), [h, B * w * C])), [H, B, w, C]);
    const cols = tf.reshape(tf.matMul(mx, tf.reshape(tf.transpose(rows, [2, 1, 0, 3]), [w, B * H * C])), [W, B, H, C]) as tf.Tensor4D;
    return columnsFirst ? cols : (tf.transpose(cols, [1, 2, 0, 3]) as tf.Tensor4D);
  });
}
