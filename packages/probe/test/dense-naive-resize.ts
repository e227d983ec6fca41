/**
 * The naive bilinear resize the dense tests compare with, in a module of its own that imports nothing, so
 * the fast dense-metrics test (run once per mutant by `npm run mutate`) need not load the models that
 * dense-naive.ts's other references use.
 */
/** PyTorch's bilinear resize (align_corners=False) of an [h, w, c] map to [H, W, c]. */
export function bilinear(x: ArrayLike<number>, h: number, w: number, c: number, H: number, W: number): Float64Array {
  const src = (o: number, n: number, N: number) => {
    const s = Math.max(0, ((o + 0.5) * n) / N - 0.5);
    const i0 = Math.min(Math.floor(s), n - 1);
    return [i0, Math.min(i0 + 1, n - 1), s - i0] as const;
  };
  const out = new Float64Array(H * W * c);
  for (let i = 0; i < H; i++) {
    const [y0, y1, ly] = src(i, h, H);
    for (let j = 0; j < W; j++) {
      const [x0, x1, lx] = src(j, w, W);
      for (let k = 0; k < c; k++) {
        const at = (y: number, xx: number) => x[(y * w + xx) * c + k]!;
        out[(i * W + j) * c + k] = (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) + ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1));
      }
    }
  }
  return out;
}
