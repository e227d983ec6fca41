/**
 * The probe's tfjs forward checks each batch against the backend before it is allocated (issue 21): a
 * batch too large for an injected limit (VITREG_MEMORY_LIMIT) is refused with the numbers and the largest
 * batch that fits, in the token probe, LOST and the dense probe's per-block features; that batch runs.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { initBackend, InputError, SyntheticDataset } from '@vitreg/core';
import { getConfig, VisionTransformer, vitMemoryNeed } from '@vitreg/registers';
import { discoverBatch } from '../src/discover.js';
import { batchTensor, prepareInput } from '../src/extract.js';
import { runProbe } from '../src/run.js';

await initBackend('wasm', { log: () => {} });

test('a batch that cannot fit is refused before its forward, naming the batch that fits', async (t) => {
  const c = getConfig('vit_micro_patch8_reg4');
  const model = new VisionTransformer(c, { seed: 1, trainable: false });
  t.after(() => model.dispose());
  const saved = process.env.VITREG_MEMORY_LIMIT;
  t.after(() => (saved === undefined ? delete process.env.VITREG_MEMORY_LIMIT : (process.env.VITREG_MEMORY_LIMIT = saved)));
  // a limit that holds the weights and 2 images' forward at 32 px, not 8
  const one = vitMemoryNeed(c, { batch: 1, imageSize: 32 });
  const two = vitMemoryNeed(c, { batch: 2, imageSize: 32 });
  process.env.VITREG_MEMORY_LIMIT = String(Math.floor(two.weights + two.activations + (two.activations - one.activations) / 10));

  const train = { dataset: new SyntheticDataset({ seed: 1, count: 8, size: 32 }) };
  const held = { dataset: new SyntheticDataset({ seed: 1, count: 4, size: 32, split: 'val' }) };
  const opts = { task: 'class' as const, token: 'cls' as const, size: 32, steps: 5 };
  await assert.rejects(runProbe(model, train, held, { ...opts, batchSize: 8 }), (err: Error) => {
    assert.ok(err instanceof InputError);
    assert.match(
      err.message,
      /^the probe forward \(0\.\d+M parameters, batch 8\) needs about [\d.]+ [KM]iB \(weights [\d.]+ [KM]iB \+ activations [\d.]+ [KM]iB\) on the wasm backend, more than VITREG_MEMORY_LIMIT of [\d.]+ [KM]iB; ways out: .*a smaller batch \(--batch-size 2 fits\) or image size/,
    );
    return true;
  });
  const report = await runProbe(model, train, held, { ...opts, batchSize: 2 });
  assert.deepEqual([report.train, report.test], [8, 4]);

  // LOST's forward, and the dense probe's per-block tokens (every block's tokens are outputs)
  const items = await Promise.all([0, 1, 2, 3].map((i) => train.dataset.get(i)));
  const inputs = items.map((it) => prepareInput(it, { kind: 'square', size: 32 }, c.patch_size));
  assert.throws(() => discoverBatch(model, inputs), /the probe forward \(0\.\d+M parameters, batch 4\) .*--batch-size 2 fits/);
  assert.equal(discoverBatch(model, inputs.slice(0, 2)).length, 2);
  batchTensor(inputs.slice(0, 2), { model }).dispose();
  assert.throws(() => batchTensor(inputs.slice(0, 2), { model, outputs: { layers: true, attention: 'all' } }), /batch 2\) needs about/);
});
