/**
 * The ONNX training graphs against the tfjs engine's own step code over the backbone options the fixture
 * test (onnx-graphs.test.ts) does not cover: pos_embed without a class slot (DeiT-III), pre_norm, no patch
 * bias, QuickGELU, no LayerScale (CLIP, DINO), biases off, unnormalised patch tokens, the linear drop-path
 * rule (block 0 drops nothing) and per-image drop path from the images' generators, legacy
 * scale-factor interpolation, global crops at another size than the model's, micro-batch scaling, iBOT
 * alone, no local crops. Every parameter's gradient within allclose(1e-4, 1e-3). Random weights (no
 * near-zero LayerScale), tfjs on the cpu backend. Skips with one line where onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { Rng, ensureGradients } from '@vitreg/core';
import { getConfig, parameterShapes, VisionTransformer, type ViTConfig } from '@vitreg/registers';
import type { SupervisedBatch } from '../src/batch.js';
import type { TrainConfig } from '../src/config.js';
import { ClassifierHead, DinoHead, type DinoHeadConfig } from '../src/heads.js';
import { dinoGlobalLocalLoss, ibotMaskedLoss, koleoLoss } from '../src/losses.js';
import { forwardDropPathFactors } from '@vitreg/registers';
import { maskRowBucket, padMaskRows, padRows, supervisedDropPath } from '../src/onnx/feeds.js';
import { dinoStudentStepGraph, supervisedStepGraph, type BuiltGraph, type IbotHeadMode } from '../src/onnx/graphs.js';
import { supervisedStep } from '../src/steps/supervised.js';
import { closeness, probRows, runModel, seeded, SKIP_NO_ORT, tryOrt, type Feed } from './onnx-helpers.js';

const probF32 = (n: number, k: number, seed: number) => Float32Array.from(probRows(n, k, seed));

before(async () => {
  await tf.setBackend('cpu');
  await ensureGradients();
});

const micro = (o: Partial<ViTConfig>): ViTConfig =>
  getConfig('vit_micro_patch8_reg4', { embed_dim: 16, num_heads: 2, patch_size: 4, img_size: 16, depth: 2, ...o });

/** Random weights in the model layout: norms near 1, LayerScale near 0.5, the rest of unit-ish scale. */
function randomWeights(shapes: Record<string, number[]>, seed: number): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  Object.entries(shapes).forEach(([k, s], i) => {
    const n = s.reduce((a, b) => a * b, 1);
    if (/norm(_pre|\d)?\.weight$|weight_g$/.test(k)) out[k] = seeded(n, seed + i, 0.2, 1);
    else if (k.endsWith('.gamma')) out[k] = seeded(n, seed + i, 0.2, 0.5);
    else if (k.endsWith('bias')) out[k] = seeded(n, seed + i, 0.05);
    else out[k] = seeded(n, seed + i, s.length === 2 ? 1.7 / Math.sqrt(s[0]!) : 0.5);
  });
  return out;
}

/** Prefixed copies of `weights` (graph inputs). */
const prefixed = (prefix: string, w: Record<string, Float32Array>) =>
  Object.fromEntries(Object.entries(w).map(([k, v]) => [`${prefix}${k}`, v]));

function assign(vars: Record<string, tf.Variable>, w: Record<string, Float32Array>): void {
  for (const [k, v] of Object.entries(vars)) v.assign(tf.tensor(w[k]!, v.shape));
}

/** tfjs gradients by name, as `grad.<name>`. */
function tfjsGrads(loss: () => tf.Scalar, vars: Record<string, tf.Variable>): Record<string, Float32Array> {
  const { grads } = tf.variableGrads(loss, Object.values(vars));
  return Object.fromEntries(
    Object.entries(vars).map(([k, v]) => [
      `grad.${k}`,
      grads[v.name] ? (grads[v.name]!.dataSync() as Float32Array) : new Float32Array(v.size),
    ]),
  );
}

/**
 * Every tfjs gradient against the graph's (a gradient the graph does not output must be 0); also checks
 * that the gradients are not all tiny (the comparison would then prove nothing).
 */
function compare(got: Record<string, Float32Array>, want: Record<string, Float32Array>, built: BuiltGraph): string[] {
  const bad: string[] = [];
  const small = Object.entries(want)
    .filter(([, v]) => !v.some((x) => Math.abs(x) > 1e-3))
    .map(([k]) => k);
  if (small.length > Object.keys(want).length / 4) bad.push(`gradients below 1e-3 everywhere: ${small.join(', ')}`);
  for (const [k, ref] of Object.entries(want)) {
    const g = got[k] ?? (built.gradients.includes(k.slice(5)) ? undefined : new Float32Array(ref.length));
    if (!g) bad.push(`${k}: missing`);
    else {
      const c = closeness(g, ref, 1e-4, 1e-3);
      if (!c.ok) bad.push(`${k}: max abs ${c.maxAbs.toExponential(2)}, worst ${c.worst}`);
    }
  }
  return bad;
}

