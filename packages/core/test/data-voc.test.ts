import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { VocDataset, VOC_CLASSES, parseVocAnnotation, parseXml } from '../src/data/index.js';

const XML_1 = `<?xml version="1.0"?>
<!-- written by hand -->
<annotation>
  <folder>VOC2007</folder>
  <filename>000001.jpg</filename>
  <size><width>12</width><height>8</height><depth>3</depth></size>
  <object>
    <name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>12</xmax><ymax>8</ymax></bndbox>
  </object>
  <object>
    <name>person</name><difficult>1</difficult>
    <bndbox><xmin>3</xmin><ymin>2</ymin><xmax>5</xmax><ymax>7</ymax></bndbox>
    <part><name>head</name><bndbox><xmin>3</xmin><ymin>2</ymin><xmax>4</xmax><ymax>3</ymax></bndbox></part>
  </object>
</annotation>`;

const XML_2 = `<annotation><filename>000002.jpg</filename><size><width>10</width><height>6</height></size>
  <object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>6</xmax><ymax>6</ymax></bndbox></object>
</annotation>`;

async function vocTree(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-voc-'));
  const voc = join(root, 'VOC2007');
  await mkdir(join(voc, 'Annotations'), { recursive: true });
  await mkdir(join(voc, 'JPEGImages'));
  await writeFile(join(voc, 'Annotations', '000001.xml'), XML_1);
  await writeFile(join(voc, 'Annotations', '000002.xml'), XML_2);
  for (const [id, w, h] of [
    ['000001', 12, 8],
    ['000002', 10, 6],
  ] as const) {
    await sharp({ create: { width: w, height: h, channels: 3, background: { r: 200, g: 30, b: 90 } } })
      .jpeg()
      .toFile(join(voc, 'JPEGImages', `${id}.jpg`));
  }
  return root;
}

test('VOC: split list, 1-based boxes shifted as LOST does, difficult objects, decoded images', async (t) => {
  const root = await vocTree();
  t.after(() => rm(root, { recursive: true, force: true }));
  // split '*': every annotation, sorted
  const all = new VocDataset(root, { year: 2007, split: '*' });
  assert.deepEqual(all.ids, ['000001', '000002']);
  assert.equal(all.numClasses, 20);
  assert.deepEqual(all.classNames, VOC_CLASSES);
  const first = await all.get(0);
  assert.equal(first.width, 12);
  assert.equal(first.height, 8);
  assert.equal(first.image.length, 12 * 8 * 3);
  assert.ok(Math.abs(first.image[0] - 200) < 8 && Math.abs(first.image[1] - 30) < 8, 'JPEG colour');
  assert.equal(first.label, VOC_CLASSES.indexOf('dog'));
  // (1, 1, W, H) covers the whole image: [0, 0, W, H]; the part's bndbox is not an object
  assert.deepEqual(first.boxes, [
    [0, 0, 12, 8],
    [2, 1, 5, 7],
  ]);
  assert.equal(first.id, '000001');
  const ann = await all.annotation(0);
  assert.deepEqual(
    ann.objects.map((o) => [o.name, o.difficult, o.truncated]),
    [
      ['dog', false, true],
      ['person', true, false],
    ],
  );

  const noDifficult = new VocDataset(join(root, 'VOC2007'), { includeDifficult: false, split: '*' });
  assert.deepEqual((await noDifficult.get(0)).boxes, [[0, 0, 12, 8]]);

  await mkdir(join(root, 'VOC2007', 'ImageSets', 'Main'), { recursive: true });
  await writeFile(join(root, 'VOC2007', 'ImageSets', 'Main', 'test.txt'), '000002\n\n');
  const test = new VocDataset(root, { year: '2007', split: 'test' });
  assert.deepEqual(test.ids, ['000002']);
  const second = await test.get(0);
  assert.equal(second.label, VOC_CLASSES.indexOf('cat'));
  assert.deepEqual(second.boxes, [[1, 2, 6, 6]]);
});

test('VOC: malformed annotations name the file and field', async (t) => {
  const f = 'Annotations/x.xml';
  assert.throws(() => parseVocAnnotation('<annotation><size><width>3</width></size>', f, 'x'), /x\.xml: malformed XML.*not closed/);
  assert.throws(() => parseVocAnnotation('<annotation><a></b></annotation>', f, 'x'), /x\.xml: malformed XML/);
  assert.throws(() => parseVocAnnotation('<annotation></annotation>', f, 'x'), /x\.xml: missing field annotation\/size/);
  const obj = (inner: string): string =>
    `<annotation><size><width>4</width><height>4</height></size><object>${inner}</object></annotation>`;
  assert.throws(
    () => parseVocAnnotation(obj('<name>dog</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox>'), f, 'x'),
    /x\.xml: field annotation\/object\[0\]\/bndbox\/xmin must be a number/,
  );
  assert.throws(() => parseVocAnnotation(obj('<name>dog</name>'), f, 'x'), /x\.xml: missing field annotation\/object\[0\]\/bndbox/);
  assert.throws(
    () => parseVocAnnotation(obj('<name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox>'), f, 'x'),
    /object\[0\]\/name is 'unicorn'/,
  );
  // a custom class list accepts other names
  const custom = parseVocAnnotation(
    obj('<name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox>'),
    f,
    'x',
    ['horse', 'unicorn'],
  );
  assert.equal(custom.objects[0].label, 1);

  const root = await vocTree();
  t.after(() => rm(root, { recursive: true, force: true }));
  await writeFile(join(root, 'VOC2007', 'Annotations', '000002.xml'), '<annotation><size>');
  const ds = new VocDataset(join(root, 'VOC2007'), { split: '*' });
  await assert.rejects(ds.get(1), (e: Error) => e.message.includes(join(root, 'VOC2007', 'Annotations', '000002.xml')));
  assert.throws(() => new VocDataset(join(root, 'missing')), /missing folder .*Annotations/);
});

