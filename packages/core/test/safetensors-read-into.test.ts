/**
 * safetensors-read-into.ts: tensors read into given float32 arrays (views of one buffer) equal
 * readSafetensors' values, in F32 and other dtypes; every problem is listed before anything is written.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { float32TargetProblems, readFloat32Into, readSafetensorsInto } from '../src/safetensors-read-into.js';
import { readSafetensors, SafetensorsReader, writeSafetensors } from '../src/safetensors.js';
import { fromFloat32, toFloat32 } from '../src/tensor.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-st-into-'));
after(() => rm(dir, { recursive: true, force: true }));

const values = (n: number, salt: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + salt) * 3);

async function file(name: string): Promise<string> {
  const path = join(dir, name);
  await writeSafetensors(path, {
    a: fromFloat32(values(12, 1), [3, 4]),
    b: fromFloat32(values(5, 2), [5], 'BF16'),
    c: fromFloat32(values(7, 3), [7]),
  });
  return path;
}

test('readSafetensorsInto fills views of one buffer with the values readSafetensors reads (F32 and BF16)', async () => {
  const path = await file('ok.safetensors');
  const buf = new Float32Array(1 + 12 + 5 + 7).fill(-1);
  // Offsets not at the start of the buffer: a wrong position in the direct read shows.
  const a = buf.subarray(1, 13);
  const b = buf.subarray(13, 18);
  const c = buf.subarray(18);
  await readSafetensorsInto(path, [
    { name: 'c', into: c },
    { name: 'a', into: a, shape: [3, 4], dtypes: ['F32'] },
    { name: 'b', into: b },
  ]);
  const want = (await readSafetensors(path)).tensors;
  assert.equal(buf[0], -1);
  assert.deepEqual(a, toFloat32(want.a!));
  assert.deepEqual(b, toFloat32(want.b!));
  assert.deepEqual(c, toFloat32(want.c!));
});

test('every problem is listed, naming the file and the tensor, and nothing is written', async () => {
  const path = await file('bad.safetensors');
  const a = new Float32Array(12).fill(7);
  const short = new Float32Array(4).fill(7);
  const err = await readSafetensorsInto(path, [
    { name: 'a', into: a, shape: [4, 3] },
    { name: 'b', into: short, dtypes: ['F32'] },
    { name: 'zz', into: short },
  ]).then(
    () => assert.fail('read'),
    (e: Error) => e.message,
  );
  assert.match(err, /bad\.safetensors: cannot read the tensors asked for \(4 problems\)/);
  assert.match(err, /bad\.safetensors: tensor "a" has shape \[3,4\], expected \[4,3\]/);
  assert.match(err, /tensor "b" has dtype BF16, expected F32/);
  assert.match(err, /tensor "b" has 5 values \(shape \[5\]\), expected 4/);
  assert.match(err, /tensor "zz" is missing/);
  assert.ok(a.every((v) => v === 7) && short.every((v) => v === 7));
  const r = await SafetensorsReader.open(path);
  try {
    assert.deepEqual(float32TargetProblems(r, [{ name: 'c', into: new Float32Array(7) }]), []);
    await assert.rejects(readFloat32Into(r, 'c', new Float32Array(6)), /tensor "c" has 7 values, the destination 6/);
  } finally {
    await r.close();
  }
});

test('a truncated file is refused naming the file, before anything is written', async () => {
  const path = await file('cut.safetensors');
  await truncate(path, (await stat(path)).size - 2);
  const a = new Float32Array(12).fill(7);
  await assert.rejects(readSafetensorsInto(path, [{ name: 'a', into: a }]), /cut\.safetensors: .*truncated/);
  assert.ok(a.every((v) => v === 7));
});
