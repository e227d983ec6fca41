import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import {
  applyPlan,
  decodeImage,
  encodePng,
  IMAGENET_MEAN,
  IMAGENET_STD,
  loadImage,
  normalizeRgb,
  planTransform,
  resizeBicubic,
  stackImages,
} from '../src/image.js';
import { listImageFiles } from '../src/image-files.js';

let dir: string;
const file = (name: string) => path.join(dir, name);

/** A picture with structure: a horizontal ramp in red, a vertical one in green. */
function ramp(width: number, height: number): Buffer {
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      px[i] = Math.round((255 * x) / (width - 1));
      px[i + 1] = Math.round((255 * y) / (height - 1));
      px[i + 2] = 128;
    }
  }
  return px;
}

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'vitreg-image-'));
  const raw = { raw: { width: 300, height: 200, channels: 3 as const } };
  await sharp(ramp(300, 200), raw).png().toFile(file('ramp.png'));
  await sharp(ramp(300, 200), raw).jpeg({ quality: 90 }).toFile(file('ramp.jpg'));
  await sharp({ create: { width: 40, height: 30, channels: 3, background: { r: 10, g: 100, b: 200 } } })
    .png()
    .toFile(file('solid.png'));
  await sharp(Buffer.from([0, 60, 120, 255]), { raw: { width: 2, height: 2, channels: 1 } })
    .png()
    .toFile(file('gray.png'));
  await sharp(Buffer.from([10, 20, 30, 0, 40, 50, 60, 128]), { raw: { width: 2, height: 1, channels: 4 } })
    .png()
    .toFile(file('rgba.png'));
  const deep = new Uint16Array([65535, 0, 257 * 100, 32768, 32768, 32768]);
  await sharp(deep, { raw: { width: 2, height: 1, channels: 3 } })
    .toColourspace('rgb16')
    .png()
    .toFile(file('deep.png'));
  const jpeg = await readFile(file('ramp.jpg'));
  await writeFile(file('truncated.jpg'), jpeg.subarray(0, Math.floor(jpeg.length / 2)));
  await writeFile(file('notes.jpg'), 'not an image');
  await sharp(ramp(30, 20), { raw: { width: 30, height: 20, channels: 3 } })
    .withMetadata({ orientation: 6 })
    .jpeg()
    .toFile(file('rotated.jpg'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('decodeImage gives 8-bit RGB for RGB, grayscale, RGBA and 16-bit files', async () => {
  const png = await decodeImage(file('ramp.png'));
  assert.equal(png.width, 300);
  assert.equal(png.height, 200);
  assert.deepEqual(Buffer.from(png.data), ramp(300, 200));
  const jpg = await decodeImage(file('ramp.jpg'));
  assert.equal(jpg.data.length, 300 * 200 * 3);
  const gray = await decodeImage(file('gray.png'));
  assert.deepEqual([...gray.data], [0, 0, 0, 60, 60, 60, 120, 120, 120, 255, 255, 255]);
  // The alpha channel is dropped, not composited (PIL's convert('RGB')).
  const rgba = await decodeImage(file('rgba.png'));
  assert.deepEqual([...rgba.data], [10, 20, 30, 40, 50, 60]);
  // 16-bit samples are scaled: 65535 -> 255, 25700 -> 100, 32768 -> 128.
  const deep = await decodeImage(file('deep.png'));
  assert.deepEqual([...deep.data], [255, 0, 100, 128, 128, 128]);
  // The EXIF orientation is not applied (PIL does not apply it either).
  assert.equal((await sharp(file('rotated.jpg')).metadata()).orientation, 6);
  const rotated = await decodeImage(file('rotated.jpg'));
  assert.deepEqual([rotated.width, rotated.height], [30, 20]);
});

test('a truncated, unreadable or missing file is an error naming it', async () => {
  const truncated = file('truncated.jpg');
  await assert.rejects(decodeImage(truncated), (err: Error) => {
    assert.ok(err.message.startsWith(`${truncated}: cannot decode image (truncated or not an image): `), err.message);
    return true;
  });
  await assert.rejects(loadImage(file('notes.jpg'), { kind: 'eval' }), new RegExp(`^Error: ${file('notes.jpg')}: cannot decode image`));
  await assert.rejects(decodeImage(file('missing.png')), /missing\.png: cannot decode image/);
});

test('planTransform follows torchvision: Resize(256) of the shorter side, CenterCrop(224) with round half to even', () => {
  assert.deepEqual(planTransform(300, 200, { kind: 'eval' }), {
    resizeWidth: 384,
    resizeHeight: 256,
    crop: { left: 80, top: 16, width: 224, height: 224 },
  });
  // 500x375 -> int(256 * 500 / 375) = 341; (341 - 224) / 2 = 58.5 rounds to 58 (Python's round).
  assert.deepEqual(planTransform(500, 375, { kind: 'eval' }).crop, { left: 58, top: 16, width: 224, height: 224 });
  // 375x502 -> 256x342; (342 - 224) / 2 = 59.
  const tall = planTransform(375, 502, { kind: 'eval' });
  assert.deepEqual([tall.resizeWidth, tall.resizeHeight, tall.crop.top], [256, 342, 59]);
  // (345 - 224) / 2 = 60.5 rounds to 60.
  assert.equal(planTransform(256, 345, { kind: 'eval' }).crop.top, 60);
  assert.deepEqual(planTransform(100, 100, { kind: 'eval', resize: 64, crop: 56 }).crop, { left: 4, top: 4, width: 56, height: 56 });
  assert.throws(() => planTransform(10, 10, { kind: 'eval', resize: 200 }), /crop \(224\) must not exceed resize \(200\)/);
});

test('planTransform keep-aspect rounds each side to a multiple of the patch size, capped by maxSide', () => {
  const plain = planTransform(300, 200, { kind: 'keep-aspect', patchSize: 14 });
  assert.deepEqual([plain.resizeWidth, plain.resizeHeight], [294, 196]);
  const capped = planTransform(300, 200, { kind: 'keep-aspect', patchSize: 14, maxSide: 224 });
  assert.deepEqual([capped.resizeWidth, capped.resizeHeight], [224, 154]);
  const tiny = planTransform(5, 500, { kind: 'keep-aspect', patchSize: 16, maxSide: 100 });
  assert.deepEqual([tiny.resizeWidth, tiny.resizeHeight], [16, 96]);
  assert.throws(
    () => planTransform(10, 10, { kind: 'keep-aspect', patchSize: 0 }),
    /keep-aspect transform: patchSize must be a positive integer, got 0/,
  );
  assert.throws(
    () => planTransform(10, 10, { kind: 'resize', height: 5, width: 2.5 }),
    /resize transform: width must be a positive integer, got 2.5/,
  );
  assert.throws(() => planTransform(10, 10, { kind: 'zoom' } as never), /unknown image transform kind 'zoom'/);
});

test('resizeBicubic and the eval transform match Pillow bit for bit', async () => {
  const fixture = JSON.parse(await readFile(new URL('./fixtures/pil-bicubic.json', import.meta.url), 'utf8'));
  const bytes = (b64: string) => new Uint8Array(Buffer.from(b64, 'base64'));
  const source = { data: bytes(fixture.source.rgb), width: fixture.source.width, height: fixture.source.height };
  for (const r of fixture.resize) {
    const out = resizeBicubic(source, r.width, r.height);
    assert.deepEqual([out.width, out.height], [r.width, r.height]);
    assert.deepEqual(out.data, bytes(r.rgb), `resize to ${r.width}x${r.height}`);
  }
  const ev = fixture.eval;
  const plan = planTransform(source.width, source.height, { kind: 'eval', resize: ev.resize, crop: ev.crop });
  assert.deepEqual(plan, {
    resizeWidth: ev.resizeWidth,
    resizeHeight: ev.resizeHeight,
    crop: { left: ev.left, top: ev.top, width: ev.crop, height: ev.crop },
  });
  assert.deepEqual(applyPlan(source, plan).data, bytes(ev.rgb));
});

test('loadImage gives the sizes of each transform', async () => {
  const ev = await loadImage(file('ramp.jpg'), { kind: 'eval' });
  assert.deepEqual([ev.height, ev.width, ev.data.length, ev.path], [224, 224, 224 * 224 * 3, file('ramp.jpg')]);
  const keep = await loadImage(file('ramp.png'), { kind: 'keep-aspect', patchSize: 14 });
  assert.deepEqual([keep.height, keep.width], [196, 294]);
  assert.equal(keep.data.length, 196 * 294 * 3);
  const exact = await loadImage(file('gray.png'), { kind: 'resize', height: 7, width: 5 });
  assert.deepEqual([exact.height, exact.width, exact.data.length], [7, 5, 105]);
  // The ramp survives: red grows left to right, green top to bottom.
  const at = (y: number, x: number, c: number) => keep.data[(y * keep.width + x) * 3 + c];
  assert.ok(at(100, 10, 0) < at(100, 280, 0));
  assert.ok(at(10, 100, 1) < at(180, 100, 1));
});

test('normalisation: (v / 255 - mean) / std per channel, on a solid colour through a resize', async () => {
  const img = await loadImage(file('solid.png'), { kind: 'eval', resize: 32, crop: 28 });
  assert.deepEqual([img.height, img.width], [28, 28]);
  const rgb = [10, 100, 200];
  for (let i = 0; i < img.data.length; i++) {
    const c = i % 3;
    const expected = (rgb[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
    assert.ok(Math.abs(img.data[i] - expected) < 1e-6, `value ${i}: ${img.data[i]} vs ${expected}`);
  }
  const n = normalizeRgb(new Uint8Array([0, 255, 124]), 1, 1);
  assert.ok(Math.abs(n[0] - -0.485 / 0.229) < 1e-6);
  assert.ok(Math.abs(n[1] - (1 - 0.456) / 0.224) < 1e-6);
  assert.ok(Math.abs(n[2] - (124 / 255 - 0.406) / 0.225) < 1e-6);
  assert.throws(() => normalizeRgb(new Uint8Array(5), 1, 2), /expected 1x2x3 = 6 bytes, got 5/);
});

test('stackImages builds an NHWC batch and names an image of another size', () => {
  const a = { data: new Float32Array(2 * 3 * 3).fill(1), height: 2, width: 3, path: 'a.jpg' };
  const b = { data: new Float32Array(2 * 3 * 3).fill(2), height: 2, width: 3, path: 'b.jpg' };
  const batch = stackImages([a, b]);
  assert.deepEqual(batch.shape, [2, 2, 3, 3]);
  assert.equal(batch.data[0], 1);
  assert.equal(batch.data[18], 2);
  const c = { data: new Float32Array(3 * 3 * 3), height: 3, width: 3, path: 'c.png' };
  assert.throws(() => stackImages([a, b, c]), /stackImages: c\.png is 3x3, but a\.jpg is 2x3/);
  assert.throws(() => stackImages([a, { data: new Float32Array(3), height: 2, width: 3 }]), /image 1 has 3 values, expected 2x3x3 = 18/);
  assert.throws(() => stackImages([]), /no images/);
});

test('encodePng round-trips RGB and RGBA pixels', async () => {
  const rgb = new Uint8Array([1, 2, 3, 250, 251, 252, 7, 8, 9, 100, 110, 120]);
  const png = await encodePng(rgb, 2, 2);
  await writeFile(file('out.png'), png);
  assert.deepEqual((await decodeImage(file('out.png'))).data, rgb);
  const rgba = new Uint8Array([1, 2, 3, 0, 4, 5, 6, 255]);
  const meta = await sharp(await encodePng(rgba, 2, 1, 4)).metadata();
  assert.deepEqual([meta.format, meta.channels, meta.width, meta.height], ['png', 4, 2, 1]);
  await assert.rejects(encodePng(rgb, 3, 2), /expected 2x3x3 = 18 bytes, got 12/);
});

test('listImageFiles expands files, folders and patterns', async () => {
  const tree = file('tree');
  await mkdir(path.join(tree, 'b', 'deep'), { recursive: true });
  await mkdir(path.join(tree, 'empty'));
  const png = await readFile(file('gray.png'));
  for (const f of ['a.png', 'b/x.JPG', 'b/deep/y.webp', 'b/notes.txt', '.hidden.png', 'b/deep/z.png']) {
    await writeFile(path.join(tree, f), png);
  }
  const t = (f: string) => path.join(tree, f);
  assert.deepEqual(await listImageFiles([tree]), [t('a.png'), t('b/deep/y.webp'), t('b/deep/z.png'), t('b/x.JPG')]);
  // An explicit file is taken whatever its extension; duplicates are dropped.
  assert.deepEqual(await listImageFiles([t('b/notes.txt'), t('a.png'), tree]), [
    t('b/notes.txt'),
    t('a.png'),
    t('b/deep/y.webp'),
    t('b/deep/z.png'),
    t('b/x.JPG'),
  ]);
  assert.deepEqual(await listImageFiles([`${tree}/*.png`]), [t('a.png')]);
  assert.deepEqual(await listImageFiles([`${tree}/**/*.png`]), [t('a.png'), t('b/deep/z.png')]);
  assert.deepEqual(await listImageFiles([`${tree}/b/**`]), [t('b/deep/y.webp'), t('b/deep/z.png'), t('b/x.JPG')]);
  assert.deepEqual(await listImageFiles([`${tree}/?/*`]), [t('b/x.JPG')]);
  const relative = path.relative(process.cwd(), tree);
  assert.deepEqual(await listImageFiles([`${relative}/b/*/*`]), [
    path.join(relative, 'b/deep/y.webp'),
    path.join(relative, 'b/deep/z.png'),
  ]);
  await assert.rejects(listImageFiles([t('nope.jpg')]), new RegExp(`${t('nope.jpg')}: no such file or folder`));
  await assert.rejects(listImageFiles([t('empty')]), /empty: no image files \(.*\) in this folder/);
  await assert.rejects(listImageFiles([`${tree}/*.gif`]), /\*\.gif: no image files \(.*\) match this pattern/);
});
