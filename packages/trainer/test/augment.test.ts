import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Rng, IMAGENET_MEAN, IMAGENET_STD, resizeBicubic, type RgbImage } from '@vitreg/core';
import { DINOV2_BLUR_AS_RUN, DINOV2_BLUR_AS_WRITTEN, evalTransform, multiCrop, supervisedAugment } from '../src/augment.js';
import { gaussianBlur, pilGaussianBlur } from '../src/augment-blur.js';
import {
  adjustBrightness,
  adjustContrast,
  adjustHue,
  adjustSaturation,
  colorJitter,
  grayscale,
  normalize,
  solarize,
} from '../src/augment-colour.js';
import { hflip, randomResizedCrop, randomResizedCropBox, reflectPad, resizedCrop, simpleRandomCrop } from '../src/augment-geometry.js';
import { mixupCutmix, smoothOneHot } from '../src/mixup.js';

/** A w x h test image with varied colours. */
function picture(w: number, h: number, seed = 1): Uint8Array {
  const rng = new Rng(seed);
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) out.set([(x * 255) / (w - 1), (y * 255) / (h - 1), rng.int(256)], (y * w + x) * 3);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pixel operations against Pillow 9.4 / torchvision 0.14 (fixtures/make_pil_reference.py)

interface PilCase {
  op: string;
  image: string;
  args: Record<string, number>;
  max_abs: number;
  max_mismatch: number;
  expected: number[];
  width?: number;
  height?: number;
}
const fixture = JSON.parse(readFileSync(new URL('./fixtures/pil-reference.json', import.meta.url), 'utf8')) as {
  images: Record<string, { width: number; height: number; data: number[] }>;
  cases: PilCase[];
  rrc_fallbacks: {
    width: number;
    height: number;
    scale: [number, number];
    ratio: [number, number];
    expected: { x: number; y: number; width: number; height: number };
  }[];
};
const images: Record<string, RgbImage> = Object.fromEntries(
  Object.entries(fixture.images).map(([k, v]) => [k, { width: v.width, height: v.height, data: Uint8Array.from(v.data) }]),
);

/** What vitreg computes for one fixture case. */
function run(c: PilCase): { data: ArrayLike<number>; width?: number; height?: number } {
  const img = images[c.image]!,
    a = c.args;
  switch (c.op) {
    case 'grayscale':
      return grayscale(img);
    case 'hflip':
      return hflip(img);
    case 'solarize':
      return solarize(img, a.threshold);
    case 'adjust_brightness':
      return adjustBrightness(img, a.factor!);
    case 'adjust_contrast':
      return adjustContrast(img, a.factor!);
    case 'adjust_saturation':
      return adjustSaturation(img, a.factor!);
    case 'adjust_hue':
      return adjustHue(img, a.shift!);
    case 'gaussian_blur':
      return gaussianBlur(img, a.sigma!, a.kernel_size);
    case 'pil_gaussian_blur':
      return pilGaussianBlur(img, a.radius!);
    case 'resized_crop':
      return resizedCrop(img, { x: a.x!, y: a.y!, width: a.width!, height: a.height! }, a.out_width!, a.out_height!);
    case 'reflect_pad':
      return reflectPad(img, a.pad!);
    case 'eval_transform':
      return { data: evalTransform(img.data, img.width, img.height, { resize: a.resize, crop: a.crop }) };
    default:
      throw new Error(`fixture op ${c.op} has no counterpart`);
  }
}

test('every pixel operation matches Pillow / torchvision: exact, torchvision blur within 1 level on at most 2 values', () => {
  const ops = new Set<string>();
  for (const c of fixture.cases) {
    const what = `${c.op} ${JSON.stringify(c.args)} on ${c.image}`;
    const out = run(c);
    if (c.width !== undefined) assert.deepEqual([out.width, out.height], [c.width, c.height], `${what}: size`);
    assert.equal(out.data.length, c.expected.length, `${what}: length`);
    let mismatches = 0;
    for (let i = 0; i < c.expected.length; i++) {
      const d = Math.abs(out.data[i]! - c.expected[i]!);
      if (d > 0) mismatches++;
      assert.ok(d <= c.max_abs, `${what}: value ${i} is ${out.data[i]}, PIL gives ${c.expected[i]}`);
    }
    assert.ok(mismatches <= c.max_mismatch, `${what}: ${mismatches} values differ, at most ${c.max_mismatch} may`);
    ops.add(c.op);
  }
  assert.equal(ops.size, 12, `ops covered: ${[...ops].join(', ')}`);
});

