import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, realpathSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { BatchPrefetcher, ImageFolderDataset, Prefetcher, batches, type Dataset, type DatasetItem } from '../src/data/index.js';
import { IMAGE_FOLDER_INDEX_NAME } from '../src/data/image-folder-index.js';

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

async function tree(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-imgfolder-'));
  for (const [cls, files] of [
    ['dog', ['b.png', 'a.png']],
    ['cat', ['z.PNG']],
    ['emu', ['x.png', 'y.png']],
  ] as const) {
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
  assert.throws(
    () => new ImageFolderDataset(root, { extensions: ['txt'] }),
    (e: Error) => e.message.includes(join(root, 'cat')),
  );
});

test('missing root, no class folders and empty class folders are errors naming the folder', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-imgfolder-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  assert.throws(
    () => new ImageFolderDataset(join(root, 'nope')),
    (e: Error) => e.message.includes(join(root, 'nope')),
  );
  assert.throws(() => new ImageFolderDataset(root), /sub-folder per class/);
  await mkdir(join(root, 'cls'));
  assert.throws(
    () => new ImageFolderDataset(root),
    (e: Error) => e.message.includes(join(root, 'cls')) && /no images/.test(e.message),
  );
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

// ---------------------------------------------------------------------------------------------
// The cached index

const T0 = 1_700_000_000; // a fixed mtime (whole seconds) so a folder's mtime can be put back exactly

/** Images of `root` listed independently of the dataset: [`<class>/<file>`, label], classes and files sorted. */
function naiveListing(root: string): [string, number][] {
  const classes = readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
  return classes.flatMap((c, label) =>
    readdirSync(join(root, c))
      .filter((f) => /\.png$/i.test(f))
      .sort()
      .map((f) => [`${c}/${f}`, label] as [string, number]),
  );
}

function listing(ds: ImageFolderDataset): [string, number][] {
  return Array.from({ length: ds.length }, (_, i) => [ds.relativePath(i), ds.label(i)] as [string, number]);
}

async function pinMtimes(root: string): Promise<void> {
  for (const c of readdirSync(root, { withFileTypes: true })) if (c.isDirectory()) utimesSync(join(root, c.name), T0, T0);
}

test('the first open writes <root>/.vitreg-index.jsonl; later opens read it without listing, per the mtimes rule', async (t) => {
  const root = await tree();
  t.after(() => rm(root, { recursive: true, force: true }));
  await pinMtimes(root);
  const lines: string[] = [];
  const log = (l: string) => lines.push(l);
  const first = new ImageFolderDataset(root, { log });
  const indexFile = join(root, IMAGE_FOLDER_INDEX_NAME);
  assert.deepEqual(first.index, { file: indexFile, source: 'built', reason: 'no index yet' });
  assert.deepEqual(listing(first), naiveListing(root));
  const text = readFileSync(indexFile, 'utf8').trim().split('\n');
  assert.equal(text.length, 4, 'a header and one line per class');
  assert.deepEqual(JSON.parse(text[2]!), { name: 'dog', mtimeMs: T0 * 1000, count: 2, files: 'a.png/b.png' });

  // A new image in cat/ with cat's mtime put back: a reader of the index cannot see it, a listing would.
  await writePng(join(root, 'cat', 'new.png'), 7, 3, 3);
  utimesSync(join(root, 'cat'), T0, T0);
  const second = new ImageFolderDataset(root, { log });
  assert.equal(second.index.source, 'read');
  assert.equal(second.length, 5, 'the index was read, the folder not listed');
  assert.notDeepEqual(naiveListing(root), listing(second));
  // rebuildIndex lists anyway
  const rebuilt = new ImageFolderDataset(root, { log, rebuildIndex: true });
  assert.deepEqual([rebuilt.index.source, rebuilt.index.reason], ['built', 'rebuild asked']);
  assert.deepEqual(listing(rebuilt), naiveListing(root));
  assert.equal(rebuilt.length, 6);

  // A new class folder: 'none' trusts the index, the default rule sees it and lists again.
  await mkdir(join(root, 'ant'));
  await writePng(join(root, 'ant', 'q.png'), 1, 2, 2);
  utimesSync(join(root, 'ant'), T0, T0);
  const trusted = new ImageFolderDataset(root, { indexCheck: 'none', log });
  assert.deepEqual([trusted.index.source, trusted.classNames], ['read', ['cat', 'dog', 'emu']]);
  lines.length = 0;
  const fresh = new ImageFolderDataset(root, { log });
  assert.equal(fresh.index.source, 'built');
  assert.match(fresh.index.reason!, /class folders added: ant/);
  assert.ok(
    lines.some((l) => l.includes('class folders added: ant')),
    'the reason is logged',
  );
  assert.deepEqual(fresh.classNames, ['ant', 'cat', 'dog', 'emu']);
  assert.deepEqual(listing(fresh), naiveListing(root));
  assert.deepEqual((await fresh.get(0)).image, pattern(1, 2, 2));

  // A file added to dog/ (its mtime changes): 'classes' ignores it, 'mtimes' lists again.
  await writePng(join(root, 'dog', 'c.png'), 2, 2, 2);
  const classesOnly = new ImageFolderDataset(root, { indexCheck: 'classes', log });
  assert.deepEqual([classesOnly.index.source, classesOnly.length], ['read', 7]);
  const byMtime = new ImageFolderDataset(root, { log });
  assert.equal(byMtime.index.source, 'built');
  assert.match(byMtime.index.reason!, new RegExp(`class folder ${join(root, 'dog').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} changed`));
  assert.equal(byMtime.length, 8);
  assert.deepEqual(listing(byMtime), naiveListing(root));
  // A removed class folder is caught too.
  await rm(join(root, 'emu'), { recursive: true });
  const gone = new ImageFolderDataset(root, { log });
  assert.match(gone.index.reason!, /class folders removed: emu/);
  assert.deepEqual(listing(gone), naiveListing(root));
});

test('a corrupt index is an error naming file:line; another version or other extensions are rebuilt', async (t) => {
  const root = await tree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const log = () => undefined;
  new ImageFolderDataset(root, { log });
  const indexFile = join(root, IMAGE_FOLDER_INDEX_NAME);
  const good = readFileSync(indexFile, 'utf8');
  const lines = good.trim().split('\n');
  const corrupt = (text: string, line: number, what: RegExp) => {
    writeFileSync(indexFile, text);
    assert.throws(
      () => new ImageFolderDataset(root, { log }),
      (e: Error) => e.message.includes(`${indexFile}:${line} is corrupt`) && what.test(e.message) && /rebuild-index/.test(e.message),
    );
  };
  corrupt('garbage\n', 1, /not JSON/);
  corrupt('{"hello":1}\n', 1, /format "vitreg-image-folder-index"/);
  corrupt(
    [lines[0], lines[1], lines[2]!.replace('"count":2', '"count":3'), lines[3]].join('\n'),
    3,
    /count 3 does not match the 2 file names/,
  );
  corrupt([lines[0], lines[2], lines[1], lines[3]].join('\n'), 3, /not after "dog"/);
  corrupt([lines[0], lines[1], lines[2]].join('\n'), 3, /promises 3 classes and 5 files, found 2 and 3/);
  corrupt([lines[0], lines[1], '{"name":"dog","mtimeMs":1,"count":2,"files":"a.png/b.png"', lines[3]].join('\n'), 3, /not JSON/);
  // with rebuildIndex the corrupt file is replaced
  const ds = new ImageFolderDataset(root, { log, rebuildIndex: true });
  assert.equal(ds.length, 5);
  assert.equal(new ImageFolderDataset(root, { log }).index.source, 'read');
  // another version: rebuilt
  writeFileSync(indexFile, good.replace('"version":1', '"version":99'));
  const other = new ImageFolderDataset(root, { log });
  assert.match(other.index.reason!, /index version 99/);
  assert.deepEqual(listing(other), naiveListing(root));
  // other extensions: listed again, never the .png listing under a .txt filter
  const txt = () => new ImageFolderDataset(root, { log, extensions: ['txt', 'png'] });
  assert.equal(txt().length, 6, 'dog/notes.txt is an image here');
  assert.match(new ImageFolderDataset(root, { log }).index.reason!, /listed for extensions/);
});

test('a root whose index cannot be written uses the cache folder; indexFile names its root; indexFile false writes nothing', async (t) => {
  const root = await tree();
  const cacheDir = await mkdtemp(join(tmpdir(), 'vitreg-cache-'));
  t.after(() => Promise.all([rm(root, { recursive: true, force: true }), rm(cacheDir, { recursive: true, force: true })]));
  const log = () => undefined;
  // (the tests run as root, for whom chmod does not block writes: a folder in the index's place does)
  await mkdir(join(root, IMAGE_FOLDER_INDEX_NAME));
  const ds = new ImageFolderDataset(root, { cacheDir, log });
  const key = createHash('sha256').update(realpathSync(root)).digest('hex').slice(0, 16);
  assert.equal(ds.index.file, join(cacheDir, `${key}.jsonl`));
  assert.equal(JSON.parse(readFileSync(ds.index.file!, 'utf8').split('\n')[0]!).root, realpathSync(root));
  assert.deepEqual(new ImageFolderDataset(root, { cacheDir, log }).index, { file: ds.index.file, source: 'read' });
  // an explicit index file written for one root is not taken for another
  const other = await tree();
  t.after(() => rm(other, { recursive: true, force: true }));
  const indexFile = join(cacheDir, 'shared.jsonl');
  new ImageFolderDataset(root, { indexFile, log });
  const second = new ImageFolderDataset(other, { indexFile, log });
  assert.match(second.index.reason!, /written for /);
  assert.deepEqual(listing(second), naiveListing(other));
  const none = await tree();
  t.after(() => rm(none, { recursive: true, force: true }));
  assert.equal(new ImageFolderDataset(none, { indexFile: false, log }).index.file, null);
  assert.ok(!existsSync(join(none, IMAGE_FOLDER_INDEX_NAME)));
});

test('ImageFolderDataset.open lists in parallel with progress lines and gives the synchronous listing', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-imgfolder-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  for (let c = 0; c < 12; c++) {
    await mkdir(join(root, `c${String(c).padStart(2, '0')}`));
    for (let k = 0; k <= c % 4; k++) await writePng(join(root, `c${String(c).padStart(2, '0')}`, `${k}.png`), c, 2, 2);
  }
  const lines: string[] = [];
  const ds = await ImageFolderDataset.open(root, { concurrency: 3, progressIntervalMs: 0, log: (l) => lines.push(l) });
  assert.equal(ds.index.source, 'built');
  assert.deepEqual(listing(ds), naiveListing(root));
  assert.ok(
    lines.some((l) => /listed \d+\/12 class folders/.test(l)),
    lines.join('\n'),
  );
  assert.ok(
    lines.some((l) => /listed 12 class folders, 30 images/.test(l)),
    lines.join('\n'),
  );
  const again = await ImageFolderDataset.open(root, { log: () => undefined });
  assert.equal(again.index.source, 'read');
  assert.deepEqual(listing(again), naiveListing(root));
  assert.deepEqual(listing(new ImageFolderDataset(root, { indexFile: false, log: () => undefined })), naiveListing(root));
  await writeFile(join(root, IMAGE_FOLDER_INDEX_NAME), 'garbage');
  await assert.rejects(ImageFolderDataset.open(root), /:1 is corrupt/);
});

