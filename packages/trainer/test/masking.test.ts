/**
 * iBOT's masks against a line-by-line transcription of DINOv2's dinov2/data/masking.py
 * (MaskingGenerator: `_mask`, `__call__`) and dinov2/data/collate.py (collate_data_and_cast's masks and
 * weights), fed by the same random draws (Python's random.uniform(a, b) = a + (b - a) random(),
 * random.randint(0, n) = an integer in [0, n], round() half to even), on several grids, block limits,
 * counts and seeds: every mask, index and weight equal.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '@vitreg/core';
import { collateMasks, MaskingGenerator } from '../src/masking.js';

/** Python's round(): half to even. */
const pyRound = (x: number) => {
  const f = Math.floor(x);
  const d = x - f;
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
};

/** dinov2/data/masking.py, MaskingGenerator, transcribed. */
class Official {
  readonly logAspectRatio: [number, number];
  constructor(
    readonly height: number,
    readonly width: number,
    readonly maxNumPatches: number,
    readonly minNumPatches = 4,
    minAspect = 0.3,
    maxAspect: number | null = null,
  ) {
    this.logAspectRatio = [Math.log(minAspect), Math.log(maxAspect || 1 / minAspect)];
  }

  private mask(mask: number[][], maxMaskPatches: number, rng: Rng): number {
    const uniform = (a: number, b: number) => a + (b - a) * rng.float();
    let delta = 0;
    for (let attempt = 0; attempt < 10; attempt++) {
      const targetArea = uniform(this.minNumPatches, maxMaskPatches);
      const aspectRatio = Math.exp(uniform(...this.logAspectRatio));
      const h = pyRound(Math.sqrt(targetArea * aspectRatio));
      const w = pyRound(Math.sqrt(targetArea / aspectRatio));
      if (w < this.width && h < this.height) {
        const top = rng.int(this.height - h + 1);
        const left = rng.int(this.width - w + 1);
        let numMasked = 0;
        for (let i = top; i < top + h; i++) for (let j = left; j < left + w; j++) numMasked += mask[i]![j]!;
        if (0 < h * w - numMasked && h * w - numMasked <= maxMaskPatches) {
          for (let i = top; i < top + h; i++) {
            for (let j = left; j < left + w; j++) {
              if (mask[i]![j] === 0) {
                mask[i]![j] = 1;
                delta += 1;
              }
            }
          }
        }
        if (delta > 0) break;
      }
    }
    return delta;
  }

  call(numMaskingPatches: number, rng: Rng): number[] {
    const mask = Array.from({ length: this.height }, () => new Array<number>(this.width).fill(0));
    let maskCount = 0;
    while (maskCount < numMaskingPatches) {
      const maxMaskPatches = Math.min(numMaskingPatches - maskCount, this.maxNumPatches);
      const delta = this.mask(mask, maxMaskPatches, rng);
      if (delta === 0) break;
      maskCount += delta;
    }
    return mask.flat();
  }
}

/** collate_data_and_cast's masks, indices and weights, transcribed (numpy linspace of the ratios). */
function officialCollate(B: number, gen: Official, ratio: [number, number], probability: number, rng: Rng) {
  const N = gen.height * gen.width;
  const nSamplesMasked = Math.trunc(B * probability);
  const probs = Array.from({ length: nSamplesMasked + 1 }, (_, i) =>
    nSamplesMasked === 0 ? ratio[0] : ratio[0] + ((ratio[1] - ratio[0]) * i) / nSamplesMasked,
  );
  const masks: number[][] = [];
  for (let i = 0; i < nSamplesMasked; i++) {
    const [lo, hi] = [probs[i]!, probs[i + 1]!];
    masks.push(gen.call(Math.trunc(N * (lo + (hi - lo) * rng.float())), rng));
  }
  for (let i = nSamplesMasked; i < B; i++) masks.push(gen.call(0, rng));
  rng.shuffle(masks);
  const flat = masks.flat();
  const indices = flat.flatMap((m, i) => (m ? [i] : []));
  const weights = indices.map(
    (i) =>
      1 /
      Math.max(
        1,
        masks[Math.floor(i / N)]!.reduce((a, v) => a + v, 0),
      ),
  );
  return { masks: flat, indices, weights };
}

const GRIDS: [number, number, number | undefined][] = [
  [16, 16, 128],
  [8, 8, undefined], // the default block limit: half the grid
  [5, 7, 10],
  [37, 37, 666],
  [4, 4, 8],
];

test("MaskingGenerator: the masks of DINOv2's MaskingGenerator for the same draws (grids, block limits, counts, seeds)", () => {
  for (const [h, w, max] of GRIDS) {
    const ours = new MaskingGenerator(h, w, max === undefined ? {} : { maxNumPatches: max });
    const official = new Official(h, w, max ?? 0.5 * h * w);
    for (let seed = 0; seed < 12; seed++) {
      for (const count of [0, 1, 4, Math.trunc(0.1 * h * w), Math.trunc(0.3 * h * w), Math.trunc(0.5 * h * w), h * w]) {
        const got = Array.from(ours.generate(count, new Rng(seed)));
        assert.deepEqual(got, official.call(count, new Rng(seed)), `${h}x${w}, max ${max}, count ${count}, seed ${seed}`);
      }
    }
  }
  // Other block shapes: no blocks under 6 patches, aspect ratios in [0.5, 3].
  const ours = new MaskingGenerator(12, 12, { maxNumPatches: 40, minNumPatches: 6, minAspect: 0.5, maxAspect: 3 });
  const official = new Official(12, 12, 40, 6, 0.5, 3);
  for (let seed = 0; seed < 12; seed++) assert.deepEqual(Array.from(ours.generate(50, new Rng(seed))), official.call(50, new Rng(seed)));
});

test("collateMasks: collate_data_and_cast's masks, mask indices and weights for the same draws", () => {
  for (const [B, ratio, p] of [
    [10, [0.1, 0.5], 0.5],
    [8, [0.2, 0.6], 1],
    [5, [0.1, 0.5], 0.3],
    [4, [0, 0.5], 0],
  ] as [number, [number, number], number][]) {
    for (let seed = 0; seed < 6; seed++) {
      const got = collateMasks(B, new MaskingGenerator(6, 6, { maxNumPatches: 18 }), ratio, p, new Rng(seed));
      const want = officialCollate(B, new Official(6, 6, 18), ratio, p, new Rng(seed));
      const what = `B ${B}, ratio ${ratio}, p ${p}, seed ${seed}`;
      assert.deepEqual(Array.from(got.masks), want.masks, `${what}: masks`);
      assert.deepEqual(got.indices, want.indices, `${what}: indices`);
      assert.deepEqual(Array.from(got.weights), want.weights.map(Math.fround), `${what}: weights`);
    }
  }
});
