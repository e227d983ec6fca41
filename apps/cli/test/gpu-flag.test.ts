/**
 * --gpu N (the webgpu backend's adapter, issue 13): every command that starts a backend parses it, and a
 * bad value is one line naming --gpu before any work (no backend started, no output written).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { refusedInProcess, vitreg } from './helpers.ts';

/** stderr is exactly one line, "vitreg <command>: <message>". */
function oneLine(stderr: string, command: string, message: string): void {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line, got:\n${stderr}`);
  assert.equal(lines[0], `vitreg ${command}: ${message}`);
}

test('a bad --gpu is one line naming it, before any work', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vitreg-gpu-'));
  try {
    // One process shows the line main prints; the others run in-process (the same message and exit code).
    const [features, analyze, train, spaced] = await Promise.all([
      refusedInProcess([
        'features',
        '--gpu',
        'x',
        '--backend',
        'cpu',
        '--engine',
        'tfjs',
        '--weights',
        join(dir, 'missing.safetensors'),
        join(dir, 'a.png'),
        '--out',
        join(dir, 'o.safetensors'),
      ]),
      refusedInProcess([
        'analyze',
        join(dir, 'a.png'),
        '--weights',
        join(dir, 'missing.safetensors'),
        '--out',
        join(dir, 'report'),
        '--gpu=-1',
      ]),
      refusedInProcess(['train', '--preset', 'tiny-supervised', '--nodes', '2', '--gpu', '1.5', '--out', join(dir, 'run')]),
      // Node's parser refuses "--gpu -1" with its hint on a second line: the one line says it.
      vitreg(['features', '--gpu', '-1', join(dir, 'a.png')]),
    ]);
    assert.equal(spaced.code, 2);
    // Every flag problem in one line (issue 23): a negative number is the flag's value, refused as such.
    oneLine(
      spaced.stderr,
      'features',
      '--out OUT.safetensors is required; --weights FILE is required (.safetensors, .pth or an .onnx from vitreg export); ' +
        `--gpu: expected an integer >= 0, got "-1"; ${join(dir, 'a.png')}: no such file or folder (see vitreg features --help)`,
    );
    assert.equal(features.code, 2);
    // The missing files are named with it (issue 23: every problem in the one line).
    oneLine(
      features.stderr,
      'features',
      `--gpu: expected an integer >= 0, got "x"; ${join(dir, 'a.png')}: no such file or folder; ` +
        `--weights: ${join(dir, 'missing.safetensors')} does not exist (see vitreg features --help)`,
    );
    assert.equal(analyze.code, 2);
    oneLine(
      analyze.stderr,
      'analyze',
      `--gpu: expected an integer >= 0, got "-1"; --weights: ${join(dir, 'missing.safetensors')} does not exist (see vitreg analyze --help)`,
    );
    assert.equal(train.code, 2);
    oneLine(train.stderr, 'train', '--gpu: expected an integer >= 0, got "1.5"');
    // Nothing was written: the error came before the outputs (and, for train, before the job).
    for (const p of ['o.safetensors', 'report', 'run']) assert.equal(existsSync(join(dir, p)), false, p);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--gpu N is accepted by features, discover, probe and train', async () => {
  // Each run stops at the first check after parsing, so the flag got past parseArgs' strict mode.
  const [features, discover, probe, train] = await Promise.all([
    refusedInProcess(['features', '--gpu', '0', 'a.png']),
    refusedInProcess(['discover', '--gpu', '1', '--weights', 'w.safetensors']),
    refusedInProcess(['probe', '--gpu', '0', '--weights', 'w.safetensors']),
    vitreg(['train', '--preset', 'tiny-supervised', '--registers', '2', '--gpu', '0', '--print-config']),
  ]);
  // Every missing flag in the one line (issue 23).
  oneLine(
    features.stderr,
    'features',
    '--out OUT.safetensors is required; --weights FILE is required (.safetensors, .pth or an .onnx from vitreg export); a.png: no such file or folder (see vitreg features --help)',
  );
  oneLine(
    discover.stderr,
    'discover',
    '--out DIR is required; give exactly one input: --data SRC, image files, or --tensor FILE.safetensors[:NAME]; --weights: w.safetensors does not exist (see vitreg discover --help)',
  );
  oneLine(
    probe.stderr,
    'probe',
    '--data DIR|synthetic is required; --out DIR is required; --weights: w.safetensors does not exist (see vitreg probe --help)',
  );
  assert.equal(train.code, 0, train.stderr);
  assert.equal(JSON.parse(train.stdout).model.num_register_tokens, 2);
  // An unknown flag is still refused, so acceptance above is not parseArgs being lax.
  const unknown = await refusedInProcess(['features', '--gpus', '0', 'a.png']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /Unknown option '--gpus'/);
});
