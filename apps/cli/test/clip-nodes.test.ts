/**
 * vitreg train --nodes 2 with objective clip on a caption table: the command passes --tokenizer and the
 * --csv-* flags to every vitreg-worker process (a table with its own column names and separator, a vocabulary
 * file of its own), and the 2-process job of 4 pairs per rank ends with the weights of 1 process of 8 pairs
 * (both on the tfjs engine; max |difference| of every tensor of the two-tower checkpoint below 1e-4, the bound of
 * the trainer's 2-thread clip test: AdamW's first steps move every weight by about lr = 2e-3, so a rank that
 * read other pairs would be far off; measured 4.8e-5).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePng, readSafetensors, Rng, toFloat32 } from '@vitreg/core';
import { wordMerges } from '@vitreg/registers';
import { lastLine, vitreg } from './helpers.js';

const WORDS = ['a', 'small', 'large', 'red', 'blue', 'dot', 'bar', 'photo', 'of'];

test('train --nodes 2 --objective clip with --tokenizer and --csv-*: the 2-process job equals 1 process of the global batch', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-clip-nodes-'));
  try {
    const rng = new Rng(5);
    const rows = ['cap;img'];
    for (let i = 0; i < 16; i++) {
      const pixels = Uint8Array.from({ length: 16 * 16 * 3 }, () => rng.int(256));
      const file = join(dir, `img${i}.png`);
      await writeFile(file, await encodePng(pixels, 16, 16));
      rows.push(`a photo of a ${WORDS[1 + (i % 2)]} ${WORDS[3 + ((i % 3) % 2)]} ${WORDS[5 + ((i % 4) % 2)]};${file}`);
    }
    await writeFile(join(dir, 'pairs.csv'), rows.join('\n') + '\n');
    await writeFile(join(dir, 'words.txt'), wordMerges(WORDS));
    const config = (batch: number) => ({
      preset: 'tiny-clip',
      train: { steps: 2, batch_size: batch, checkpoint_every: 0 },
      optim: { warmup_steps: 0 },
    });
    await writeFile(join(dir, 'one.json'), JSON.stringify(config(8)));
    await writeFile(join(dir, 'two.json'), JSON.stringify(config(4)));
    const flags = ['--data', join(dir, 'pairs.csv'), '--tokenizer', join(dir, 'words.txt')];
    flags.push('--csv-img-key', 'img', '--csv-caption-key', 'cap', '--csv-separator', ';');
    const common = [...flags, '--engine', 'tfjs', '--backend', 'wasm', '--no-progress'];
    const [one, two] = await Promise.all([
      vitreg(['train', '--config', join(dir, 'one.json'), ...common, '--out', join(dir, 'one')]),
      vitreg(['train', '--config', join(dir, 'two.json'), ...common, '--nodes', '2', '--out', join(dir, 'two')]),
    ]);
    assert.equal(one.code, 0, one.stderr);
    assert.equal(two.code, 0, two.stderr);
    assert.equal((JSON.parse(lastLine(two.stdout)) as { step: number }).step, 2);
    const model = async (run: string) => (await readSafetensors(join(dir, run, 'checkpoints', 'step-2', 'model.safetensors'))).tensors;
    const [a, b] = [await model('one'), await model('two')];
    assert.deepEqual(Object.keys(b).sort(), Object.keys(a).sort());
    assert.ok(
      Object.keys(a).some((k) => k.startsWith('transformer.')),
      'the text tower is in the checkpoint',
    );
    let worst = 0;
    for (const k of Object.keys(a)) {
      const [x, y] = [toFloat32(a[k]!), toFloat32(b[k]!)];
      for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
    }
    assert.ok(worst < 1e-4, `max |2 processes - 1 process| = ${worst}`);
    // Without the flags the workers could not read this table: the job would have failed above.
    const bare = await vitreg([
      'train',
      '--config',
      join(dir, 'two.json'),
      '--data',
      join(dir, 'pairs.csv'),
      '--nodes',
      '2',
      '--out',
      join(dir, 'x'),
    ]);
    assert.equal(bare.code, 2);
    assert.match(lastLine(bare.stderr), /clip\.tokenizer/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
