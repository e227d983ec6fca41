import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { CocoDataset } from '../src/data/index.js';

const ANNOTATIONS = {
  images: [
    { id: 42, file_name: 'a.png', width: 16, height: 10 },
    { id: 7, file_name: 'b.png', width: 8, height: 8 },
    { id: 9, file_name: 'c.png', width: 8, height: 8 },
  ],
  categories: [
    { id: 18, name: 'dog' },
    { id: 1, name: 'person' },
    { id: 3, name: 'car' },
  ],
  annotations: [
    { id: 1, image_id: 42, category_id: 18, bbox: [1.4, 2, 5.2, 3.7], iscrowd: 0 },
    { id: 2, image_id: 42, category_id: 1, bbox: [0, 0, 16, 10], iscrowd: 1 },
    { id: 3, image_id: 42, category_id: 3, bbox: [10, 1, 4, 4], iscrowd: 0 },
    { id: 4, image_id: 7, category_id: 1, bbox: [0, 0, 8, 8], iscrowd: 1 },
    { id: 5, image_id: 9, category_id: 1, bbox: [2, 2, 3, 3] },
  ],
};

async function cocoTree(annotations: unknown = ANNOTATIONS): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-coco-'));
  await mkdir(join(root, 'images'));
  for (const [f, w, h] of [
    ['a.png', 16, 10],
    ['b.png', 8, 8],
    ['c.png', 8, 8],
  ] as const) {
    await sharp({ create: { width: w, height: h, channels: 3, background: { r: 10, g: 20, b: 30 } } })
      .png()
      .toFile(join(root, 'images', f));
  }
  await writeFile(join(root, 'instances.json'), JSON.stringify(annotations));
  return root;
}

test('COCO: xywh -> rounded xyxy, crowd boxes dropped, categories by id, empty images skipped', async (t) => {
  const root = await cocoTree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const ds = new CocoDataset(join(root, 'instances.json'), join(root, 'images'));
  assert.deepEqual(ds.classNames, ['person', 'car', 'dog']);
  assert.deepEqual(ds.categoryIds, [1, 3, 18]);
  // image 7 only has a crowd box: skipped
  assert.equal(ds.length, 2);
  const a = await ds.get(0);
  assert.equal(a.id, '42');
  assert.equal(a.width, 16);
  assert.equal(a.height, 10);
  assert.deepEqual([a.image[0], a.image[1], a.image[2]], [10, 20, 30]);
  assert.deepEqual(a.boxes, [
    [1, 2, 7, 6],
    [10, 1, 14, 5],
  ]);
  assert.equal(a.label, 2, 'first box is a dog');
  const c = await ds.get(1);
  assert.equal(c.id, '9');
  assert.equal(c.label, 0);

  const kept = new CocoDataset(join(root, 'instances.json'), join(root, 'images'), { keepEmpty: true });
  assert.equal(kept.length, 3);
  const b = await kept.get(1);
  assert.equal(b.id, '7');
  assert.deepEqual(b.boxes, []);
  assert.equal(b.label, -1);
});

test('COCO: malformed JSON and fields are errors naming the file and field', async (t) => {
  const root = await cocoTree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const file = join(root, 'bad.json');
  const open = (): CocoDataset => new CocoDataset(file, join(root, 'images'));
  const cases: [unknown, RegExp][] = [
    [{ images: [], categories: [] }, /field annotations must be an array/],
    [{ ...ANNOTATIONS, images: [{ id: 1, width: 2, height: 2 }] }, /field images\[0\]\.file_name must be a string/],
    [
      { ...ANNOTATIONS, annotations: [{ image_id: 42, category_id: 18, bbox: [1, 2, 3] }] },
      /field annotations\[0\]\.bbox must be 4 numbers/,
    ],
    [{ ...ANNOTATIONS, annotations: [{ image_id: 5, category_id: 18, bbox: [1, 2, 3, 4] }] }, /field annotations\[0\]\.image_id/],
    [{ ...ANNOTATIONS, annotations: [{ image_id: 42, category_id: 99, bbox: [1, 2, 3, 4] }] }, /field annotations\[0\]\.category_id/],
    [{ ...ANNOTATIONS, categories: [{ id: 'x', name: 'dog' }] }, /field categories\[0\]\.id must be an integer/],
    [{ ...ANNOTATIONS, images: [ANNOTATIONS.images[0], ANNOTATIONS.images[0]] }, /field images\[1\]\.id must be unique/],
  ];
  for (const [json, message] of cases) {
    await writeFile(file, JSON.stringify(json));
    assert.throws(open, (e: Error) => e.message.includes(file) && message.test(e.message), String(message));
  }
  await writeFile(file, '{"images": [');
  assert.throws(open, (e: Error) => e.message.includes(file) && /invalid JSON/.test(e.message));
  assert.throws(() => new CocoDataset(join(root, 'none.json'), root), /none\.json: cannot read/);
  // declared size disagrees with the file
  const only42 = ANNOTATIONS.annotations.filter((a) => a.image_id === 42);
  await writeFile(
    file,
    JSON.stringify({ ...ANNOTATIONS, annotations: only42, images: [{ id: 42, file_name: 'b.png', width: 16, height: 10 }] }),
  );
  await assert.rejects(open().get(0), /b\.png is 8x8 but images\[id=42\] says 16x10/);
});
