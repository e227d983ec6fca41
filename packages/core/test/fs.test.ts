import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DIR_FSYNC_UNSUPPORTED, ensureDir, readFully, syncDir, writeFileAtomic, writeJsonAtomic } from '../src/fs.js';

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
  await assert.rejects(
    writeFileAtomic(p, 'x'),
    (err: NodeJS.ErrnoException) => err.message.startsWith(`${p}: cannot write`) && err.code === 'ENOENT',
  );
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
    await assert.rejects(
      readFully(fh, new Uint8Array(4), 6, 'r.bin tensor "x"'),
      /^Error: r\.bin tensor "x": unexpected end of file at byte 8$/,
    );
  } finally {
    await fh.close();
  }
});

/** An error as Node's fs gives it: a message and a code. */
function sysError(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: refused`), { code });
}

/** A fake folder handle whose open / sync fail with the given codes; records what happened. */
function fakeOpen(failOpen: string | null, failSync: string | null, log: string[]) {
  return async (path: string) => {
    log.push(`open ${path}`);
    if (failOpen) throw sysError(failOpen);
    return {
      sync: async () => {
        log.push('sync');
        if (failSync) throw sysError(failSync);
      },
      close: async () => {
        log.push('close');
      },
    };
  };
}

test('syncDir fsyncs a real folder, and a missing folder is an error naming it', async () => {
  assert.equal(await syncDir(dir), true);
  const missing = join(dir, 'not-there');
  await assert.rejects(syncDir(missing), (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, 'ENOENT');
    assert.ok(err.message.startsWith(`${missing}: cannot fsync folder: `), err.message);
    return true;
  });
});

test('syncDir is best effort only for the codes of file systems that refuse directory fsync', async () => {
  assert.deepEqual([...DIR_FSYNC_UNSUPPORTED].sort(), ['EBADF', 'EINVAL', 'EISDIR', 'EPERM']);
  for (const code of DIR_FSYNC_UNSUPPORTED) {
    const log: string[] = [];
    assert.equal(await syncDir('/d', { open: fakeOpen(code, null, log) }), false, `open ${code}`);
    assert.deepEqual(log, ['open /d']);
    const log2: string[] = [];
    assert.equal(await syncDir('/d', { open: fakeOpen(null, code, log2) }), false, `sync ${code}`);
    assert.deepEqual(log2, ['open /d', 'sync', 'close'], 'the handle is closed');
  }
  for (const code of ['EACCES', 'EIO', 'ENOSPC', 'EMFILE']) {
    const log: string[] = [];
    await assert.rejects(syncDir('/d', { open: fakeOpen(null, code, log) }), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, code);
      assert.equal(err.message, `/d: cannot fsync folder: ${code}: refused`);
      assert.equal((err.cause as NodeJS.ErrnoException).code, code);
      return true;
    });
    assert.deepEqual(log, ['open /d', 'sync', 'close'], `sync ${code}: the handle is closed before the error`);
    await assert.rejects(syncDir('/d', { open: fakeOpen(code, null, []) }), new RegExp(`^Error: /d: cannot fsync folder: ${code}`));
  }
  // Linux's /proc refuses fsync with EINVAL for real
  if (process.platform === 'linux') assert.equal(await syncDir('/proc'), false);
});
