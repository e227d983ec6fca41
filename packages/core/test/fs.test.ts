import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ensureDir, readFully, writeFileAtomic, writeJsonAtomic } from '../src/fs.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-fs-'));
after(() => rm(dir, { recursive: true, force: true }));

test('writeFileAtomic writes strings, bytes and chunk lists and leaves no temporary file', async () => {
  const sub = join(dir, 'write');
  await ensureDir(sub);
  await writeFileAtomic(join(sub, 'a.txt'), 'héllo\n');
  await writeFileAtomic(join(sub, 'b.bin'), new Uint8Array([1, 2, 3]));
  await writeFileAtomic(join(sub, 'c.bin'), [new Uint8Array([1]), new Uint8Array(0), new Uint8Array([2, 3]).subarray(1)]);
  assert.equal(await readFile(join(sub, 'a.txt'), 'utf8'), 'héllo\n');
  assert.deepEqual([...(await readFile(join(sub, 'b.bin')))], [1, 2, 3]);
  assert.deepEqual([...(await readFile(join(sub, 'c.bin')))], [1, 3]);
  assert.deepEqual((await readdir(sub)).sort(), ['a.txt', 'b.bin', 'c.bin']);
});

test('writeFileAtomic replaces an existing file', async () => {
  const p = join(dir, 'replace.txt');
  await writeFile(p, 'old contents that are longer');
  await writeFileAtomic(p, 'new');
  assert.equal(await readFile(p, 'utf8'), 'new');
});

test('a write that fails midway leaves the old file intact, removes the temporary file and names the file', async () => {
  const sub = join(dir, 'fail');
  await ensureDir(sub);
  const p = join(sub, 'keep.bin');
  await writeFile(p, 'original');
  const bad = [new Uint8Array(1000), 'not bytes' as unknown as Uint8Array];
  await assert.rejects(writeFileAtomic(p, bad), (err: Error) => err.message.startsWith(`${p}: cannot write`));
  assert.equal(await readFile(p, 'utf8'), 'original');
  assert.deepEqual(await readdir(sub), ['keep.bin']);
});

test('writing into a missing folder is an error naming the target', async () => {
  const p = join(dir, 'no', 'such', 'folder', 'x.json');
  await assert.rejects(writeFileAtomic(p, 'x'), (err: NodeJS.ErrnoException) => err.message.startsWith(`${p}: cannot write`) && err.code === 'ENOENT');
});

test('writeJsonAtomic writes pretty JSON with a final newline; ensureDir makes parents', async () => {
  const sub = join(dir, 'deep', 'er');
  await ensureDir(sub);
  await ensureDir(sub); // idempotent
  assert.ok((await stat(sub)).isDirectory());
  const p = join(sub, 'v.json');
  await writeJsonAtomic(p, { a: 1, b: [true, null] });
  const text = await readFile(p, 'utf8');
  assert.equal(text, JSON.stringify({ a: 1, b: [true, null] }, null, 2) + '\n');
  assert.deepEqual(JSON.parse(text), { a: 1, b: [true, null] });
});

test('readFully reads at a position and names what it read when the file ends early', async () => {
  const p = join(dir, 'r.bin');
  await writeFile(p, new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]));
  const fh = await open(p, 'r');
  try {
    const buf = new Uint8Array(3);
    await readFully(fh, buf, 4, 'r.bin');
    assert.deepEqual([...buf], [4, 5, 6]);
    await assert.rejects(readFully(fh, new Uint8Array(4), 6, 'r.bin tensor "x"'), /^Error: r\.bin tensor "x": unexpected end of file at byte 8$/);
  } finally {
    await fh.close();
  }
});
