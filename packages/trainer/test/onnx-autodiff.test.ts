/**
 * Every VJP rule of the ONNX training graphs (src/onnx/autodiff.ts, nn-ops.ts, heads-graph.ts,
 * losses-graph.ts) against tfjs autodiff on the cpu backend (gradients registered by @tensorflow/tfjs):
 * for each op, loss = sum(op(inputs) r) with a fixed random r, on small random shapes with broadcasting;
 * the op's value and the gradient of every differentiable input must match. Runs on ONNX Runtime; skips
 * with one line where onnxruntime-node does not load.
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
import * as nn from '../src/onnx/nn-ops.js';
import { closeness, runModel, seeded, SKIP_NO_ORT, tryOrt, type Feed } from './onnx-helpers.js';

before(async () => {
  await tf.setBackend('cpu');
  await ensureGradients();
});

interface Spec {
  shape: number[];
  /** Values in [offset - scale, offset + scale). */
  scale?: number;
  offset?: number;
  /** Gets a gradient (default true). */
  grad?: boolean;
  /** Integer values (an int64 graph input, int32 in tfjs). */
  ints?: number[];
  /** Fixed values. */
  values?: number[];
}

interface Case {
  inputs: Record<string, Spec>;
  graph: (t: TrainGraph, x: Record<string, Value>) => Value;
  tfjs: (x: Record<string, tf.Tensor>) => tf.Tensor;
  /** allclose tolerances (default atol 1e-5, rtol 1e-4). */
  atol?: number;
  rtol?: number;
}

const size = (s: number[]) => s.reduce((a, b) => a * b, 1);

/** Builds and runs the case's graph and its tfjs twin; returns the names that disagree (empty when all agree). */
async function check(c: Case, seed: number): Promise<string[]> {
  const o = await tryOrt();
  if (!o) return [];
  const values: Record<string, Float32Array> = {};
  Object.entries(c.inputs).forEach(([k, s], i) => {
    values[k] = s.values
      ? Float32Array.from(s.values)
      : s.ints
        ? Float32Array.from(s.ints)
        : seeded(size(s.shape), seed * 31 + i, s.scale ?? 1, s.offset ?? 0);
  });
  const t = new TrainGraph();
  const x: Record<string, Value> = {};
  for (const [k, s] of Object.entries(c.inputs))
    x[k] = t.input(k, s.shape, { grad: !s.ints && s.grad !== false, dtype: s.ints ? 'int64' : 'float32' });
  const y = c.graph(t, x);
  const r = t.input('r', y.shape);
  values.r = seeded(size([...y.shape]), seed * 31 + 99);
  const all = y.shape.map((_, i) => i);
  const loss = all.length ? t.reduceSum(t.mul(y, r), all) : t.mul(y, r);
  t.output(y, 'y');
  const wrt = Object.values(x).filter((v) => v.grad);
  t.gradients(loss, wrt).forEach((g, i) => t.output(g ?? t.zeros(wrt[i]!.shape), `grad.${wrt[i]!.name}`));
  const feeds: Record<string, Feed> = {};
  for (const i of t.inputs) feeds[i.name] = i.dtype === 'int64' ? BigInt64Array.from(values[i.name]!, (v) => BigInt(v)) : values[i.name]!;
  const got = await runModel(o, t.encode(), t.inputs, feeds);

  const names = Object.keys(c.inputs).filter((k) => x[k]!.grad);
  const tensors = (vals: tf.Tensor[]) => {
    const m: Record<string, tf.Tensor> = {};
    let j = 0;
    for (const [k, s] of Object.entries(c.inputs))
      m[k] = s.ints ? tf.tensor(s.ints, s.shape, 'int32') : x[k]!.grad ? vals[j++]! : tf.tensor(values[k]!, s.shape);
    return m;
  };
  const rT = tf.tensor(values.r, [...y.shape]);
  const f = (...vals: tf.Tensor[]) => tf.sum(tf.mul(c.tfjs(tensors(vals)), rT));
  const gradInputs = names.map((k) => tf.tensor(values[k]!, c.inputs[k]!.shape));
  const yRef = c.tfjs(tensors(gradInputs)).dataSync();
  const grads = names.length
    ? tf
        .grads(f)(gradInputs)
        .map((g) => g.dataSync())
    : [];
  const bad: string[] = [];
  const atol = c.atol ?? 1e-5;
  const rtol = c.rtol ?? 1e-4;
  const cmp = (what: string, a: Float32Array, e: ArrayLike<number>) => {
    const r2 = closeness(a, e, atol, rtol);
    if (!r2.ok) bad.push(`${what}: max abs ${r2.maxAbs.toExponential(2)}, worst ${r2.worst}`);
  };
  cmp('value', got.y!, yRef);
  names.forEach((k, i) => cmp(`grad ${k}`, got[`grad.${k}`]!, grads[i]!));
  return bad;
}

