/**
 * The clip objective's ONNX Runtime graphs (src/onnx/text-graph.ts, clip-graphs.ts, clip-engine.ts) against
 * the tfjs code they mirror, on tiny models:
 * - the text tower (@vitreg/registers' TextTransformer): features and the gradient of every parameter of
 *   sum(features x G) against tf.variableGrads (repeated ids, a tie at the largest id, end-of-text tokens at
 *   different positions; exact GELU with the end-of-text-only last block and without it, QuickGELU);
 * - one step of both towers (CLIP and SigLIP loss): loss and every parameter's gradient (logit_scale and
 *   logit_bias included) against steps/clip.ts's `clipStep`, on 1 rank (the loss in the graph) and on 2
 *   in-process ranks (features graph, host loss across the ranks, towers graph).
 * - a token id outside the vocabulary is refused naming it.
 * Skipped with one line where onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import {
  ClipModel,
  getConfig,
  TextTransformer,
  textParameterShapes,
  validateClipConfig,
  validateTextConfig,
  type TextConfig,
} from '@vitreg/registers';
import { clipStep } from '../src/steps/clip.js';
import { LocalGradientSync, type GradientSync } from '../src/sync.js';
import { TrainGraph } from '../src/onnx/autodiff.js';
import { OnnxClipEngine } from '../src/onnx/clip-engine.js';
import { textFeeds, textForward } from '../src/onnx/text-graph.js';
import { pairSyncs } from './clip-helpers.js';
import { useWasm } from './helpers.js';
import { closeness, runModel, seeded, SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';

before(useWasm);

const B = 4;
const CTX = 9;

/** Token rows: start 30, words (a repeated one), end-of-text 31 at positions 3..6; row 3 has a second 31 (argmax takes the first). */
function textIds(): Int32Array {
  const ids = new Int32Array(B * CTX);
  const rng = new Rng(11);
  for (let b = 0; b < B; b++) {
    ids[b * CTX] = 30;
    const n = 2 + b;
    for (let j = 1; j <= n; j++) ids[b * CTX + j] = j === 2 ? 5 : 1 + rng.int(20);
    ids[b * CTX + n + 1] = 31;
  }
  ids[3 * CTX + 2] = 31;
  return ids;
}

/** allclose with atol 1e-3 of the tensor's largest value (float32 sums that cancel: CLS's gradient over a batch) + 1e-6, rtol 1e-3. */
function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): number {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  const c = closeness(actual, expected, 1e-6 + 1e-3 * scale, 1e-3);
  assert.ok(c.ok, `${what}: max abs diff ${c.maxAbs}, worst ${c.worst}`);
  return c.maxAbs;
}

const TEXT: Partial<TextConfig> = { context_length: CTX, vocab_size: 32, width: 16, heads: 2, layers: 2, proj_dim: 8 };

for (const [name, extra, eotOnly] of [
  ['GELU, end-of-text-only last block', { act_layer: 'gelu' }, true],
  ['GELU, every row through the last block', { act_layer: 'gelu' }, false],
  ['QuickGELU, one block', { act_layer: 'quick_gelu', layers: 1 }, true],
] as const) {
  test(`text tower (${name}): features and every parameter's gradient equal the tfjs tower's`, async (t) => {
    const ort = await tryOrt();
    if (!ort) return t.skip(SKIP_NO_ORT);
    const cfg = validateTextConfig({ ...TEXT, ...extra });
    const tower = new TextTransformer(cfg, { seed: 4 });
    const ids = textIds();
    const E = cfg.proj_dim!;
    const G = seeded(B * E, 3);
    try {
      // The graph: sum(features x G), its gradients.
      const g = new TrainGraph();
      const shapes = textParameterShapes(cfg);
      const params = new Map<string, ReturnType<TrainGraph['input']>>();
      const p = (n: string) => {
        if (!params.has(n)) params.set(n, g.input(`text.${n}`, shapes[n]!, { grad: true }));
        return params.get(n)!;
      };
      const idsIn = g.input('ids', [B, CTX], { dtype: 'int64' });
      const eotIn = g.input('eot', [B], { dtype: 'int64' });
      const f = textForward(g, cfg, p, idsIn, eotIn, { eotOnly });
      g.output(f, 'features');
      const loss = g.reduceSum(g.mul(f, g.input('G', [B, E])), [0, 1]);
      const names = [...params.keys()];
      g.gradients(loss, [...params.values()]).forEach((gr, i) => gr && g.output(gr, `grad.${names[i]}`));
      const feeds: Record<string, Float32Array | BigInt64Array> = { ...textFeeds(ids, B), G };
      const weights = await tower.weights();
      for (const n of names) feeds[`text.${n}`] = weights[n]!;
      const out = await runModel(ort, g.encode(), g.inputs, feeds);
      // tfjs: the tower's forward on the same rows, tf.variableGrads of the same sum.
      const Gt = tf.tensor2d(G, [B, E]);
      const { value, grads } = tf.variableGrads(() => {
        const o = tower.forward(ids, B);
        o.tokens.dispose();
        return tf.sum(tf.mul(o.features, Gt)) as tf.Scalar;
      }, tower.variables());
      const features = tower.forward(ids, B);
      assertClose(out.features!, features.features.dataSync(), 'features');
      tf.dispose([Gt, value, features.features, features.tokens]);
      let worst = 0;
      assert.equal(names.length, Object.keys(shapes).length, 'every text parameter is an input');
      for (const n of names) {
        const expected = grads[tower.params[n]!.name]!.dataSync();
        assert.ok(out[`grad.${n}`], `no gradient output for ${n}`);
        worst = Math.max(worst, assertClose(out[`grad.${n}`]!, expected, `grad ${n}`));
      }
      tf.dispose(Object.values(grads));
      t.diagnostic(`${names.length} parameters, largest gradient difference ${worst.toExponential(2)}`);
    } finally {
      tower.dispose();
    }
  });
}

