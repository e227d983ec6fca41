/**
 * Objective clip through `train()` on the ONNX Runtime engine (clip-loop.ts + src/onnx/clip-engine.ts) against
 * the tfjs engine, on tiny-clip at test size (48 pairs, batch 8):
 * - the same 10-step run (CLIP loss; SigLIP with logit_bias) ends with every weight of the two-tower model and
 *   every AdamW moment within 1e-4 of the tfjs run's (moments relative above 1; the attention key biases apart:
 *   see `keyBias`), the loss of every step within 1e-3 relative, and the
 *   same zero-shot evaluation (within one of the 16 validation images);
 * - a run stopped after step 5 on ONNX Runtime and resumed on tfjs ends within 1e-4 of the uninterrupted run;
 * - 2 threads x 4 pairs on ONNX Runtime (features graph, loss across the ranks, towers graph) equal 1 x 8.
 * Skipped with one line where onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readSafetensors, toFloat32 } from '@vitreg/core';
import { validateTrainConfig } from '../src/config-validate.js';
import type { PartialTrainConfig, TrainConfig } from '../src/config.js';
import { train, type TrainResult } from '../src/loop.js';
import { resolveTrainEngine } from '../src/onnx/engine-select.js';
import { trainThreads } from '../src/threads.js';
import { useWasm } from './helpers.js';
import { SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';

let dir: string;
before(async () => {
  await useWasm();
  dir = await mkdtemp(join(tmpdir(), 'vitreg-onnx-clip-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function tinyClip(extra: PartialTrainConfig = {}): TrainConfig {
  return validateTrainConfig({
    preset: 'tiny-clip',
    data: { train_size: 48, val_size: 16 },
    train: { steps: 10, batch_size: 8, checkpoint_every: 0, log_every: 1 },
    optim: { warmup_steps: 2 },
    ...extra,
  } as Record<string, unknown>);
}

async function ortEngine() {
  return (await resolveTrainEngine({ engine: 'onnxruntime', threads: 1 })).factory;
}

/**
 * The key slice [W, 2W) of an attention's in_proj_bias (open_clip's names, in either file): its gradient is 0 in
 * exact arithmetic (a bias on every key shifts each query's scores by one constant, which softmax removes), so
 * each engine's gradient there is float32 noise, which AdamW's normalisation (eps 1e-6) turns into small steps that
 * differ between the engines (1.5e-4 to 2.4e-4 after 10 steps).
 */
function keyBias(name: string, index: number, size: number): boolean {
  return /attn\.in_proj_bias/.test(name) && index >= size / 3 && index < (2 * size) / 3;
}

/** Largest |a - b| over every tensor of two checkpoints' files (model; optimizer relative above 1; key biases apart), and the worst tensor. */
async function checkpointDiff(a: string, b: string): Promise<{ weights: number; moments: number; worst: string; keyBias: number }> {
  const out = { weights: 0, moments: 0, worst: '', keyBias: 0 };
  for (const [file, key] of [
    ['model.safetensors', 'weights'],
    ['optimizer.safetensors', 'moments'],
  ] as const) {
    const x = (await readSafetensors(join(a, file))).tensors;
    const y = (await readSafetensors(join(b, file))).tensors;
    assert.deepEqual(Object.keys(x).sort(), Object.keys(y).sort(), `${file}: the same tensors`);
    for (const k of Object.keys(y)) {
      const u = toFloat32(x[k]!);
      const v = toFloat32(y[k]!);
      for (let i = 0; i < v.length; i++) {
        // Moments relative to their size above 1 (exp_avg_sq of SigLIP's logit_scale / logit_bias is large).
        const d = Math.abs(u[i]! - v[i]!) / (key === 'moments' ? Math.max(1, Math.abs(v[i]!)) : 1);
        if (keyBias(k, i, v.length)) {
          if (key === 'weights') out.keyBias = Math.max(out.keyBias, d);
          continue;
        }
        if (d > out[key]) {
          out[key] = d;
          if (key === 'weights') out.worst = k;
        }
      }
    }
  }
  return out;
}

