/**
 * Bicubic resampling of the positional-embedding grid, computed exactly as PyTorch's
 * `F.interpolate(mode="bicubic", align_corners=False)` does, with and without `antialias`.
 *
 * Bicubic resampling is separable and linear, so each axis becomes a small [out, in] weight matrix and
 * the 2-D resize is two matMuls. That keeps it differentiable on every tfjs backend (tfjs has no bicubic
 * resize at all) and makes the result independent of the backend.
 */

/** Options of one axis: `scaleFactor` is the `scale_factor` passed to interpolate, if any (else size-based). */
export interface AxisResize {
  antialias: boolean;
  scaleFactor?: number;
}

/** Output size PyTorch computes for `scale_factor`: floor(in * scale) in double precision. */
export function scaledSize(inSize: number, scaleFactor: number): number {
  return Math.floor(inSize * scaleFactor);
}

/** The input/output ratio of aten's area_pixel_compute_scale (align_corners=False). */
function computeScale(inSize: number, outSize: number, scaleFactor: number | undefined): number {
  return scaleFactor !== undefined && scaleFactor > 0 ? 1 / scaleFactor : inSize / outSize;
}

/** Keys cubic convolution kernel with parameter A (aten: cubic_convolution1/2). */
function cubic(x: number, a: number): number {
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

/**
 * Row-major [outSize, inSize] matrix W with out = W @ in along one axis.
 * - antialias=false: aten upsample_bicubic2d, A = -0.75, four taps clamped at the borders.
 * - antialias=true: aten _upsample_bicubic2d_aa (PIL-style), A = -0.5, support widened by the scale when
 *   downsampling, weights normalised to sum to one.
 */
export function bicubicMatrix(inSize: number, outSize: number, opts: AxisResize): Float64Array {
  const w = new Float64Array(outSize * inSize);
  const f32 = Math.fround;
  if (!opts.antialias) {
    // aten computes the scale in double, then uses it in float (opmath of float32 tensors).
    const scale = f32(computeScale(inSize, outSize, opts.scaleFactor));
    const a = -0.75;
    for (let i = 0; i < outSize; i++) {
      const real = f32(f32(scale * f32(i + 0.5)) - 0.5);
      // guard_index_and_lambda: index capped at the last input, lambda clamped to [0, 1].
      const index = Math.min(Math.floor(real), inSize - 1);
      const t = Math.min(Math.max(f32(real - index), 0), 1);
      const coeffs = [cubic(t + 1, a), cubic(t, a), cubic(1 - t, a), cubic(2 - t, a)];
      for (let j = 0; j < 4; j++) {
        const src = Math.min(Math.max(index - 1 + j, 0), inSize - 1);
        w[i * inSize + src] += coeffs[j];
      }
    }
    return w;
  }
  const scale = computeScale(inSize, outSize, opts.scaleFactor);
  const a = -0.5;
  const support = scale >= 1 ? 2 * scale : 2;
  const invscale = scale >= 1 ? 1 / scale : 1;
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    let total = 0;
    for (let x = xmin; x < xmax; x++) total += cubic((x - center + 0.5) * invscale, a);
    for (let x = xmin; x < xmax; x++) {
      w[i * inSize + x] = total !== 0 ? cubic((x - center + 0.5) * invscale, a) / total : 0;
    }
  }
  return w;
}

/** How DINOv2 resizes its positional grid (`interpolate_pos_encoding`). */
export interface PosEmbedResize {
  /** `interpolate_antialias` of the model. */
  antialias: boolean;
  /** `interpolate_offset`: 0 means size-based; otherwise scale_factor = (out + offset) / grid. */
  offset: number;
}

/**
 * Weight matrices that map a [grid, grid] positional grid to [outH, outW] patches, for DINOv2's rule.
 * Throws if PyTorch's own size arithmetic would not land on the requested size (DINOv2 asserts the same).
 */
export function posEmbedMatrices(
  grid: number,
  outH: number,
  outW: number,
  mode: PosEmbedResize,
): { rows: Float64Array; cols: Float64Array } {
  const axis = (out: number): Float64Array => {
    if (mode.offset) {
      const sf = (out + mode.offset) / grid;
      const size = scaledSize(grid, sf);
      if (size !== out) {
        throw new Error(`positional embedding: scale_factor ${sf} maps grid ${grid} to ${size}, not ${out} patches`);
      }
      return bicubicMatrix(grid, out, { antialias: mode.antialias, scaleFactor: sf });
    }
    return bicubicMatrix(grid, out, { antialias: mode.antialias });
  };
  return { rows: axis(outH), cols: outW === outH ? axis(outH) : axis(outW) };
}