const supervisedCases: Record<string, { vit: ViTConfig; bce: boolean; scale: number }> = {
  'DeiT-III style: pos_embed without a class slot, per-image drop path, uniform rate': {
    vit: micro({ pos_embed_cls: false, layerscale_init: 0.1, drop_path_rate: 0.4, drop_path_uniform: true, drop_path_batch_subset: false }),
    bce: false,
    scale: 1,
  },
  'CLIP style: pre_norm, no patch bias, no LayerScale, QuickGELU, eps 1e-5, BCE as a micro-batch share': {
    vit: micro({ pre_norm: true, patch_bias: false, layerscale_init: null, act_layer: 'quick_gelu', norm_eps: 1e-5, proj_dim: 8 }),
    bce: true,
    scale: 0.5,
  },
  'biases off, linear drop-path rule with the batch subset (block 0 drops nothing)': {
    vit: micro({ qkv_bias: false, proj_bias: false, ffn_bias: false, drop_path_rate: 0.5, drop_path_batch_subset: true, depth: 3 }),
    bce: false,
    scale: 1,
  },
};

for (const [name, c] of Object.entries(supervisedCases)) {
  test(`supervised step = tfjs: ${name}`, async (t) => {
    const o = await tryOrt();
    if (!o) return t.skip(SKIP_NO_ORT);
    const { vit } = c;
    const B = 3;
    const C = 5;
    const shapes = parameterShapes(vit);
    const w = randomWeights(shapes, 5);
    const model = new VisionTransformer(vit, { weights: w });
    const head = new ClassifierHead(vit.embed_dim, C, new Rng(0));
    const hw = { weight: seeded(vit.embed_dim * C, 91, 0.5), bias: seeded(C, 92, 0.1) };
    assign(head.params, hw);
    const rngs = () => [1, 2, 3].map((s) => new Rng(s));
    const images = seeded(B * 16 * 16 * 3, 7);
    const targets = Float32Array.from([0.6, 0.4, 0, 0, 0, 0, 0, 1, 0, 0, 0.2, 0.2, 0.2, 0.2, 0.2]);
    const batch: SupervisedBatch = {
      objective: 'supervised',
      size: B,
      imageSize: 16,
      images,
      targets,
      numClasses: C,
      dropPath: rngs(),
      metrics: {},
    };
    const config = { supervised: { bce_loss: c.bce }, train: { micro_batch_size: 0 } } as unknown as TrainConfig;
    const record = supervisedStep({ student: model, head }, batch, config);
    const vars: Record<string, tf.Variable> = {};
    for (const [k, v] of Object.entries(model.params)) if (k !== 'mask_token') vars[`backbone.${k}`] = v;
    for (const [k, v] of Object.entries(head.params)) vars[`head.${k}`] = v;
    const want = tfjsGrads(() => tf.mul(record.losses[0]!().total, c.scale) as tf.Scalar, vars);
    const built = supervisedStepGraph(vit, { batch: B, size: 16, numClasses: C, bce: c.bce, trained: Object.keys(vars) });
    const feeds: Record<string, Feed> = {
      ...prefixed('backbone.', w),
      ...prefixed('head.', hw),
      images,
      targets,
      loss_scale: Float32Array.of(c.scale),
    };
    const drop = supervisedDropPath(vit, rngs());
    if (drop) feeds.drop_path = drop;
    assert.equal(
      built.inputs.some((i) => i.name === 'drop_path'),
      vit.drop_path_rate > 0,
    );
    const got = await runModel(o, built.bytes, built.inputs, feeds);
    assert.deepEqual(compare(got, want, built), []);
    assert.ok(!built.gradients.includes('backbone.proj'), 'CLIP projection unused in training');
    tf.dispose(record.inputs);
    model.dispose();
  });
}

interface DinoCase {
  vit: ViTConfig;
  globalSize: number;
  localSize: number;
  nLocal: number;
  ibot: IbotHeadMode;
  weights: { dino: number; koleo: number; ibot: number };
}

