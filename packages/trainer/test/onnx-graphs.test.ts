/**
 * The ONNX training graphs (src/onnx/graphs.ts) against PyTorch autograd of the OFFICIAL DINOv2 modules
 * (fixtures/onnx-grad, written by make_onnx_grad_reference.py): a tiny ViT with registers, SwiGLU,
 * LayerScale and drop path with a fixed mask; the gradient of EVERY parameter for one supervised step
 * (soft-target CE, and BCE as a micro-batch share) and one DINOv2 step (DINO global + local with the
 * local crops' interpolated positional embedding, KoLeo, iBOT masked with padding rows, DINOHead with a
 * trained weight_g; iBOT head shared and separate) within allclose(atol 1e-4, rtol 1e-3); the teacher and
 * encode graphs' outputs; and the tfjs engine's gradients against the same fixture (both engines agree).
 * Skips with one line where onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { before, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { Rng, ensureGradients } from '@vitreg/core';
import { VisionTransformer, type ViTConfig } from '@vitreg/registers';
import type { SupervisedBatch } from '../src/batch.js';
import type { TrainConfig } from '../src/config.js';
import { ClassifierHead, DinoHead, type DinoHeadConfig } from '../src/heads.js';
import { dinoGlobalLocalLoss, ibotMaskedLoss, koleoLoss } from '../src/losses.js';
import { maskRowBucket, padMaskRows, padRows, supervisedDropPath } from '../src/onnx/feeds.js';
import { dinoStudentStepGraph, encodeGraph, supervisedStepGraph, teacherGraph, type BuiltGraph } from '../src/onnx/graphs.js';
import { supervisedStep } from '../src/steps/supervised.js';
import { closeness, readF32Safetensors, runModel, SKIP_NO_ORT, tryOrt, type Feed } from './onnx-helpers.js';

const DIR = fileURLToPath(new URL('./fixtures/onnx-grad/', import.meta.url));
type Fixture = Record<string, { shape: number[]; data: Float32Array }>;
interface Meta {
  vit: ViTConfig;
  head: DinoHeadConfig;
  ibot_head: DinoHeadConfig;
  num_classes: number;
  student_temp: number;
  weights: { dino: number; koleo: number; ibot: number };
  bce_scale: number;
}
let fx: Fixture;
let meta: Meta;
const ATOL = 1e-4;
const RTOL = 1e-3;

before(async () => {
  await tf.setBackend('cpu');
  await ensureGradients();
  fx = await readF32Safetensors(`${DIR}onnx_grad_reference.safetensors`);
  meta = JSON.parse(await readFile(`${DIR}onnx_grad_reference.json`, 'utf8')) as Meta;
});

const f = (k: string): Float32Array => {
  const v = fx[k];
  if (!v) throw new Error(`fixture has no tensor "${k}"`);
  return v.data;
};
/** The fixture's parameters under `prefixes`, by name. */
const params = (...prefixes: string[]): Record<string, Float32Array> =>
  Object.fromEntries(
    Object.keys(fx)
      .filter((k) => k.startsWith('params/') && prefixes.some((p) => k.startsWith(`params/${p}`)))
      .map((k) => [k.slice(7), f(k)]),
  );
/** The fixture's gradients of a step, by parameter name. */
const gradsOf = (step: string): Record<string, Float32Array> =>
  Object.fromEntries(
    Object.keys(fx)
      .filter((k) => k.startsWith(`${step}/grad/`))
      .map((k) => [k.slice(step.length + 6), f(k)]),
  );

interface Parity {
  maxAbs: number;
  maxRel: number;
  bad: string[];
}

/** Compares every fixture gradient with the graph's (a parameter without a gradient output must be all 0 there). */
function compare(got: Record<string, Float32Array>, want: Record<string, Float32Array>, built?: BuiltGraph): Parity {
  const r: Parity = { maxAbs: 0, maxRel: 0, bad: [] };
  for (const [name, ref] of Object.entries(want)) {
    const g = got[`grad.${name}`] ?? (built && !built.gradients.includes(name) ? new Float32Array(ref.length) : undefined);
    if (!g) {
      r.bad.push(`${name}: no gradient`);
      continue;
    }
    const c = closeness(g, ref, ATOL, RTOL);
    r.maxAbs = Math.max(r.maxAbs, c.maxAbs);
    r.maxRel = Math.max(r.maxRel, c.maxRel);
    if (!c.ok) r.bad.push(`${name}: max abs ${c.maxAbs.toExponential(2)}, worst ${c.worst}`);
  }
  return r;
}

