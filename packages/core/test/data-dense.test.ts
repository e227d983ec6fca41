import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import {
  ADE20K_CLASSES,
  Ade20kDataset,
  encodeLabelPng,
  encodeUint16Png,
  IGNORE_LABEL,
  NYU_EIGEN_CROP,
  NyuDepthDataset,
  readLabelPng,
  readUint16Png,
  SYNTHETIC_DEPTH,
  SyntheticDataset,
  SyntheticDenseDataset,
} from '../src/index.js';
import { reduceZeroLabel } from '../src/data/ade20k.js';
import { isDenseDataset } from '../src/data/dense.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'dense');
const pil = JSON.parse(await readFile(join(fixtures, 'dense-fixtures.json'), 'utf8')) as {
  'label-L.png': number[][];
  'depth-I16.png': number[][];
};
const tmp = await mkdtemp(join(tmpdir(), 'vitreg-dense-'));
test.after(() => rm(tmp, { recursive: true, force: true }));

const jpeg = (w: number, h: number) =>
  sharp(Buffer.alloc(w * h * 3, 128), { raw: { width: w, height: h, channels: 3 } })
    .jpeg()
    .toBuffer();

test('label and depth PNGs read the samples PIL reads; palette, RGB and 8-bit depth are errors naming the file', async () => {
  const l = await readLabelPng(join(fixtures, 'label-L.png'));
  assert.deepEqual([l.width, l.height], [5, 3]);
  assert.deepEqual(Array.from(l.data), pil['label-L.png'].flat());
  const d = await readUint16Png(join(fixtures, 'depth-I16.png'));
  assert.deepEqual([d.width, d.height], [3, 4]);
  assert.deepEqual(Array.from(d.data), pil['depth-I16.png'].flat());
  await assert.rejects(
    readLabelPng(join(fixtures, 'label-P.png')),
    /label-P\.png: expected an 8-bit single-channel .* got a palette image/,
  );
  await assert.rejects(readLabelPng(join(fixtures, 'label-RGB.png')), /label-RGB\.png: expected an 8-bit single-channel .* got 3 channel/);
  await assert.rejects(
    readUint16Png(join(fixtures, 'label-L.png')),
    /label-L\.png: expected a 16-bit single-channel depth PNG, got 1 channel\(s\) of uchar/,
  );
  await assert.rejects(readLabelPng(join(tmp, 'nope.png')), /nope\.png: cannot read label image/);
  // the encoders write what the readers (and PIL, see the fixtures) read
  const u16 = Uint16Array.from([0, 1, 256, 65535, 1234, 40000]);
  await writeFile(join(tmp, 'rt16.png'), await encodeUint16Png(u16, 3, 2));
  assert.deepEqual(Array.from((await readUint16Png(join(tmp, 'rt16.png'))).data), Array.from(u16));
  const u8 = Uint8Array.from([0, 1, 150, 255, 3, 7]);
  await writeFile(join(tmp, 'rt8.png'), await encodeLabelPng(u8, 2, 3));
  assert.deepEqual(Array.from((await readLabelPng(join(tmp, 'rt8.png'))).data), Array.from(u8));
  // over the pixel limit: refused from the header, naming the file and its size (issue 21)
  process.env.VITREG_MAX_IMAGE_PIXELS = '5';
  try {
    await assert.rejects(readLabelPng(join(tmp, 'rt8.png')), /rt8\.png: label image is 2x3 \(6 pixels\), more than the limit of 5 pixels/);
    await assert.rejects(readUint16Png(join(tmp, 'rt16.png')), /rt16\.png: depth image is 3x2 \(6 pixels\), more than the limit of 5/);
    process.env.VITREG_MAX_IMAGE_PIXELS = '6';
    assert.equal((await readLabelPng(join(tmp, 'rt8.png'))).data.length, 6);
  } finally {
    delete process.env.VITREG_MAX_IMAGE_PIXELS;
  }
});

test('reduce_zero_label as mmseg: 0 -> 255, v -> v - 1, 255 stays; 151..254 are errors', () => {
  assert.equal(ADE20K_CLASSES.length, 150);
  assert.equal(new Set(ADE20K_CLASSES).size, 150);
  assert.deepEqual([ADE20K_CLASSES[0], ADE20K_CLASSES[12], ADE20K_CLASSES[149]], ['wall', 'person', 'flag']);
  assert.deepEqual(Array.from(reduceZeroLabel(Uint8Array.from([0, 1, 2, 150, 255]), 'f.png', 5)), [255, 0, 1, 149, 255]);
  assert.throws(() => reduceZeroLabel(Uint8Array.from([1, 2, 3, 151]), 'f.png', 2), /f\.png: pixel \(x 1, y 1\) holds 151/);
});

