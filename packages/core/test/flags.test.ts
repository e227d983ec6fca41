/**
 * @vitreg/core's Flags (issue 23): the program named in the help pointer, path flags checked for existence
 * and kind with the other flags, plain input paths checked, globs left to the lister.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FlagError, Flags, pathProblem } from '@vitreg/core';

test('Flags.path / inputs: missing paths and wrong kinds named with the other problems, one FlagError', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vitreg-flags-'));
  try {
    const file = join(dir, 'w.safetensors');
    writeFileSync(file, 'x');
    const f = new Flags(
      'vitreg-x',
      ['--weights', dir, '--weights', file, '--data', file, '--labels', 'synthetic', '--steps', '-3', 'a.png', `${dir}/*.png`],
      {
        weights: { type: 'string', multiple: true },
        data: { type: 'string' },
        labels: { type: 'string' },
        steps: { type: 'string' },
      },
    );
    f.path('weights', 'file');
    f.path('data', 'folder');
    f.path('labels', 'any', (v) => v === 'synthetic');
    f.int('steps', 1);
    f.inputs(f.positionals);
    assert.throws(
      () => f.done(),
      (err: Error) => {
        assert.ok(err instanceof FlagError);
        assert.equal(err.exitCode, 2);
        assert.equal(
          err.message,
          `--weights: ${dir} is a folder, not a file; --data: ${file} is not a folder; ` +
            '--steps: expected an integer >= 1, got "-3"; a.png: no such file or folder (see vitreg-x --help)',
        );
        return true;
      },
    );
    assert.equal(pathProblem(join(dir, 'none'), 'any'), `${join(dir, 'none')} does not exist`);
    assert.equal(pathProblem(file, 'file'), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