test('PIL specifics the fixture pins down: blend truncates, hue goes through 8-bit HSV', () => {
  // Image.blend truncates: 255 * 0.5 = 127.5 -> 127 and 255 * 0.7 = 178.5 -> 178 (rounding would give 128, 179)
  const px = { data: Uint8Array.from([255, 10, 1]), width: 1, height: 1 };
  assert.deepEqual([...adjustBrightness(px, 0.5).data], [127, 5, 0]);
  assert.deepEqual([...adjustBrightness(px, 0.7).data], [178, 7, 0]);
  // a zero hue shift still quantises through PIL's 8-bit HSV: (10, 200, 128) -> (111, 242, 200) -> (10, 200, 126)
  assert.deepEqual(
    [...adjustHue({ data: Uint8Array.from([10, 200, 128, 200, 10, 128]), width: 2, height: 1 }, 0).data],
    [10, 200, 126, 200, 10, 131],
  );
  const noise = images.noise16!;
  const fixtureCase = fixture.cases.find((c) => c.op === 'adjust_hue' && c.image === 'noise16' && c.args.shift === 0)!;
  assert.notDeepEqual(fixtureCase.expected, [...noise.data], 'PIL changes colours at shift 0 too');
  assert.throws(() => adjustHue(noise, 0.6), /shift must be in \[-0.5, 0.5\]/);
  assert.throws(() => pilGaussianBlur(noise, -1), /radius must be >= 0/);
  assert.throws(() => gaussianBlur(noise, 1, 4), /kernelSize must be a positive odd integer/);
});

test('randomResizedCropBox: inside the image; the no-fit fallback as torchvision get_params computes it', () => {
  const rng = new Rng(2);
  for (let k = 0; k < 200; k++) {
    const b = randomResizedCropBox(50, 20, rng);
    assert.ok(b.x >= 0 && b.y >= 0 && b.x + b.width <= 50 && b.y + b.height <= 20 && b.width > 0 && b.height > 0);
    const ratio = b.width / b.height;
    assert.ok(ratio > 0.6 && ratio < 1.6, `ratio ${ratio}`);
  }
  for (const f of fixture.rrc_fallbacks) {
    assert.deepEqual(
      randomResizedCropBox(f.width, f.height, new Rng(1), { scale: f.scale, ratio: f.ratio }),
      f.expected,
      JSON.stringify(f),
    );
  }
  assert.throws(() => randomResizedCropBox(10, 10, rng, { scale: [0.5, 0.2] }), /scale/);
  assert.throws(() => resizedCrop(images.noise8!, { x: 0.5, y: 0, width: 4, height: 4 }, 4, 4), /integer edges inside the 8x8 image/);
  assert.throws(() => resizedCrop(images.noise8!, { x: 6, y: 0, width: 4, height: 4 }, 4, 4), /integer edges inside/);
});

test('randomResizedCrop is PIL crop + bicubic resize of the drawn box', () => {
  const img = { data: picture(40, 30), width: 40, height: 30 };
  for (const seed of [1, 2, 3]) {
    const box = randomResizedCropBox(40, 30, new Rng(seed), { scale: [0.2, 0.6] });
    const crop = new Uint8Array(box.width * box.height * 3);
    for (let y = 0; y < box.height; y++)
      crop.set(img.data.subarray(((box.y + y) * 40 + box.x) * 3, ((box.y + y) * 40 + box.x + box.width) * 3), y * box.width * 3);
    const expected = resizeBicubic({ data: crop, width: box.width, height: box.height }, 12, 12);
    assert.deepEqual(randomResizedCrop(img, new Rng(seed), 12, { scale: [0.2, 0.6] }), expected);
  }
});

// ---------------------------------------------------------------------------------------------
// Recipes

