import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { FileListDataset, parseFileList, readClassNames } from '../src/data/index.js';

/** A w x h RGB image whose pixel (x, y) is (seed, x, y). */
function pattern(seed: number, w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out.set([seed, x, y], (y * w + x) * 3);
  return out;
}

async function writePng(path: string, seed: number, w: number, h: number): Promise<void> {
  await sharp(Buffer.from(pattern(seed, w, h)), { raw: { width: w, height: h, channels: 3 } })
    .png()
    .toFile(path);
}

async function folder(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-filelist-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function entries(ds: FileListDataset): [string, number][] {
  return Array.from({ length: ds.length }, (_, i) => [ds.listedPath(i), ds.label(i)] as [string, number]);
}

test('text lists: tab or spaces before the label, paths with spaces, comments, CRLF and a BOM', async (t) => {
  const dir = await folder(t);
  const file = join(dir, 'train.txt');
  await writeFile(
    file,
    '\uFEFF# ImageNet-style list\r\n' +
      'n01440764/n01440764_10026.JPEG 0\r\n' +
      '\r\n' +
      'my photos/cat one.png\t3\r\n' +
      '  /abs/path/x.jpg   12  \r\n' +
      'a b c.png 7',
  );
  const ds = new FileListDataset(file);
  assert.deepEqual(entries(ds), [
    ['n01440764/n01440764_10026.JPEG', 0],
    ['my photos/cat one.png', 3],
    ['/abs/path/x.jpg', 12],
    ['a b c.png', 7],
  ]);
  assert.equal(ds.numClasses, 13, 'largest label + 1');
  assert.deepEqual(ds.classNames.slice(0, 3), ['0', '1', '2']);
  assert.equal(ds.path(0), join(dir, 'n01440764/n01440764_10026.JPEG'));
  assert.equal(ds.path(2), '/abs/path/x.jpg');
  assert.equal(new FileListDataset(file, { root: '/data/in22k' }).path(1), '/data/in22k/my photos/cat one.png');
  assert.deepEqual([ds.lineOf(0), ds.lineOf(1), ds.lineOf(3)], [2, 4, 6]);
});

test('CSV lists: path,label without a header, quoted paths with commas and doubled quotes', async (t) => {
  const dir = await folder(t);
  const file = join(dir, 'train.csv');
  await writeFile(file, 'a/1.jpg,0\n"b/x, y.jpg",1\n"c/say ""hi"".jpg", 2\nd/with space.jpg ,1\n');
  const ds = new FileListDataset(file);
  assert.deepEqual(entries(ds), [
    ['a/1.jpg', 0],
    ['b/x, y.jpg', 1],
    ['c/say "hi".jpg', 2],
    ['d/with space.jpg', 1],
  ]);
  // a tab list read as CSV and a CSV with a header are errors naming file:line
  await writeFile(file, 'path,label\na.jpg,0\n');
  assert.throws(
    () => parseFileList(file),
    (e: Error) => e.message.startsWith(`${file}:1: label "label" is not an integer >= 0 (CSV file lists have no header line)`),
  );
  await writeFile(file, 'a.jpg,0\n"b.jpg,1\n');
  assert.throws(
    () => parseFileList(file),
    (e: Error) => e.message.startsWith(`${file}:2: the quoted path has no closing quote`),
  );
  await writeFile(file, 'a.jpg,0\n"b"c.jpg",1\n');
  assert.throws(
    () => parseFileList(file),
    (e: Error) => e.message.startsWith(`${file}:2: a quote inside a quoted path must be doubled`),
  );
  await writeFile(file, 'a.jpg\t0\n');
  assert.throws(
    () => parseFileList(file),
    (e: Error) => e.message.startsWith(`${file}:1: expected "<path>,<label>"`),
  );
  assert.deepEqual(entries(new FileListDataset(parseFileList(file, { format: 'text' }))), [['a.jpg', 0]]);
});

test('bad lines are errors naming file:line and the line', async (t) => {
  const dir = await folder(t);
  const file = join(dir, 'list.txt');
  const bad = async (text: string, message: string) => {
    await writeFile(file, text);
    assert.throws(
      () => new FileListDataset(file),
      (e: Error) => e.message.startsWith(`${file}:${message}`),
      message,
    );
  };
  await bad('a.jpg 0\n\nb.jpg\n', '3: expected "<path><TAB or space><label>", in line "b.jpg"');
  await bad('a.jpg 0\nb.jpg cat\n', '2: label "cat" is not an integer >= 0, in line "b.jpg cat"');
  await bad('a.jpg -1\n', '1: label "-1" is not an integer >= 0');
  await bad('a.jpg 1.5\n', '1: label "1.5" is not an integer >= 0');
  await bad('a.jpg 12345678901\n', '1: label "12345678901" is not an integer >= 0');
  await bad('\t3\n', '1: expected "<path><TAB or space><label>", in line "3"');
  await writeFile(file, '# only a comment\n\n');
  assert.throws(() => new FileListDataset(file), new RegExp(`file list ${file}: no entries`));
  assert.throws(() => new FileListDataset(join(dir, 'missing.txt')), /missing\.txt: cannot read it/);
});

test('class names from a classes file or given; labels out of range name the list line', async (t) => {
  const dir = await folder(t);
  const file = join(dir, 'train.txt');
  const classes = join(dir, 'classes.txt');
  await writeFile(file, 'a.png 1\n# c\nb.png 0\nc.png 2\n');
  await writeFile(classes, 'n01440764 tench\nn01443537 goldfish\r\nn01484850\n\n');
  assert.deepEqual(readClassNames(classes), ['n01440764 tench', 'n01443537 goldfish', 'n01484850']);
  const ds = new FileListDataset(file, { classesFile: classes });
  assert.equal(ds.numClasses, 3);
  assert.equal(ds.classNames[ds.label(0)], 'n01443537 goldfish');
  assert.deepEqual(new FileListDataset(file, { numClasses: 5 }).classNames, ['0', '1', '2', '3', '4']);
  assert.throws(
    () => new FileListDataset(file, { classNames: ['x', 'y'] }),
    (e: Error) => e.message.startsWith(`${file}:4: label 2 is out of range for the 2 class names given (expected 0..1)`),
  );
  assert.throws(
    () => new FileListDataset(file, { numClasses: 2 }),
    (e: Error) => e.message.startsWith(`${file}:4: label 2 is out of range for numClasses 2`),
  );
  await writeFile(classes, 'a\n\nb\n');
  assert.throws(
    () => readClassNames(classes),
    (e: Error) => e.message.startsWith(`${classes}:2: empty class name`),
  );
  await writeFile(classes, 'a\nb\na\n');
  assert.throws(
    () => readClassNames(classes),
    (e: Error) => e.message.startsWith(`${classes}:3: class "a" is already on line 1`),
  );
});

test('get decodes the listed image with its label; a missing image names the list line', async (t) => {
  const dir = await folder(t);
  await mkdir(join(dir, 'imgs'));
  await writePng(join(dir, 'imgs', 'p q.png'), 40, 5, 3);
  await writePng(join(dir, 'abs.png'), 41, 2, 6);
  const file = join(dir, 'train.txt');
  await writeFile(file, `imgs/p q.png\t1\n${join(dir, 'abs.png')} 0\nimgs/gone.png 1\n`);
  const ds = new FileListDataset(file);
  const a = await ds.get(0);
  assert.deepEqual([a.width, a.height, a.label, a.id, a.boxes], [5, 3, 1, 'imgs/p q.png', []]);
  assert.deepEqual(a.image, pattern(40, 5, 3));
  const b = await ds.get(1);
  assert.deepEqual([b.width, b.height, b.label], [2, 6, 0]);
  assert.deepEqual(b.image, pattern(41, 2, 6));
  await assert.rejects(ds.get(2), (e: Error) => e.message.startsWith(`${file}:3: ${join(dir, 'imgs', 'gone.png')}: cannot decode image`));
  await assert.rejects(ds.get(3), /index 3 is out of range/);
});
