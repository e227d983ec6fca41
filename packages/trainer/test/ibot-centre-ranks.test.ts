/**
 * The iBOT centre when a rank masked no patch (a small per-rank batch can draw masks of zero patches):
 * every rank still all-reduces the same lengths (its `rankMean` is zeros with a share of 0), and the
 * centres both ranks end with are the EMA of the mean over the ranks that had rows: the iBOT centre takes
 * rank 0's batch mean alone, the DINO centre the mean of both ranks'. Two Trainers in this process on an
 * in-memory 2-rank GradientSync (sinkhorn-step-case.ts), on each engine; rank 1's masks emptied before its
 * step. The expected centres are computed here from each rank's own batch means, taken before the
 * all-reduce; the rank's iBOT loss is 0 and the step's loss_ibot the mean over both ranks (it was NaN).
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { validateTrainConfig } from '../src/config-validate.js';
import type { PreparedBatch } from '../src/batch.js';
import type { ComputedStep, EngineFactory, StepEngine } from '../src/engine.js';
import { Trainer } from '../src/loop.js';
import { onnxRuntimeEngine } from '../src/onnx/engine.js';
import { tfjsEngine } from '../src/tfjs-engine.js';
import { useWasm } from './helpers.js';
import { SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';
import { inMemoryRanks } from './sinkhorn-step-case.js';

before(useWasm);

const config = validateTrainConfig({
  preset: 'tiny-dino',
  model: { arch: 'vit_micro_patch8_reg4', depth: 1, drop_path_rate: 0 },
  data: { source: 'synthetic', train_size: 16, val_size: 4 },
  train: { steps: 1, batch_size: 4, eval_every: 0, checkpoint_every: 0, knn_train_size: 4, centering: 'centering' },
  dino: { head_n_prototypes: 32, head_hidden_dim: 32, head_bottleneck_dim: 16 },
  crops: { local_crops_number: 2 },
});

/** `factory`'s engine; on rank 1 every mask emptied before the step; each rank's means kept as computed. */
function wrap(factory: EngineFactory, rank: number, means: Float32Array[][], parts: Record<string, number>[]): EngineFactory {
  return (ctx) => {
    const inner = factory(ctx);
    return new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'computeStep') {
          return async (
            batch: PreparedBatch,
            ...rest: [Parameters<StepEngine['computeStep']>[1], Parameters<StepEngine['computeStep']>[2]]
          ) => {
            if (rank === 1 && batch.objective === 'dino' && batch.masks) {
              batch = { ...batch, masks: { masks: new Float32Array(batch.masks.masks.length), indices: [], weights: new Float32Array(0) } };
            }
            const r: ComputedStep = await target.computeStep(batch, ...rest);
            means[rank] = r.means.map((m) => Float32Array.from(m));
            parts[rank] = { ...r.parts };
            return r;
          };
        }
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
  };
}

for (const [name, factory] of [
  ['tfjs', tfjsEngine],
  ['onnxruntime', onnxRuntimeEngine({ threads: 1 })],
] as const) {
  test(`${name}: a rank that masked no patch leaves the iBOT centre to the ranks that did; the DINO centre takes both`, async (t) => {
    if (name === 'onnxruntime' && !(await tryOrt())) return t.skip(SKIP_NO_ORT);
    const means: Float32Array[][] = [];
    const parts: Record<string, number>[] = [];
    const syncs = inMemoryRanks(2);
    const ranks = syncs.map((sync, r) => new Trainer(config, { engine: wrap(factory, r, means, parts), sync }));
    try {
      // As train() starts a fresh run: rank 0's teacher from its student, then every rank takes rank 0's state.
      ranks[0]!.initTeacher();
      await Promise.all(ranks.map((tr) => tr.syncState()));
      const metrics = await Promise.all(ranks.map((tr) => tr.trainStep()));
      // The iBOT loss of a rank that masked nothing is 0, and the step's metric the mean over both ranks.
      assert.equal(parts[1]!.loss_ibot, 0);
      assert.ok(parts[0]!.loss_ibot! > 0);
      assert.ok(
        Math.abs(metrics[0]!.loss_ibot! - parts[0]!.loss_ibot! / 2) <= 1e-6 * parts[0]!.loss_ibot!,
        `loss_ibot ${metrics[0]!.loss_ibot}`,
      );
      const K = config.dino.head_n_prototypes;
      const [dino0, ibot0] = means[0]!;
      const [dino1, ibot1] = means[1]!;
      assert.equal(means[0]!.length, 2, 'rank 0: DINO and iBOT centres');
      assert.equal(means[1]!.length, 2, 'rank 1 sends its iBOT part too');
      assert.equal(ibot0![K], 1, 'rank 0 masked patches');
      assert.deepEqual([...ibot1!], new Array(K + 1).fill(0), 'rank 1: zeros and a share of 0');
      assert.equal(dino1![K], 1);
      const m = config.dino.center_momentum;
      for (const tr of ranks) {
        const s = tr.engine.exportState().tensors;
        for (let i = 0; i < K; i++) {
          const ibot = (1 - m) * ibot0![i]!;
          const dino = (1 - m) * ((dino0![i]! + dino1![i]!) / 2);
          assert.ok(
            Math.abs(s['center.ibot']![i]! - ibot) <= 1e-6 * Math.max(1, Math.abs(ibot)),
            `iBOT centre [${i}]: ${s['center.ibot']![i]} vs ${ibot}`,
          );
          assert.ok(
            Math.abs(s['center.dino']![i]! - dino) <= 1e-6 * Math.max(1, Math.abs(dino)),
            `DINO centre [${i}]: ${s['center.dino']![i]} vs ${dino}`,
          );
        }
      }
    } finally {
      for (const tr of ranks) tr.dispose();
    }
  });
}
