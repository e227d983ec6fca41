/**
 * Decompression bombs (issue 21): a PNG or JPEG declaring more pixels than IMAGE_LIMITS (2^26) is refused
 * from its header, quickly and without decoding, with an error naming the file, its size and the limit;
 * VITREG_MAX_IMAGE_PIXELS replaces the limit; an image at the limit decodes.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { decodeImage, IMAGE_LIMITS, maxImagePixels } from '../src/image.js';
import { jpegBomb, pngBomb } from './hostile-corpus.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-hostile-img-'));
after(() => rm(dir, { recursive: true, force: true }));

async function file(name: string, bytes: Uint8Array): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, bytes);
  return p;
}

test('a PNG or JPEG bomb is refused from its header, naming the file, its size and the limit', async () => {
  assert.equal(maxImagePixels(), 2 ** 26);
  const rss0 = process.memoryUsage().rss;
  const t = performance.now();
  // 427 KB, 432 MB of pixels: under sharp's own limit (16383 x 16383), over vitreg's
  await assert.rejects(
    decodeImage(await file('bomb.png', pngBomb(12_000, 12_000))),
    /bomb\.png: image is 12000x12000 \(144000000 pixels\), more than the limit of 67108864 pixels \(a decompression bomb, or an image to shrink first; VITREG_MAX_IMAGE_PIXELS raises the limit\)$/,
  );
  await assert.rejects(
    decodeImage(await file('bomb.jpg', jpegBomb(30_000, 30_000))),
    /bomb\.jpg: image is 30000x30000 \(900000000 pixels\), more than the limit of 67108864 pixels/,
  );
  assert.ok(performance.now() - t < 3000, `took ${(performance.now() - t).toFixed(0)} ms`);
  assert.ok(process.memoryUsage().rss - rss0 < 100 * 2 ** 20, 'RSS grew by more than 100 MB');
});

test('the limit: IMAGE_LIMITS.maxPixels, replaced by VITREG_MAX_IMAGE_PIXELS; an image at the limit decodes', async (t) => {
  const saved = { ...IMAGE_LIMITS };
  const env = process.env.VITREG_MAX_IMAGE_PIXELS;
  t.after(() => {
    Object.assign(IMAGE_LIMITS, saved);
    if (env === undefined) delete process.env.VITREG_MAX_IMAGE_PIXELS;
    else process.env.VITREG_MAX_IMAGE_PIXELS = env;
  });
  const png = await file('64.png', pngBomb(64, 64));
  const jpg = await file('64.jpg', jpegBomb(64, 64));
  IMAGE_LIMITS.maxPixels = 64 * 64;
  assert.deepEqual([(await decodeImage(png)).width, (await decodeImage(png)).height], [64, 64]);
  IMAGE_LIMITS.maxPixels = 64 * 64 - 1;
  await assert.rejects(decodeImage(png), /64\.png: image is 64x64 \(4096 pixels\), more than the limit of 4095 pixels/);
  await assert.rejects(decodeImage(jpg), /64\.jpg: image is 64x64 \(4096 pixels\), more than the limit of 4095 pixels/);
  process.env.VITREG_MAX_IMAGE_PIXELS = '5000';
  assert.equal((await decodeImage(png)).width, 64);
  process.env.VITREG_MAX_IMAGE_PIXELS = '1000';
  await assert.rejects(decodeImage(png), /more than the limit of 1000 pixels/);
});
