import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateTrainConfig } from '../src/config.js';
import { train } from '../src/trainer.js';
import { useWasm } from './helpers.js';

before(useWasm);

test('tiny supervised run on the synthetic shapes: validation accuracy clearly above chance', async () => {
  const out = await mkdtemp(join(tmpdir(), 'vitreg-sup-'));
  try {
    // The tiny-supervised preset (ViT-micro/8 with 4 registers, 32 px, batch 32), shortened.
    const cfg = validateTrainConfig({ preset: 'tiny-supervised', data: { val_size: 300 }, train: { steps: 1000, eval_every: 0, checkpoint_every: 0 } });
    const res = await train(cfg, { outDir: out, progress: false });
    const acc = res.eval!.val_accuracy!;
    const chance = 1 / res.eval!.num_classes;
    // 300 val images: chance accuracy has a standard deviation of about 0.023; 0.3 is 4 of them above.
    assert.ok(acc >= 0.3, `val accuracy ${acc} is not clearly above chance (${chance})`);
    const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
    const mean = (xs: Record<string, number>[]) => xs.reduce((a, m) => a + m.loss!, 0) / xs.length;
    assert.ok(mean(lines.slice(-100)) < mean(lines.slice(0, 100)) - 0.1, 'the training loss did not fall');
    // No tensor leaks: the live tensor count is flat from step to step.
    assert.equal(lines[lines.length - 1]!.tf_tensors, lines[10]!.tf_tensors);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
