import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import sharp from 'sharp';
import { imageFileBatches, InputError, loadImage, type ImageFileBatch } from '../src/index.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-image-batches-'));
after(() => rm(dir, { recursive: true, force: true }));

async function png(name: string, w: number, h: number): Promise<string> {
  const px = Buffer.alloc(w * h * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * 7) & 255;
  const path = join(dir, name);
  await sharp(px, { raw: { width: w, height: h, channels: 3 } })
    .png()
    .toFile(path);
  return path;
}

test('imageFileBatches: batches of one size, in order, a new batch where the size changes; bad files named', async () => {
  const sizes = [
    ['a.png', 16, 8],
    ['b.png', 16, 8],
    ['c.png', 16, 8],
    ['d.png', 8, 16],
    ['e.png', 16, 8],
  ] as const;
  const files: string[] = [];
  for (const [name, w, h] of sizes) files.push(await png(name, w, h));
  const keep = { kind: 'keep-aspect', patchSize: 8 } as const;
  const got: ImageFileBatch[] = [];
  for await (const b of imageFileBatches(files, keep, 2)) got.push(b);
  assert.deepEqual(
    got.map((b) => [b.files.map((f) => f.slice(-5)), b.shape]),
    [
      [
        ['a.png', 'b.png'],
        [2, 8, 16, 3],
      ],
      [['c.png'], [1, 8, 16, 3]],
      [['d.png'], [1, 16, 8, 3]],
      [['e.png'], [1, 8, 16, 3]],
    ],
  );
  assert.deepEqual(got[0].data.subarray(8 * 16 * 3), (await loadImage(files[1], keep)).data);
  const eval16 = { kind: 'eval', resize: 16, crop: 16 } as const;
  const counts: number[] = [];
  for await (const b of imageFileBatches(files, eval16, 2)) counts.push(b.shape[0]);
  assert.deepEqual(counts, [2, 2, 1], 'one size: full batches');
  const bad = join(dir, 'bad.png');
  await writeFile(bad, 'not an image');
  await assert.rejects(
    async () => {
      for await (const _ of imageFileBatches([files[0], bad], eval16, 4)) void _;
    },
    (err: Error) => err instanceof InputError && err.message.includes('bad.png'),
  );
});
