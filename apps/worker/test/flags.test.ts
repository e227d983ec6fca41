/**
 * vitreg-worker's flag errors (issue 23): every bad flag of a run named in one stderr line, exit 2, before
 * any work (no data opened, no coordinator joined or hosted); a negative number is an invalid value, not a
 * missing one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { childNodeArgs } from '@vitreg/core';

const ROOT = join(import.meta.dirname, '..', '..', '..');
const BIN = childNodeArgs(join(ROOT, 'apps', 'worker', 'src', 'main.ts'), ['--conditions=vitreg-source', '--import', 'tsx']);
const worker = (args: string[], env: NodeJS.ProcessEnv) =>
  spawnSync(process.execPath, [...BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env });

test('vitreg-worker --steps -3 --threads x: both named in one line, exit 2, nothing started', () => {
  const args = ['--preset', 'tiny-supervised', '--data', 'synthetic', '--steps', '-3', '--threads', 'x', '--token', 't'];
  const r = worker([...args, '--rank', '0', '--world-size', '1'], { ...process.env, MASTER_PORT: '1' });
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    'vitreg-worker: --threads: expected an integer >= 1, got "x"; --steps: expected an integer >= 1, got "-3" (see vitreg-worker --help)\n',
  );
});

test('vitreg-worker: an unknown flag, a missing path and an unreadable token file together', () => {
  const env = { ...process.env };
  for (const k of ['VITREG_TOKEN', 'VITREG_TOKEN_FILE', 'MASTER_ADDR']) delete env[k];
  const r = worker(
    ['--preset', 'tiny-supervised', '--data', '/nonexistent/images', '--token-file', '/nonexistent/token', '--stepz', '3', '--rank', '1'],
    env,
  );
  assert.equal(r.status, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  for (const part of [
    "Unknown option '--stepz' (did you mean --steps?)",
    '--token-file: cannot read /nonexistent/token: ENOENT',
    'no coordinator: give --coordinator HOST:PORT',
    '--data: /nonexistent/images does not exist',
  ])
    assert.ok(lines[0]!.includes(part), `${part} in: ${lines[0]}`);
});
