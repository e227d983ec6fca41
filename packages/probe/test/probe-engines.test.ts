/**
 * The probes on every engine: runProbe / runDenseProbe given an Encoder (TfjsEncoder, OnnxEncoder) instead
 * of a VisionTransformer. On TfjsEncoder the one-token probes' reports and the dense features are
 * identical to the VisionTransformer's (the same tfjs forward); on ONNX Runtime the dense features (read
 * back from the feature cache: last block normed, 4 blocks normed with the encoder's final norm, 4
 * blocks raw with CLS) are within numpy.allclose(atol=1e-4, rtol=1e-4) of tfjs's, the ONNX parity
 * tolerance, and the one-token probes' results (class sweep and accuracies, pixel-regression errors) too.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend, Rng, SyntheticDataset, SyntheticDenseDataset } from '@vitreg/core';
import {
  getConfig,
  loadOnnxRuntime,
  modelFromStateDict,
  OnnxEncoder,
  stateDictOf,
  TfjsEncoder,
  VisionTransformer,
} from '@vitreg/registers';
import { runDenseProbe, runProbe, type ProbeModel } from '../src/index.js';

await initBackend('wasm', { log: () => {} });
await loadOnnxRuntime();
const tmp = await mkdtemp(join(tmpdir(), 'vitreg-probe-engines-'));
test.after(() => rm(tmp, { recursive: true, force: true }));

// A fresh model's blocks are near-identity maps; random weights make every block's tokens differ.
const init = new VisionTransformer({ ...getConfig('vit_micro_patch8_reg4'), depth: 4 }, { seed: 1 });
const rng = new Rng(5);
const sd = await stateDictOf(init);
for (const [name, t] of Object.entries(sd)) {
  const norm = /norm\d?\.weight$|gamma$/.test(name);
  t.data = t.data.map(() =>
    norm
      ? 1 + 0.3 * rng.normal()
      : (name.includes('pos_embed') || name.endsWith('_token') || name.endsWith('tokens') ? 1 : 0.25) * rng.normal(),
  );
}
const model = modelFromStateDict(sd, init.config);
init.dispose();
const tfjsEnc = new TfjsEncoder(model, false);
const onnxEnc = await OnnxEncoder.fromWeights(model.config, sd, { threads: 1 });
test.after(() => onnxEnc.dispose());

/** |a - b| <= atol + rtol |b| everywhere (numpy.allclose), as a message or null. */
function allclose(a: ArrayLike<number>, b: ArrayLike<number>, atol = 1e-4, rtol = 1e-4): string | null {
  if (a.length !== b.length) return `length ${a.length} != ${b.length}`;
  let bad = 0;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const ex = Math.abs(a[i]! - b[i]!) - (atol + rtol * Math.abs(b[i]!));
    if (!(ex <= 0)) {
      bad++;
      if (bad === 1 || ex > worst) worst = i;
    }
  }
  return bad === 0 ? null : `${bad} of ${a.length} differ; worst at ${worst}: ${a[worst]} vs ${b[worst]}`;
}

const f32 = async (file: string) => {
  const b = await readFile(file);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};

test("one-token probes: TfjsEncoder reports equal the model's; ONNX Runtime's within 1e-4", async () => {
  const train = { dataset: new SyntheticDataset({ seed: 1, count: 10, size: 32 }) };
  const testPart = { dataset: new SyntheticDataset({ seed: 1, count: 5, size: 32, split: 'val' }) };
  const opts = { task: 'class' as const, token: 'register' as const, size: 32, steps: 20, weightDecays: [0, 1e-3], batchSize: 4 };
  const base = await runProbe(model, train, testPart, opts);
  assert.deepEqual(await runProbe(tfjsEnc, train, testPart, opts), base);
  const onnx = await runProbe(onnxEnc, train, testPart, opts);
  assert.equal(onnx.featureDim, base.featureDim);
  const sweep = (r: typeof base) =>
    (r.sweep as object[]).flatMap((s) => Object.values(s).filter((v): v is number => typeof v === 'number'));
  assert.equal(sweep(base).length, 4, 'weight decay and held-out accuracy of 2 settings');
  assert.equal(allclose(sweep(onnx), sweep(base)), null);
  assert.deepEqual([onnx.accuracy, onnx.knn], [base.accuracy, base.knn]);
  // pixels from a normal patch token: the same regression on the same (within tolerance) features
  const px = { task: 'pixels' as const, token: 'normal' as const, size: 32, seed: 3 };
  const a = await runProbe(model, train, testPart, px);
  const b = await runProbe(onnxEnc, train, testPart, px);
  assert.equal(allclose([b.mse!, b.l2!], [a.mse!, a.l2!]), null);
});

for (const [task, layers] of [
  ['segmentation', 1],
  ['segmentation', 4],
  ['depth', 4],
] as const) {
  test(`dense ${task}, ${layers} block(s): ONNX Runtime features within 1e-4 of tfjs, TfjsEncoder identical`, async () => {
    const train = { dataset: new SyntheticDenseDataset({ seed: 3, count: 5, size: 32 }) };
    const testPart = { dataset: new SyntheticDenseDataset({ seed: 3, count: 2, size: 32, split: 'val' }) };
    const feats = async (m: ProbeModel, name: string) => {
      const cacheDir = join(tmp, `${task}-${layers}-${name}`);
      const r = await runDenseProbe(m, train, testPart, { task, layers, size: 32, steps: 5, batchSize: 3, cacheDir });
      return {
        r: r.report,
        x: await f32(join(cacheDir, 'train.x.f32')),
        cls: task === 'depth' ? await f32(join(cacheDir, 'train.cls.f32')) : undefined,
      };
    };
    const base = await feats(model, 'model');
    const viaTfjs = await feats(tfjsEnc, 'tfjs');
    const viaOnnx = await feats(onnxEnc, 'onnx');
    assert.equal(base.x.length, 5 * 16 * 64 * layers);
    assert.deepEqual(viaTfjs.x, base.x);
    assert.equal(allclose(viaOnnx.x, base.x), null);
    if (base.cls) assert.equal(allclose(viaOnnx.cls!, base.cls), null);
    assert.deepEqual(viaOnnx.r.blocks, base.r.blocks);
  });
}
