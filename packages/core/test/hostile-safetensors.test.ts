/**
 * safetensors headers counted before they are parsed (issue 21): too many tensors, too many JSON values
 * and too deep a nesting are each refused with their own error naming the file, the count and the limit;
 * names holding quotes, brackets, escapes or `__metadata__` do not confuse the count.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { SAFETENSORS_LIMITS } from '../src/safetensors-header.js';
import { readSafetensors, writeSafetensors } from '../src/safetensors.js';
import { hostTensor } from '../src/tensor.js';
import { deepHeaderSafetensors, manyTensorsSafetensors, manyValuesSafetensors, safetensorsBytes } from './hostile-corpus.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-hostile-st-'));
after(() => rm(dir, { recursive: true, force: true }));

async function file(name: string, bytes: Uint8Array): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, bytes);
  return p;
}

/** Runs `fn` with some SAFETENSORS_LIMITS lowered, restoring them after. */
async function withLimits<T>(limits: Partial<typeof SAFETENSORS_LIMITS>, fn: () => Promise<T>): Promise<T> {
  const saved = { ...SAFETENSORS_LIMITS };
  Object.assign(SAFETENSORS_LIMITS, limits);
  try {
    return await fn();
  } finally {
    Object.assign(SAFETENSORS_LIMITS, saved);
  }
}

/** A valid file of `n` one-element F32 tensors. */
function valid(n: number, metadata = false): Buffer {
  const header: Record<string, unknown> = metadata ? { __metadata__: { a: 'b' } } : {};
  for (let i = 0; i < n; i++) header[`t${i}`] = { dtype: 'F32', shape: [1], data_offsets: [4 * i, 4 * i + 4] };
  return safetensorsBytes(header, new Uint8Array(4 * n));
}

test('a header with more tensors than the limit is refused before it is parsed, naming the file, the count and the limit', async () => {
  await withLimits({ maxTensors: 100 }, async () => {
    assert.equal(Object.keys((await readSafetensors(await file('100.safetensors', valid(100)))).tensors).length, 100);
    // __metadata__ is not a tensor
    assert.equal(Object.keys((await readSafetensors(await file('100m.safetensors', valid(100, true)))).tensors).length, 100);
    await assert.rejects(
      readSafetensors(await file('101.safetensors', valid(101, true))),
      /101\.safetensors: header declares 101 tensors, more than the limit of 100 \(the largest real checkpoints hold a few thousand\)/,
    );
  });
  // 20,000 tensors in 1.4 MB: over the limit in the first 1 MiB chunk, the rest counted through a reused chunk
  await withLimits({ maxTensors: 1000 }, async () =>
    assert.rejects(
      readSafetensors(await file('many.safetensors', manyTensorsSafetensors(20_000))),
      /many\.safetensors: header declares 20000 tensors, more than the limit of 1000/,
    ),
  );
  // the default limit, as the bench's 300,000-tensor file meets it
  assert.equal(SAFETENSORS_LIMITS.maxTensors, 50_000);
});

test('too many JSON values and too deep a nesting are refused by the scan, each with its own error', async () => {
  await withLimits({ maxValues: 500 }, async () =>
    assert.rejects(
      readSafetensors(await file('values.safetensors', manyValuesSafetensors(1000))),
      /values\.safetensors: header holds more than 500 JSON values \(at byte \d+/,
    ),
  );
  // under the limit the same structure is parsed, then refused for its missing data
  await assert.rejects(
    readSafetensors(await file('values-ok.safetensors', manyValuesSafetensors(100))),
    /run past the end of the data buffer/,
  );
  await assert.rejects(
    readSafetensors(await file('deep.safetensors', deepHeaderSafetensors(100))),
    /deep\.safetensors: header nests deeper than 64 levels at byte 68 \(a header needs 3\)/,
  );
  await assert.rejects(readSafetensors(await file('deep-ok.safetensors', deepHeaderSafetensors(60))), /deep-ok\.safetensors: tensor "a"/);
});

test('names with quotes, brackets, backslashes, colons or __metadata__ in them are counted as one tensor each', async () => {
  const names = ['a"{[', 'b\\', '\\"}],:', '__metadata__x', '_metadata__', 'é😀{', '"__metadata__"'];
  const tensors = Object.fromEntries(names.map((n) => [n, hostTensor(new Float32Array([1]), [1])]));
  const p = join(dir, 'names.safetensors');
  await writeSafetensors(p, tensors, { '{"x": [1, 2]}': '"}]' });
  await withLimits({ maxTensors: names.length }, async () => {
    assert.deepEqual(Object.keys((await readSafetensors(p)).tensors).sort(), [...names].sort());
  });
  await withLimits({ maxTensors: names.length - 1 }, () =>
    assert.rejects(readSafetensors(p), new RegExp(`header declares ${names.length} tensors, more than the limit of ${names.length - 1}`)),
  );
});
