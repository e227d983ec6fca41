/**
 * Seeded fuzzing of every file reader of @vitreg/core: valid safetensors, .pth zips, bare pickles and
 * images (PNG, JPEG) are mutated (bytes flipped, 4-byte fields set to extremes, cut short, chunks
 * inserted or repeated) and fed to their readers. Each must end in a valid result or a one-line error
 * that names the file (InputError or the reader's Error, never a TypeError/RangeError escaping), within
 * a time bound (2 s each) and a memory bound (RSS grows by under 400 MB), writing nothing. Bounded: a fixed count per format and a few seconds in all.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import sharp from 'sharp';
import { InputError } from '../src/errors.js';
import { decodeImage } from '../src/image.js';
import { Unpickler } from '../src/pickle.js';
import { readPth } from '../src/pth.js';
import { Rng } from '../src/rng.js';
import { readSafetensors } from '../src/safetensors.js';
import { mutate, stateDictPickle, validPth, validSafetensors } from './hostile-corpus.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-fuzz-'));
after(() => rm(dir, { recursive: true, force: true }));

/** Checks one outcome: a value, or a one-line error naming `file` that is not a stray TypeError/RangeError. */
function checkOutcome(kind: string, file: string, err: unknown, ms: number): void {
  assert.ok(ms < 2000, `${kind} ${file}: took ${ms.toFixed(0)} ms`);
  if (err === undefined) return;
  assert.ok(err instanceof Error, `${kind} ${file}: threw a non-Error ${String(err)}`);
  assert.ok(!(err instanceof TypeError) && !(err instanceof RangeError), `${kind} ${file}: escaped ${err.name}: ${err.message}`);
  assert.ok(err.message.includes(file), `${kind}: error does not name ${file}: ${err.message}`);
  assert.ok(!err.message.includes('\n'), `${kind} ${file}: not one line: ${err.message}`);
}

async function fuzz(kind: string, base: Uint8Array, ext: string, count: number, read: (file: string) => Promise<unknown>): Promise<number> {
  const rng = new Rng(0x21 + kind.length);
  const rss0 = process.memoryUsage().rss;
  let refused = 0;
  const deadline = performance.now() + 4000;
  for (let i = 0; i < count && performance.now() < deadline; i++) {
    const file = join(dir, `${kind}-${i}${ext}`);
    await writeFile(file, mutate(base, rng));
    const t = performance.now();
    let err: unknown;
    try {
      await read(file);
    } catch (e) {
      err = e;
      refused++;
    }
    checkOutcome(kind, file, err, performance.now() - t);
    const grew = process.memoryUsage().rss - rss0;
    assert.ok(grew < 400 * 2 ** 20, `${kind} ${file}: RSS grew by ${(grew / 2 ** 20).toFixed(0)} MB`);
  }
  return refused;
}

test('mutated safetensors files: a valid result or a one-line error naming the file', async () => {
  const refused = await fuzz('st', validSafetensors(), '.safetensors', 150, readSafetensors);
  assert.ok(refused > 50, `only ${refused} refused`);
});

test('mutated .pth checkpoints: a valid result or a one-line InputError naming the file', async () => {
  const refused = await fuzz('pth', validPth(), '.pth', 200, async (f) => {
    try {
      return await readPth(f);
    } catch (err) {
      // readPth's own refusals are InputErrors; system errors (none expected here) would be plain Errors
      assert.ok(err instanceof InputError, `${f}: ${(err as Error).name}: ${(err as Error).message}`);
      throw err;
    }
  });
  assert.ok(refused > 50, `only ${refused} refused`);
});

test('mutated pickles: the pickle machine returns or throws an InputError, in bounded time', () => {
  const base = stateDictPickle([
    { name: 'w', key: '0', numel: 6, shape: [2, 3], stride: [3, 1] },
    { name: 'b', key: '1', numel: 3, shape: [3], stride: [1] },
  ]);
  const rng = new Rng(7);
  const deadline = performance.now() + 3000;
  let refused = 0;
  for (let i = 0; i < 400 && performance.now() < deadline; i++) {
    const bytes = mutate(base, rng);
    const t = performance.now();
    let err: unknown;
    try {
      new Unpickler('fuzz.pth', bytes).load();
    } catch (e) {
      err = e;
      refused++;
      assert.ok(e instanceof InputError, `pickle ${i}: ${(e as Error).name}: ${(e as Error).message}`);
    }
    checkOutcome('pickle', 'fuzz.pth', err, performance.now() - t);
  }
  assert.ok(refused > 100, `only ${refused} refused`);
});

test('mutated images (PNG, JPEG): decoded or a one-line error naming the file', async () => {
  const pixels = Buffer.from(Array.from({ length: 16 * 12 * 3 }, (_, i) => (i * 37) & 0xff));
  const raw = { raw: { width: 16, height: 12, channels: 3 as const } };
  const png = await sharp(pixels, raw).png().toBuffer();
  const jpeg = await sharp(pixels, raw).jpeg().toBuffer();
  await fuzz('png', png, '.png', 80, decodeImage);
  await fuzz('jpeg', jpeg, '.jpg', 80, decodeImage);
});

test('the readers wrote nothing: the folder holds only the fuzzed inputs', async () => {
  const names = await readdir(dir);
  assert.ok(
    names.every((n) => /^(st|pth|png|jpeg)-\d+\.(safetensors|pth|png|jpg)$/.test(n)),
    names.join(', '),
  );
});