test('augmentations are deterministic given the rng state and change with it', () => {
  const rgb = picture(40, 30);
  const a = supervisedAugment(rgb, 40, 30, new Rng(5), { size: 24 });
  const b = supervisedAugment(rgb, 40, 30, new Rng(5), { size: 24 });
  const c = supervisedAugment(rgb, 40, 30, new Rng(6), { size: 24 });
  assert.equal(a.length, 24 * 24 * 3);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  // restoring a saved state replays the same crops
  const rng = new Rng(9);
  supervisedAugment(rgb, 40, 30, rng, { size: 16 });
  const state = rng.getState();
  const next = supervisedAugment(rgb, 40, 30, rng, { size: 16 });
  assert.deepEqual(supervisedAugment(rgb, 40, 30, Rng.fromState(state), { size: 16 }), next);
  const m1 = multiCrop(rgb, 40, 30, new Rng(3), { globalSize: 20, localSize: 8, localCrops: 3 });
  const m2 = multiCrop(rgb, 40, 30, new Rng(3), { globalSize: 20, localSize: 8, localCrops: 3 });
  assert.deepEqual(m1, m2);
});

test('multi-crop sizes: 2 global + N local crops, defaults 224 / 96 / 8', () => {
  const rgb = picture(64, 48);
  const m = multiCrop(rgb, 64, 48, new Rng(1));
  assert.equal(m.globalSize, 224);
  assert.equal(m.localSize, 96);
  assert.equal(m.global.length, 2);
  assert.equal(m.local.length, 8);
  for (const g of m.global) assert.equal(g.length, 224 * 224 * 3);
  for (const l of m.local) assert.equal(l.length, 96 * 96 * 3);
  assert.notDeepEqual(m.global[0], m.global[1]);
  const small = multiCrop(rgb, 64, 48, new Rng(1), { globalSize: 32, localSize: 12, localCrops: 0 });
  assert.equal(small.local.length, 0);
  assert.equal(small.global[0]!.length, 32 * 32 * 3);
  assert.throws(() => multiCrop(rgb, 64, 48, new Rng(1), { blurProbabilities: [1, 0.1, 2] }), /blurProbabilities/);
});

/** An Rng that counts `float()` draws: each gaussian blur draws one more (its sigma). */
class CountingRng extends Rng {
  floats = 0;
  override float(): number {
    this.floats++;
    return super.float();
  }
}

test('multi-crop blurs as the released DINOv2 code runs: global 1 never, global 2 with p 0.9, local with p 0.5', () => {
  assert.deepEqual(DINOV2_BLUR_AS_RUN, [0, 0.9, 0.5]);
  assert.deepEqual(DINOV2_BLUR_AS_WRITTEN, [1, 0.1, 0.5]);
  const rgb = picture(24, 20);
  const noBlur = [0, 0, 0] as const;
  // Blurs applied = extra sigma draws over the same seed without blur. The draws agree up to the first
  // blur; after global crop 2's blur only the solarize draw follows when there are no local crops.
  const blurs = (seed: number, localCrops: number, blurProbabilities?: readonly [number, number, number]) => {
    const opts = { globalSize: 12, localSize: 6, localCrops };
    const base = new CountingRng(seed),
      run = new CountingRng(seed);
    const ref = multiCrop(rgb, 24, 20, base, { ...opts, blurProbabilities: noBlur });
    const out = multiCrop(rgb, 24, 20, run, { ...opts, blurProbabilities });
    return { n: run.floats - base.floats, out, ref };
  };
  const seeds = 300;
  let g2 = 0,
    local = 0;
  for (let seed = 0; seed < seeds; seed++) {
    const d = blurs(seed, 0);
    assert.ok(d.n === 0 || d.n === 1, `seed ${seed}: ${d.n} blurs with one crop that may blur`);
    assert.deepEqual(d.out.global[0], d.ref.global[0], `seed ${seed}: global crop 1 is never blurred`);
    g2 += d.n;
    const l = blurs(seed, 1, [0, 0, 0.5]);
    assert.ok(l.n === 0 || l.n === 1);
    local += l.n;
  }
  // binomial(300, p): 4 standard deviations either side
  assert.ok(Math.abs(g2 / seeds - 0.9) < 4 * Math.sqrt(0.09 / seeds), `global crop 2 blurred ${g2} / ${seeds}`);
  assert.ok(Math.abs(local / seeds - 0.5) < 4 * Math.sqrt(0.25 / seeds), `local crop blurred ${local} / ${seeds}`);
});

