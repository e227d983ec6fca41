/**
 * The model's custom gradients on WebGPU: every fused op (linear, GELU-linear, LayerNorm, GELU,
 * residual with LayerScale and drop path, reshape) gives the values of its plain tfjs formula and the
 * gradients tfjs' own autograd gives for that formula, within allclose(1e-5, 1e-4), as
 * packages/registers/test/ops.test.ts checks on wasm and cpu; multi-head attention, both strategies,
 * against tfjs' batched kernels and autograd; and the whole model's parameter gradients (an
 * interpolated positional grid, masks, drop path) equal wasm's within allclose(1e-5, 1e-4).
 * Run by scripts/test-webgpu.sh.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, Rng } from '@vitreg/core';
import {
  gelu,
  geluLinear,
  getConfig,
  layerNorm,
  linear,
  multiHeadAttention,
  reshape,
  residual,
  setAttentionStrategy,
  VisionTransformer,
} from '@vitreg/registers';
import { allclose } from '../../packages/registers/test/helpers.ts';

after(() => setAttentionStrategy('auto'));

const plain = {
  linear: (x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor) => {
    const y = tf.matMul(tf.reshape(x, [-1, w.shape[0]!]) as tf.Tensor2D, w as tf.Tensor2D);
    return tf.reshape(b ? tf.add(y, b) : y, [...x.shape.slice(0, -1), w.shape[1]!]);
  },
  layerNorm: (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, eps: number) => {
    const mean = tf.mean(x, -1, true);
    const centered = tf.sub(x, mean);
    const variance = tf.mean(tf.square(centered), -1, true);
    return tf.add(tf.mul(tf.mul(centered, tf.rsqrt(tf.add(variance, eps))), w), b);
  },
  gelu: (x: tf.Tensor) => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)),
  residual: (x: tf.Tensor, branch: tf.Tensor, gamma?: tf.Tensor, keep?: tf.Tensor) => {
    let y = gamma ? tf.mul(branch, gamma) : branch;
    if (keep) y = tf.mul(y, keep);
    return tf.add(x, y);
  },
};

async function checkOp(
  name: string,
  fused: (...xs: tf.Tensor[]) => tf.Tensor,
  reference: (...xs: tf.Tensor[]) => tf.Tensor,
  inputs: tf.Tensor[],
) {
  const got = fused(...inputs);
  const want = reference(...inputs);
  assert.deepEqual(got.shape, want.shape, name);
  assert.equal(allclose(await got.data(), await want.data(), 1e-5, 1e-4), null, `${name}: values`);
  const r = tf.randomNormal(want.shape, 0, 1, 'float32', 9);
  const loss =
    (f: typeof fused) =>
    (...xs: tf.Tensor[]) =>
      tf.sum(tf.mul(f(...xs), r));
  const g = tf.grads(loss(fused))(inputs);
  const gw = tf.grads(loss(reference))(inputs);
  for (let i = 0; i < inputs.length; i++) {
    assert.deepEqual(g[i]!.shape, inputs[i]!.shape, `${name}: gradient ${i} shape`);
    assert.equal(allclose(await g[i]!.data(), await gw[i]!.data(), 1e-5, 1e-4), null, `${name}: gradient of input ${i}`);
  }
}

test('fused ops on webgpu: values equal the plain formulas, gradients equal autograd', async () => {
  await initBackend('webgpu', { log: () => {} });
  let seed = 10;
  const rand = (shape: number[], std = 1) => tf.randomNormal(shape, 0, std, 'float32', seed++);
  const x = rand([2, 5, 6]);
  const w = rand([6, 4]);
  const b = rand([4]);
  await checkOp(
    'linear',
    (a, c, d) => linear(a!, c!, d),
    (a, c, d) => plain.linear(a!, c!, d),
    [x, w, b],
  );
  await checkOp(
    'linear, no bias',
    (a, c) => linear(a!, c!),
    (a, c) => plain.linear(a!, c!),
    [rand([3, 6]), w],
  );
  await checkOp(
    'geluLinear, blocked transpose',
    (a, c, d) => geluLinear(a!, c!, d),
    (a, c, d) => plain.linear(plain.gelu(a!), c!, d),
    [rand([3, 16]), rand([16, 24]), rand([24])],
  );
  const lnW = rand([6]);
  const lnB = rand([6]);
  await checkOp(
    'layerNorm',
    (a, c, d) => layerNorm(a!, c!, d!, 1e-6),
    (a, c, d) => plain.layerNorm(a!, c!, d!, 1e-6),
    [tf.add(rand([2, 5, 6], 3), 2), lnW, lnB],
  );
  await checkOp(
    'gelu',
    (a) => gelu(a!),
    (a) => plain.gelu(a!),
    [rand([3, 7], 2)],
  );
  const keep = tf.tensor3d([0, 1.25], [2, 1, 1]);
  await checkOp(
    'residual, LayerScale, drop path',
    (a, c, d) => residual(a!, c!, d, keep),
    (a, c, d) => plain.residual(a!, c!, d, keep),
    [x, rand([2, 5, 6]), rand([6])],
  );
  await checkOp(
    'residual',
    (a, c) => residual(a!, c!),
    (a, c) => plain.residual(a!, c!),
    [x, rand([2, 5, 6])],
  );
  await checkOp(
    'reshape',
    (a) => reshape(tf.transpose(reshape(a!, [2, 3, 10])), [6, 10]),
    (a) => tf.reshape(tf.transpose(tf.reshape(a!, [2, 3, 10])), [6, 10]),
    [x],
  );
});

for (const strategy of ['batched', 'blocks'] as const) {
  test(`attention on webgpu, ${strategy}: value and gradient match autograd`, async () => {
    await initBackend('webgpu', { log: () => {} });
    setAttentionStrategy(strategy);
    const qkv = tf.randomNormal([3, 4, 7, 5], 0, 1, 'float32', 1) as tf.Tensor4D;
    const w = tf.randomNormal([4, 7, 5], 0, 1, 'float32', 2);
    const ref = (x: tf.Tensor) => {
      const [q, k, v] = tf.unstack(x) as tf.Tensor3D[];
      return tf.sum(tf.mul(tf.matMul(tf.softmax(tf.mul(tf.matMul(q!, k!, false, true), 0.3)), v!), w));
    };
    const f = (x: tf.Tensor) => tf.sum(tf.mul(multiHeadAttention(x as tf.Tensor4D, 0.3), w));
    assert.equal(allclose(await f(qkv).data(), await ref(qkv).data(), 1e-5, 1e-5), null);
    assert.equal(allclose(await tf.grad(f)(qkv).data(), await tf.grad(ref)(qkv).data(), 1e-5, 1e-5), null);
  });
}

test('the whole model differentiates on webgpu as on wasm (interpolated positions, masks, drop path)', async () => {
  setAttentionStrategy('auto');
  const grads = async (backend: 'wasm' | 'webgpu') => {
    await initBackend(backend, { log: () => {} });
    const model = new VisionTransformer(getConfig('vit_micro_patch8_reg4', { drop_path_rate: 0.2 }), { seed: 3 });
    const x = tf.randomNormal([2, 24, 16, 3], 0, 1, 'float32', 5) as tf.Tensor4D; // 3x2 grid from a 4x4 table
    const masks = tf.tensor2d([
      [1, 0, 0, 0, 0, 1],
      [0, 0, 0, 0, 0, 0],
    ]);
    const { value, grads } = tf.variableGrads(() => {
      const o = model.forward(x, { training: true, rng: new Rng(7), masks });
      return tf.add(tf.sum(tf.square(o.cls)), tf.mean(o.patches)) as tf.Scalar;
    });
    const out: Record<string, Float32Array> = { loss: (await value.data()) as Float32Array };
    for (const [name, p] of Object.entries(model.params)) out[name] = (await grads[p.name]!.data()) as Float32Array;
    model.dispose();
    return out;
  };
  const wasm = await grads('wasm');
  const gpu = await grads('webgpu');
  assert.ok(Object.keys(wasm).length > 10);
  for (const [name, w] of Object.entries(wasm)) {
    assert.ok(w.some((v) => v !== 0) || name === 'mask_token' || name.endsWith('.bias'), `${name}: zero gradient on wasm`);
    assert.equal(allclose(gpu[name]!, w, 1e-5, 1e-4), null, name);
  }
});
