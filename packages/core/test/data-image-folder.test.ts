import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { ImageFolderDataset, Prefetcher, batches } from '../src/data/index.js';

/** A w x h RGB image whose pixel (x, y) is (seed, x, y). */
function pattern(seed: number, w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out.set([seed, x, y], (y * w + x) * 3);
  return out;
}

async function writePng(path: string, seed: number, w: number, h: number): Promise<void> {
  await sharp(Buffer.from(pattern(seed, w, h)), { raw: { width: w, height: h, channels: 3 } }).png().toFile(path);
}

async function tree(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-imgfolder-'));
  for (const [cls, files] of [['dog', ['b.png', 'a.png']], ['cat', ['z.PNG']], ['emu', ['x.png', 'y.png']]] as const) {
    await mkdir(join(root, cls));
    let k = 0;
    for (const f of files) await writePng(join(root, cls, f), 10 * cls.length + k++, 5 + k, 4);
  }
  await writeFile(join(root, 'dog', 'notes.txt'), 'not an image');
  return root;
}

test('classes are sorted sub-folders, images are decoded RGB at their size', async (t) => {
  const root = await tree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const ds = new ImageFolderDataset(root);
  assert.deepEqual(ds.classNames, ['cat', 'dog', 'emu']);
  assert.equal(ds.numClasses, 3);
  assert.equal(ds.length, 5, 'the .txt file is skipped; .PNG counts');
  const ids: string[] = [];
  const labels: number[] = [];
  for (let i = 0; i < ds.length; i++) {
    const item = await ds.get(i);
    ids.push(item.id);
    labels.push(item.label);
    assert.equal(item.image.length, item.width * item.height * 3);
    assert.deepEqual(item.boxes, []);
  }
  assert.deepEqual(ids, ['cat/z.PNG', 'dog/a.png', 'dog/b.png', 'emu/x.png', 'emu/y.png']);
  assert.deepEqual(labels, [0, 1, 1, 2, 2]);
  // dog/a.png was written second (seed 31, 7x4)
  const a = await ds.get(1);
  assert.equal(a.width, 7);
  assert.equal(a.height, 4);
  assert.deepEqual(a.image, pattern(31, 7, 4));
  // with other extensions the cat folder is empty: an error naming it
  assert.throws(() => new ImageFolderDataset(root, { extensions: ['txt'] }), (e: Error) => e.message.includes(join(root, 'cat')));
});

test('missing root, no class folders and empty class folders are errors naming the folder', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-imgfolder-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  assert.throws(() => new ImageFolderDataset(join(root, 'nope')), (e: Error) => e.message.includes(join(root, 'nope')));
  assert.throws(() => new ImageFolderDataset(root), /sub-folder per class/);
  await mkdir(join(root, 'cls'));
  assert.throws(() => new ImageFolderDataset(root), (e: Error) => e.message.includes(join(root, 'cls')) && /no images/.test(e.message));
  await writeFile(join(root, 'cls', 'broken.png'), 'not a png');
  const ds = new ImageFolderDataset(root);
  await assert.rejects(ds.get(0), (e: Error) => e.message.includes('broken.png'));
  await assert.rejects(ds.get(1), /index 1/);
});

test('batches keeps order, bounds the loads in flight, and transforms', async (t) => {
  const root = await tree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const ds = new ImageFolderDataset(root);
  const order = [4, 0, 2, 1, 3];
  const got: string[][] = [];
  for await (const batch of batches(ds, order, 2, (item, index) => `${index}:${item.id}:${item.width}`, { prefetch: 3 })) {
    got.push(batch);
  }
  assert.deepEqual(got, [['4:emu/y.png:7', '0:cat/z.PNG:6'], ['2:dog/b.png:6', '1:dog/a.png:7'], ['3:emu/x.png:6']]);
  const dropped: string[][] = [];
  for await (const batch of batches(ds, order, 2, (item) => item.id, { keepLast: false })) dropped.push(batch);
  assert.equal(dropped.length, 2);
});

test('Prefetcher runs at most depth loads at once and rethrows a failed load in place', async () => {
  let inFlight = 0;
  let peak = 0;
  const load = async (i: number): Promise<number> => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await new Promise((r) => setTimeout(r, (i * 7) % 5));
    inFlight--;
    if (i === 6) throw new Error('load 6 failed');
    return i * 10;
  };
  const seen: number[] = [];
  await assert.rejects(async () => {
    for await (const v of new Prefetcher([0, 1, 2, 3, 4, 5, 6, 7], load, 3)) seen.push(v);
  }, /load 6 failed/);
  assert.deepEqual(seen, [0, 10, 20, 30, 40, 50]);
  assert.equal(peak, 3);
});
