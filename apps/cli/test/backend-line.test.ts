/**
 * The backend and engines said once, short (issue 23): `backend: wasm (auto)` (the reasons the faster
 * ones were skipped only with --verbose), and the demo says which engine did what, in its console and
 * in its report alike.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
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

test('the demo says once per part which engine did what, and its report says the same', async () => {
  const out = join(dir, 'demo');
  const r = await vitreg(['demo', '--steps', '2', '--images', '1', '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  // No backend line of its own: each training job's rank 0 says its backend once, the demo the rest.
  const lines = backendLines(r.stderr);
  assert.equal(lines.length, 2, r.stderr);
  for (const l of lines) assert.match(l, /^\[worker-0\] backend: [\w-]+ \(auto\)$/);
  const m = /^demo: analysing both models: forward passes on (.+); token analysis and figures on tfjs (\S+)$/m.exec(r.stderr);
  assert.ok(m, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`^demo: LOST object discovery: forward passes on ${m[1]!.replace(/[()]/g, '\\$&')}; LOST on tfjs ${m[2]}$`, 'm'),
  );
  const summary = JSON.parse(await readFile(join(out, 'summary.json'), 'utf8'));
  assert.deepEqual(summary.engines, { forward: m[1], analysis: `tfjs ${m[2]}` });
  const html = await readFile(join(out, 'analysis', 'report.html'), 'utf8');
  const engine = m[1]!.startsWith('onnxruntime') ? 'onnxruntime' : 'tfjs';
  assert.match(html, new RegExp(`forward passes: ${engine}[^<]*; token analysis and figures: tfjs ${m[2]}`));
});
