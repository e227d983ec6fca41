/**
 * WebDataset shards as a CLIP training stream (data-webdataset.ts `WebDatasetStream`): tiny plain tar shards
 * written here (`.png` + `.txt` per key), read as open_clip's pipeline reads them: every sample once per epoch
 * through the shuffle buffer, each rank its own whole shards (split_by_node) reshuffled every epoch, a batch
 * spanning two epochs, batch k the same when a stream starts at k (a resume, across an epoch boundary too),
 * `tarSampleCount` from the headers; the errors name the file and the key (missing caption or image, a non-tar
 * file, an image that does not decode, fewer shards than ranks).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePng } from '@vitreg/core';
import { rankShards, tarSampleCount, WebDatasetStream, type StreamPair } from '../src/index.ts';
import { tarBytes } from './clip-data-helpers.ts';

/** A w x w PNG of one grey level. */
async function png(level: number, w = 8): Promise<Uint8Array> {
  return encodePng(new Uint8Array(w * w * 3).fill(level), w, w);
}

const SHARDS = 4;
const PER = 5;
let dir = '';
const keyOf = (s: number, i: number) => `s${s}/k${String(i).padStart(3, '0')}`;

async function writeShards(folder: string): Promise<void> {
  await mkdir(folder, { recursive: true });
  for (let s = 0; s < SHARDS; s++) {
    const members: [string, Uint8Array][] = [];
    for (let i = 0; i < PER; i++) {
      const k = keyOf(s, i);
      members.push([`${k}.png`, await png(10 * s + i)], [`${k}.txt`, Buffer.from(`caption of ${k}\n`)]);
    }
    await writeFile(join(folder, `shard-${String(s).padStart(4, '0')}.tar`), tarBytes(members));
  }
}

async function keys(stream: WebDatasetStream, from: number, to: number): Promise<string[][]> {
  const out: string[][] = [];
  for (let k = from; k < to; k++) out.push((await stream.batch(k)).map((p) => p.key));
  return out;
}

