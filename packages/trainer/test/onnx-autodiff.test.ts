/**
 * Every VJP rule of the ONNX training graphs' ops (src/onnx/autodiff.ts, nn-ops.ts) against tfjs autodiff
 * on the cpu backend (gradients registered by @tensorflow/tfjs): for each op, loss = sum(op(inputs) r) with
 * a fixed random r, on small random shapes with broadcasting; the op's value and the gradient of every
 * differentiable input must match (onnx-helpers.ts `checkVjp`). The losses and heads: onnx-losses.test.ts.
 * Runs on ONNX Runtime; skips with one line where onnxruntime-node does not load.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { ensureGradients } from '@vitreg/core';
import * as nn from '../src/onnx/nn-ops.js';
import { checkVjp, SKIP_NO_ORT, tryOrt, type VjpCase } from './onnx-helpers.js';

before(async () => {
  await tf.setBackend('cpu');
  await ensureGradients();
});

const cases: Record<string, VjpCase> = {
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
    assert.deepEqual(await checkVjp(c, name.length), []);
  });
}

/** One pre-norm attention block made of the rules above (as vit-graph.ts wires them). */
test('VJP: an attention block (LayerNorm, qkv, split heads, softmax(q k^T a) v, merge)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const [B, N, D, H] = [2, 5, 8, 2];
  const hd = D / H;
  const c: VjpCase = {
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
  assert.deepEqual(await checkVjp(c, 7), []);
});