function report(t: TestContext, what: string, p: Parity, n: number): void {
  t.diagnostic(`${what}: ${n} parameter gradients, max abs diff ${p.maxAbs.toExponential(2)}, max rel diff ${p.maxRel.toExponential(2)}`);
}

const supervisedTrained = () => Object.keys(params('backbone.', 'head.')).filter((k) => k !== 'backbone.mask_token');

for (const kind of ['ce', 'bce'] as const) {
  const loss = kind === 'ce' ? 'soft-target cross-entropy' : 'BCE, scaled as a micro-batch share';
  test(`PyTorch parity: supervised step (${loss}), every parameter's gradient`, async (t) => {
    const o = await tryOrt();
    if (!o) return t.skip(SKIP_NO_ORT);
    const vit = meta.vit;
    const built = supervisedStepGraph(vit, {
      batch: 3,
      size: 16,
      numClasses: meta.num_classes,
      bce: kind === 'bce',
      trained: supervisedTrained(),
    });
    const feeds: Record<string, Feed> = {
      ...params('backbone.', 'head.'),
      images: f('supervised/images'),
      targets: f('supervised/targets'),
      loss_scale: Float32Array.of(kind === 'bce' ? meta.bce_scale : 1),
      drop_path: f(`supervised_${kind}/drop_path`),
    };
    const got = await runModel(o, built.bytes, built.inputs, feeds);
    const want = gradsOf(`supervised_${kind}`);
    assert.equal(Object.keys(want).length, supervisedTrained().length);
    const p = compare(got, want, built);
    report(t, `supervised ${kind}`, p, Object.keys(want).length);
    assert.deepEqual(p.bad, []);
    assert.ok(Math.abs(got.loss![0]! - f(`supervised_${kind}/loss`)[0]!) < 1e-5);
    assert.equal(got[`loss_${kind}`]![0], got.loss![0]);
  });
}

/** The DINO step's feeds, with the iBOT rows padded to their bucket. */
function dinoFeeds(mode: 'shared' | 'separate', rows: number, K: number): Record<string, Feed> {
  const index = Array.from(f('dino/mask_index'));
  const { index: idx, weight } = padMaskRows({ masks: f('dino/masks'), indices: index, weights: f('dino/mask_weight') }, rows);
  return {
    ...params('backbone.', 'dino_head.', ...(mode === 'separate' ? ['ibot_head.'] : [])),
    globals: f('dino/globals'),
    locals: f('dino/locals'),
    drop_path_global: f(`dino_${mode}/drop_path_global`),
    drop_path_local: f(`dino_${mode}/drop_path_local`),
    dino_targets: f('dino/dino_targets'),
    masks: f('dino/masks'),
    mask_index: idx,
    mask_weight: weight,
    ibot_targets: padRows(f(`dino_${mode}/ibot_targets`), rows, K),
  };
}

for (const mode of ['shared', 'separate'] as const) {
  const what = `DINO global + local, KoLeo, iBOT with a ${mode} head, padded rows`;
  test(`PyTorch parity: DINOv2 step (${what}), every parameter's gradient`, async (t) => {
    const o = await tryOrt();
    if (!o) return t.skip(SKIP_NO_ORT);
    const vit = meta.vit;
    const M = f('dino/mask_index').length;
    const rows = maskRowBucket(M);
    assert.ok(rows > M, 'the test pads some rows');
    const trained = Object.keys(params('backbone.', 'dino_head.', ...(mode === 'separate' ? ['ibot_head.'] : [])));
    const heads = { dino: meta.head, ibot: mode === 'separate' ? meta.ibot_head : undefined };
    const built = dinoStudentStepGraph(vit, heads, {
      batch: 3,
      globalSize: 16,
      localSize: 8,
      nLocal: 2,
      maskRows: rows,
      ibot: mode,
      dinoWeight: meta.weights.dino,
      koleoWeight: meta.weights.koleo,
      ibotWeight: meta.weights.ibot,
      studentTemp: meta.student_temp,
      trained,
    });
    const K = mode === 'shared' ? meta.head.outDim : meta.ibot_head.outDim;
    const got = await runModel(o, built.bytes, built.inputs, dinoFeeds(mode, rows, K));
    const want = gradsOf(`dino_${mode}`);
    assert.equal(Object.keys(want).length, trained.length);
    const p = compare(got, want, built);
    report(t, `DINOv2 ${mode} iBOT head`, p, trained.length);
    assert.deepEqual(p.bad, []);
    for (const part of ['loss', 'loss_dino_global', 'loss_dino_local', 'loss_koleo', 'loss_ibot']) {
      const c = closeness(got[part]!, f(`dino_${mode}/${part}`), 1e-5, 1e-5);
      assert.ok(c.ok, `${part}: ${c.worst}`);
    }
  });
}

