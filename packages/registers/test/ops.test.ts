/** The model's building blocks against plain tfjs formulas, values and gradients, on wasm and cpu. */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@vitreg/core';
import {
  gelu,
  geluLinear,
  getConfig,
  layerNorm,
  linear,
  loadWeights,
  matMul2d,
  multiHeadAttention,
  reshape,
  residual,
  setAttentionStrategy,
  VisionTransformer,
} from '../src/index.ts';
import { allclose, FIXTURES, reference } from './helpers.ts';
import { bicubicMatrix } from '../src/interpolate.ts';

after(() => setAttentionStrategy('auto'));

/** softmax(q k^T s) v and its gradients with tfjs' own batched kernels and autograd. */
function referenceAttention(qkv: tf.Tensor4D, scale: number, w: tf.Tensor) {
  const f = (x: tf.Tensor) => {
    const [q, k, v] = tf.unstack(x) as tf.Tensor3D[];
    return tf.sum(tf.mul(tf.matMul(tf.softmax(tf.mul(tf.matMul(q, k, false, true), scale)), v), w));
  };
  return { value: f(qkv), grad: tf.grad(f)(qkv) };
}

for (const backend of ['wasm', 'cpu'] as const) {
  for (const strategy of ['blocks', 'batched'] as const) {
    test(`attention on ${backend}, ${strategy}: value and gradient match autograd`, async () => {
      await initBackend(backend, { log: () => {} });
      setAttentionStrategy(strategy);
      const qkv = tf.randomNormal([3, 4, 7, 5], 0, 1, 'float32', 1) as tf.Tensor4D;
      const w = tf.randomNormal([4, 7, 5], 0, 1, 'float32', 2);
      const want = referenceAttention(qkv, 0.3, w);
      const f = (x: tf.Tensor) => tf.sum(tf.mul(multiHeadAttention(x as tf.Tensor4D, 0.3), w));
      assert.equal(allclose(await f(qkv).data(), await want.value.data(), 1e-5, 1e-5), null);
      assert.equal(allclose(await tf.grad(f)(qkv).data(), await want.grad.data(), 1e-5, 1e-5), null);
    });
  }
}

