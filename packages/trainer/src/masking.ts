/**
 * iBOT masks, as DINOv2's `MaskingGenerator` and `collate_data_and_cast`: block-wise masks of
 * random aspect ratio, drawn for a fraction of the global crops with mask ratios spread over
 * [min, max]; everything random comes from a seeded Rng.
 */
import type { Rng } from '@vitreg/core';

export interface MaskingOptions {
  minNumPatches?: number;
  /** Largest block, in patches (DINOv2: half the grid). */
  maxNumPatches?: number;
  minAspect?: number;
  maxAspect?: number;
}

export class MaskingGenerator {
  readonly numPatches: number;
  private readonly minNum: number;
  private readonly maxNum: number;
  private readonly logAspect: [number, number];

  constructor(
    readonly height: number,
    readonly width: number,
    opts: MaskingOptions = {},
  ) {
    this.numPatches = height * width;
    this.minNum = opts.minNumPatches ?? 4;
    this.maxNum = opts.maxNumPatches ?? 0.5 * this.numPatches;
    const minAspect = opts.minAspect ?? 0.3;
    this.logAspect = [Math.log(minAspect), Math.log(opts.maxAspect ?? 1 / minAspect)];
  }

  /** A [height * width] mask (1 = masked) with about `count` patches set, in blocks. */
  generate(count: number, rng: Rng): Uint8Array {
    const mask = new Uint8Array(this.numPatches);
    let masked = 0;
    while (masked < count) {
      const delta = this.addBlock(mask, Math.min(count - masked, this.maxNum), rng);
      if (delta === 0) break;
      masked += delta;
    }
    return mask;
  }

  private addBlock(mask: Uint8Array, maxPatches: number, rng: Rng): number {
    const uniform = (a: number, b: number) => a + (b - a) * rng.float();
    let delta = 0;
    for (let attempt = 0; attempt < 10; attempt++) {
      const area = uniform(this.minNum, maxPatches);
      const aspect = Math.exp(uniform(this.logAspect[0], this.logAspect[1]));
      const h = Math.round(Math.sqrt(area * aspect));
      const w = Math.round(Math.sqrt(area / aspect));
      if (w < this.width && h < this.height) {
        const top = rng.int(this.height - h + 1);
        const left = rng.int(this.width - w + 1);
        let already = 0;
        for (let i = top; i < top + h; i++) for (let j = left; j < left + w; j++) already += mask[i * this.width + j]!;
        if (h * w - already > 0 && h * w - already <= maxPatches) {
          for (let i = top; i < top + h; i++) {
            for (let j = left; j < left + w; j++) {
              if (mask[i * this.width + j] === 0) {
                mask[i * this.width + j] = 1;
                delta++;
              }
            }
          }
        }
        if (delta > 0) break;
      }
    }
    return delta;
  }
}

export interface MaskBatch {
  /** [nImages * numPatches], 1 = masked. */
  masks: Float32Array;
  /** Flat indices (image * numPatches + patch) of the masked patches, in order. */
  indices: number[];
  /** Per masked patch: 1 / (masked patches of its image). */
  weights: Float32Array;
}

/**
 * The most patches `collateMasks` can mask over `nImages` crops of `numPatches` patches: each masked crop
 * asks for at most trunc(numPatches x the top of its ratio slice) and the generator never exceeds the ask.
 */
export function maxMaskedPatches(nImages: number, numPatches: number, ratio: [number, number], probability: number): number {
  const nMasked = Math.trunc(nImages * probability);
  let total = 0;
  for (let i = 0; i < nMasked; i++) total += Math.trunc(numPatches * (ratio[0] + ((ratio[1] - ratio[0]) * (i + 1)) / nMasked));
  return total;
}

/**
 * Masks for `nImages` crops: int(nImages * probability) of them get a mask whose ratio is drawn
 * in consecutive slices of [ratioMin, ratioMax], the others none; then the list is shuffled.
 */
export function collateMasks(
  nImages: number,
  generator: MaskingGenerator,
  ratio: [number, number],
  probability: number,
  rng: Rng,
): MaskBatch {
  const N = generator.numPatches;
  const nMasked = Math.trunc(nImages * probability);
  const list: Uint8Array[] = [];
  for (let i = 0; i < nMasked; i++) {
    const lo = ratio[0] + ((ratio[1] - ratio[0]) * i) / nMasked;
    const hi = ratio[0] + ((ratio[1] - ratio[0]) * (i + 1)) / nMasked;
    list.push(generator.generate(Math.trunc(N * (lo + (hi - lo) * rng.float())), rng));
  }
  for (let i = nMasked; i < nImages; i++) list.push(new Uint8Array(N));
  rng.shuffle(list);
  const masks = new Float32Array(nImages * N);
  const indices: number[] = [];
  const weights: number[] = [];
  list.forEach((m, b) => {
    const count = m.reduce((a, v) => a + v, 0);
    for (let p = 0; p < N; p++) {
      if (m[p]) {
        masks[b * N + p] = 1;
        indices.push(b * N + p);
        weights.push(1 / Math.max(count, 1));
      }
    }
  });
  return { masks, indices, weights: Float32Array.from(weights) };
}
