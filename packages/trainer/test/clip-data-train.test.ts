/**
 * Objective clip on WebDataset shards (clip-loop.ts with data-webdataset.ts `WebDatasetStream`): `train()` of a
 * tiny-clip config whose `data.source` is a folder of tar shards this test writes trains, writes checkpoints and
 * says that shards have no labels to evaluate; stopped after step 2 and resumed, it ends with the weights of the
 * uninterrupted run (the stream skips to step 2's batch); 2 threads read their own shards; the errors of a bad
 * shard (no caption) and of fewer shards than ranks name the file.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePng, initBackend, Rng } from '@vitreg/core';
import { wordMerges } from '@vitreg/registers';
import { train, trainThreads, validateTrainConfig } from '../src/index.ts';
import { tarBytes } from './clip-data-helpers.ts';

const WORDS = ['a', 'photo', 'of', 'red', 'blue', 'dot', 'bar'];
let dir = '';

async function shards(folder: string, count: number, per: number): Promise<void> {
  await mkdir(folder, { recursive: true });
  const rng = new Rng(9);
  for (let s = 0; s < count; s++) {
    const members: [string, Uint8Array][] = [];
    for (let i = 0; i < per; i++) {
      const key = `${s}-${i}`;
      const png = await encodePng(
        Uint8Array.from({ length: 16 * 16 * 3 }, () => rng.int(256)),
        16,
        16,
      );
      members.push([`${key}.png`, png], [`${key}.txt`, Buffer.from(`a photo of a ${WORDS[3 + (i % 2)]} ${WORDS[5 + (s % 2)]}`)]);
    }
    await writeFile(join(folder, `${String(s).padStart(5, '0')}.tar`), tarBytes(members));
  }
}

const config = (source: string, over: object = {}) =>
  validateTrainConfig({
    preset: 'tiny-clip',
    data: { source },
    clip: { tokenizer: join(dir, 'words.txt') },
    train: { steps: 4, batch_size: 4, checkpoint_every: 2, keep_checkpoints: 3 },
    ...over,
  });

describe('objective clip on WebDataset shards', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
    dir = await mkdtemp(join(tmpdir(), 'vitreg-clip-wds-'));
    await writeFile(join(dir, 'words.txt'), wordMerges(WORDS));
    await shards(join(dir, 'shards'), 3, 5);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('trains from the shards; stopped at step 2 and resumed = uninterrupted; two threads', async () => {
    const c = config(join(dir, 'shards'));
    const whole = await train(c, { outDir: join(dir, 'whole'), progress: false, checksum: true, log: () => {} });
    assert.equal(whole.step, 4);
    assert.ok(existsSync(join(dir, 'whole', 'checkpoints', 'step-4', 'model.safetensors')));
    assert.match(await readFile(join(dir, 'whole', 'eval.json'), 'utf8'), /no class labels/);
    const part = await train(c, { outDir: join(dir, 'part'), progress: false, stopAfter: 2, log: () => {} });
    assert.equal(part.step, 2);
    const resumed = await train(c, { outDir: join(dir, 'part'), progress: false, resume: true, checksum: true, log: () => {} });
    assert.equal(resumed.step, 4);
    assert.equal(resumed.checksum, whole.checksum, 'the resumed run read the same batches');
    const threads = await trainThreads(config(join(dir, 'shards'), { train: { steps: 2, batch_size: 2, checkpoint_every: 0 } }), {
      outDir: join(dir, 'threads'),
      workers: 2,
      progress: false,
    });
    assert.equal(threads.step, 2);
  });

  test('a bad shard and too few shards are errors naming the file', async () => {
    const bad = join(dir, 'bad');
    await mkdir(bad);
    await writeFile(join(bad, 'a.tar'), tarBytes([['k.png', await encodePng(new Uint8Array(16 * 16 * 3), 16, 16)]]));
    await assert.rejects(
      train(config(bad), { outDir: join(dir, 'r1'), progress: false, log: () => {} }),
      /a\.tar: sample "k" has no caption/,
    );
    await assert.rejects(
      trainThreads(config(bad), { outDir: join(dir, 'r2'), workers: 2, progress: false }),
      /1 WebDataset shard\(s\) for 2 ranks/,
    );
  });
});
