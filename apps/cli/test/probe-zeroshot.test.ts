/**
 * `vitreg probe --task zeroshot`: a whole CLIP checkpoint (written by saveClip) and a BPE vocabulary file on
 * the synthetic shapes: results.json with top-1 / top-5, the one-line summary; beside the class probe
 * (results-zeroshot.json, results-class.json); the image tower of the same file serves the class probe; bad
 * flags fail with one line naming them. Four CLI processes (each starts tsx and a backend): ~25 s on an idle
 * core, most of it start-up.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '@vitreg/core';
import { ClipModel, getConfig, saveClip, validateClipConfig } from '@vitreg/registers';
import { nodeArgsOf } from './helpers.ts';

const here = dirname(fileURLToPath(import.meta.url));
const main = resolve(here, '../src/main.ts');

function vitreg(...args: string[]) {
  const r = spawnSync(process.execPath, [...nodeArgsOf(main), ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const tmp = await mkdtemp(join(tmpdir(), 'vitreg-zeroshot-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
const vocab = join(tmp, 'bytes.txt');
const weights = join(tmp, 'clip.safetensors');
await writeFile(vocab, '#version: 0.2 (no merges: one token per byte; no final newline, which open_clip would read as an empty merge)');
await initBackend('wasm', { log: () => {} });
const model = new ClipModel(
  validateClipConfig({
    vision: getConfig('vit_micro_patch8', { proj_dim: 16, num_register_tokens: 2, img_size: 32 }),
    text: { context_length: 40, vocab_size: 514, width: 32, heads: 2, layers: 1, proj_dim: 16 },
  }),
  { seed: 1 },
);
await saveClip(model, weights);
model.dispose();
const data = ['--data', 'synthetic', '--count', '8', '--test-count', '6', '--synthetic-size', '32', '--size', '32', '--backend', 'wasm'];

test('zeroshot alone and beside the class probe', async () => {
  const out = join(tmp, 'zs');
  const r = vitreg(
    'probe',
    '--weights',
    weights,
    '--task',
    'zeroshot',
    '--tokenizer',
    vocab,
    '--templates',
    'simple',
    ...data,
    '--out',
    out,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /zeroshot: top-1 \d+\.\d\d%, top-5 \d+\.\d\d%/);
  const res = JSON.parse(await readFile(join(out, 'results.json'), 'utf8'));
  assert.equal(res.task, 'zeroshot');
  assert.deepEqual([res.count, res.classes, res.templates], [6, 5, 7]);
  assert.ok(res.top1 >= 0 && res.top1 <= res.top5 && res.top5 <= 1);

  const both = join(tmp, 'both');
  const r2 = vitreg(
    'probe',
    '--weights',
    weights,
    '--task',
    'class,zeroshot',
    '--tokenizer',
    vocab,
    '--steps',
    '5',
    ...data,
    '--out',
    both,
  );
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(JSON.parse(await readFile(join(both, 'results-zeroshot.json'), 'utf8')).templates, 80);
  assert.ok(JSON.parse(await readFile(join(both, 'results-class.json'), 'utf8')));
});

test('zeroshot flags: errors name them', async () => {
  const r = vitreg('probe', '--weights', weights, '--task', 'zeroshot', ...data, '--out', join(tmp, 'x'));
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /--task zeroshot needs --tokenizer FILE/);
  const classes = join(tmp, 'classes.txt');
  await writeFile(classes, 'a\nb\n');
  const r2 = vitreg(
    'probe',
    '--weights',
    weights,
    '--task',
    'zeroshot',
    '--tokenizer',
    vocab,
    '--classes',
    classes,
    ...data,
    '--out',
    join(tmp, 'y'),
  );
  assert.notEqual(r2.code, 0);
  assert.match(r2.stderr, /5 classes, the class names 2/);
});