/** Whether the ModelProto has a node of type `op` (NodeProto.op_type, field 4, as the GraphBuilder writes it). */
const hasOp = (b: BuiltGraph, op: string) =>
  Buffer.from(b.bytes).includes(Buffer.concat([Buffer.from([0x22, op.length]), Buffer.from(op)]));

test('plainMatMul + plainSum (the WebGPU build): no FusedMatMul or Sum node, and the supervised and DINOv2 steps keep PyTorch parity', async (t) => {
  const o = await tryOrt();
  if (!o) return t.skip(SKIP_NO_ORT);
  const vit = meta.vit;
  const plain = { plainMatMul: true, plainSum: true };
  const fused = (b: BuiltGraph) => hasOp(b, 'FusedMatMul') || hasOp(b, 'Sum');
  const common = { batch: 3, size: 16, numClasses: meta.num_classes, trained: supervisedTrained() };
  const usual = supervisedStepGraph(vit, common);
  assert.ok(hasOp(usual, 'FusedMatMul') && hasOp(usual, 'Sum') && hasOp(usual, 'MatMul'), 'the default build uses FusedMatMul and Sum');
  const sup = supervisedStepGraph(vit, { ...common, ...plain });
  assert.ok(!fused(sup), 'plain: a FusedMatMul or Sum node is left');
  const got = await runModel(o, sup.bytes, sup.inputs, {
    ...params('backbone.', 'head.'),
    images: f('supervised/images'),
    targets: f('supervised/targets'),
    loss_scale: Float32Array.of(1),
    drop_path: f('supervised_ce/drop_path'),
  });
  const ps = compare(got, gradsOf('supervised_ce'), sup);
  report(t, 'supervised ce, plain ops', ps, supervisedTrained().length);
  assert.deepEqual(ps.bad, []);
  const rows = maskRowBucket(f('dino/mask_index').length);
  const trained = Object.keys(params('backbone.', 'dino_head.'));
  const dino = dinoStudentStepGraph(
    vit,
    { dino: meta.head },
    {
      batch: 3,
      globalSize: 16,
      localSize: 8,
      nLocal: 2,
      maskRows: rows,
      ibot: 'shared',
      dinoWeight: meta.weights.dino,
      koleoWeight: meta.weights.koleo,
      ibotWeight: meta.weights.ibot,
      studentTemp: meta.student_temp,
      trained,
      ...plain,
    },
  );
  assert.ok(!fused(dino), 'plain: a FusedMatMul or Sum node is left in the DINOv2 step');
  const dgot = await runModel(o, dino.bytes, dino.inputs, dinoFeeds('shared', rows, meta.head.outDim));
  const pd = compare(dgot, gradsOf('dino_shared'), dino);
  report(t, 'DINOv2 shared iBOT head, plain ops', pd, trained.length);
  assert.deepEqual(pd.bad, []);
  assert.ok(closeness(dgot.loss_koleo!, f('dino_shared/loss_koleo'), 1e-5, 1e-5).ok);
  const teacher = teacherGraph(vit, { dino: meta.head }, { batch: 3, size: 16, maskRows: rows, ibot: 'shared', ...plain });
  assert.ok(!fused(teacher) && !fused(encodeGraph(vit, { batch: 2, size: 16, ...plain })));
});

test('PyTorch parity: teacher graph (eval, swapped CLS, gathered patches, shared / separate iBOT head) and encode graph', async (t) => {
  const o = await tryOrt();
  if (!o) return t.skip(SKIP_NO_ORT);
  const vit = meta.vit;
  const M = f('dino/mask_index').length;
  const rows = maskRowBucket(M);
  const { index } = padMaskRows(
    { masks: f('dino/masks'), indices: Array.from(f('dino/mask_index')), weights: f('dino/mask_weight') },
    rows,
  );
  for (const mode of ['shared', 'separate'] as const) {
    const built = teacherGraph(vit, { dino: meta.head, ibot: meta.ibot_head }, { batch: 3, size: 16, maskRows: rows, ibot: mode });
    assert.deepEqual(built.gradients, []);
    const feeds = { ...params('backbone.', 'dino_head.', 'ibot_head.'), globals: f('dino/globals'), mask_index: index };
    const got = await runModel(o, built.bytes, built.inputs, feeds);
    const dino = closeness(got.dino_logits!, f('teacher/dino_logits'), ATOL, RTOL);
    const K = mode === 'shared' ? meta.head.outDim : meta.ibot_head.outDim;
    const ibot = closeness(got.ibot_logits!.subarray(0, M * K), f(`teacher_${mode}/ibot_logits`), ATOL, RTOL);
    assert.ok(dino.ok && ibot.ok, `${mode}: dino ${dino.worst}, ibot ${ibot.worst}`);
    t.diagnostic(`teacher ${mode}: max abs diff dino ${dino.maxAbs.toExponential(2)}, ibot ${ibot.maxAbs.toExponential(2)}`);
  }
  const enc = encodeGraph(vit, { batch: 6, size: 16 });
  const got = await runModel(o, enc.bytes, enc.inputs, { ...params('backbone.'), images: f('dino/globals') });
  const c = closeness(got.cls!, f('encode/cls'), ATOL, RTOL);
  assert.ok(c.ok, c.worst);
});

