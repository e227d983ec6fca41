/**
 * The README's tiny-run accuracies, asserted (on demand: `VITREG_TINY_RUNS=1 node --conditions=vitreg-source
 * --import tsx --test test/tiny-runs.test.ts`, about 5 CPU minutes; skipped in `npm test`): the three CPU presets
 * trained end to end exactly as `vitreg train --preset NAME` trains them, on the commands' default engine
 * (auto: ONNX Runtime where onnxruntime-node loads, else tfjs on wasm), and their final evaluation against
 * the README's numbers: `tiny-supervised` about 0.97 validation accuracy (at least 0.95) in 1200 steps,
 * `tiny-dino` about 0.74 k-NN accuracy of the teacher's CLS (at least 0.70) in 300 steps (tfjs: 0.97 and
 * 0.73), `tiny-clip` about 0.9 zero-shot top-1 on the 5 shapes (at least 0.8, the goal) in 9000 steps
 * (onnxruntime, one seed); chance is 0.2. `npm run bench -- tiny-runs` prints the same runs' times. The
 * regular suite checks that the clip objective learns on its own, at a lower bar:
 * packages/trainer/test/clip-learns.test.ts (tiny-clip cut to 1000 steps, at least 0.5).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '@vitreg/core';
import { presetConfig, resolveTrainEngine, train } from '@vitreg/trainer';

const on = process.env.VITREG_TINY_RUNS === '1';
const CLAIMS = [
  { preset: 'tiny-supervised', metric: 'val_accuracy', claim: 0.97, atLeast: 0.95, steps: 1200 },
  { preset: 'tiny-dino', metric: 'knn_accuracy', claim: 0.74, atLeast: 0.7, steps: 300 },
  { preset: 'tiny-clip', metric: 'zeroshot_top1', claim: 0.9, atLeast: 0.8, steps: 9000 },
] as const;

for (const c of CLAIMS) {
  test(
    `${c.preset} reaches about ${c.claim} ${c.metric} (at least ${c.atLeast}) in ${c.steps} steps`,
    { skip: on ? false : 'set VITREG_TINY_RUNS=1 (about 5 CPU minutes on onnxruntime, 15 on tfjs)' },
    async () => {
      await initBackend('wasm', { log: () => {} });
      // The commands' default engine (auto: onnxruntime where onnxruntime-node loads, else tfjs).
      const engine = await resolveTrainEngine({ engine: 'auto' });
      const config = presetConfig(c.preset);
      assert.equal(config.train.steps, c.steps);
      const out = await mkdtemp(join(tmpdir(), `vitreg-${c.preset}-`));
      try {
        const res = await train(config, { outDir: out, progress: false, engine: engine.factory });
        // zeroshot_top1 (objective clip) is not a field of EvalResult: the clip loop writes its own.
        const got = (res.eval as unknown as Record<string, number>)[c.metric]!;
        console.log(`# ${c.preset} on ${engine.description}: ${c.metric} ${got}`);
        assert.ok(got >= c.atLeast, `${c.preset}: ${c.metric} ${got}, the README says about ${c.claim}`);
      } finally {
        await rm(out, { recursive: true, force: true });
      }
    },
  );
}
