/**
 * optim.ts at the edges its mutation run found unchecked (issue 22): clipping at exactly the threshold,
 * disabled by maxNorm <= 0, torch's coefficient test at exactly 1; the device norm in float32 and the host
 * norm in float64; DINOv2's per-module clipping of names without a dot; LAMB's trust-ratio clip (LAMBC)
 * against the formula computed here, a last-layer parameter without a last-layer rate; the state's shapes,
 * each refusal's message, and dispose freeing the moments. Tiny tensors: well under a second.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { AdamW, Lamb, clipByGlobalNorm, clipPerModule } from '../src/optim.js';
import type { ParamSpec } from '../src/param-groups.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

const spec = (name: string, values: number[], shape: number[], isLastLayer = false): ParamSpec => ({
  name,
  variable: tf.variable(tf.tensor(values, shape)),
  lrMult: 1,
  wdMult: 1,
  isLastLayer,
});

test('clipByGlobalNorm: a norm exactly at the maximum is left; maxNorm <= 0 clips nothing; the coefficient test leaves a coefficient of exactly 1', () => {
  const g = [tf.tensor1d([3, 0]), tf.tensor1d([0, 4])]; // norm exactly 5
  const at = clipByGlobalNorm(g, 5);
  assert.equal(at.norm, 5);
  assert.equal(at.grads[0], g[0], 'norm == max: not scaled');
  for (const max of [0, -1]) {
    const r = clipByGlobalNorm(g, max);
    assert.equal(r.grads[0], g[0], `maxNorm ${max}: no clipping`);
    assert.deepEqual(Array.from(r.grads[1]!.dataSync()), [0, 4]);
  }
  // max / (norm + 1e-6) == 1 exactly: torch's test (coef < 1) does not scale
  const one = clipByGlobalNorm(g, 5 + 1e-6, { sumOn: 'host', when: 'coef-below-one' });
  assert.equal(one.grads[0], g[0]);
  const far = clipByGlobalNorm(g, 100, { when: 'coef-below-one' });
  assert.equal(far.grads[1], g[1], 'coefficient above 1: not scaled up');
  assert.deepEqual(Array.from(far.grads[1]!.dataSync()), [0, 4]);
  tf.dispose(g);
});

test('clipByGlobalNorm: the device norm is a float32, the host norm float64 of the float32 sums', () => {
  const g = [tf.tensor1d([0.1]), tf.tensor1d([0.2])];
  const device = clipByGlobalNorm(g, 0).norm;
  const host = clipByGlobalNorm(g, 0, { sumOn: 'host' }).norm;
  assert.equal(device, Math.fround(device), 'float32');
  assert.equal(host, Math.sqrt(Math.fround(Math.fround(0.1) ** 2) + Math.fround(Math.fround(0.2) ** 2)));
  assert.notEqual(host, Math.fround(host), 'float64');
  tf.dispose(g);
});

test('clipPerModule: the module is the name before the first dot, the whole name without one; names and gradients must pair up', () => {
  const g = [tf.tensor1d([3, 4]), tf.tensor1d([6, 8]), tf.tensor1d([1, 0]), tf.tensor1d([0, 2])];
  const r = clipPerModule(['backbone.a', 'backbone.b', 'cls_token', '.odd'], g, 1e9);
  assert.deepEqual(Object.keys(r.norms).sort(), ['', 'backbone', 'cls_token']);
  assertClose(r.norms.backbone!, Math.sqrt(125));
  assert.equal(r.norms.cls_token, 1);
  assert.equal(r.norms[''], 2);
  assert.throws(() => clipPerModule(['a'], g, 1), /clipPerModule: 1 names for 4 gradients/);
  tf.dispose(g);
});

test('Lamb with trustClip (LAMBC): the trust ratio is clipped at 1, against the formula computed here', () => {
  const w = [10, -10, 10];
  const g = [0.3, 0.1, -0.2];
  for (const trustClip of [true, false]) {
    const p = spec('w', w, [3]);
    const opt = new Lamb([p], { trustClip, alwaysAdapt: true, maxGradNorm: null });
    opt.apply([tf.tensor1d(g)], { lr: 0.01, wd: 0 });
    // step 1: m / (1 - b1) = g, sqrt(v / (1 - b2)) = |g|: u = g / (|g| + 1e-6); ratio ||w|| / ||u|| ~ 10
    const u = g.map((x) => x / (Math.abs(x) + 1e-6));
    const ratio = Math.hypot(...w) / Math.hypot(...u);
    assert.ok(ratio > 5);
    const r = trustClip ? Math.min(ratio, 1) : ratio;
    const got = p.variable.dataSync();
    w.forEach((x, i) => assertClose(got[i]!, x - 0.01 * r * u[i]!, 1e-5, `trustClip ${trustClip} w[${i}]`));
    opt.dispose();
    p.variable.dispose();
  }
});

test('Lamb: a last-layer parameter takes hp.lr when no lastLayerLr is given, nothing with lastLayerLr 0', () => {
  const a = spec('head.last_layer.weight', [1, 2], [2], true);
  const b = spec('head.weight', [1, 2], [2]);
  const opt = new Lamb([a, b]);
  opt.apply([tf.tensor1d([0.5, -0.5]), tf.tensor1d([0.5, -0.5])], { lr: 0.1, wd: 0.05 });
  assert.deepEqual(Array.from(a.variable.dataSync()), Array.from(b.variable.dataSync()));
  assert.ok(a.variable.dataSync()[0] !== 1, 'it moved');
  const before = Array.from(a.variable.dataSync());
  opt.apply([tf.tensor1d([0.5, -0.5]), tf.tensor1d([0.5, -0.5])], { lr: 0.1, wd: 0.05, lastLayerLr: 0 });
  assert.deepEqual(Array.from(a.variable.dataSync()), before);
  opt.dispose();
});

test('optimiser state: shapes kept, step and sizes checked with their messages; refusals of gradients; dispose frees the moments', () => {
  const p = spec('blocks.0.w', [1, 2, 3, 4], [2, 2]);
  for (const make of [() => new AdamW([p]), () => new Lamb([p])]) {
    const opt = make();
    const state = opt.getState();
    assert.deepEqual(state.moments['blocks.0.w.exp_avg']!.shape, [2, 2]);
    assert.deepEqual(state.moments['blocks.0.w.exp_avg_sq']!.shape, [2, 2]);
    opt.setState({ ...state, step: 0 });
    for (const step of [-1, 1.5]) {
      assert.throws(
        () => opt.setState({ ...state, step }),
        new RegExp(`optimizer state: step must be a non-negative integer, got ${step}`),
      );
    }
    const short = { ...state, moments: { ...state.moments, 'blocks.0.w.exp_avg': { shape: [3], data: new Float32Array(3) } } };
    assert.throws(() => opt.setState(short), /optimizer state: "blocks.0.w.exp_avg" has 3 values, expected 4/);
    const n = tf.memory().numTensors;
    opt.dispose();
    assert.equal(tf.memory().numTensors, n - 2, 'the two moments freed');
  }
  assert.throws(() => new AdamW([p]).apply([], { lr: 1, wd: 0 }), /AdamW: expected 1 gradients, got 0/);
  assert.throws(
    () => new Lamb([p]).apply([tf.ones([2, 3])], { lr: 1, wd: 0 }),
    /gradient 0 \("blocks.0.w"\) has shape \[2,3\], expected \[2,2\]/,
  );
  // a gradient of lower rank whose dimensions match the variable's first ones (it would broadcast)
  assert.throws(
    () => new Lamb([p]).apply([tf.ones([2])], { lr: 1, wd: 0 }),
    /gradient 0 \("blocks.0.w"\) has shape \[2\], expected \[2,2\]/,
  );
});
