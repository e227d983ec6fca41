/** `vitreg demo` end to end, with a handful of training steps. */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '@vitreg/core';
import { loadWeights } from '@vitreg/registers';
import { corlocOf, valAccuracyOf } from './demo-check.ts';
import { vitreg } from './helpers.ts';

let dir = '';
after(async () => dir && rm(dir, { recursive: true, force: true }));

test('demo trains both models, analyses them, runs LOST and summarises', async () => {
  await initBackend('auto', { log: () => {} });
  dir = await mkdtemp(join(tmpdir(), 'vitreg-demo-'));
  const r = await vitreg(['demo', '--steps', '12', '--images', '2', '--out', dir]);
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