/** The plain tfjs formulas the fused ops replace, differentiated by tfjs' own autograd. */
const plain = {
  linear: (x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor) => {
    const y = tf.matMul(tf.reshape(x, [-1, w.shape[0]]) as tf.Tensor2D, w as tf.Tensor2D);
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

/**
 * Checks a fused op against its plain formula: the same values bit for bit (the forward arithmetic is
 * unchanged) and the same gradients of sum(out * r) for every input within float rounding.
 */
async function checkOp(fused: (...xs: tf.Tensor[]) => tf.Tensor, reference: (...xs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[]) {
  const got = fused(...inputs);
  const want = reference(...inputs);
  assert.deepEqual(got.shape, want.shape);
  assert.deepEqual(await got.data(), await want.data(), 'values differ');
  const r = tf.randomNormal(want.shape, 0, 1, 'float32', 9);
  const loss =
    (f: typeof fused) =>
    (...xs: tf.Tensor[]) =>
      tf.sum(tf.mul(f(...xs), r));
  const g = tf.grads(loss(fused))(inputs);
  const gw = tf.grads(loss(reference))(inputs);
  for (let i = 0; i < inputs.length; i++) {
    assert.deepEqual(g[i].shape, inputs[i].shape, `gradient ${i} shape`);
    assert.equal(allclose(await g[i].data(), await gw[i].data(), 1e-5, 1e-4), null, `gradient of input ${i}`);
  }
}

for (const backend of ['wasm', 'cpu'] as const) {
  test(`fused ops on ${backend}: values equal the plain formulas, gradients equal autograd`, async () => {
    await initBackend(backend, { log: () => {} });
    let seed = 10;
    const rand = (shape: number[], std = 1) => tf.randomNormal(shape, 0, std, 'float32', seed++);
    const x = rand([2, 5, 6]);
    const w = rand([6, 4]);
    const b = rand([4]);
    await checkOp(
      (a, c, d) => linear(a, c, d),
      (a, c, d) => plain.linear(a, c, d),
      [x, w, b],
    );
    await checkOp(
      (a, c) => linear(a, c),
      (a, c) => plain.linear(a, c),
      [x, w],
    );
    await checkOp(
      (a, c) => linear(a, c),
      (a, c) => plain.linear(a, c),
      [rand([3, 6]), w],
    );
    // Sides that are multiples of 8 take the blocked weight transpose.
    await checkOp(
      (a, c, d) => geluLinear(a, c, d),
      (a, c, d) => plain.linear(plain.gelu(a), c, d),
      [rand([3, 16]), rand([16, 24]), rand([24])],
    );
    const lnW = rand([6]);
    const lnB = rand([6]);
    await checkOp(
      (a, c, d) => layerNorm(a, c, d, 1e-6),
      (a, c, d) => plain.layerNorm(a, c, d, 1e-6),
      [tf.add(rand([2, 5, 6], 3), 2), lnW, lnB],
    );
    await checkOp(
      (a, c, d) => layerNorm(a, c, d, 1e-5),
      (a, c, d) => plain.layerNorm(a, c, d, 1e-5),
      [rand([4, 6]), lnW, lnB],
    );
    await checkOp(
      (a) => gelu(a),
      (a) => plain.gelu(a),
      [rand([3, 7], 2)],
    );
    await checkOp(
      (a, c, d) => geluLinear(a, c, d),
      (a, c, d) => plain.linear(plain.gelu(a), c, d),
      [rand([2, 5, 6], 2), w, b],
    );
    await checkOp(
      (a, c) => geluLinear(a, c),
      (a, c) => plain.linear(plain.gelu(a), c),
      [rand([5, 6], 2), w],
    );
    const keep = tf.tensor3d([0, 1.25], [2, 1, 1]);
    const branch = rand([2, 5, 6]);
    const gamma = rand([6]);
    await checkOp(
      (a, c, d) => residual(a, c, d, keep),
      (a, c, d) => plain.residual(a, c, d, keep),
      [x, branch, gamma],
    );
    await checkOp(
      (a, c, d) => residual(a, c, d),
      (a, c, d) => plain.residual(a, c, d),
      [x, branch, gamma],
    );
    await checkOp(
      (a, c) => residual(a, c, null, keep),
      (a, c) => plain.residual(a, c, undefined, keep),
      [x, branch],
    );
    await checkOp(
      (a, c) => residual(a, c),
      (a, c) => plain.residual(a, c),
      [x, branch],
    );
    await checkOp(
      (a) => reshape(tf.transpose(reshape(a, [2, 3, 10])), [6, 10]),
      (a) => tf.reshape(tf.transpose(tf.reshape(a, [2, 3, 10])), [6, 10]),
      [x],
    );
  });
}

test('fused ops keep fewer tensors for the backward pass than the plain formulas', async () => {
  await initBackend('wasm', { log: () => {} });
  const x = tf.variable(tf.randomNormal([2, 5, 6], 0, 1, 'float32', 20));
  const w = tf.variable(tf.randomNormal([6, 6], 0, 1, 'float32', 21));
  const g = tf.variable(tf.randomNormal([6], 0, 1, 'float32', 22));
  const keep = tf.tensor3d([0, 1.25], [2, 1, 1]);
  // Bytes the tape holds once the forward pass is done (freed when the backward pass ends).
  const held = (f: () => tf.Tensor) => {
    let bytes = 0;
    tf.variableGrads(() =>
      tf.tidy(() => {
        const before = tf.memory().numBytes;
        const y = tf.sum(f());
        bytes = tf.memory().numBytes - before;
        return y as tf.Scalar;
      }),
    );
    return bytes;
  };
  const fused = held(() => residual(x, geluLinear(layerNorm(x, g, g, 1e-6), w, g), g, keep));
  const unfused = held(() => plain.residual(x, plain.linear(plain.gelu(plain.layerNorm(x, g, g, 1e-6)), w, g), g, keep));
  // The README's claim: over 4x fewer bytes than tfjs' autograd of the plain formulas (measured: 5.2x).
  assert.ok(fused * 4 < unfused, `fused keeps ${fused} bytes, plain ${unfused} (${(unfused / fused).toFixed(2)}x)`);
});

test('matMul2d gradient equals the transposed products', async () => {
  await initBackend('wasm', { log: () => {} });
  const a = tf.randomNormal([5, 3], 0, 1, 'float32', 3) as tf.Tensor2D;
  const b = tf.randomNormal([3, 4], 0, 1, 'float32', 4) as tf.Tensor2D;
  const [ga, gb] = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.square(matMul2d(x as tf.Tensor2D, y as tf.Tensor2D))))([a, b]);
  const dy = tf.mul(tf.matMul(a, b), 2);
  assert.equal(allclose(await ga.data(), await tf.matMul(dy, b, false, true).data(), 1e-5, 1e-5), null);
  assert.equal(allclose(await gb.data(), await tf.matMul(a, dy, true, false).data(), 1e-5, 1e-5), null);
});

test('bicubic matrices: identity at equal size, rows sum to one, antialias widens the support', () => {
  const id = bicubicMatrix(6, 6, { antialias: false });
  for (let i = 0; i < 6; i++) for (let j = 0; j < 6; j++) assert.ok(Math.abs(id[i * 6 + j] - (i === j ? 1 : 0)) < 1e-6);
  for (const antialias of [false, true]) {
    const m = bicubicMatrix(37, 16, { antialias });
    for (let i = 0; i < 16; i++) {
      let s = 0;
      for (let j = 0; j < 37; j++) s += m[i * 37 + j];
      assert.ok(Math.abs(s - 1) < 1e-6, `row ${i} sums to ${s}`);
    }
  }
  const taps = (m: Float64Array) => Array.from(m.subarray(8 * 37, 9 * 37)).filter((v) => v !== 0).length;
  assert.equal(taps(bicubicMatrix(37, 16, { antialias: false })), 4);
  assert.ok(taps(bicubicMatrix(37, 16, { antialias: true })) > 4);
});

test('the cpu backend gives the same numbers as the reference', async () => {
  await initBackend('cpu', { log: () => {} });
  setAttentionStrategy('auto');
  const r = await reference('reg4');
  const model = await loadWeights(join(FIXTURES, 'reg4.dinov2.safetensors'), { config: { num_heads: 3 } });
  const x = r['rect98x140.input_nhwc'];
  const out = model.forward(tf.tensor4d(x.data, x.shape as [number, number, number, number]), { attention: 'last' });
  assert.equal(allclose(await out.patches.data(), r['rect98x140.patches'].data), null);
  assert.equal(allclose(await out.attention![0].data(), r['rect98x140.last_attn'].data), null);
  model.dispose();
});

test('the whole model differentiates on wasm, including an interpolated positional grid and masks', async () => {
  await initBackend('wasm', { log: () => {} });
  setAttentionStrategy('auto');
  const model = new VisionTransformer(getConfig('vit_micro_patch8_reg4', { drop_path_rate: 0.2 }), { seed: 3 });
  const { Rng } = await import('@vitreg/core');
  const x = tf.randomNormal([2, 24, 16, 3], 0, 1, 'float32', 5) as tf.Tensor4D; // 3x2 grid: pos-embed interpolated from 4x4
  const masks = tf.tensor2d([
    [1, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0],
  ]);
  const loss = () => {
    const o = model.forward(x, { training: true, rng: new Rng(7), masks });
    return tf.add(tf.sum(tf.square(o.cls)), tf.mean(o.patches)) as tf.Scalar;
  };
  const { value, grads } = tf.variableGrads(loss);
  assert.ok(Number.isFinite((await value.data())[0]));
  for (const name of ['pos_embed', 'mask_token', 'register_tokens', 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight']) {
    const g = grads[model.params[name].name];
    assert.ok(g, `no gradient for ${name}`);
    const d = await g.data();
    assert.ok(d.some((v) => v !== 0) && d.every(Number.isFinite), `${name}: gradient zero or not finite`);
  }
  // Finite differences on one positional-embedding entry (through the bicubic matrices).
  const eps = 1e-2;
  const idx = 1 + 5 * 64 + 3; // second grid position, channel 3
  const g = (await grads[model.params.pos_embed.name].data())[idx];
  const pos = model.params.pos_embed;
  const base = await pos.data();
  const shifted = (delta: number) => {
    const v = base.slice();
    v[idx] += delta;
    pos.assign(tf.tensor(v, pos.shape));
    return loss().dataSync()[0];
  };
  const fd = (shifted(eps) - shifted(-eps)) / (2 * eps);
  pos.assign(tf.tensor(base, pos.shape));
  assert.ok(Math.abs(fd - g) < 1e-2 * Math.max(1, Math.abs(g)), `finite difference ${fd} vs gradient ${g}`);
  model.dispose();
});
