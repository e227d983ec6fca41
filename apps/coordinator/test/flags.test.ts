/**
 * vitreg-coordinator's flag errors (issue 23): every bad flag named in one line (exit 2) before it
 * listens; a negative number is an invalid value, not a missing one. Runs of the bin: the line a user sees.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { childNodeArgs, FlagError } from '@vitreg/core';
import { ROOT } from './helpers.ts';

const BIN = childNodeArgs(join(ROOT, 'apps', 'coordinator', 'src', 'main.ts'), ['--conditions=vitreg-source', '--import', 'tsx']);

test('vitreg-coordinator --min-workers -3 --heartbeat-ms x: both in one line, exit 2, not listening', () => {
  const r = spawnSync(process.execPath, [...BIN, '--token', 't', '--max-workers', '2', '--min-workers', '-3', '--heartbeat-ms', 'x'], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    'vitreg-coordinator: --min-workers: expected an integer >= 1, got "-3"; --heartbeat-ms: expected an integer >= 1, got "x" ' +
      '(see vitreg-coordinator --help)\n',
  );
});

test('vitreg-coordinator: a missing token, a lone --tls-cert, a bad port and an unknown flag together', () => {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['VITREG_TOKEN', 'VITREG_TOKEN_FILE']) delete env[k];
  const r = spawnSync(process.execPath, [...BIN, '--max-workers', '1', '--port', '70000', '--tls-cert', 'c.pem', '--jobid', 'x'], {
    cwd: ROOT,
    env,
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(r.status, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  for (const part of [
    "Unknown option '--jobid' (did you mean --job-id?)",
    '--port: expected 0..65535, got 70000',
    '--token: the job token is required',
    '--tls-key: required with --tls-cert',
  ])
    assert.ok(lines[0]!.includes(part), `${part} in: ${lines[0]}`);
  assert.ok(new FlagError('x').exitCode === 2);
});
