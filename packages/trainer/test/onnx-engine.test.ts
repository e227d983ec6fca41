/**
 * The ONNX Runtime step engine (src/onnx/engine.ts) against the tfjs engine:
 * - its host-drawn initial weights equal the tfjs engine's bit for bit;
 * - its optimiser, clipping, EMA teacher and centres on the flat buffers (engine-optim.ts) give optim.ts's
 *   AdamW / LAMB results on random gradients with every multiplier of param-groups.ts;
 * - the same 10-step runs (tiny-supervised; a DeiT-III-like supervised run with LAMB, BCE, mixup / cutmix,
 *   drop path and micro-batches; tiny-dino; a DINOv2-objective run with Sinkhorn-Knopp, KoLeo, a separate
 *   iBOT head, SwiGLU, LayerScale, batch-subset drop path, layer-wise decay and a frozen last layer) end
 *   with weights within 1e-4 of each other, every loss and metric within 1e-3 relative;
 * - a checkpoint written by one engine resumes on the other and ends where an uninterrupted run ends.
 * The runs skip with one line where onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Rng } from '@vitreg/core';
import type { PartialTrainConfig, TrainConfig } from '../src/config.js';
import { modelConfig } from '../src/config.js';
import type { ComputedStep, EngineFactory, EngineState, StepSettings } from '../src/engine.js';
import { train } from '../src/loop.js';
import { onnxRuntimeEngine, OnnxRuntimeEngine } from '../src/onnx/engine.js';
import { TfjsEngine, tfjsEngine } from '../src/tfjs-engine.js';
import { useWasm } from './helpers.js';
import { keepingState, metricDiffs, metricLines, stateDiff, tinyRun } from './onnx-engine-helpers.js';
import { SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';

let dir: string;
before(async () => {
  await useWasm();
  dir = await mkdtemp(join(tmpdir(), 'vitreg-onnx-engine-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ctxOf = (config: TrainConfig) => ({ config, vit: modelConfig(config), numClasses: 5 });
const onnx = onnxRuntimeEngine({ threads: 1 });

/** The DINOv2 objective on a tiny model (see the module comment); LayerScale at 0.1: at 1e-5 every crop's CLS is the
 * same up to float32 noise at the start, and KoLeo's distances between them are that noise on either engine. */
const DINOV2_TINY: PartialTrainConfig = {
  model: { ffn_layer: 'swiglu', layerscale_init: 0.1, drop_path_rate: 0.4, drop_path_uniform: true, drop_path_batch_subset: true },
  train: { centering: 'sinkhorn_knopp' },
  ibot: { separate_head: true },
  optim: { layerwise_decay: 0.9, patch_embed_lr_mult: 0.2, clip_grad: 3, freeze_last_layer_steps: 3 },
};
/** DeiT-III's supervised recipe on a tiny model: LAMB, timm's weight-decay rule, BCE on mixup / cutmix, drop path, micro-batches. */
const DEIT_TINY: PartialTrainConfig = {
  model: { drop_path_rate: 0.1, drop_path_uniform: true, layerscale_init: 1e-4 },
  train: { micro_batch_size: 3 },
  optim: { optimizer: 'lamb', clip_grad: 0, weight_decay_rule: 'timm', eps: 1e-8 },
  supervised: { mixup_alpha: 0.8, cutmix_alpha: 1.0, bce_loss: true },
};

for (const [preset, extra] of [
  ['tiny-supervised', {}],
  ['tiny-dino', DINOV2_TINY],
] as const) {
  test(`${preset}${extra === DINOV2_TINY ? ' (DINOv2 objective)' : ''}: the initial weights drawn on the host equal the tfjs engine's`, () => {
    const config = tinyRun(preset, extra);
    const t = new TfjsEngine(ctxOf(config));
    const o = new OnnxRuntimeEngine(ctxOf(config));
    try {
      t.initTeacher();
      o.initTeacher();
      assert.deepEqual(
        o.parameters.map((p) => [p.name, p.shape]),
        t.parameters.map((p) => [p.name, p.shape]),
      );
      assert.deepEqual(Object.entries(o.stateLayout()), Object.entries(t.stateLayout()));
      const d = stateDiff(o.exportState(), t.exportState());
      assert.deepEqual(d.missing, []);
      assert.equal(d.weights, 0, d.worst);
      assert.equal(o.checksum(), t.checksum());
    } finally {
      t.dispose();
      o.dispose();
    }
  });
}