// ---------------------------------------------------------------------------------------------
// The tfjs engine on the same fixture.

/** Per-image generators whose draws reproduce `factors` [depth, 2, B] (kept images draw low, dropped ones high). */
function scriptedRngs(factors: Float32Array, depth: number, B: number): Rng[] {
  return Array.from({ length: B }, (_, b) => {
    const seq: number[] = [];
    for (let i = 0; i < depth; i++) for (let k = 0; k < 2; k++) seq.push(factors[(i * 2 + k) * B + b]! > 0 ? 0.1 : 0.9);
    let j = 0;
    return { float: () => seq[j++]! } as unknown as Rng;
  });
}

function student(vit: ViTConfig): VisionTransformer {
  return new VisionTransformer(vit, { weights: Object.fromEntries(Object.entries(params('backbone.')).map(([k, v]) => [k.slice(9), v])) });
}

function assignHead(head: { params: Record<string, tf.Variable> }, prefix: string): void {
  for (const [k, v] of Object.entries(head.params)) v.assign(tf.tensor(f(`params/${prefix}.${k}`), v.shape));
}

/** tfjs gradients of `loss` by parameter name (`backbone.*` and the heads' prefixes). */
function tfjsGrads(loss: () => tf.Scalar, vars: Record<string, tf.Variable>): Record<string, Float32Array> {
  const { grads } = tf.variableGrads(loss, Object.values(vars));
  return Object.fromEntries(
    Object.entries(vars).map(([k, v]) => [
      `grad.${k}`,
      grads[v.name] ? (grads[v.name]!.dataSync() as Float32Array) : new Float32Array(v.size),
    ]),
  );
}

test("tfjs engine: the supervised step (steps/supervised.ts) gives the PyTorch fixture's gradients too", async (t) => {
  const vit = meta.vit;
  const m = student(vit);
  const head = new ClassifierHead(vit.embed_dim, meta.num_classes, new Rng(0));
  assignHead(head, 'head');
  const batch: SupervisedBatch = {
    objective: 'supervised',
    size: 3,
    imageSize: 16,
    images: f('supervised/images'),
    targets: f('supervised/targets'),
    numClasses: meta.num_classes,
    dropPath: scriptedRngs(f('supervised_ce/drop_path'), vit.depth, 3),
    metrics: {},
  };
  const config = { supervised: { bce_loss: false }, train: { micro_batch_size: 0 } } as unknown as TrainConfig;
  const record = supervisedStep({ student: m, head }, batch, config);
  const vars: Record<string, tf.Variable> = {};
  for (const [k, v] of Object.entries(m.params)) if (k !== 'mask_token') vars[`backbone.${k}`] = v;
  for (const [k, v] of Object.entries(head.params)) vars[`head.${k}`] = v;
  const got = tfjsGrads(() => record.losses[0]!().total, vars);
  const p = compare(got, gradsOf('supervised_ce'));
  report(t, 'tfjs supervised ce', p, Object.keys(vars).length);
  assert.deepEqual(p.bad, []);
  tf.dispose(record.inputs);
  m.dispose();
});