async function makeAde(root: string, split: string, stems: string[], labels: (w: number, h: number) => Uint8Array) {
  await mkdir(join(root, 'images', split), { recursive: true });
  await mkdir(join(root, 'annotations', split), { recursive: true });
  for (const s of stems) {
    await writeFile(join(root, 'images', split, `${s}.jpg`), await jpeg(6, 4));
    await writeFile(join(root, 'annotations', split, `${s}.png`), await encodeLabelPng(labels(6, 4), 6, 4));
  }
}

test('ADE20k: official layout, sorted images, reduced labels, clear errors', async () => {
  const root = join(tmp, 'ADEChallengeData2016');
  const stored = Uint8Array.from({ length: 24 }, (_, i) => [0, 1, 150, 255, 7][i % 5]);
  await makeAde(root, 'validation', ['ADE_val_00000002', 'ADE_val_00000001'], () => stored);
  const ds = new Ade20kDataset(root, { split: 'val' });
  assert.ok(isDenseDataset(ds));
  assert.deepEqual([ds.length, ds.numClasses, ds.split], [2, 150, 'validation']);
  assert.deepEqual(ds.images, ['ADE_val_00000001.jpg', 'ADE_val_00000002.jpg']);
  const item = await ds.get(0);
  assert.deepEqual([item.width, item.height, item.id, item.label], [6, 4, 'ADE_val_00000001', -1]);
  assert.equal(item.image.length, 6 * 4 * 3);
  assert.deepEqual(Array.from(item.target.segmentation!.slice(0, 5)), [IGNORE_LABEL, 0, 149, 255, 6]);
  assert.equal(item.target.depth, undefined);

  assert.throws(
    () => new Ade20kDataset(root, { split: 'training' }),
    /missing folder .*images\/training \(the images\); expected the ADEChallengeData2016 layout/,
  );
  assert.throws(() => new Ade20kDataset(root, { split: 'test' as 'val' }), /split must be training or validation/);
  await writeFile(join(root, 'images', 'validation', 'ADE_val_00000003.jpg'), await jpeg(6, 4));
  assert.throws(() => new Ade20kDataset(root), /1 image\(s\) of .* have no annotation .*ADE_val_00000003\.png/);
  // a bad value and a size mismatch name the file
  await writeFile(
    join(root, 'annotations', 'validation', 'ADE_val_00000003.png'),
    await encodeLabelPng(new Uint8Array(24).fill(200), 6, 4),
  );
  const bad = new Ade20kDataset(root);
  await assert.rejects(bad.target(2), /ADE_val_00000003\.png: pixel \(x 0, y 0\) holds 200/);
  await writeFile(join(root, 'annotations', 'validation', 'ADE_val_00000003.png'), await encodeLabelPng(new Uint8Array(12), 4, 3));
  await assert.rejects(bad.get(2), /ADE_val_00000003\.jpg is 6x4 but its annotation .* is 4x3/);
  await assert.rejects(bad.get(3), /out of range/);
});

