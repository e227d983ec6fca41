import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateTrainConfig } from '../src/config-validate.js';
import { loadCheckpoint } from '../src/checkpoint.js';
import { train, Trainer } from '../src/loop.js';
import { defaultEngine, useWasm } from './helpers.js';

before(useWasm);

test('tiny DINO run: k-NN accuracy 0.5 and well above the untrained network, teacher neither constant nor uniform', async (t) => {
  const out = await mkdtemp(join(tmpdir(), 'vitreg-dino-'));
  try {
    // The tiny-dino preset (DINO + iBOT + KoLeo, 2 global + 2 local crops) cut from 300 to 100 steps;
    // k-NN over a bank of 500 training images, 300 val images. Measured (tfjs on wasm and onnxruntime): 0.59, untrained
    // 0.40 (the whole preset: 0.73); chance is 0.2 (standard deviation 0.023 on 300 images).
    const cfg = validateTrainConfig({
      preset: 'tiny-dino',
      data: { val_size: 300 },
      train: { steps: 100, eval_every: 0, checkpoint_every: 0, knn_train_size: 500 },
    });
    // The same network before any step (same seed, teacher = student): what the features give untrained.
    const untrained = new Trainer(cfg);
    untrained.initTeacher();
    const before = (await untrained.evaluate()).knn_accuracy!;
    untrained.dispose();
    // On the ONNX Runtime engine where it loads (the commands' default): its steps
    // equal the tfjs engine's within 1e-4 (onnx-engine tests), so the science checked here holds for both.
    const res = await train(cfg, { outDir: out, progress: false, engine: await defaultEngine() });
    const ev = res.eval!;
    assert.equal(ev.num_classes, 5);
    t.diagnostic(
      `k-NN accuracy ${ev.knn_accuracy} (untrained ${before}), teacher entropy ${ev.teacher_entropy} of ${Math.log(cfg.dino.head_n_prototypes)}, batch ${ev.teacher_batch_entropy}`,
    );
    assert.ok(ev.knn_accuracy! >= 0.5, `k-NN accuracy ${ev.knn_accuracy} is below 0.5 (chance 0.2)`);
    assert.ok(ev.knn_accuracy! >= before + 0.1, `k-NN accuracy ${ev.knn_accuracy} gained less than 0.1 over the untrained ${before}`);
    const logK = Math.log(cfg.dino.head_n_prototypes);
    // Not collapsed onto a few prototypes: the batch-mean distribution of the teacher stays spread.
    assert.ok(ev.teacher_batch_entropy! > 0.8 * logK, `teacher batch entropy ${ev.teacher_batch_entropy} of ${logK}`);
    // Not collapsed to the uniform distribution either: each image's distribution is sharper.
    assert.ok(ev.teacher_entropy! < logK - 0.05, `teacher entropy ${ev.teacher_entropy} is the uniform ${logK}`);
    assert.ok(ev.teacher_entropy! < ev.teacher_batch_entropy!, 'every image gets the same teacher distribution');
    // The centre follows the teacher's outputs: finite, and not a single dominant prototype.
    const ck = await loadCheckpoint(res.checkpoint);
    const center = Array.from(ck.heads['center.dino']!.data);
    assert.equal(center.length, cfg.dino.head_n_prototypes);
    assert.ok(center.every(Number.isFinite));
    const mean = center.reduce((a, b) => a + b, 0) / center.length;
    const spread = Math.max(...center) - Math.min(...center);
    assert.ok(spread > 0 && spread < 2, `centre spread ${spread} (teacher logits are cosines in [-1, 1])`);
    assert.ok(Math.abs(mean) < 1, `centre mean ${mean}`);
    const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    const last = lines[lines.length - 1]!;
    for (const k of ['loss_dino_global', 'loss_dino_local', 'loss_koleo', 'loss_ibot', 'teacher_temp', 'momentum', 'masked_patches']) {
      assert.equal(typeof last[k], 'number', k);
    }
    // The preset keeps the teacher at 0.04 throughout (no 0.04 -> 0.07 warm-up).
    assert.ok(
      lines.every((l) => l.teacher_temp === undefined || l.teacher_temp === 0.04),
      'teacher temperature other than 0.04',
    );
    assert.ok(
      lines.every((l) => l.loss === undefined || Number.isFinite(l.loss)),
      'a non-finite loss',
    );
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