/**
 * Random gradients (and DINO centre means: rankMeans averaged over the ranks, the iBOT one with a share of
 * 0.5, as when half the ranks masked no patch) as a ComputedStep of `engine`'s parameters.
 */
function randomStep(engine: OnnxRuntimeEngine, rng: Rng, scale: number, dino: boolean): ComputedStep {
  const gradients = engine.parameters.map((p) => Float32Array.from({ length: p.size }, () => rng.normal(0, scale)));
  const averaged = (dim: number, share: number) => Float32Array.from({ length: dim + 1 }, (_, i) => (i < dim ? rng.normal(0, 1) : share));
  const means = dino ? [averaged(engine.centers.dino!.dim, 1), averaged(engine.centers.ibot!.dim, 0.5)] : [];
  return {
    loss: 0,
    parts: {},
    gradients,
    means,
    metrics: {},
    update: { teacherMomentum: dino ? 0.99 : null, centres: dino ? ['dino', 'ibot'] : [] },
  };
}

const copyStep = (s: ComputedStep): ComputedStep => ({ ...s, gradients: s.gradients.map((g) => Float32Array.from(g)) });

// Where a gradient norm is involved (clipping, LAMB) the engine sums squares in float64 and tfjs in float32
// (sequentially on wasm): the clip coefficients differ by ~1e-6, and the moments by twice that. Summing in
// float32 as tfjs-wasm does brings every case below 3e-7: the rest is the same float32 operations.
for (const [what, preset, extra, tol] of [
  [
    'AdamW without clipping (no norm: exact)',
    'tiny-supervised',
    { optim: { clip_grad: 0, layerwise_decay: 0.8, patch_embed_lr_mult: 0.5 } },
    0,
  ],
  ['AdamW, per-module clipping, layer-wise decay, patch-embed lr, frozen last layer, EMA and centres', 'tiny-dino', DINOV2_TINY, 3e-5],
  ['LAMB (its own clip), timm weight-decay rule', 'tiny-supervised', DEIT_TINY, 1e-5],
  ['AdamW, global clipping', 'tiny-supervised', { optim: { clip_grad: 0.5 } }, 1e-5],
] as const) {
  test(`flat-buffer optimiser = optim.ts on random gradients: ${what}`, async (t) => {
    const config = tinyRun(preset, extra);
    const dino = config.objective === 'dino';
    const ref = new TfjsEngine(ctxOf(config));
    const eng = new OnnxRuntimeEngine(ctxOf(config));
    try {
      ref.initTeacher();
      eng.importState(ref.exportState());
      const rng = new Rng(7);
      let worst = 0;
      let worstAt = '';
      for (let step = 0; step < 4; step++) {
        // Large gradients on odd steps so that clipping scales them.
        const s = randomStep(eng, rng, step % 2 ? 3 : 0.01, dino);
        const settings: StepSettings = { step, lr: 1e-2, wd: 0.05, lastLayerLr: step < 2 ? 0 : 1e-2, momentum: 0.99, teacherTemp: 0.04 };
        const a = await ref.applyStep(copyStep(s), settings);
        const b = await eng.applyStep(copyStep(s), settings);
        for (const [k, v] of Object.entries(a.norms))
          assert.ok(Math.abs(b.norms[k]! - v) <= 1e-5 * Math.abs(v), `${k}: ${b.norms[k]} vs ${v}`);
        assert.deepEqual(Object.keys(b.norms), Object.keys(a.norms));
        const x = eng.exportState();
        const y = ref.exportState();
        for (const [k, v] of Object.entries(y.tensors)) {
          const u = x.tensors[k]!;
          let big = 0;
          for (let i = 0; i < v.length; i++) big = Math.max(big, Math.abs(v[i]!));
          for (let i = 0; i < v.length; i++) {
            const rel = Math.abs(u[i]! - v[i]!) / Math.max(big, 1e-12);
            if (rel > worst) worstAt = `${k} step ${step + 1}`;
            worst = Math.max(worst, rel);
            if (!(rel <= tol)) assert.fail(`step ${step + 1}, ${k}[${i}]: ${u[i]} vs ${v[i]} (tfjs)`);
          }
        }
      }
      t.diagnostic(`4 steps: largest difference ${worst.toExponential(2)} of each tensor's largest value (${worstAt})`);
    } finally {
      ref.dispose();
      eng.dispose();
    }
  });
}

