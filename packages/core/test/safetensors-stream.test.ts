import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FeatureWriter, hostTensor, readSafetensors, toFloat32, writeSafetensors } from '../src/index.js';
import { type RowBatch } from '../src/safetensors-stream.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-stream-'));
after(() => rm(dir, { recursive: true, force: true }));

const batch = (n: number, start: number, shape: number[]): RowBatch => {
  const size = shape.reduce((a, b) => a * b, n);
  return { data: Float32Array.from({ length: size }, (_, i) => start + i), shape: [n, ...shape] };
};

test('FeatureWriter streams batches into the file writeSafetensors writes for the whole tensors', async () => {
  const path = join(dir, 'f.safetensors');
  const w = new FeatureWriter(path, 3, () => ({ vitreg_images: '["a","b","c"]' }));
  await w.add(
    new Map([
      ['patches', batch(2, 0, [2, 3])],
      ['cls', batch(2, 100, [3])],
    ]),
    2,
  );
  await w.add(
    new Map([
      ['patches', batch(1, 12, [2, 3])],
      ['cls', batch(1, 106, [3])],
    ]),
    1,
  );
  await w.finish();
  const { tensors, metadata } = await readSafetensors(path);
  assert.deepEqual(metadata, { vitreg_images: '["a","b","c"]' });
  assert.deepEqual(tensors.patches.shape, [3, 2, 3]);
  assert.deepEqual(
    [...toFloat32(tensors.patches)],
    Array.from({ length: 18 }, (_, i) => i),
  );
  assert.deepEqual(
    [...toFloat32(tensors.cls)],
    Array.from({ length: 9 }, (_, i) => 100 + i),
  );
  const whole = join(dir, 'whole.safetensors');
  await writeSafetensors(
    whole,
    { cls: hostTensor(toFloat32(tensors.cls), [3, 3]), patches: hostTensor(toFloat32(tensors.patches), [3, 2, 3]) },
    { vitreg_images: '["a","b","c"]' },
  );
  assert.deepEqual(await readFile(path), await readFile(whole), 'byte for byte');
});

test('FeatureWriter: a changed shape or a missing row is an error, and abort keeps the earlier file', async () => {
  const path = join(dir, 'keep.safetensors');
  await writeFile(path, 'earlier');
  const w = new FeatureWriter(path, 2, () => ({}));
  await w.add(new Map([['cls', batch(1, 0, [3])]]), 1);
  await assert.rejects(w.add(new Map([['cls', batch(1, 0, [4])]]), 1), /^Error: features: output cls changed shape between batches$/);
  await assert.rejects(w.finish(), /features: wrote 1 of 2 images/);
  await w.abort();
  assert.equal(await readFile(path, 'utf8'), 'earlier');
  assert.deepEqual(
    (await readdir(dir)).filter((f) => f.startsWith('keep')),
    ['keep.safetensors'],
  );
  assert.ok(!existsSync(`${path}.tmp-${process.pid}`));
});