test('VOC: a missing or empty split file is an error naming it, never a silent switch to every annotation', async (t) => {
  const root = await vocTree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const voc = join(root, 'VOC2007');
  const annotations = join(voc, 'Annotations');
  const main = join(voc, 'ImageSets', 'Main');
  // no ImageSets folder at all
  assert.throws(
    () => new VocDataset(voc),
    (e: Error) => {
      assert.equal(
        e.message,
        `VOC dataset ${voc}: split file ${join(main, 'test.txt')} not found (${main} does not exist); pass split '*' to use every annotation in ${annotations}`,
      );
      return true;
    },
  );
  await mkdir(main, { recursive: true });
  assert.throws(
    () => new VocDataset(voc, { split: 'trainval' }),
    new RegExp(`${escape(join(main, 'trainval.txt'))} not found \\(${escape(main)} holds no \\.txt list\\)`),
  );
  await writeFile(join(main, 'train.txt'), '000001\n');
  await writeFile(join(main, 'val.txt'), '000002\n');
  assert.throws(
    () => new VocDataset(root, { year: 2007, split: 'trainval' }),
    (e: Error) => {
      assert.equal(
        e.message,
        `VOC dataset ${voc}: split file ${join(main, 'trainval.txt')} not found (available splits: train, val); pass one of those, or split '*' to use every annotation in ${annotations}`,
      );
      return true;
    },
  );
  assert.deepEqual(new VocDataset(voc, { split: 'val' }).ids, ['000002']);
  await writeFile(join(main, 'empty.txt'), '\n  \n');
  assert.throws(
    () => new VocDataset(voc, { split: 'empty' }),
    new RegExp(`split file ${escape(join(main, 'empty.txt'))} lists no image ids`),
  );
  // a split file that is a folder cannot be read: the error names it
  await mkdir(join(main, 'odd.txt'));
  assert.throws(() => new VocDataset(voc, { split: 'odd' }), new RegExp(`cannot read split file ${escape(join(main, 'odd.txt'))}`));
  // '*' over an Annotations folder without .xml files
  const bare = join(root, 'bare');
  await mkdir(join(bare, 'Annotations'), { recursive: true });
  assert.throws(() => new VocDataset(bare, { split: '*' }), /split '\*' but .*Annotations holds no \.xml file/);
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

test('parseXml decodes entities and CDATA', () => {
  const el = parseXml('<a><b>x &amp; y &#65;</b><c><![CDATA[<raw>]]></c><d/></a>', 'f.xml');
  assert.deepEqual(
    el.children.map((c) => [c.name, c.text]),
    [
      ['b', 'x & y A'],
      ['c', '<raw>'],
      ['d', ''],
    ],
  );
});

test('VOC: a custom detection set names its own classes: every box is kept, each new name logged once; strictClasses refuses them', async (t) => {
  const root = await vocTree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const voc = join(root, 'VOC2007');
  const custom = (names: string[]) =>
    `<annotation><size><width>10</width><height>6</height></size>${names
      .map((n) => `<object><name>${n}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>6</xmax><ymax>6</ymax></bndbox></object>`)
      .join('')}</annotation>`;
  await writeFile(join(voc, 'Annotations', '000001.xml'), custom(['forklift', 'dog', 'pallet']));
  await writeFile(join(voc, 'Annotations', '000002.xml'), custom(['pallet', 'forklift']));
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string) => (lines.push(String(chunk)), true)) as typeof process.stderr.write;
  let first, second;
  const ds = new VocDataset(voc, { split: '*' });
  try {
    first = await ds.get(0);
    second = await ds.get(1);
    await ds.annotation(0);
  } finally {
    process.stderr.write = write;
  }
  assert.equal(first.boxes?.length, 3);
  assert.equal(second.boxes?.length, 2);
  assert.deepEqual(second.boxes?.[0], [1, 2, 6, 6]);
  assert.equal(first.label, -1);
  assert.deepEqual(
    (await ds.annotation(0)).objects.map((o) => [o.name, o.label]),
    [
      ['forklift', -1],
      ['dog', VOC_CLASSES.indexOf('dog')],
      ['pallet', -1],
    ],
  );
  const logged = lines.filter((l) => l.includes('is not one of the 20 classes'));
  assert.equal(logged.length, 2, lines.join(''));
  assert.match(logged[0]!, /class 'forklift' is not one of the 20 classes; its boxes are used with label -1/);
  assert.match(logged[1]!, /class 'pallet'/);
  assert.deepEqual([...ds.otherClasses], ['forklift', 'pallet']);
  const strict = new VocDataset(voc, { split: '*', strictClasses: true });
  await assert.rejects(strict.get(0), /000001\.xml: field annotation\/object\[0\]\/name is 'forklift', not one of the classes/);
});