const cases: Record<string, Case> = {
  'add broadcasting [2,3,4] + [4]': {
    inputs: { a: { shape: [2, 3, 4] }, b: { shape: [4] } },
    graph: (t, x) => t.add(x.a!, x.b!),
    tfjs: (x) => tf.add(x.a!, x.b!),
  },
  'add broadcasting [2,1,4] + [3,1]': {
    inputs: { a: { shape: [2, 1, 4] }, b: { shape: [3, 1] } },
    graph: (t, x) => t.add(x.a!, x.b!),
    tfjs: (x) => tf.add(x.a!, x.b!),
  },
  'sub broadcasting [3,1] - [2,3,4]': {
    inputs: { a: { shape: [3, 1] }, b: { shape: [2, 3, 4] } },
    graph: (t, x) => t.sub(x.a!, x.b!),
    tfjs: (x) => tf.sub(x.a!, x.b!),
  },
  'mul broadcasting [2,3,4] * [1,3,1]': {
    inputs: { a: { shape: [2, 3, 4] }, b: { shape: [1, 3, 1] } },
    graph: (t, x) => t.mul(x.a!, x.b!),
    tfjs: (x) => tf.mul(x.a!, x.b!),
  },
  'mul by a scalar input': {
    inputs: { a: { shape: [3, 4] }, b: { shape: [] } },
    graph: (t, x) => t.mul(x.a!, x.b!),
    tfjs: (x) => tf.mul(x.a!, x.b!),
  },
  'mul by an input without gradient': {
    inputs: { a: { shape: [3, 4] }, b: { shape: [3, 1], grad: false } },
    graph: (t, x) => t.mul(x.a!, x.b!),
    tfjs: (x) => tf.mul(x.a!, x.b!),
  },
  'div broadcasting [2,3,4] / [3,1]': {
    inputs: { a: { shape: [2, 3, 4] }, b: { shape: [3, 1], scale: 0.5, offset: 1.5 } },
    graph: (t, x) => t.div(x.a!, x.b!),
    tfjs: (x) => tf.div(x.a!, x.b!),
  },
  'div of a broadcast numerator [4] / [2,3,4]': {
    inputs: { a: { shape: [4] }, b: { shape: [2, 3, 4], scale: 0.5, offset: 1.5 } },
    graph: (t, x) => t.div(x.a!, x.b!),
    tfjs: (x) => tf.div(x.a!, x.b!),
  },
  scale: { inputs: { a: { shape: [5] } }, graph: (t, x) => t.scale(x.a!, -2.5), tfjs: (x) => tf.mul(x.a!, -2.5) },
  neg: { inputs: { a: { shape: [2, 5] } }, graph: (t, x) => t.neg(x.a!), tfjs: (x) => tf.neg(x.a!) },
  exp: { inputs: { a: { shape: [2, 5] } }, graph: (t, x) => t.exp(x.a!), tfjs: (x) => tf.exp(x.a!) },
  log: { inputs: { a: { shape: [2, 5], scale: 0.9, offset: 1 } }, graph: (t, x) => t.log(x.a!), tfjs: (x) => tf.log(x.a!) },
  sqrt: { inputs: { a: { shape: [2, 5], scale: 0.9, offset: 1 } }, graph: (t, x) => t.sqrt(x.a!), tfjs: (x) => tf.sqrt(x.a!) },
  sigmoid: { inputs: { a: { shape: [2, 5], scale: 3 } }, graph: (t, x) => t.sigmoid(x.a!), tfjs: (x) => tf.sigmoid(x.a!) },
  relu: { inputs: { a: { shape: [3, 5] } }, graph: (t, x) => t.relu(x.a!), tfjs: (x) => tf.relu(x.a!) },
  abs: { inputs: { a: { shape: [3, 5] } }, graph: (t, x) => t.abs(x.a!), tfjs: (x) => tf.abs(x.a!) },
  'max with a constant': { inputs: { a: { shape: [3, 5] } }, graph: (t, x) => t.maxScalar(x.a!, 0.1), tfjs: (x) => tf.maximum(x.a!, 0.1) },
  reshape: {
    inputs: { a: { shape: [2, 3, 4] } },
    graph: (t, x) => t.exp(t.reshape(x.a!, [6, 4])),
    tfjs: (x) => tf.exp(tf.reshape(x.a!, [6, 4])),
  },
  transpose: {
    inputs: { a: { shape: [2, 3, 4, 5] } },
    graph: (t, x) => t.exp(t.transpose(x.a!, [2, 0, 3, 1])),
    tfjs: (x) => tf.exp(tf.transpose(x.a!, [2, 0, 3, 1])),
  },
  slice: {
    inputs: { a: { shape: [2, 6, 3] } },
    graph: (t, x) => t.exp(t.slice(x.a!, 1, 2, 5)),
    tfjs: (x) => tf.exp(tf.slice(x.a!, [0, 2, 0], [2, 3, 3])),
  },
  'split with an unused part': {
    inputs: { a: { shape: [2, 7] } },
    graph: (t, x) => {
      const [p, , r] = t.split(x.a!, 1, [2, 3, 2]);
      return t.mul(t.exp(p!), r!);
    },
    tfjs: (x) => {
      const [p, , r] = tf.split(x.a!, [2, 3, 2], 1);
      return tf.mul(tf.exp(p!), r!);
    },
  },
  concat: {
    inputs: { a: { shape: [2, 3] }, b: { shape: [2, 2] }, c: { shape: [2, 1], grad: false } },
    graph: (t, x) => t.exp(t.concat([x.a!, x.b!, x.c!], 1)),
    tfjs: (x) => tf.exp(tf.concat([x.a!, x.b!, x.c!], 1)),
  },
  expand: { inputs: { a: { shape: [1, 3, 1] } }, graph: (t, x) => t.expand(x.a!, [2, 3, 4]), tfjs: (x) => tf.tile(x.a!, [2, 1, 4]) },
  'reduceSum keepdims': {
    inputs: { a: { shape: [2, 3, 4] } },
    graph: (t, x) => t.reduceSum(x.a!, [0, 2], true),
    tfjs: (x) => tf.sum(x.a!, [0, 2], true),
  },
  reduceSum: { inputs: { a: { shape: [2, 3, 4] } }, graph: (t, x) => t.reduceSum(x.a!, [-1]), tfjs: (x) => tf.sum(x.a!, -1) },
  reduceMean: { inputs: { a: { shape: [2, 3, 4] } }, graph: (t, x) => t.reduceMean(x.a!, [1]), tfjs: (x) => tf.mean(x.a!, 1) },
  'reduceMean keepdims': {
    inputs: { a: { shape: [2, 3, 4] } },
    graph: (t, x) => t.reduceMean(x.a!, [0, 1], true),
    tfjs: (x) => tf.mean(x.a!, [0, 1], true),
  },
  'matmul 2-D': {
    inputs: { a: { shape: [3, 4] }, b: { shape: [4, 5] } },
    graph: (t, x) => nn.matmul(t, x.a!, x.b!),
    tfjs: (x) => tf.matMul(x.a! as tf.Tensor2D, x.b! as tf.Tensor2D),
  },
  'matmul transA': {
    inputs: { a: { shape: [4, 3] }, b: { shape: [4, 5] } },
    graph: (t, x) => nn.matmul(t, x.a!, x.b!, { transA: true }),
    tfjs: (x) => tf.matMul(x.a!, x.b!, true),
  },
  'matmul transB': {
    inputs: { a: { shape: [3, 4] }, b: { shape: [5, 4] } },
    graph: (t, x) => nn.matmul(t, x.a!, x.b!, { transB: true }),
    tfjs: (x) => tf.matMul(x.a!, x.b!, false, true),
  },
  'matmul transA transB alpha': {
    inputs: { a: { shape: [4, 3] }, b: { shape: [5, 4] } },
    graph: (t, x) => nn.matmul(t, x.a!, x.b!, { transA: true, transB: true, alpha: 0.3 }),
    tfjs: (x) => tf.mul(tf.matMul(x.a!, x.b!, true, true), 0.3),
  },
  'matmul batched 4-D transB alpha (attention scores)': {
    inputs: { a: { shape: [2, 3, 5, 4] }, b: { shape: [2, 3, 6, 4] } },
    graph: (t, x) => nn.matmul(t, x.a!, x.b!, { transB: true, alpha: 0.5 }),
    tfjs: (x) => tf.mul(tf.matMul(x.a!, x.b!, false, true), 0.5),
  },
  'matmul batched 4-D transA': {
    inputs: { a: { shape: [2, 3, 5, 4] }, b: { shape: [2, 3, 5, 6] } },
    graph: (t, x) => nn.matmul(t, x.a!, x.b!, { transA: true }),
    tfjs: (x) => tf.matMul(x.a!, x.b!, true),
  },
  'matmul 3-D by a 2-D weight (linear)': {
    inputs: { a: { shape: [2, 5, 4] }, w: { shape: [4, 3] }, b: { shape: [3] } },
    graph: (t, x) => nn.linear(t, x.a!, x.w!, x.b!),
    tfjs: (x) => tf.add(tf.reshape(tf.matMul(tf.reshape(x.a!, [10, 4]), x.w!), [2, 5, 3]), x.b!),
  },
  'matmul 3-D by a transposed 2-D weight': {
    inputs: { a: { shape: [2, 5, 4] }, w: { shape: [3, 4] } },
    graph: (t, x) => nn.matmul(t, x.a!, x.w!, { transB: true }),
    tfjs: (x) => tf.reshape(tf.matMul(tf.reshape(x.a!, [10, 4]), x.w!, false, true), [2, 5, 3]),
  },
  softmax: { inputs: { a: { shape: [2, 3, 6], scale: 3 } }, graph: (t, x) => nn.softmax(t, x.a!), tfjs: (x) => tf.softmax(x.a!) },
  'softmax on axis 1': {
    inputs: { a: { shape: [2, 6, 3], scale: 3 } },
    graph: (t, x) => nn.softmax(t, x.a!, 1),
    tfjs: (x) => tf.transpose(tf.softmax(tf.transpose(x.a!, [0, 2, 1])), [0, 2, 1]),
  },
  logSoftmax: { inputs: { a: { shape: [4, 7], scale: 3 } }, graph: (t, x) => nn.logSoftmax(t, x.a!), tfjs: (x) => tf.logSoftmax(x.a!) },
  layerNorm: {
    inputs: { a: { shape: [2, 3, 8], scale: 2, offset: 0.3 }, w: { shape: [8], offset: 1 }, b: { shape: [8] } },
    graph: (t, x) => nn.layerNorm(t, x.a!, x.w!, x.b!, 1e-6),
    tfjs: (x) => {
      const m = tf.mean(x.a!, -1, true);
      const v = tf.mean(tf.square(tf.sub(x.a!, m)), -1, true);
      return tf.add(tf.mul(tf.div(tf.sub(x.a!, m), tf.sqrt(tf.add(v, 1e-6))), x.w!), x.b!);
    },
  },
  gelu: {
    inputs: { a: { shape: [3, 9], scale: 4 } },
    graph: (t, x) => nn.gelu(t, x.a!),
    tfjs: (x) => tf.mul(tf.mul(x.a!, 0.5), tf.add(1, tf.erf(tf.mul(x.a!, Math.SQRT1_2)))),
  },
  'gelu between linear layers (BiasGelu pattern)': {
    inputs: { a: { shape: [2, 3, 4] }, w1: { shape: [4, 6] }, b1: { shape: [6] }, w2: { shape: [6, 4] } },
    graph: (t, x) => nn.linear(t, nn.gelu(t, nn.linear(t, x.a!, x.w1!, x.b1!)), x.w2!),
    tfjs: (x) => {
      const h = tf.add(tf.matMul(tf.reshape(x.a!, [6, 4]), x.w1!), x.b1!);
      return tf.reshape(tf.matMul(tf.mul(tf.mul(h, 0.5), tf.add(1, tf.erf(tf.mul(h, Math.SQRT1_2)))), x.w2!), [2, 3, 4]);
    },
  },
  quickGelu: {
    inputs: { a: { shape: [3, 9], scale: 4 } },
    graph: (t, x) => nn.quickGelu(t, x.a!),
    tfjs: (x) => tf.mul(x.a!, tf.sigmoid(tf.mul(x.a!, 1.702))),
  },
  swiglu: {
    inputs: { a: { shape: [2, 3, 8], scale: 3 } },
    graph: (t, x) => nn.swiglu(t, x.a!),
    tfjs: (x) => {
      const [x1, x2] = tf.split(x.a!, 2, -1);
      return tf.mul(tf.mul(x1!, tf.sigmoid(x1!)), x2!);
    },
  },
  'activationLinear gelu (the activation recomputed in the backward)': {
    inputs: { h: { shape: [2, 3, 6], scale: 2 }, w: { shape: [6, 4] }, b: { shape: [4] } },
    graph: (t, x) => nn.activationLinear(t, x.h!, 'gelu', x.w!, x.b!),
    tfjs: (x) => {
      const a = tf.mul(tf.mul(x.h!, 0.5), tf.add(1, tf.erf(tf.mul(x.h!, Math.SQRT1_2))));
      return tf.add(tf.reshape(tf.matMul(tf.reshape(a, [6, 6]), x.w!), [2, 3, 4]), x.b!);
    },
  },
  'activationLinear quick_gelu without bias': {
    inputs: { h: { shape: [5, 6], scale: 2 }, w: { shape: [6, 4] } },
    graph: (t, x) => nn.activationLinear(t, x.h!, 'quick_gelu', x.w!),
    tfjs: (x) => tf.matMul(tf.mul(x.h!, tf.sigmoid(tf.mul(x.h!, 1.702))), x.w!),
  },
  'activationLinear swiglu': {
    inputs: { h: { shape: [2, 3, 8], scale: 2 }, w: { shape: [4, 5] }, b: { shape: [5] } },
    graph: (t, x) => nn.activationLinear(t, x.h!, 'swiglu', x.w!, x.b!),
    tfjs: (x) => {
      const [x1, x2] = tf.split(x.h!, 2, -1);
      const a = tf.mul(tf.mul(x1!, tf.sigmoid(x1!)), x2!);
      return tf.add(tf.reshape(tf.matMul(tf.reshape(a, [6, 4]), x.w!), [2, 3, 5]), x.b!);
    },
  },
  'gatherRows with repeated indices': {
    inputs: { a: { shape: [5, 3] }, i: { shape: [6], ints: [4, 0, 4, 2, 0, 0] } },
    graph: (t, x) => nn.gatherRows(t, x.a!, x.i!),
    tfjs: (x) => tf.gather(x.a!, x.i!),
  },
  l2Normalize: {
    inputs: { a: { shape: [4, 6] } },
    graph: (t, x) => nn.l2Normalize(t, x.a!, 1e-12),
    tfjs: (x) => tf.div(x.a!, tf.maximum(tf.norm(x.a!, 'euclidean', 1, true), 1e-12)),
  },
  'a value used twice (gradients summed)': {
    inputs: { a: { shape: [3, 4] }, b: { shape: [4] } },
    graph: (t, x) => {
      const s = t.add(x.a!, x.b!);
      return t.mul(s, t.exp(s));
    },
    tfjs: (x) => {
      const s = tf.add(x.a!, x.b!);
      return tf.mul(s, tf.exp(s));
    },
  },
};

