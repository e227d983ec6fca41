/**
 * Helpers shared by the augmentation modules (not part of the package's API): image checks, Python's
 * rounding, float32 rounding, uniform draws and reflected indices.
 */
import type { Rng, RgbImage } from '@vitreg/core';

export function checkImage(img: RgbImage, what: string): void {
  const { width, height, data } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1 || data.length !== width * height * 3) {
    throw new Error(`${what}: expected an RGB image of width x height x 3 bytes, got ${width}x${height} with ${data.length} bytes`);
  }
}

export function uniform(rng: Rng, lo: number, hi: number): number {
  return lo + (hi - lo) * rng.float();
}

/** Python's round() (halves to the even neighbour): @vitreg/core's, the one its image transforms use. */
export { roundHalfEven } from '@vitreg/core';

export const f32 = Math.fround;

/** Index `i` reflected into [0, n) without repeating the edge (numpy / torch "reflect"). */
export function reflectIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  const m = ((i % period) + period) % period;
  return m < n ? m : period - m;
}
