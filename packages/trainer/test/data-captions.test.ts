/**
 * Caption data (data-captions.ts, data-webdataset.ts): WebDataset shards written by Python's tarfile (GNU long names, PAX
 * non-ASCII names, extra members) read as a stream, sample by sample; CSV / TSV with open_clip's keys and
 * quoting; the synthetic captions; the errors for bad input, each naming the file.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SyntheticDataset } from '@vitreg/core';
import { readCaptionTable, readWebDataset, syntheticCaption, type WebDatasetSample } from '../src/index.ts';

const DIR = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'captions');

async function all(source: string): Promise<WebDatasetSample[]> {
  const out: WebDatasetSample[] = [];
  for await (const s of readWebDataset(source)) out.push(s);
  return out;
}

describe('caption data', () => {
  test('WebDataset shards: every sample, in order, with its image bytes and caption', async () => {
    const ref = JSON.parse(await readFile(join(DIR, 'shards.json'), 'utf8')) as Record<
      string,
      { ext: string; image: number[]; caption: string }
    >;
    const got = await all(join(DIR, 'shards'));
    assert.deepEqual(
      got.map((s) => s.key),
      Object.keys(ref),
    );
    for (const s of got) {
      const r = ref[s.key]!;
      assert.equal(s.imageExt, r.ext, s.key);
      assert.deepEqual(Array.from(s.image), r.image, s.key);
      assert.equal(s.caption, r.caption, s.key);
    }
    assert.equal(got[3]!.shard, join(DIR, 'shards', '000001.tar'));
    await assert.rejects(all(join(DIR, 'no_caption.tar')), /no_caption\.tar: sample "k\/000" has no caption \(txt\)/);
    await assert.rejects(all(join(DIR, 'pairs.csv')), /pairs\.csv: not a tar file/);
    await assert.rejects(all(join(DIR, 'missing')), /missing: no such WebDataset folder or \.tar file/);
    await assert.rejects(all(join(DIR, '..')), /fixtures: no \.tar shards/);
  });

  test("CSV and TSV with open_clip's keys and quoting", async () => {
    assert.deepEqual(await readCaptionTable(join(DIR, 'pairs.csv')), [
      { image: 'img/a.jpg', caption: 'a dog, running' },
      { image: 'img/b.jpg', caption: 'he said "hi"' },
      { image: 'img/c d.jpg', caption: 'two\nlines' },
    ]);
    assert.deepEqual(await readCaptionTable(join(DIR, 'pairs.tsv')), [
      { image: 'img/a.jpg', caption: 'the cat' },
      { image: 'img/b.jpg', caption: 'a photo of a bird' },
    ]);
    await assert.rejects(
      readCaptionTable(join(DIR, 'pairs.csv'), { captionKey: 'caption' }),
      /pairs\.csv: no column "caption" \(--csv-caption-key\)/,
    );
    await assert.rejects(readCaptionTable(join(DIR, 'pairs.tsv'), { separator: ',' }), /no column "filepath"/);
    await assert.rejects(readCaptionTable(join(DIR, 'none.tsv')), /none\.tsv: cannot read/);
  });

  test('synthetic captions name the main shape, its size and brightness, and the texture', () => {
    const ds = new SyntheticDataset({ seed: 0, count: 40, size: 32 });
    const caps = Array.from({ length: 40 }, (_, i) => syntheticCaption(ds, i));
    caps.forEach((c, i) => {
      assert.match(
        c,
        /^a (small|large) (light|bright) (circle|square|triangle|cross|ring) on a dark (shaded|grainy|striped|checkered) background$/,
      );
      assert.ok(c.includes(` ${ds.classNames[ds.scene(i).objects[0]!.label]} `), c);
    });
    for (const w of ['small', 'large', 'light', 'bright'])
      assert.ok(
        caps.some((c) => c.includes(` ${w} `)),
        w,
      );
  });
});
