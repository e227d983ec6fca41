/**
 * The backend said once, short (issue 23): `backend: wasm (auto)` (the reasons the faster ones were
 * skipped only with --verbose). That the demo says which engine did what, in its console and in its report
 * alike, is checked on demo.test.ts's run (one demo run for both).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { vitreg } from './helpers.ts';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-backend-line-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const backendLines = (stderr: string) => stderr.split('\n').filter((l) => /backend: /.test(l));

test('one short backend line; --verbose adds why the faster backends were skipped', async () => {
  const config = join(dir, 'tiny.json');
  await writeFile(
    config,
    JSON.stringify({ preset: 'tiny-supervised', data: { train_size: 8, val_size: 4 }, train: { steps: 1, batch_size: 4 } }),
  );
  const args = (out: string, ...more: string[]) => ['train', '--config', config, '--out', join(dir, out), '--no-progress', ...more];
  const [plain, verbose] = await Promise.all([vitreg(args('a')), vitreg(args('b', '--verbose'))]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(verbose.code, 0, verbose.stderr);
  const [line] = backendLines(plain.stderr);
  assert.deepEqual(backendLines(plain.stderr).length, 1, plain.stderr);
  assert.match(line!, /^\[vitreg\] backend: [\w-]+ \(auto\)$/);
  assert.ok(line!.length < 40, line);
  const [long] = backendLines(verbose.stderr);
  // The first backend auto tries skips nothing; on this machine (no tfjs-node) wasm wins after three skips.
  if (!/tensorflow-gpu \(auto/.test(long!)) assert.match(long!, /^\[vitreg\] backend: [\w-]+ \(auto; tensorflow-gpu: skipped \(/);
});