for (const [name, c] of Object.entries(cases)) {
  test(`VJP: ${name}`, async (t) => {
    if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
    assert.deepEqual(await check(c, name.length), []);
  });
}

/** One pre-norm attention block made of the rules above (as vit-graph.ts wires them). */
test('VJP: an attention block (LayerNorm, qkv, split heads, softmax(q k^T a) v, merge)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const [B, N, D, H] = [2, 5, 8, 2];
  const hd = D / H;
  const c: Case = {
    inputs: {
      x: { shape: [B, N, D] },
      w: { shape: [D], offset: 1 },
      b: { shape: [D] },
      qkv: { shape: [D, 3 * D] },
      qb: { shape: [3 * D] },
    },
    graph: (g, x) => {
      const h = nn.linear(g, nn.layerNorm(g, x.x!, x.w!, x.b!, 1e-6), x.qkv!, x.qb!);
      const heads = g.transpose(g.reshape(h, [B, N, 3, H, hd]), [2, 0, 3, 1, 4]);
      const [q, k, v] = g.split(heads, 0, [1, 1, 1]).map((s) => g.reshape(s, [B, H, N, hd]));
      const a = nn.softmax(g, nn.matmul(g, q!, k!, { transB: true, alpha: hd ** -0.5 }));
      return g.reshape(g.transpose(nn.matmul(g, a, v!), [0, 2, 1, 3]), [B, N, D]);
    },
    tfjs: (x) => {
      const m = tf.mean(x.x!, -1, true);
      const ln = tf.add(tf.mul(tf.div(tf.sub(x.x!, m), tf.sqrt(tf.add(tf.mean(tf.square(tf.sub(x.x!, m)), -1, true), 1e-6))), x.w!), x.b!);
      const h = tf.add(tf.reshape(tf.matMul(tf.reshape(ln, [B * N, D]), x.qkv!), [B, N, 3 * D]), x.qb!);
      const [q, k, v] = tf.unstack(tf.transpose(tf.reshape(h, [B, N, 3, H, hd]), [2, 0, 3, 1, 4]));
      const a = tf.softmax(tf.mul(tf.matMul(q!, k!, false, true), hd ** -0.5));
      return tf.reshape(tf.transpose(tf.matMul(a, v!), [0, 2, 1, 3]), [B, N, D]);
    },
  };
  assert.deepEqual(await check(c, 7), []);
});

