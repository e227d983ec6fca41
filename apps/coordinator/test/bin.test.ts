/** The vitreg-coordinator command: its JSON line, serving, signals, stdin, bad flags and --help. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { childNodeArgs } from '@vitreg/core';
import { CoordinatorClient } from '@vitreg/proto';
import { JOB, ROOT, TOKEN, joinAs, until } from './helpers.ts';

// From the sources, or from the built dist where the unit suite asks for it (VITREG_CHILDREN_FROM_DIST).
const BIN = childNodeArgs(join(ROOT, 'apps', 'coordinator', 'src', 'main.ts'), ['--conditions=vitreg-source', '--import', 'tsx']);

test('vitreg-coordinator: prints its address as one JSON line, serves, closes on SIGTERM with exit 1', async () => {
  const child = spawn(process.execPath, [...BIN, '--host', '127.0.0.1', '--port', '0', '--max-workers', '2', '--job-id', JOB], {
    cwd: ROOT,
    env: { ...process.env, VITREG_TOKEN: TOKEN },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  try {
    const line = await until('the JSON line', () => (out.includes('\n') ? out.split('\n')[0] : undefined), 15_000);
    const info = JSON.parse(line);
    assert.equal(info.job, JOB);
    assert.match(info.coordinator, /^127\.0\.0\.1:\d+$/);
    const c = new CoordinatorClient(info.coordinator, grpc.credentials.createInsecure());
    try {
      await joinAs(c, 'a');
    } finally {
      c.close();
    }
    child.kill('SIGTERM');
    assert.equal(await exited, 1);
    assert.match(err, /\[coordinator\] join a /);
    assert.match(err, /\[coordinator\] SIGTERM: closing/);
  } finally {
    child.kill('SIGKILL');
  }
});

test('vitreg-coordinator --exit-with-stdin: exits (1) when its stdin closes', async () => {
  const child = spawn(
    process.execPath,
    [...BIN, '--host', '127.0.0.1', '--port', '0', '--max-workers', '1', '--token', TOKEN, '--exit-with-stdin'],
    {
      cwd: ROOT,
      env: Object.fromEntries(
        Object.entries(process.env).filter(([k]) => !['VITREG_JOB_ID', 'TORCHELASTIC_RUN_ID', 'SLURM_JOB_ID'].includes(k)),
      ),
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  try {
    const info = JSON.parse(await until('the JSON line', () => (out.includes('\n') ? out.split('\n')[0] : undefined), 15_000));
    assert.equal(info.job, 'vitreg');
    child.stdin.end();
    assert.equal(await exited, 1);
    assert.match(err, /\[coordinator\] stdin closed: closing/);
  } finally {
    child.kill('SIGKILL');
  }
});

test('vitreg-coordinator: a missing token, a bad flag, --help', () => {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['VITREG_TOKEN', 'VITREG_TOKEN_FILE', 'WORLD_SIZE', 'SLURM_NTASKS']) delete env[k];
  const run = (...args: string[]) => spawnSync(process.execPath, [...BIN, ...args], { cwd: ROOT, env, encoding: 'utf8', timeout: 20_000 });
  const noToken = run('--max-workers', '2');
  assert.equal(noToken.status, 2);
  assert.match(noToken.stderr, /--token: the job token is required/);
  assert.equal(noToken.stdout, '');
  const bad = run('--token', 'x', '--max-workers', 'two');
  assert.equal(bad.status, 2);
  assert.equal(bad.stderr.trim().split('\n').length, 1);
  assert.match(bad.stderr, /--max-workers: expected an integer >= 1, got "two"/);
  const noMax = run('--token', 'x');
  assert.equal(noMax.status, 2);
  assert.match(noMax.stderr, /--max-workers: required/);
  const unknown = run('--token', 'x', '--max-workers', '1', '--bogus');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /--bogus/);
  const missingFile = run('--token-file', '/nonexistent/token', '--max-workers', '1');
  assert.equal(missingFile.status, 2);
  assert.match(missingFile.stderr, /--token-file: cannot read \/nonexistent\/token: ENOENT/);
  const help = run('--help');
  assert.equal(help.status, 0);
  assert.match(help.stdout, /Usage: vitreg-coordinator/);
});
