/** childNodeArgs / distEntry: how a bin starts another one, from the sources or from dist. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHILDREN_FROM_DIST, childNodeArgs, distEntry } from '../src/index.ts';

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