// ---------------------------------------------------------------------------------------------
// The losses and heads against the trainer's tfjs functions (losses.ts, heads.ts).

test('VJP: soft-target cross-entropy and BCE as losses.ts', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const targets = [0.7, 0.3, 0, 0, 0, 0.1, 0, 0.9, 0, 0, 0.25, 0.25, 0.25, 0.25, 0, 1, 0, 0, 0, 0];
  for (const bce of [false, true]) {
    const c: Case = {
      inputs: { z: { shape: [4, 5], scale: 3 }, tg: { shape: [4, 5], values: targets, grad: false } },
      graph: (g, x) => (bce ? binaryCrossEntropy(g, x.z!, x.tg!) : ceGraph(g, x.z!, x.tg!)),
      tfjs: (x) =>
        bce
          ? binaryCrossEntropyLoss(x.z! as tf.Tensor2D, x.tg! as tf.Tensor2D)
          : softTargetCrossEntropy(x.z! as tf.Tensor2D, x.tg! as tf.Tensor2D),
    };
    assert.deepEqual(await check(c, bce ? 3 : 4), [], bce ? 'BCE' : 'CE');
  }
});

/** Rows of probabilities [n, k] (softmax of seeded values). */
function probs(n: number, k: number, seed: number): number[] {
  const v = seeded(n * k, seed, 2);
  const out: number[] = [];
  for (let r = 0; r < n; r++) {
    const row = Array.from(v.subarray(r * k, (r + 1) * k));
    const m = Math.max(...row);
    const e = row.map((x) => Math.exp(x - m));
    const s = e.reduce((a, b) => a + b, 0);
    out.push(...e.map((x) => x / s));
  }
  return out;
}

