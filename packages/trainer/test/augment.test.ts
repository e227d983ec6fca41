import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng, IMAGENET_MEAN, IMAGENET_STD } from '@vitreg/core';
import {
  adjustBrightness, adjustHue, adjustSaturation, colorJitter, evalTransform, gaussianBlur, grayscale, hflip,
  mixupCutmix, multiCrop, randomResizedCropBox, resizedCrop, smoothOneHot, solarize, supervisedAugment,
} from '../src/augment.js';

/** A w x h test image with varied colours. */
function picture(w: number, h: number, seed = 1): Uint8Array {
  const rng = new Rng(seed);
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) out.set([(x * 255) / (w - 1), (y * 255) / (h - 1), rng.int(256)], (y * w + x) * 3);
  }
  return out;
}

const img = (data: number[], width: number, height: number) => ({ data: Uint8Array.from(data), width, height });

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
  assert.equal(small.global[0].length, 32 * 32 * 3);
});

test('evalTransform: shorter side resized, centre crop, normalised', () => {
  const out = evalTransform(picture(100, 60), 100, 60, { resize: 32, crop: 28 });
  assert.equal(out.length, 28 * 28 * 3);
  // a constant image stays constant: every pixel is the normalised value
  const grey = new Uint8Array(50 * 30 * 3).fill(128);
  const n = evalTransform(grey, 50, 30, { resize: 20, crop: 16 });
  for (let c = 0; c < 3; c++) {
    const expected = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
    for (let p = c; p < n.length; p += 3) assert.ok(Math.abs(n[p] - expected) < 1e-5);
  }
});

test('resizedCrop: identity at full size, crops the right region, keeps a ramp linear', () => {
  const rgb = picture(9, 7);
  assert.deepEqual(resizedCrop({ data: rgb, width: 9, height: 7 }, { x: 0, y: 0, width: 9, height: 7 }, 9, 7).data, rgb);
  // an integer crop at its own size is a copy of that region
  const crop = resizedCrop({ data: rgb, width: 9, height: 7 }, { x: 2, y: 1, width: 4, height: 3 }, 4, 3);
  for (let y = 0; y < 3; y++) for (let x = 0; x < 4; x++) for (let c = 0; c < 3; c++) {
    assert.equal(crop.data[(y * 4 + x) * 3 + c], rgb[((y + 1) * 9 + x + 2) * 3 + c]);
  }
  // 2x upsampling of a horizontal ramp 0, 10, ..., 70: interior samples at half-pixel positions
  const ramp = new Uint8Array(8 * 1 * 3);
  for (let x = 0; x < 8; x++) ramp.fill(10 * x, x * 3, x * 3 + 3);
  const up = resizedCrop({ data: ramp, width: 8, height: 1 }, { x: 0, y: 0, width: 8, height: 1 }, 16, 1);
  // output pixel o samples source coordinate (o + 0.5) / 2 - 0.5 in pixel-centre units
  for (let o = 1; o < 15; o++) assert.equal(up.data[o * 3], Math.round(10 * ((o + 0.5) / 2 - 0.5)));
});

test('randomResizedCropBox stays inside and uses torchvision fallback', () => {
  const rng = new Rng(2);
  for (let k = 0; k < 200; k++) {
    const b = randomResizedCropBox(50, 20, rng);
    assert.ok(b.x >= 0 && b.y >= 0 && b.x + b.width <= 50 && b.y + b.height <= 20 && b.width > 0 && b.height > 0);
    const ratio = b.width / b.height;
    assert.ok(ratio > 0.6 && ratio < 1.6, `ratio ${ratio}`);
  }
  // no (area, ratio) draw fits: whole image cut to the nearest allowed ratio, centred
  assert.deepEqual(randomResizedCropBox(40, 40, new Rng(1), { scale: [1, 1], ratio: [2, 3] }), { x: 0, y: 10, width: 40, height: 20 });
  assert.deepEqual(randomResizedCropBox(90, 30, new Rng(1), { scale: [1, 1], ratio: [0.5, 1] }), { x: 30, y: 0, width: 30, height: 30 });
  assert.throws(() => randomResizedCropBox(10, 10, rng, { scale: [0.5, 0.2] }), /scale/);
});

test('hflip mirrors a tiny image', () => {
  const flipped = hflip(img([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], 3, 2));
  assert.deepEqual([...flipped.data], [7, 8, 9, 4, 5, 6, 1, 2, 3, 16, 17, 18, 13, 14, 15, 10, 11, 12]);
});

test('grayscale, solarize and colour adjustments give the expected values', () => {
  const px = img([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 200, 128], 4, 1);
  // ITU-R 601 luma, as PIL's "L": 0.299 R + 0.587 G + 0.114 B (10, 200, 128 -> 134.98)
  assert.deepEqual([...grayscale(px).data], [76, 76, 76, 150, 150, 150, 29, 29, 29, 135, 135, 135]);
  assert.deepEqual([...solarize(px).data], [0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 55, 127]);
  assert.deepEqual([...solarize(px, 200).data], [0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 55, 128]);
  assert.deepEqual([...adjustBrightness(px, 0.5).data], [128, 0, 0, 0, 128, 0, 0, 0, 128, 5, 100, 64]);
  assert.deepEqual(adjustSaturation(px, 0).data, grayscale(px).data);
  assert.deepEqual(adjustHue(px, 0).data, px.data);
  // a third of a turn: red -> green -> blue -> red
  assert.deepEqual([...adjustHue(px, 1 / 3).data.slice(0, 9)], [0, 255, 0, 0, 0, 255, 255, 0, 0]);
  // jitter with every strength 0 leaves the image alone
  assert.deepEqual(colorJitter(px, new Rng(1), {}).data, px.data);
});

test('gaussianBlur keeps a constant image and spreads an impulse symmetrically', () => {
  const flat = { data: new Uint8Array(7 * 5 * 3).fill(77), width: 7, height: 5 };
  assert.deepEqual(gaussianBlur(flat, 1.5).data, flat.data);
  const dot = { data: new Uint8Array(9 * 9 * 3), width: 9, height: 9 };
  dot.data.fill(255, (4 * 9 + 4) * 3, (4 * 9 + 4) * 3 + 3);
  const b = gaussianBlur(dot, 1).data;
  const at = (x: number, y: number): number => b[(y * 9 + x) * 3];
  assert.ok(at(4, 4) < 255 && at(4, 4) > at(3, 4) && at(3, 4) > at(2, 4));
  assert.equal(at(3, 4), at(5, 4));
  assert.equal(at(4, 3), at(4, 5));
});

test('mixup / cutmix: soft targets sum to 1 and images mix with the flipped batch', () => {
  const B = 4, H = 6, W = 5, C = 3, K = 10;
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
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
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
