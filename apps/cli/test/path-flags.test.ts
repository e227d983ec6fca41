/**
 * Path flags checked with the other flags (issue 23): a missing --weights and --data (or image) are named
 * together in one line before any work (no backend line), and a weights file of the wrong kind is named
 * as such. One child process for the line a user sees; the rest in-process (refusedInProcess).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { refusedInProcess, vitreg } from './helpers.ts';

test('discover --weights a --data b: both named in one line, exit 2, no backend started', async () => {
  const r = await vitreg(['discover', '--weights', 'a.safetensors', '--data', 'b', '--out', 'd']);
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  assert.doesNotMatch(r.stderr, /backend/);
  assert.equal(
    r.stderr,
    'vitreg discover: --data: b does not exist; --weights: a.safetensors does not exist (see vitreg discover --help)\n',
  );
});

test('features/analyze/probe: a missing weights file or image, a missing --tensor file, a folder as --weights, a wrong kind, in one message', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-path-flags-'));
  try {
    const readme = join(dir, 'README.md');
    await writeFile(readme, '# vitreg\n\nVision Transformers with registers.\n');
    let r = await refusedInProcess(['features', '--weights', 'nope.pth', 'x.png', '--out', join(dir, 'f.safetensors')]);
    assert.equal(r.code, 2);
    assert.equal(
      r.stderr,
      'vitreg features: x.png: no such file or folder; --weights: nope.pth does not exist (see vitreg features --help)\n',
    );
    r = await refusedInProcess([
      'features',
      '--weights',
      readme,
      '--tensor',
      `${dir}/t.safetensors:x`,
      '--out',
      join(dir, 'f.safetensors'),
    ]);
    assert.equal(
      r.stderr,
      `vitreg features: --weights: ${readme} is not a safetensors file: it is text ("# vitreg..."); ` +
        `--tensor: ${dir}/t.safetensors does not exist (see vitreg features --help)\n`,
    );
    r = await refusedInProcess(['analyze', '--weights', dir, '--weights-b', join(dir, 'b.pth'), 'y.png', '--out', dir]);
    assert.match(
      r.stderr,
      /^vitreg analyze: --weights: \S+ is a folder, not a file; --weights-b: \S+b\.pth does not exist \(see vitreg analyze --help\)$/m,
    );
    r = await refusedInProcess(['probe', '--weights', join(dir, 'w.onnx'), '--data', 'synthetic', '--task', 'bogus', '--out', dir]);
    assert.match(r.stderr, /--task: expected one of .*; --weights: \S+w\.onnx does not exist \(see vitreg probe --help\)$/m);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('convert and registers find: a missing input named with the other flag problems, in one message', async () => {
  let r = await refusedInProcess(['convert', 'nope.pth', '--out', 'x.bin', '--dtype', 'f8']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^vitreg convert: .*--dtype: .*; .*--out: expected a \.safetensors path, got x\.bin; nope\.pth does not exist/m);
  r = await refusedInProcess(['registers', 'find', '--weights', 'w.safetensors', 'gone.png', '--out', 'n.json', '--top-k', 'x']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--top-k: .*gone\.png: no such file or folder/);
  assert.match(r.stderr, /--weights: w\.safetensors does not exist/);
});