test('multiCrop replays as DataAugmentationDINO, step by step, with either set of blur probabilities', () => {
  const rgb = picture(30, 22);
  const source = { data: rgb, width: 30, height: 22 };
  for (const probs of [DINOV2_BLUR_AS_RUN, DINOV2_BLUR_AS_WRITTEN]) {
    for (let seed = 0; seed < 4; seed++) {
      const rng = new Rng(seed);
      const view = (size: number, scale: [number, number]): RgbImage => {
        let img = randomResizedCrop(source, rng, size, { scale });
        if (rng.float() < 0.5) img = hflip(img);
        if (rng.float() < 0.8) img = colorJitter(img, rng, { brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1 });
        if (rng.float() < 0.2) img = grayscale(img);
        return img;
      };
      const blur = (img: RgbImage, p: number): RgbImage => (rng.float() < p ? gaussianBlur(img, 0.1 + 1.9 * rng.float(), 9) : img);
      const g1 = blur(view(14, [0.32, 1]), probs[0]);
      let g2 = blur(view(14, [0.32, 1]), probs[1]);
      if (rng.float() < 0.2) g2 = solarize(g2, 128);
      const l1 = blur(view(6, [0.05, 0.32]), probs[2]);
      const m = multiCrop(rgb, 30, 22, new Rng(seed), { globalSize: 14, localSize: 6, localCrops: 1, blurProbabilities: probs });
      assert.deepEqual(
        m,
        { global: [normalize(g1), normalize(g2)], local: [normalize(l1)], globalSize: 14, localSize: 6 },
        `seed ${seed}, [${probs}]`,
      );
    }
  }
});

