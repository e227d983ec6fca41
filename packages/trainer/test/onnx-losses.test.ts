/**
 * The training graphs' losses and heads (src/onnx/losses-graph.ts, heads-graph.ts) against the trainer's
 * tfjs functions (losses.ts, heads.ts) differentiated by tfjs autodiff on the cpu backend: values and every
 * input's and parameter's gradient; the iBOT padding rows change nothing. Skips with one line where
 * onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { Rng, ensureGradients } from '@vitreg/core';
import { DinoHead } from '../src/heads.js';
import { binaryCrossEntropyLoss, dinoGlobalLocalLoss, ibotMaskedLoss, koleoLoss, softTargetCrossEntropy } from '../src/losses.js';
import { TrainGraph, type Value } from '../src/onnx/autodiff.js';
import { dinoHead, dinoHeadShapes } from '../src/onnx/heads-graph.js';
import { binaryCrossEntropy, dinoGlobalLocal, ibotMasked, koleo, softTargetCrossEntropy as ceGraph } from '../src/onnx/losses-graph.js';
import {
  checkVjp,
  closeness,
  probRows,
  runModel,
  seeded,
  SKIP_NO_ORT,
  tryOrt,
  type Feed,
  type Spec,
  type VjpCase,
} from './onnx-helpers.js';

before(async () => {
  await tf.setBackend('cpu');
  await ensureGradients();
});
test('VJP: soft-target cross-entropy and BCE as losses.ts', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const targets = [0.7, 0.3, 0, 0, 0, 0.1, 0, 0.9, 0, 0, 0.25, 0.25, 0.25, 0.25, 0, 1, 0, 0, 0, 0];
  for (const bce of [false, true]) {
    const c: VjpCase = {
      inputs: { z: { shape: [4, 5], scale: 3 }, tg: { shape: [4, 5], values: targets, grad: false } },
      graph: (g, x) => (bce ? binaryCrossEntropy(g, x.z!, x.tg!) : ceGraph(g, x.z!, x.tg!)),
      tfjs: (x) =>
        bce
          ? binaryCrossEntropyLoss(x.z! as tf.Tensor2D, x.tg! as tf.Tensor2D)
          : softTargetCrossEntropy(x.z! as tf.Tensor2D, x.tg! as tf.Tensor2D),
    };
    assert.deepEqual(await checkVjp(c, bce ? 3 : 4), [], bce ? 'BCE' : 'CE');
  }
});

test('VJP: DINO global + local loss as dinoGlobalLocalLoss (2 local crops, and none)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const [B, K] = [3, 6];
  for (const nLocal of [2, 0]) {
    const inputs: Record<string, Spec> = {
      g: { shape: [2 * B, K], scale: 2 },
      tp: { shape: [2 * B, K], values: probRows(2 * B, K, 5), grad: false },
    };
    if (nLocal) inputs.l = { shape: [nLocal * B, K], scale: 2 };
    const c: VjpCase = {
      inputs,
      graph: (g, x) => {
        const r = dinoGlobalLocal(g, x.g!, x.tp!, x.l ?? null, nLocal, 0.1);
        return g.add(g.scale(r.global, 1), g.scale(r.local, 3));
      },
      tfjs: (x) => {
        const locals = x.l ? (tf.split(x.l, nLocal) as tf.Tensor2D[]) : [];
        const r = dinoGlobalLocalLoss(x.g! as tf.Tensor2D, x.tp! as tf.Tensor2D, locals, 0.1);
        return tf.add(r.global, tf.mul(r.local, 3));
      },
    };
    assert.deepEqual(await checkVjp(c, 11 + nLocal), [], `${nLocal} local crops`);
  }
});

test('VJP: iBOT masked loss as ibotMaskedLoss, padding rows (weight 0) change nothing', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const [M, K] = [5, 6];
  const weights = [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3];
  const c: VjpCase = {
    inputs: {
      s: { shape: [M, K], scale: 2 },
      tp: { shape: [M, K], values: probRows(M, K, 8), grad: false },
      w: { shape: [M], values: weights, grad: false },
    },
    graph: (g, x) => ibotMasked(g, x.s!, x.tp!, x.w!, 4, 0.1),
    tfjs: (x) => ibotMaskedLoss(x.s! as tf.Tensor2D, x.tp! as tf.Tensor2D, x.w! as tf.Tensor1D, 4, 0.1),
  };
  assert.deepEqual(await checkVjp(c, 21), []);
  // Two padding rows (targets 0, weight 0): the same loss, and their rows' gradient is exactly 0.
  const o = (await tryOrt())!;
  const g = new TrainGraph();
  const s = g.input('s', [M + 2, K], { grad: true });
  const loss = ibotMasked(g, s, g.input('tp', [M + 2, K]), g.input('w', [M + 2]), 4, 0.1);
  g.output(loss, 'loss');
  g.output(g.gradients(loss, [s])[0]!, 'grad');
  const sv = seeded((M + 2) * K, 21 * 31, 2);
  const got = await runModel(o, g.encode(), g.inputs, {
    s: sv,
    tp: Float32Array.from([...probRows(M, K, 8), ...new Array<number>(2 * K).fill(0)]),
    w: Float32Array.from([...weights, 0, 0]),
  });
  const ref = ibotMaskedLoss(
    tf.tensor2d(sv.subarray(0, M * K), [M, K]),
    tf.tensor2d(probRows(M, K, 8), [M, K]),
    tf.tensor1d(weights),
    4,
    0.1,
  );
  assert.ok(Math.abs(got.loss![0]! - ref.dataSync()[0]!) < 1e-6);
  assert.deepEqual(Array.from(got.grad!.subarray(M * K)), new Array<number>(2 * K).fill(0));
});

test('VJP: KoLeo as koleoLoss (the neighbours get gradients too)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const c: VjpCase = {
    inputs: { x: { shape: [5, 4], scale: 2 } },
    graph: (g, x) => koleo(g, x.x!),
    tfjs: (x) => koleoLoss(x.x! as tf.Tensor2D),
  };
  assert.deepEqual(await checkVjp(c, 31), []);
});

test('VJP: DINO head (MLP, L2 normalisation, weight-normed last layer with a trained weight_g) as heads.ts', async (t) => {
  const o = await tryOrt();
  if (!o) return t.skip(SKIP_NO_ORT);
  const cfg = { inDim: 6, outDim: 7, hiddenDim: 8, bottleneckDim: 5, nlayers: 3 };
  const head = new DinoHead(cfg, new Rng(3));
  head.params['last_layer.weight_g']!.assign(tf.tensor2d(seeded(7, 4, 0.5, 1), [1, 7]));
  const shapes = dinoHeadShapes(cfg);
  assert.deepEqual(Object.keys(shapes), Object.keys(head.params), 'parameter names and order as heads.ts');
  for (const [k, v] of Object.entries(head.params)) assert.deepEqual(shapes[k], v.shape, k);
  const g = new TrainGraph();
  const p: Record<string, Value> = {};
  for (const [k, s] of Object.entries(shapes)) p[k] = g.input(k, s, { grad: true });
  const x = g.input('x', [4, 6], { grad: true });
  const y = dinoHead(g, cfg, (n) => p[n]!, x);
  const r = g.input('r', [4, 7]);
  const loss = g.reduceSum(g.mul(y, r), [0, 1]);
  g.output(y, 'y');
  const wrt = [x, ...Object.values(p)];
  g.gradients(loss, wrt).forEach((gr, i) => g.output(gr!, `grad.${wrt[i]!.name}`));
  const xv = seeded(24, 5);
  const rv = seeded(28, 6);
  const feeds: Record<string, Feed> = { x: xv, r: rv };
  for (const [k, v] of Object.entries(head.params)) feeds[k] = v.dataSync() as Float32Array;
  const got = await runModel(o, g.encode(), g.inputs, feeds);
  const xt = tf.variable(tf.tensor2d(xv, [4, 6]));
  const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(head.forward(xt), tf.tensor2d(rv, [4, 7]))) as tf.Scalar);
  const bad: string[] = [];
  const yRef = head.forward(xt).dataSync();
  if (!closeness(got.y!, yRef, 1e-5, 1e-4).ok) bad.push('value');
  if (!closeness(got['grad.x']!, grads[xt.name]!.dataSync(), 1e-5, 1e-4).ok) bad.push('grad x');
  for (const [k, v] of Object.entries(head.params))
    if (!closeness(got[`grad.${k}`]!, grads[v.name]!.dataSync(), 1e-5, 1e-4).ok) bad.push(`grad ${k}`);
  assert.deepEqual(bad, []);
  assert.ok(Number.isFinite(value.dataSync()[0]!));
});