const dinoCases: Record<string, DinoCase> = {
  'DINO v1 style: legacy scale-factor interpolation, no LayerScale, separate iBOT head, per-image drop path': {
    vit: micro({
      interpolate_offset: 0.1,
      interpolate_antialias: false,
      layerscale_init: null,
      num_register_tokens: 0,
      drop_path_rate: 0.3,
    }),
    globalSize: 16,
    localSize: 8,
    nLocal: 2,
    ibot: 'separate',
    weights: { dino: 1, koleo: 0.1, ibot: 1 },
  },
  'global crops larger than the model (positional grid upsampled), 3 local crops, shared head': {
    vit: micro({ drop_path_rate: 0 }),
    globalSize: 24,
    localSize: 12,
    nLocal: 3,
    ibot: 'shared',
    weights: { dino: 0.5, koleo: 0.2, ibot: 0.7 },
  },
  'iBOT alone (no DINO term), no local crops, unnormalised patch tokens, biases off': {
    vit: micro({ final_norm_tokens: false, qkv_bias: false, proj_bias: false, ffn_bias: false, drop_path_rate: 0.2 }),
    globalSize: 16,
    localSize: 8,
    nLocal: 0,
    ibot: 'shared',
    weights: { dino: 0, koleo: 0.1, ibot: 1 },
  },
};

const HEAD: DinoHeadConfig = { inDim: 16, outDim: 9, hiddenDim: 12, bottleneckDim: 6, nlayers: 3 };
const IBOT: DinoHeadConfig = { inDim: 16, outDim: 7, hiddenDim: 10, bottleneckDim: 5, nlayers: 2 };

for (const [name, c] of Object.entries(dinoCases)) {
  test(`DINOv2 step = tfjs (steps/dino.ts' assembly): ${name}`, async (t) => {
    const o = await tryOrt();
    if (!o) return t.skip(SKIP_NO_ORT);
    const { vit } = c;
    const B = 3;
    const P = (c.globalSize / vit.patch_size) ** 2;
    const w = randomWeights(parameterShapes(vit), 11);
    const model = new VisionTransformer(vit, { weights: w });
    const head = new DinoHead(HEAD, new Rng(0));
    const hw = randomWeights(Object.fromEntries(Object.entries(head.params).map(([k, v]) => [k, v.shape])), 41);
    assign(head.params, hw);
    const ibotHead = c.ibot === 'separate' ? new DinoHead(IBOT, new Rng(1)) : null;
    const iw = ibotHead ? randomWeights(Object.fromEntries(Object.entries(ibotHead.params).map(([k, v]) => [k, v.shape])), 61) : {};
    if (ibotHead) assign(ibotHead.params, iw);
    // Masks: crop i masks (i * 3) % 5 patches.
    const masks = new Float32Array(2 * B * P);
    const indices: number[] = [];
    const weights: number[] = [];
    for (let i = 0; i < 2 * B; i++) {
      const n = (i * 3) % 5;
      for (let j = 0; j < n; j++) {
        masks[i * P + ((j * 7 + i) % P)] = 1;
      }
      for (let j = 0; j < P; j++) if (masks[i * P + j]) indices.push(i * P + j);
      for (let j = 0; j < n; j++) weights.push(1 / n);
    }
    const M = indices.length;
    const rows = maskRowBucket(M);
    const Ki = c.ibot === 'separate' ? IBOT.outDim : HEAD.outDim;
    const globals = seeded(2 * B * c.globalSize ** 2 * 3, 3);
    const locals = c.nLocal ? seeded(c.nLocal * B * c.localSize ** 2 * 3, 4) : null;
    const dinoT = probF32(2 * B, HEAD.outDim, 5);
    const ibotT = probF32(M, Ki, 6);
    const gRngs = () => Array.from({ length: 2 * B }, (_, i) => new Rng(100 + i));
    const lRngs = () => Array.from({ length: c.nLocal * B }, (_, i) => new Rng(200 + i));
    const wts = c.weights;

    const gT = tf.tensor4d(globals, [2 * B, c.globalSize, c.globalSize, 3]);
    const lT = locals ? tf.tensor4d(locals, [c.nLocal * B, c.localSize, c.localSize, 3]) : null;
    const index = tf.tensor1d(indices, 'int32');
    const loss = () => {
      const train = vit.drop_path_rate > 0;
      const g = model.forward(gT, { training: train, rng: train ? gRngs() : undefined, masks: tf.tensor2d(masks, [2 * B, P]) });
      const l = lT ? model.forward(lT, { training: train, rng: train ? lRngs() : undefined }) : null;
      const masked = tf.gather(tf.reshape(g.patches, [2 * B * P, vit.embed_dim]), index) as tf.Tensor2D;
      const headIn = [...(l ? [l.cls] : []), g.cls, ...(c.ibot === 'shared' ? [masked] : [])];
      const out = head.forward(tf.concat(headIn) as tf.Tensor2D);
      const nL = l ? c.nLocal * B : 0;
      const terms: tf.Scalar[] = [];
      if (wts.dino > 0) {
        const localOut = nL ? (tf.split(tf.slice(out, [0, 0], [nL, -1]), c.nLocal) as tf.Tensor2D[]) : [];
        const dl = dinoGlobalLocalLoss(tf.slice(out, [nL, 0], [2 * B, -1]), tf.tensor2d(dinoT, [2 * B, HEAD.outDim]), localOut, 0.1);
        terms.push(tf.mul(tf.add(dl.global, dl.local), wts.dino));
        const [c1, c2] = tf.split(g.cls, 2) as [tf.Tensor2D, tf.Tensor2D];
        terms.push(tf.mul(tf.add(koleoLoss(c1), koleoLoss(c2)), wts.koleo));
      }
      const student = c.ibot === 'shared' ? tf.slice(out, [nL + 2 * B, 0], [M, -1]) : ibotHead!.forward(masked);
      const ib = ibotMaskedLoss(student as tf.Tensor2D, tf.tensor2d(ibotT, [M, Ki]), tf.tensor1d(weights), 2 * B, 0.1);
      terms.push(tf.mul(ib, wts.ibot));
      return tf.addN(terms) as tf.Scalar;
    };
    const vars: Record<string, tf.Variable> = {};
    for (const [k, v] of Object.entries(model.params)) vars[`backbone.${k}`] = v;
    for (const [k, v] of Object.entries(head.params)) vars[`dino_head.${k}`] = v;
    if (ibotHead) for (const [k, v] of Object.entries(ibotHead.params)) vars[`ibot_head.${k}`] = v;
    const want = tfjsGrads(loss, vars);

    const built = dinoStudentStepGraph(
      vit,
      { dino: HEAD, ibot: c.ibot === 'separate' ? IBOT : undefined },
      {
        batch: B,
        globalSize: c.globalSize,
        localSize: c.localSize,
        nLocal: c.nLocal,
        maskRows: rows,
        ibot: c.ibot,
        dinoWeight: wts.dino,
        koleoWeight: wts.koleo,
        ibotWeight: wts.ibot,
        studentTemp: 0.1,
        trained: Object.keys(vars),
      },
    );
    const pad = padMaskRows({ masks, indices, weights: Float32Array.from(weights) }, rows);
    const feeds: Record<string, Feed> = {
      ...prefixed('backbone.', w),
      ...prefixed('dino_head.', hw),
      ...prefixed('ibot_head.', iw),
      globals,
      dino_targets: dinoT,
      masks,
      mask_index: pad.index,
      mask_weight: pad.weight,
      ibot_targets: padRows(ibotT, rows, Ki),
    };
    if (locals) feeds.locals = locals;
    if (vit.drop_path_rate > 0) {
      feeds.drop_path_global = forwardDropPathFactors(vit, gRngs(), 2 * B);
      if (locals) feeds.drop_path_local = forwardDropPathFactors(vit, lRngs(), c.nLocal * B);
    }
    const got = await runModel(o, built.bytes, built.inputs, feeds);
    assert.deepEqual(compare(got, want, built), []);
    assert.equal('loss_dino_global' in got, wts.dino > 0);
    assert.ok('loss_ibot' in got);
    model.dispose();
  });
}