// ---------------------------------------------------------------------------------------------
// BatchPrefetcher

test('BatchPrefetcher: taken batches equal ds.get item for item, prefetched or not', async (t) => {
  const root = await tree();
  t.after(() => rm(root, { recursive: true, force: true }));
  const ds = new ImageFolderDataset(root, { log: () => undefined });
  const steps = [
    [4, 0],
    [2, 1],
    [3, 3],
    [0, 4],
  ];
  const loader = new BatchPrefetcher(ds, { concurrency: 2 });
  const got: DatasetItem[][] = [];
  got.push(await loader.take(steps[0]!)); // nothing prefetched: loaded on the spot
  for (let s = 1; s < steps.length; s++) {
    if (s + 1 < steps.length) loader.prefetch(steps[s + 1]!);
    got.push(await loader.take(steps[s]!));
  }
  assert.deepEqual(loader.stats, { hits: 2, misses: 2 });
  for (let s = 0; s < steps.length; s++) {
    const direct = await Promise.all(steps[s]!.map((i) => ds.get(i)));
    assert.deepEqual(got[s], direct, `step ${s}`);
  }
});

test('BatchPrefetcher: at most `concurrency` loads, taken batches first, oldest prefetch dropped, errors in take', async () => {
  const started: number[] = [];
  let inFlight = 0;
  let peak = 0;
  const gates = new Map<number, () => void>();
  const fake: Dataset = {
    length: 100,
    numClasses: 1,
    classNames: ['x'],
    get(i: number): Promise<DatasetItem> {
      started.push(i);
      inFlight++;
      peak = Math.max(peak, inFlight);
      return new Promise((resolve, reject) => {
        gates.set(i, () => {
          inFlight--;
          if (i === 66) reject(new Error('image 66 is broken'));
          else resolve({ image: new Uint8Array([i]), width: 1, height: 1, label: 0, boxes: [], id: String(i) });
        });
      });
    },
  };
  const release = async (...ids: number[]) => {
    for (const i of ids) gates.get(i)!();
    await new Promise((r) => setImmediate(r));
  };
  const loader = new BatchPrefetcher(fake, { concurrency: 2, maxBatches: 1 });
  loader.prefetch([10, 11, 12, 13]);
  assert.deepEqual(started, [10, 11], 'two loads start at once, synchronously');
  const taken = loader.take([1, 2]);
  await release(10);
  assert.deepEqual(started, [10, 11, 1], 'the take goes before the prefetched 12 and 13');
  await release(11, 1);
  assert.deepEqual(started, [10, 11, 1, 2, 12]);
  // a second prefetch with maxBatches 1 drops the first: 13, not started yet, never loads
  loader.prefetch([20, 21]);
  assert.equal(loader.queued, 1);
  await release(2);
  assert.deepEqual(
    (await taken).map((it) => it.id),
    ['1', '2'],
  );
  await release(12);
  assert.deepEqual(started.slice(5), [20, 21]);
  await release(20, 21);
  // the dropped batch is loaded anew when taken
  const again = loader.take([10, 11, 12, 13]);
  await release(10, 11);
  await release(12, 13);
  assert.deepEqual(
    (await again).map((it) => it.id),
    ['10', '11', '12', '13'],
  );
  assert.deepEqual(
    (await loader.take([20, 21])).map((it) => it.id),
    ['20', '21'],
  );
  assert.deepEqual(loader.stats, { hits: 1, misses: 2 });
  assert.equal(peak, 2);
  // a broken image rejects the take of its batch only (no unhandled rejection from prefetch)
  loader.prefetch([65, 66]);
  await release(65, 66);
  await assert.rejects(loader.take([65, 66]), /image 66 is broken/);
  loader.prefetch([67]);
  loader.clear();
  assert.equal(loader.queued, 0);
  assert.throws(() => new BatchPrefetcher(fake, 0), /concurrency must be a positive integer/);
});