async function losses(run: string): Promise<number[]> {
  const lines = (await readFile(join(run, 'metrics.jsonl'), 'utf8')).trim().split('\n');
  return lines.map((l) => JSON.parse(l) as { loss?: number }).flatMap((m) => (m.loss === undefined ? [] : [m.loss]));
}

for (const [name, extra] of [
  ['CLIP loss', {}],
  ['SigLIP loss', { clip: { loss: 'siglip', init_logit_bias: -2 } }],
] as const) {
  test(`10 steps of tiny-clip (${name}): onnxruntime ends within 1e-4 of tfjs`, async (t) => {
    if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
    const c = tinyClip(extra as PartialTrainConfig);
    const key = name.replace(/\W+/g, '-');
    const a = await train(c, { outDir: join(dir, `${key}-tfjs`), progress: false });
    const b = await train(c, { outDir: join(dir, `${key}-onnx`), progress: false, engine: await ortEngine() });
    assert.equal(b.step, 10);
    const d = await checkpointDiff(b.checkpoint, a.checkpoint);
    const la = await losses(join(dir, `${key}-tfjs`));
    const lb = await losses(join(dir, `${key}-onnx`));
    assert.equal(lb.length, 10);
    const lossDiff = Math.max(...la.map((v, i) => Math.abs(lb[i]! - v) / Math.max(1, Math.abs(v))));
    const ea = (a.eval as unknown as { zeroshot_top1: number }).zeroshot_top1;
    const eb = (b.eval as unknown as { zeroshot_top1: number }).zeroshot_top1;
    t.diagnostic(
      `weights max |diff| ${d.weights.toExponential(2)} (${d.worst}), moments ${d.moments.toExponential(2)}, key biases ${d.keyBias.toExponential(2)}, ` +
        `loss ${la[0]!.toFixed(4)} -> ${la[9]!.toFixed(4)} (largest relative diff ${lossDiff.toExponential(2)}), zero-shot ${ea} / ${eb}`,
    );
    assert.ok(d.weights <= 1e-4, `weights differ by ${d.weights} in ${d.worst}`);
    assert.ok(d.moments <= 1e-4, `AdamW moments differ by ${d.moments}`);
    assert.ok(lossDiff <= 1e-3, `a step's loss differs by ${lossDiff} (relative)`);
    assert.ok(Math.abs(ea - eb) <= 1 / 16 + 1e-9, `zero-shot top-1: onnxruntime ${eb} vs tfjs ${ea}`);
  });
}

test('tiny-clip: stopped after step 5 on onnxruntime, resumed on tfjs = uninterrupted; 2 onnxruntime threads x 4 = 1 x 8', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const c = tinyClip();
  const ref: TrainResult = await train(c, { outDir: join(dir, 'whole'), progress: false });
  const part = join(dir, 'part');
  const first = await train(c, { outDir: part, progress: false, stopAfter: 5, engine: await ortEngine() });
  assert.equal(first.step, 5);
  const resumed = await train(c, { outDir: part, progress: false, resume: true });
  assert.equal(resumed.step, 10);
  const r = await checkpointDiff(resumed.checkpoint, ref.checkpoint);
  assert.ok(r.weights <= 1e-4 && r.moments <= 1e-4, `resumed on the other engine: weights ${r.weights} (${r.worst}), moments ${r.moments}`);

  const small = (batch: number) => tinyClip({ train: { steps: 3, batch_size: batch, checkpoint_every: 0 } });
  const two = await trainThreads(small(4), {
    outDir: join(dir, 'two'),
    workers: 2,
    progress: false,
    engineOptions: { engine: 'onnxruntime', threads: 1 },
  });
  const one = await train(small(8), { outDir: join(dir, 'one'), progress: false, engine: await ortEngine() });
  const p = await checkpointDiff(two.checkpoint, one.checkpoint);
  t.diagnostic(`resume across engines: ${r.weights.toExponential(2)}; 2 threads vs 1: ${p.weights.toExponential(2)} (${p.worst})`);
  assert.ok(p.weights <= 1e-4, `2 ranks vs 1: largest weight difference ${p.weights} (${p.worst})`);
});