test('DINOv2 step without local crops: loss_dino_local is 0 and the global term alone is trained', async (t) => {
  const o = await tryOrt();
  if (!o) return t.skip(SKIP_NO_ORT);
  const vit = micro({ drop_path_rate: 0 });
  const w = randomWeights(parameterShapes(vit), 3);
  const hw = randomWeights(Object.fromEntries(Object.entries(new DinoHead(HEAD, new Rng(0)).params).map(([k, v]) => [k, v.shape])), 4);
  const trained = [
    ...Object.keys(w)
      .filter((k) => k !== 'mask_token')
      .map((k) => `backbone.${k}`),
    ...Object.keys(hw).map((k) => `dino_head.${k}`),
  ];
  const built = dinoStudentStepGraph(
    vit,
    { dino: HEAD },
    {
      batch: 2,
      globalSize: 16,
      localSize: 8,
      nLocal: 0,
      maskRows: 0,
      ibot: 'none',
      dinoWeight: 1,
      koleoWeight: 0,
      ibotWeight: 1,
      studentTemp: 0.1,
      trained,
    },
  );
  assert.deepEqual(
    built.inputs.filter((i) => !i.name.includes('.')).map((i) => i.name),
    ['globals', 'dino_targets'],
  );
  const got = await runModel(o, built.bytes, built.inputs, {
    ...prefixed('backbone.', w),
    ...prefixed('dino_head.', hw),
    globals: seeded(4 * 16 * 16 * 3, 1),
    dino_targets: probF32(4, HEAD.outDim, 2),
  });
  assert.equal(got.loss_dino_local![0], 0);
  assert.ok(Math.abs(got.loss![0]! - got.loss_dino_global![0]!) < 1e-6);
  assert.ok(!('loss_koleo' in got) && !('loss_ibot' in got));
  assert.ok(built.gradients.length > 0 && !built.gradients.includes('backbone.mask_token'));
});