/** Trains `config` on `engine` in `out`; returns the final state and the metric lines. */
async function run(config: TrainConfig, engine: EngineFactory, out: string, opts: { resume?: boolean; stopAfter?: number } = {}) {
  const kept: { state?: EngineState } = {};
  await train(config, { outDir: out, engine: keepingState(engine, kept), progress: false, ...opts });
  return { state: kept.state!, metrics: await metricLines(out) };
}

for (const [name, preset, extra] of [
  ['tiny-supervised', 'tiny-supervised', {}],
  ['DeiT-III-like supervised (LAMB, BCE, mixup / cutmix, drop path, micro-batches)', 'tiny-supervised', DEIT_TINY],
  ['tiny-dino', 'tiny-dino', {}],
  ['DINOv2 objective (Sinkhorn-Knopp, KoLeo, separate iBOT head, SwiGLU, LayerScale, batch-subset drop path)', 'tiny-dino', DINOV2_TINY],
] as const) {
  test(`10 steps of ${name}: onnxruntime ends within 1e-4 of tfjs, every loss and metric within 1e-3`, async (t) => {
    if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
    const config = tinyRun(preset, extra);
    const key = name.replace(/\W+/g, '-');
    const a = await run(config, tfjsEngine, join(dir, `${key}-tfjs`));
    const b = await run(config, onnx, join(dir, `${key}-onnx`));
    const d = stateDiff(b.state, a.state);
    const m = metricDiffs(b.metrics, a.metrics);
    const worstMetric = Object.entries(m).sort((x, y) => y[1] - x[1])[0]!;
    t.diagnostic(
      `weights max |diff| ${d.weights.toExponential(2)} (${d.worst}), moments ${d.moments.toExponential(2)}; ` +
        `metrics: largest relative diff ${worstMetric[1].toExponential(2)} (${worstMetric[0]}), loss ${(m.loss ?? 0).toExponential(2)}`,
    );
    assert.deepEqual(d.missing, []);
    assert.ok(d.weights <= 1e-4, `weights differ by ${d.weights} in ${d.worst}`);
    for (const [k, v] of Object.entries(m)) assert.ok(v <= 1e-3, `metric ${k} differs by ${v} (relative)`);
    // The final evaluation through the engines' encode / classify / teacherProbs hooks.
    const ea = JSON.parse(await readFile(join(dir, `${key}-tfjs`, 'eval.json'), 'utf8')) as Record<string, number>;
    const eb = JSON.parse(await readFile(join(dir, `${key}-onnx`, 'eval.json'), 'utf8')) as Record<string, number>;
    t.diagnostic(`eval: tfjs ${JSON.stringify(ea)}, onnxruntime ${JSON.stringify(eb)}`);
    assert.deepEqual(Object.keys(eb), Object.keys(ea));
    for (const [k, v] of Object.entries(ea)) {
      // An accuracy may flip one of the 16 validation images whose features sit on a boundary.
      const tol = k.endsWith('accuracy') ? 1 / 16 + 1e-9 : 1e-3 * Math.max(1, Math.abs(v));
      assert.ok(Math.abs(eb[k]! - v) <= tol, `eval ${k}: onnxruntime ${eb[k]} vs tfjs ${v}`);
    }
  });
}

test('a checkpoint written by either engine resumes on the other and ends where an uninterrupted run ends', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const config = tinyRun('tiny-dino', { ...DINOV2_TINY, train: { centering: 'centering' } });
  for (const [first, second, a, b] of [
    ['tfjs', 'onnxruntime', tfjsEngine, onnx],
    ['onnxruntime', 'tfjs', onnx, tfjsEngine],
  ] as const) {
    const out = join(dir, `resume-${first}`);
    await run(config, a, out, { stopAfter: 5 });
    const resumed = await run(config, b, out, { resume: true });
    const whole = await run(config, b, join(dir, `whole-${second}`));
    const d = stateDiff(resumed.state, whole.state);
    t.diagnostic(`${first} 5 steps -> ${second} 5 steps vs ${second} 10 steps: weights max |diff| ${d.weights.toExponential(2)}`);
    assert.deepEqual(d.missing, []);
    assert.ok(d.weights <= 1e-4, `${first} -> ${second}: weights differ by ${d.weights} in ${d.worst}`);
    assert.equal(resumed.metrics.length, whole.metrics.length);
  }
});
