/**
 * `vitreg demo` end to end, with a handful of training steps: its numbers recomputed, and (issue 23) the
 * engines said once per part, in its console and its report alike (one demo run serves both tests).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '@vitreg/core';
import { loadWeights } from '@vitreg/registers';
import { corlocOf, valAccuracyOf } from './demo-check.ts';
import { vitreg, type RunResult } from './helpers.ts';

let dir = '';
let r: RunResult;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-demo-'));
  r = await vitreg(['demo', '--steps', '12', '--images', '2', '--out', dir]);
});
after(async () => dir && rm(dir, { recursive: true, force: true }));

const backendLines = (stderr: string) => stderr.split('\n').filter((l) => /backend: /.test(l));

test('the demo says once per part which engine did what, and its report says the same', async () => {
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
  const summary = JSON.parse(await readFile(join(dir, 'summary.json'), 'utf8'));
  assert.deepEqual(summary.engines, { forward: m[1], analysis: `tfjs ${m[2]}` });
  const html = await readFile(join(dir, 'analysis', 'report.html'), 'utf8');
  const engine = m[1]!.startsWith('onnxruntime') ? 'onnxruntime' : 'tfjs';
  assert.match(html, new RegExp(`forward passes: ${engine}[^<]*; token analysis and figures: tfjs ${m[2]}`));
});

test('demo trains both models, analyses them, runs LOST and summarises', async () => {
  await initBackend('auto', { log: () => {} });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /registers\s+val accuracy\s+outlier patches\s+LOST CorLoc/);
  const summary = JSON.parse(await readFile(join(dir, 'summary.json'), 'utf8'));
  assert.deepEqual(
    summary.models.map((m: { registers: number }) => m.registers),
    [0, 4],
  );
  for (const m of summary.models) {
    // Recomputed from the checkpoint and from LOST's boxes (demo-check.ts), not read back from the commands.
    assert.ok(Math.abs(m.val_accuracy - (await valAccuracyOf(join(dir, `train-reg${m.registers}`)))) < 1e-9, 'val accuracy');
    assert.equal(m.corloc, await corlocOf(join(dir, 'discover', `reg${m.registers}`)), 'CorLoc');
    const model = await loadWeights(m.weights);
    assert.equal(model.config.num_register_tokens, m.registers);
    model.dispose();
  }
  assert.ok(existsSync(join(dir, 'analysis', 'report.html')));
  assert.ok(existsSync(join(dir, 'discover', 'sweep.png')));
  assert.ok(existsSync(join(dir, 'train-reg4', 'eval.json')));
  // A rerun resumes the finished runs instead of training again.
  const again = await vitreg(['demo', '--steps', '12', '--images', '2', '--out', dir]);
  assert.equal(again.code, 0, again.stderr);
  const metrics = (await readFile(join(dir, 'train-reg0', 'metrics.jsonl'), 'utf8')).trim().split('\n');
  assert.equal(metrics.filter((l) => !l.includes('"eval"')).length, 12, 'no step trained twice');
});
