/** childNodeArgs / distEntry: how a bin starts another one, from the sources or from dist; the malloc settings they start with. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHILDREN_FROM_DIST, childNodeArgs, distEntry, MALLOC_TUNABLES, mallocTunablesMissing, withMallocTunables } from '../src/index.ts';

test('childNodeArgs: a built file as is; a source with the source flags, or its dist with VITREG_CHILDREN_FROM_DIST=1', () => {
  const pkg = mkdtempSync(join(tmpdir(), 'vitreg-node-entry-'));
  const saved = process.env[CHILDREN_FROM_DIST];
  try {
    mkdirSync(join(pkg, 'src'));
    mkdirSync(join(pkg, 'dist'));
    writeFileSync(join(pkg, 'dist', 'main.js'), '');
    const src = join(pkg, 'src', 'main.ts');
    delete process.env[CHILDREN_FROM_DIST];
    assert.deepEqual(childNodeArgs(join(pkg, 'dist', 'main.js'), ['--flag']), [join(pkg, 'dist', 'main.js')]);
    assert.deepEqual(childNodeArgs(src, ['--conditions=vitreg-source', '--import', 'tsx']), [
      '--conditions=vitreg-source',
      '--import',
      'tsx',
      src,
    ]);
    process.env[CHILDREN_FROM_DIST] = '1';
    assert.deepEqual(childNodeArgs(src, ['--flag']), [join(pkg, 'dist', 'main.js')]);
    assert.equal(distEntry(src), join(pkg, 'dist', 'main.js'));
    // Not built: an error naming the file it wanted.
    assert.throws(
      () => childNodeArgs(join(pkg, 'src', 'thread.ts')),
      (e: Error) => e.message.includes(join(pkg, 'dist', 'thread.js')),
    );
    assert.throws(() => distEntry(join(pkg, 'main.ts')), /not a \.ts file in a package's src\/ folder/);
  } finally {
    if (saved === undefined) delete process.env[CHILDREN_FROM_DIST];
    else process.env[CHILDREN_FROM_DIST] = saved;
    rmSync(pkg, { recursive: true, force: true });
  }
});

test('withMallocTunables: MALLOC_TUNABLES first, the caller’s own GLIBC_TUNABLES after (they win), once', () => {
  assert.equal(MALLOC_TUNABLES, 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776');
  assert.deepEqual(withMallocTunables({ A: '1' }), { A: '1', GLIBC_TUNABLES: MALLOC_TUNABLES });
  assert.equal(
    withMallocTunables({ GLIBC_TUNABLES: 'glibc.malloc.mmap_max=5' }).GLIBC_TUNABLES,
    `${MALLOC_TUNABLES}:glibc.malloc.mmap_max=5`,
  );
  // Already there (as the bins' first line leaves it: with a trailing ':' when the caller had none): unchanged.
  for (const own of [MALLOC_TUNABLES, `${MALLOC_TUNABLES}:`, `${MALLOC_TUNABLES}:glibc.malloc.tcache_count=0`]) {
    assert.equal(withMallocTunables({ GLIBC_TUNABLES: own }).GLIBC_TUNABLES, own);
  }
  const env = { GLIBC_TUNABLES: 'x=1' };
  withMallocTunables(env);
  assert.equal(env.GLIBC_TUNABLES, 'x=1', 'the caller’s object is not changed');
});

// What the settings are for, measured in a child Node: a 64 MiB buffer freed and allocated again. With
// glibc's defaults it is a fresh mapping each time (every page faulted in again: 16,384 faults); with
// MALLOC_TUNABLES it comes from the heap and the second one reuses the first one's pages.
const glibc =
  process.platform === 'linux' &&
  Boolean((process.report?.getReport() as { header?: { glibcVersionRuntime?: string } })?.header?.glibcVersionRuntime);
test('MALLOC_TUNABLES: a freed 64 MiB block is reused without faulting its pages in again', { skip: glibc ? false : 'glibc only' }, () => {
  const script = `
    const heap = () => { const l = require('fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').find((x) => x.endsWith('[heap]'));
      if (!l) return 0; const [a, b] = l.split(' ')[0].split('-').map((h) => parseInt(h, 16)); return b - a; };
    let a = new ArrayBuffer(64 << 20); new Uint8Array(a).fill(1);
    const heapWithA = heap();
    a = null; gc(); gc();
    setTimeout(() => {
      gc();
      const f0 = process.resourceUsage().minorPageFault;
      const b = new ArrayBuffer(64 << 20); new Uint8Array(b).fill(2);
      console.log(JSON.stringify({ heapWithA, faults: process.resourceUsage().minorPageFault - f0 }));
    }, 50);`;
  const run = (env: NodeJS.ProcessEnv) => {
    const r = spawnSync(process.execPath, ['--expose-gc', '--single-threaded-gc', '-e', script], { env, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { heapWithA: number; faults: number };
  };
  // A plain Node (not a child of the test runner: NODE_TEST_CONTEXT changes what it allocates and when),
  // its GC on one thread (--single-threaded-gc: the freed buffer is given back to malloc by the gc() calls,
  // not later by a background sweeper).
  const plain = { ...process.env };
  for (const k of ['GLIBC_TUNABLES', 'NODE_TEST_CONTEXT', 'NODE_OPTIONS']) delete plain[k];
  const before = run(plain);
  const after = run(withMallocTunables(plain));
  // 16,384 pages of 4 KiB (1,024 of 64 KiB on some arm64 kernels).
  assert.ok(before.heapWithA < 64 << 20, `glibc's default: the block is a mapping of its own (heap ${before.heapWithA} bytes)`);
  assert.ok(before.faults >= 1000, `glibc's default: the second block faults its pages in (${before.faults} faults)`);
  assert.ok(after.heapWithA >= 64 << 20, `with MALLOC_TUNABLES the block is in the heap (heap ${after.heapWithA} bytes)`);
  assert.ok(
    after.faults * 10 < before.faults,
    `with MALLOC_TUNABLES the second block reuses the first one's pages (${after.faults} faults)`,
  );
});

test('mallocTunablesMissing: on glibc, true unless GLIBC_TUNABLES holds MALLOC_TUNABLES', { skip: process.platform !== 'linux' }, () => {
  assert.equal(mallocTunablesMissing({}), glibc);
  assert.equal(mallocTunablesMissing({ GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0' }), glibc);
  assert.equal(mallocTunablesMissing({ GLIBC_TUNABLES: `${MALLOC_TUNABLES}:` }), false);
  assert.equal(mallocTunablesMissing({ GLIBC_TUNABLES: `${MALLOC_TUNABLES}:glibc.malloc.tcache_count=0` }), false);
});