test('NYU: split-file layout (toolbox / BTS) with depth in mm, and the folder layout', async () => {
  const root = join(tmp, 'nyu');
  const scene = join(root, 'kitchen_0028b');
  await mkdir(scene, { recursive: true });
  const mm = Uint16Array.from({ length: 12 }, (_, i) => [0, 1, 1500, 10000, 12000, 65535][i % 6]);
  for (const id of ['00045', '00012']) {
    await writeFile(join(scene, `rgb_${id}.jpg`), await jpeg(4, 3));
    await writeFile(join(scene, `sync_depth_${id}.png`), await encodeUint16Png(mm, 4, 3));
  }
  await writeFile(
    join(root, 'nyu_test.txt'),
    '/kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579\n' +
      'kitchen_0028b/rgb_00012.jpg kitchen_0028b/sync_depth_00012.png 518.8579\n' +
      '/kitchen_0028b/rgb_00099.jpg None 518.8579\n\n',
  );
  const ds = new NyuDepthDataset(root, { split: 'test' });
  assert.ok(isDenseDataset(ds));
  assert.deepEqual([ds.length, ds.numClasses, ds.depthRange], [2, 0, [0.001, 10]]);
  assert.match(ds.pairs[0].image, /rgb_00012\.jpg$/, 'sorted by image path');
  const item = await ds.get(1);
  assert.equal(item.id, join('kitchen_0028b', 'rgb_00045.jpg'));
  assert.deepEqual(Array.from(item.target.depth!.slice(0, 6)), [0, 0.001, 1.5, 10, 12, 65.535].map(Math.fround));
  assert.equal(item.target.evalCrop, undefined, 'no Eigen crop on a 4x3 map in auto mode');
  assert.deepEqual((await new NyuDepthDataset(root, { eigenCrop: true }).target(0)).evalCrop, NYU_EIGEN_CROP);
  // 480x640 maps get the Eigen crop
  const big = join(root, 'big');
  await mkdir(big, { recursive: true });
  await writeFile(join(big, 'sync_depth_1.png'), await encodeUint16Png(new Uint16Array(640 * 480), 640, 480));
  await writeFile(join(root, 'big.txt'), 'big/rgb_1.jpg big/sync_depth_1.png\n');
  await writeFile(join(big, 'rgb_1.jpg'), await jpeg(640, 480));
  assert.deepEqual((await new NyuDepthDataset(root, { splitFile: 'big.txt' }).target(0)).evalCrop, [45, 471, 41, 601]);

  // folder layout: <root>/train/**/rgb_<id> + sync_depth_<id>
  const tr = join(root, 'train', 'bedroom_0001');
  await mkdir(tr, { recursive: true });
  await writeFile(join(tr, 'rgb_00001.jpg'), await jpeg(4, 3));
  await writeFile(join(tr, 'sync_depth_00001.png'), await encodeUint16Png(mm, 4, 3));
  const train = new NyuDepthDataset(root, { split: 'train', depthScale: 100 });
  assert.equal(train.length, 1);
  assert.equal((await train.target(0)).depth![2], 15);

  // errors
  await writeFile(join(tr, 'rgb_00002.jpg'), await jpeg(4, 3));
  assert.throws(() => new NyuDepthDataset(root, { split: 'train' }), /rgb_00002\.jpg has no depth map .*sync_depth_00002\.png/);
  assert.throws(() => new NyuDepthDataset(join(tmp, 'nyu-empty-nothing')), /is not a folder/);
  await mkdir(join(tmp, 'nyu-empty'), { recursive: true });
  assert.throws(() => new NyuDepthDataset(join(tmp, 'nyu-empty')), /found neither the split file .*nyu_test\.txt nor the folder .*test/);
  await writeFile(join(root, 'bad.txt'), 'only_one_path.jpg\n');
  assert.throws(() => new NyuDepthDataset(root, { splitFile: 'bad.txt' }), /bad\.txt:1: expected '<rgb path> <depth path> \[focal\]'/);
  await writeFile(join(root, 'gone.txt'), 'a/rgb_1.jpg a/sync_depth_1.png\n');
  assert.throws(
    () => new NyuDepthDataset(root, { splitFile: 'gone.txt' }),
    /2 file\(s\) listed in .*gone\.txt do not exist, e\.g\. .*rgb_1\.jpg/,
  );
  assert.throws(() => new NyuDepthDataset(root, { splitFile: 'missing.txt' }), /cannot read split file .*missing\.txt/);
});

test('synthetic dense set: the shapes images, classes from the coverage masks, depth from the documented model', async () => {
  const opts = { seed: 5, count: 4, size: 40, split: 'val' as const };
  const dense = new SyntheticDenseDataset(opts);
  const shapes = new SyntheticDataset(opts);
  assert.deepEqual(dense.classNames, ['background', 'circle', 'square', 'triangle', 'cross', 'ring']);
  assert.equal(dense.numClasses, 6);
  for (let i = 0; i < 4; i++) {
    const item = await dense.get(i);
    assert.deepEqual(Array.from(item.image), Array.from((await shapes.get(i)).image), 'same pixels as the shapes');
    const scene = shapes.scene(i);
    const masks = (shapes as SyntheticDataset & { masks(i: number): Float32Array[] }).masks(i);
    const { segmentation: seg, depth } = item.target;
    const main = scene.objects[0];
    const mainDepth = 1.2 / ((2 * main.radius) / 40);
    let mainPixels = 0;
    for (let p = 0; p < 40 * 40; p++) {
      const y = Math.floor(p / 40);
      const total = masks.reduce((s, m) => s + m[p], 0);
      if (masks[0][p] > 0.5) {
        // more than half the pixel is the main shape: it wins
        assert.equal(seg![p], main.label + 1);
        assert.ok(Math.abs(depth![p] - mainDepth) < 1e-5);
        mainPixels++;
      } else if (total === 0) {
        assert.equal(seg![p], 0);
        assert.ok(Math.abs(depth![p] - (8 - (4 * (y + 0.5)) / 40)) < 1e-5, `background depth at row ${y}`);
      }
    }
    assert.ok(mainPixels > 0.1 * 1600, `main shape covers ${mainPixels} pixels`);
    assert.ok(mainDepth > 1 && mainDepth < SYNTHETIC_DEPTH.nearBackground, 'the main shape is nearer than the background');
  }
  await assert.rejects(dense.target(4), /out of range/);
});