describe('WebDataset shards as a CLIP training stream', () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vitreg-clip-data-'));
    await writeShards(join(dir, 'shards'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('one rank: each epoch every sample once, decoded, with its caption; epochs reshuffled; a batch spans two epochs', async () => {
    const stream = await WebDatasetStream.open(join(dir, 'shards'), { rank: 0, worldSize: 1, batchSize: 3, seed: 7 });
    const pairs: StreamPair[] = [];
    for (let k = 0; k < 14; k++) pairs.push(...(await stream.batch(k)));
    await stream.close();
    const all = Array.from({ length: SHARDS * PER }, (_, n) => keyOf(Math.floor(n / PER), n % PER)).sort();
    const epoch0 = pairs.slice(0, 20).map((p) => p.key);
    const epoch1 = pairs.slice(20, 40).map((p) => p.key);
    assert.deepEqual([...epoch0].sort(), all);
    assert.deepEqual([...epoch1].sort(), all);
    assert.notDeepEqual(epoch0, epoch1, 'epoch 1 is reshuffled');
    assert.notDeepEqual(epoch0, all, 'epoch 0 is shuffled');
    for (const p of pairs) {
      const [s, i] = [Number(p.key[1]), Number(p.key.slice(-3))];
      assert.equal(p.caption, `caption of ${p.key}`);
      assert.equal(p.label, -1);
      assert.equal(p.shard, join(dir, 'shards', `shard-000${s}.tar`));
      assert.deepEqual([p.image.width, p.image.height], [8, 8]);
      assert.ok(
        p.image.data.every((v) => v === 10 * s + i),
        p.key,
      );
    }
  });

  test('two ranks: disjoint whole shards per epoch, together every sample once; the split changes with the epoch', async () => {
    const shards = (await WebDatasetStream.open(join(dir, 'shards'), { rank: 0, worldSize: 1, batchSize: 1, seed: 3 })).shardList;
    const split = (epoch: number) => [0, 1].map((rank) => rankShards(shards, { seed: 3, epoch, rank, worldSize: 2 }));
    const [a, b] = split(0);
    assert.equal(a!.length, 2);
    assert.equal(b!.length, 2);
    assert.deepEqual([...a!, ...b!].sort(), [...shards]);
    assert.ok(
      [1, 2, 3, 4, 5].some((e) => split(e)[0]!.sort().join() !== [...a!].sort().join()),
      'the split changes over epochs',
    );
    const per = await Promise.all(
      [0, 1].map(async (rank) => {
        const s = await WebDatasetStream.open(join(dir, 'shards'), { rank, worldSize: 2, batchSize: 5, seed: 3 });
        const got = (await keys(s, 0, 2)).flat();
        await s.close();
        return got;
      }),
    );
    per.forEach((got, rank) => {
      const mine = split(0)[rank]!.map((f) => Number(f.slice(-5, -4)));
      assert.ok(
        got.every((k) => mine.includes(Number(k[1]))),
        `rank ${rank} reads only its shards ${mine}: ${got}`,
      );
    });
    assert.equal(new Set([...per[0]!, ...per[1]!]).size, 20);
  });

  test('batch k is the same when a stream starts there (a resume), inside an epoch and across epochs; a small shuffle buffer', async () => {
    const opts = { rank: 1, worldSize: 2, batchSize: 3, seed: 11, shuffle: { size: 4, initial: 2 } };
    const whole = await WebDatasetStream.open(join(dir, 'shards'), opts);
    const ref = await keys(whole, 0, 12);
    await whole.close();
    // Each epoch holds 10 of this rank's samples: step 2 is inside epoch 0, step 7 starts at sample 21 (epoch 2).
    for (const start of [2, 7, 11]) {
      const resumed = await WebDatasetStream.open(join(dir, 'shards'), opts);
      assert.deepEqual(await keys(resumed, start, 12), ref.slice(start), `from step ${start}`);
      await resumed.close();
    }
    const again = await WebDatasetStream.open(join(dir, 'shards'), opts);
    assert.deepEqual(await keys(again, 5, 6), [ref[5]]);
    assert.deepEqual(await keys(again, 1, 2), [ref[1]], 'an earlier step starts over');
    await again.close();
    const other = await WebDatasetStream.open(join(dir, 'shards'), { ...opts, seed: 12 });
    assert.notDeepEqual(await keys(other, 0, 12), ref, 'another seed, another order');
    await other.close();
    assert.equal(await tarSampleCount(join(dir, 'shards', 'shard-0002.tar')), PER);
  });

  test('errors name the file and the key', async () => {
    const bad = join(dir, 'bad');
    await mkdir(bad);
    const t = (name: string, members: [string, Uint8Array][]) => writeFile(join(bad, name), tarBytes(members));
    const img = await png(50);
    await t('nocap.tar', [
      ['a/000.png', img],
      ['a/000.txt', Buffer.from('ok')],
      ['a/001.png', img],
    ]);
    await t('noimg.tar', [
      ['b/000.txt', Buffer.from('only text')],
      ['b/000.json', Buffer.from('{}')],
    ]);
    await t('undecodable.tar', [
      ['c/000.jpg', Buffer.from('not a jpeg')],
      ['c/000.txt', Buffer.from('x')],
    ]);
    await writeFile(join(bad, 'text.tar'), 'key\tcaption\n'.repeat(100));
    const first = async (file: string) => {
      const s = await WebDatasetStream.open(join(bad, file), { rank: 0, worldSize: 1, batchSize: 2, seed: 0 });
      try {
        return await s.batch(0);
      } finally {
        await s.close();
      }
    };
    await assert.rejects(first('nocap.tar'), /nocap\.tar: sample "a\/001" has no caption \(txt\); it has png/);
    await assert.rejects(first('noimg.tar'), /noimg\.tar: sample "b\/000" has no image \(jpg, jpeg, png, webp\); it has txt, json/);
    await assert.rejects(first('undecodable.tar'), /undecodable\.tar: sample "c\/000": cannot decode its jpg image/);
    await assert.rejects(first('text.tar'), /text\.tar: not a tar file/);
    await assert.rejects(tarSampleCount(join(bad, 'text.tar')), /text\.tar: not a tar file/);
    await assert.rejects(
      WebDatasetStream.open(join(bad, 'nocap.tar'), { rank: 0, worldSize: 2, batchSize: 1, seed: 0 }),
      /nocap\.tar: 1 WebDataset shard\(s\) for 2 ranks/,
    );
    await assert.rejects(
      WebDatasetStream.open(join(dir, 'missing'), { rank: 0, worldSize: 1, batchSize: 1, seed: 0 }),
      /missing: no such WebDataset folder or \.tar file/,
    );
  });
});