function sameArray(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

test('supervisedAugment replays as DeiT-III 3-Augment: bicubic RRC, flip, one of gray / solarize / PIL blur, jitter 0.3', () => {
  const rgb = picture(40, 30);
  const source = { data: rgb, width: 40, height: 30 };
  const choices = new Set<number>();
  for (let seed = 0; seed < 12; seed++) {
    // the same steps by hand, from the same generator state
    const rng = new Rng(seed);
    let img = randomResizedCrop(source, rng, 16, { scale: [0.08, 1] });
    if (rng.float() < 0.5) img = hflip(img);
    const choice = rng.int(3);
    choices.add(choice);
    img = choice === 0 ? grayscale(img) : choice === 1 ? solarize(img) : pilGaussianBlur(img, 0.1 + 1.9 * rng.float());
    img = colorJitter(img, rng, { brightness: 0.3, contrast: 0.3, saturation: 0.3 });
    assert.deepEqual(supervisedAugment(rgb, 40, 30, new Rng(seed), { size: 16 }), normalize(img), `seed ${seed}`);
  }
  assert.equal(choices.size, 3);
});

test('supervisedAugment crop "src": bicubic resize of the shorter side, reflect pad 4, a random 16x16 window', () => {
  const img = { data: picture(40, 30), width: 40, height: 30 };
  // shorter side 30 -> 16, longer int(16 * 40 / 30) = 21; padded 29 x 24
  const padded = reflectPad(resizeBicubic(img, 21, 16), 4);
  assert.deepEqual([padded.width, padded.height], [29, 24]);
  const windows = new Set<string>();
  for (let seed = 0; seed < 6; seed++) {
    const out = simpleRandomCrop(img, new Rng(seed), 16);
    let found = '';
    for (let top = 0; top <= 8 && !found; top++) {
      for (let left = 0; left <= 13 && !found; left++) {
        let same = true;
        for (let y = 0; y < 16 && same; y++) {
          const row = padded.data.subarray(((top + y) * 29 + left) * 3, ((top + y) * 29 + left + 16) * 3);
          same = sameArray(row, out.data.subarray(y * 48, (y + 1) * 48));
        }
        if (same) found = `${left},${top}`;
      }
    }
    assert.ok(found, `seed ${seed}: the crop is a window of the padded image`);
    windows.add(found);
  }
  assert.ok(windows.size > 1, 'the window moves with the seed');
  const a = supervisedAugment(img.data, 40, 30, new Rng(1), { size: 16, crop: 'src', threeAugment: false, colorJitter: 0, hflip: 0 });
  assert.deepEqual(a, normalize(simpleRandomCrop(img, new Rng(1), 16)));
});

test('evalTransform: bicubic resize + centre crop, cropRatio as DeiT (int(crop / ratio))', () => {
  const rgb = picture(100, 60);
  const out = evalTransform(rgb, 100, 60, { resize: 32, crop: 28 });
  assert.equal(out.length, 28 * 28 * 3);
  assert.deepEqual(evalTransform(rgb, 100, 60, { crop: 28, cropRatio: 1 }), evalTransform(rgb, 100, 60, { resize: 28, crop: 28 }));
  assert.deepEqual(evalTransform(rgb, 100, 60, { crop: 28, cropRatio: 0.875 }), evalTransform(rgb, 100, 60, { resize: 32, crop: 28 }));
  // int(30 / 0.9) = 33
  assert.deepEqual(evalTransform(rgb, 100, 60, { crop: 30, cropRatio: 0.9 }), evalTransform(rgb, 100, 60, { resize: 33, crop: 30 }));
  assert.throws(() => evalTransform(rgb, 100, 60, { resize: 32, cropRatio: 1 }), /either resize \(32\) or cropRatio \(1\)/);
  assert.throws(() => evalTransform(rgb, 100, 60, { cropRatio: 1.5 }), /cropRatio must be in \(0, 1\]/);
  // a constant image stays constant: every pixel is the normalised value
  const grey = new Uint8Array(50 * 30 * 3).fill(128);
  const n = evalTransform(grey, 50, 30, { resize: 20, crop: 16 });
  for (let c = 0; c < 3; c++) {
    const expected = (128 / 255 - IMAGENET_MEAN[c]!) / IMAGENET_STD[c]!;
    for (let p = c; p < n.length; p += 3) assert.ok(Math.abs(n[p]! - expected) < 1e-5);
  }
});

test('mixup / cutmix: soft targets sum to 1 and images mix with the flipped batch', () => {
  const B = 4,
    H = 6,
    W = 5,
    C = 3,
    K = 10;
  const images = new Float32Array(B * H * W * C);
  for (let i = 0; i < B; i++) images.fill(i, i * H * W * C, (i + 1) * H * W * C);
  const labels = [1, 7, 3, 7];

  const mix = mixupCutmix(images, [B, H, W, C], labels, K, new Rng(4), { cutmixAlpha: 0, labelSmoothing: 0.1 });
  assert.equal(mix.box, null);
  assert.ok(mix.lambda > 0 && mix.lambda < 1);
  for (let i = 0; i < B; i++) {
    const row = mix.targets.slice(i * K, (i + 1) * K);
    assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-6);
    assert.ok(Math.abs(mix.images[i * H * W * C] - (mix.lambda * i + (1 - mix.lambda) * (B - 1 - i))) < 1e-5);
  }
  assert.ok(Math.abs(mix.targets[0 * K + 1] - (mix.lambda * (0.9 + 0.01) + (1 - mix.lambda) * 0.01)) < 1e-6);

  const cut = mixupCutmix(images, [B, H, W, C], labels, K, new Rng(4), { mixupAlpha: 0 });
  assert.ok(cut.box);
  const [x0, y0, x1, y1] = cut.box!;
  assert.ok(Math.abs(cut.lambda - (1 - ((x1 - x0) * (y1 - y0)) / (H * W))) < 1e-12);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      const inside = x >= x0 && x < x1 && y >= y0 && y < y1;
      assert.equal(cut.images[(y * W + x) * C], inside ? B - 1 : 0, `pixel (${x}, ${y}) of image 0`);
    }
  for (let i = 0; i < B; i++) assert.ok(Math.abs(cut.targets.slice(i * K, (i + 1) * K).reduce((a, b) => a + b, 0) - 1) < 1e-6);

  // prob 0: no mixing, plain smoothed one-hot targets
  const none = mixupCutmix(images, [B, H, W, C], labels, K, new Rng(4), { prob: 0 });
  assert.equal(none.lambda, 1);
  assert.deepEqual(none.images, images);
  assert.deepEqual(none.targets, smoothOneHot(labels, K, 0.1));
  assert.throws(() => smoothOneHot([10], K), /label 0 is 10/);
});