test('VJP: DINO global + local loss as dinoGlobalLocalLoss (2 local crops, and none)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const [B, K] = [3, 6];
  for (const nLocal of [2, 0]) {
    const inputs: Record<string, Spec> = {
      g: { shape: [2 * B, K], scale: 2 },
      tp: { shape: [2 * B, K], values: probs(2 * B, K, 5), grad: false },
    };
    if (nLocal) inputs.l = { shape: [nLocal * B, K], scale: 2 };
    const c: Case = {
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
    assert.deepEqual(await check(c, 11 + nLocal), [], `${nLocal} local crops`);
  }
});

test('VJP: iBOT masked loss as ibotMaskedLoss, padding rows (weight 0) change nothing', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const [M, K] = [5, 6];
  const weights = [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3];
  const c: Case = {
    inputs: {
      s: { shape: [M, K], scale: 2 },
      tp: { shape: [M, K], values: probs(M, K, 8), grad: false },
      w: { shape: [M], values: weights, grad: false },
    },
    graph: (g, x) => ibotMasked(g, x.s!, x.tp!, x.w!, 4, 0.1),
    tfjs: (x) => ibotMaskedLoss(x.s! as tf.Tensor2D, x.tp! as tf.Tensor2D, x.w! as tf.Tensor1D, 4, 0.1),
  };
  assert.deepEqual(await check(c, 21), []);
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
    tp: Float32Array.from([...probs(M, K, 8), ...new Array<number>(2 * K).fill(0)]),
    w: Float32Array.from([...weights, 0, 0]),
  });
  const ref = ibotMaskedLoss(tf.tensor2d(sv.subarray(0, M * K), [M, K]), tf.tensor2d(probs(M, K, 8), [M, K]), tf.tensor1d(weights), 4, 0.1);
  assert.ok(Math.abs(got.loss![0]! - ref.dataSync()[0]!) < 1e-6);
  assert.deepEqual(Array.from(got.grad!.subarray(M * K)), new Array<number>(2 * K).fill(0));
});

test('VJP: KoLeo as koleoLoss (the neighbours get gradients too)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const c: Case = {
    inputs: { x: { shape: [5, 4], scale: 2 } },
    graph: (g, x) => koleo(g, x.x!),
    tfjs: (x) => koleoLoss(x.x! as tf.Tensor2D),
  };
  assert.deepEqual(await check(c, 31), []);
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