test("tfjs engine: the DINOv2 loss assembly of steps/dino.ts (shared iBOT head) gives the PyTorch fixture's gradients too", async (t) => {
  const vit = meta.vit;
  const m = student(vit);
  const head = new DinoHead(meta.head, new Rng(0));
  assignHead(head, 'dino_head');
  const B = 3;
  const P = 16;
  const D = vit.embed_dim;
  const index = tf.tensor1d(Array.from(f('dino/mask_index')), 'int32');
  const globals = tf.tensor4d(f('dino/globals'), [2 * B, 16, 16, 3]);
  const locals = tf.tensor4d(f('dino/locals'), [2 * B, 8, 8, 3]);
  const masks = tf.tensor2d(f('dino/masks'), [2 * B, P]);
  const teacher = tf.tensor2d(f('dino/dino_targets'), [2 * B, meta.head.outDim]);
  const ibotT = tf.tensor2d(f('dino_shared/ibot_targets'), [index.shape[0], meta.head.outDim]);
  const weights = tf.tensor1d(f('dino/mask_weight'));
  const w = meta.weights;
  const loss = () => {
    const g = m.forward(globals, { training: true, rng: scriptedRngs(f('dino_shared/drop_path_global'), vit.depth, 2 * B), masks });
    const l = m.forward(locals, { training: true, rng: scriptedRngs(f('dino_shared/drop_path_local'), vit.depth, 2 * B) });
    const masked = tf.gather(tf.reshape(g.patches, [2 * B * P, D]), index) as tf.Tensor2D;
    const out = head.forward(tf.concat([l.cls, g.cls, masked]) as tf.Tensor2D);
    const localOut = tf.split(tf.slice(out, [0, 0], [2 * B, -1]), 2) as tf.Tensor2D[];
    const dl = dinoGlobalLocalLoss(tf.slice(out, [2 * B, 0], [2 * B, -1]), teacher, localOut, meta.student_temp);
    const [c1, c2] = tf.split(g.cls, 2) as [tf.Tensor2D, tf.Tensor2D];
    const koleo = tf.add(koleoLoss(c1), koleoLoss(c2));
    const ibot = ibotMaskedLoss(tf.slice(out, [4 * B, 0], [-1, -1]), ibotT, weights, 2 * B, meta.student_temp);
    return tf.addN([tf.mul(tf.add(dl.global, dl.local), w.dino), tf.mul(koleo, w.koleo), tf.mul(ibot, w.ibot)]) as tf.Scalar;
  };
  const vars: Record<string, tf.Variable> = {};
  for (const [k, v] of Object.entries(m.params)) vars[`backbone.${k}`] = v;
  for (const [k, v] of Object.entries(head.params)) vars[`dino_head.${k}`] = v;
  const got = tfjsGrads(loss, vars);
  const p = compare(got, gradsOf('dino_shared'));
  report(t, 'tfjs DINOv2 shared', p, Object.keys(vars).length);
  assert.deepEqual(p.bad, []);
  m.dispose();
});

test("both engines drop the same paths: supervisedDropPath from the images' generators = the tfjs model's draws", async (t) => {
  const o = await tryOrt();
  if (!o) return t.skip(SKIP_NO_ORT);
  const vit = { ...meta.vit, drop_path_uniform: false, drop_path_batch_subset: false, drop_path_rate: 0.6 };
  const rngs = () => [11, 12, 13].map((s) => new Rng(s));
  const m = student(vit);
  const head = new ClassifierHead(vit.embed_dim, meta.num_classes, new Rng(0));
  assignHead(head, 'head');
  const batch: SupervisedBatch = {
    objective: 'supervised',
    size: 3,
    imageSize: 16,
    images: f('supervised/images'),
    targets: f('supervised/targets'),
    numClasses: meta.num_classes,
    dropPath: rngs(),
    metrics: {},
  };
  const config = { supervised: { bce_loss: false }, train: { micro_batch_size: 0 } } as unknown as TrainConfig;
  const record = supervisedStep({ student: m, head }, batch, config);
  const vars: Record<string, tf.Variable> = {};
  for (const [k, v] of Object.entries(m.params)) if (k !== 'mask_token') vars[`backbone.${k}`] = v;
  for (const [k, v] of Object.entries(head.params)) vars[`head.${k}`] = v;
  const want = tfjsGrads(() => record.losses[0]!().total, vars);
  const drop = supervisedDropPath(vit, rngs())!;
  assert.ok(drop.some((v) => v === 0) && drop.some((v) => v > 1), 'some paths drop and some are kept');
  const built = supervisedStepGraph(vit, { batch: 3, size: 16, numClasses: meta.num_classes, trained: Object.keys(vars) });
  const got = await runModel(o, built.bytes, built.inputs, {
    ...params('backbone.', 'head.'),
    images: batch.images,
    targets: batch.targets,
    loss_scale: Float32Array.of(1),
    drop_path: drop,
  });
  const p = compare(got, Object.fromEntries(Object.entries(want).map(([k, v]) => [k.slice(5), v])), built);
  report(t, 'tfjs vs onnxruntime, per-image drop path', p, Object.keys(vars).length);
  assert.deepEqual(p.bad, []);
  tf.dispose(record.inputs);
  m.dispose();
});