function tinyClip(bias: number | null, seed: number): ClipModel {
  const config = validateClipConfig({
    vision: getConfig('vit_micro_patch8', { proj_dim: 8, pre_norm: true, patch_bias: false, num_register_tokens: 2 }),
    text: { ...TEXT, layers: 1 },
    init_logit_bias: bias,
  });
  return new ClipModel(config, { seed });
}

function imageBatch(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n * 32 * 32 * 3 }, () => rng.normal(0, 1));
}

async function compareStep(t: { diagnostic(m: string): void }, kind: 'clip' | 'siglip', syncs: GradientSync[]): Promise<void> {
  const W = syncs.length;
  const size = B / W;
  const images = imageBatch(B, 5);
  const ids = textIds();
  const batchOf = (r: number) => ({
    images: images.subarray(r * size * 32 * 32 * 3, (r + 1) * size * 32 * 32 * 3),
    ids: ids.subarray(r * size * CTX, (r + 1) * size * CTX),
    size,
    imageSize: 32,
  });
  const bias = kind === 'siglip' ? -2 : null;
  const ref = syncs.map(() => tinyClip(bias, 7));
  const mine = syncs.map(() => tinyClip(bias, 7));
  const engines = mine.map((m) => new OnnxClipEngine(m, { threads: 1 }));
  try {
    const want = await Promise.all(syncs.map((s, r) => clipStep(ref[r]!, batchOf(r), kind, s)));
    const got = await Promise.all(syncs.map((s, r) => engines[r]!.compute(batchOf(r), kind, s)));
    let worst = 0;
    for (let r = 0; r < W; r++) {
      assert.ok(
        Math.abs(got[r]!.loss - want[r]!.loss) <= 1e-5 * Math.max(1, Math.abs(want[r]!.loss)),
        `rank ${r} loss ${got[r]!.loss} vs ${want[r]!.loss}`,
      );
      const names = engines[r]!.params.map((p) => p.name);
      assert.equal(names.length, want[r]!.gradients.length);
      names.forEach((n, i) => (worst = Math.max(worst, assertClose(got[r]!.grads[i]!, want[r]!.gradients[i]!, `rank ${r} grad ${n}`))));
    }
    t.diagnostic(`${kind}, ${W} rank(s): loss ${want[0]!.loss.toFixed(5)}, largest gradient difference ${worst.toExponential(2)}`);
  } finally {
    for (const e of engines) await e.dispose();
    for (const m of [...ref, ...mine]) m.dispose();
  }
}

for (const kind of ['clip', 'siglip'] as const) {
  test(`${kind} step, 1 rank (loss in the graph): loss and every gradient equal clipStep's`, async (t) => {
    if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
    await compareStep(t, kind, [new LocalGradientSync()]);
  });
  test(`${kind} step, 2 ranks (host loss between the features and towers graphs): each rank's loss and gradients equal clipStep's`, async (t) => {
    if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
    await compareStep(t, kind, pairSyncs(2));
  });
}

test('clip engine: a token id outside the vocabulary is an error naming it (before any graph runs)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const model = tinyClip(null, 1);
  const engine = new OnnxClipEngine(model, { threads: 1 });
  try {
    const ids = textIds();
    ids[5] = 32;
    await assert.rejects(engine.compute({ images: imageBatch(B, 1), ids, size: B, imageSize: 32 }, 'clip', new LocalGradientSync()), {
      message: 'text ids: token id 32 is outside the vocabulary [0, 31]',
    });
    assert.equal(engine.sessions.count, 0);
  } finally {
    await engine.dispose();
    model.dispose();
  }
});
