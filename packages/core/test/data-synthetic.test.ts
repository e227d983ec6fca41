import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SyntheticDataset, SYNTHETIC_SHAPES, type Box } from '../src/data/index.js';

function iou(a: Box, b: Box): number {
  const iw = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const ih = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = iw * ih;
  const area = (r: Box): number => (r[2] - r[0]) * (r[3] - r[1]);
  return inter / (area(a) + area(b) - inter);
}

test('synthetic items are deterministic and depend only on seed, split and index', async () => {
  const a = new SyntheticDataset({ seed: 7, count: 20 });
  const b = new SyntheticDataset({ seed: 7, count: 500 });
  // generated in a different order and from a dataset of another length: same items
  const fromB = [await b.get(13), await b.get(3)];
  assert.deepEqual(await a.get(3), fromB[1]);
  assert.deepEqual(await a.get(13), fromB[0]);
  const other = new SyntheticDataset({ seed: 8, count: 20 });
  assert.notDeepEqual((await other.get(3)).image, (await a.get(3)).image);
  assert.notDeepEqual((await a.get(4)).image, (await a.get(3)).image);
});

test('train and val splits share no item', () => {
  const train = new SyntheticDataset({ seed: 1, count: 200, size: 32, split: 'train' });
  const val = new SyntheticDataset({ seed: 1, count: 200, size: 32, split: 'val' });
  const key = (img: Uint8Array): string => Buffer.from(img).toString('base64');
  const seen = new Set(Array.from({ length: train.length }, (_, i) => key(train.generate(i).image)));
  assert.equal(seen.size, train.length, 'train items are distinct');
  for (let i = 0; i < val.length; i++) assert.ok(!seen.has(key(val.generate(i).image)), `val item ${i} is in train`);
});

test('labels cover all classes, sizes and boxes are valid', () => {
  for (const numClasses of [5, 8]) {
    const ds = new SyntheticDataset({ seed: 3, count: 300, size: 48, numClasses });
    assert.equal(ds.numClasses, numClasses);
    assert.deepEqual(ds.classNames, SYNTHETIC_SHAPES.slice(0, numClasses));
    const counts = new Array(numClasses).fill(0);
    const objectsPerImage = new Set<number>();
    for (let i = 0; i < ds.length; i++) {
      const item = ds.generate(i);
      assert.equal(item.width, 48);
      assert.equal(item.height, 48);
      assert.equal(item.image.length, 48 * 48 * 3);
      assert.ok(Number.isInteger(item.label) && item.label >= 0 && item.label < numClasses);
      counts[item.label]++;
      assert.ok(item.boxes.length >= 1 && item.boxes.length <= 3);
      objectsPerImage.add(item.boxes.length);
      for (const [x0, y0, x1, y1] of item.boxes) {
        assert.ok(x0 >= 0 && y0 >= 0 && x1 <= 48 && y1 <= 48 && x0 < x1 && y0 < y1, `box ${[x0, y0, x1, y1]} of item ${i}`);
      }
      // the main object is the largest: 35-60% of the side (rotation and shape change the tight box a little)
      const [x0, y0, x1, y1] = item.boxes[0];
      const side = Math.max(x1 - x0, y1 - y0) / 48;
      assert.ok(side >= 0.3 && side <= 0.75, `main box side ${side} of item ${i}`);
      for (const b of item.boxes.slice(1)) assert.ok((b[2] - b[0]) * (b[3] - b[1]) < (x1 - x0) * (y1 - y0));
    }
    for (let c = 0; c < numClasses; c++) assert.ok(counts[c] > ds.length / numClasses / 2, `class ${c}: ${counts[c]} items`);
    assert.deepEqual([...objectsPerImage].sort(), [1, 2, 3]);
  }
});

test('the main box matches the pixels painted in the main colour', () => {
  const size = 64;
  const ds = new SyntheticDataset({ seed: 11, count: 40, size });
  for (let i = 0; i < ds.length; i++) {
    const scene = ds.scene(i);
    const item = ds.generate(i);
    const main = scene.objects[0];
    assert.equal(item.label, main.label);
    assert.deepEqual(item.boxes[0], main.box);
    // fully covered pixels carry exactly the main colour: their extent is the main box
    let bx0 = size, by0 = size, bx1 = 0, by1 = 0, n = 0;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const p = (y * size + x) * 3;
        if (item.image[p] === main.color[0] && item.image[p + 1] === main.color[1] && item.image[p + 2] === main.color[2]) {
          bx0 = Math.min(bx0, x); by0 = Math.min(by0, y); bx1 = Math.max(bx1, x + 1); by1 = Math.max(by1, y + 1);
          n++;
        }
      }
    }
    assert.ok(n > 0.05 * size * size, `item ${i}: main object covers ${n} pixels`);
    const overlap = iou([bx0, by0, bx1, by1], item.boxes[0]);
    assert.ok(overlap > 0.8, `item ${i}: IoU ${overlap.toFixed(3)} between painted pixels and main box`);
  }
});

test('bad options are rejected with the field named', () => {
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, numClasses: 4 }), /numClasses/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 0 }), /count/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, size: 8 }), /size/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, split: 'test' as 'val' }), /split/);
  const ds = new SyntheticDataset({ seed: 1, count: 10 });
  assert.throws(() => ds.generate(10), /index 10/);
});
