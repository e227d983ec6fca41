import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { AdamW, Lamb, clipByGlobalNorm, type LambOptions } from '../src/optim.js';
import { plainParams, type ParamSpec } from '../src/param-groups.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

test('AdamW: two steps against the PyTorch formula computed by hand', () => {
  const w0 = [0.5, -1.5, 2];
  const grads = [
    [0.1, -0.2, 0.3],
    [-0.05, 0.4, 0.0],
  ];
  const variable = tf.variable(tf.tensor1d(w0));
  const opt = new AdamW([{ name: 'w', variable, lrMult: 0.5, wdMult: 1, isLastLayer: false }], { beta1: 0.9, beta2: 0.99, eps: 1e-6 });
  const lr = 0.1;
  const wd = 0.05;
  const w = [...w0];
  const m = [0, 0, 0];
  const v = [0, 0, 0];
  grads.forEach((g, t) => {
    opt.apply([tf.tensor1d(g)], { lr, wd });
    const step = t + 1;
    const elr = lr * 0.5;
    for (let i = 0; i < 3; i++) {
      w[i] = w[i]! * (1 - elr * wd);
      m[i] = 0.9 * m[i]! + 0.1 * g[i]!;
      v[i] = 0.99 * v[i]! + 0.01 * g[i]! * g[i]!;
      const mh = m[i]! / (1 - 0.9 ** step);
      const denom = Math.sqrt(v[i]!) / Math.sqrt(1 - 0.99 ** step) + 1e-6;
      w[i] = w[i]! - (elr * mh) / denom;
    }
    const got = variable.dataSync();
    w.forEach((e, i) => assertClose(got[i]!, e, 1e-6, `step ${step} w[${i}]`));
  });
  assert.equal(opt.step, 2);
});

test('AdamW: no-decay parameters, last-layer learning rate, state round trip', () => {
  const a = tf.variable(tf.ones([2]));
  const b = tf.variable(tf.ones([2]));
  const specs = [
    { name: 'a.bias', variable: a, lrMult: 1, wdMult: 0, isLastLayer: false },
    { name: 'last_layer.weight_v', variable: b, lrMult: 1, wdMult: 1, isLastLayer: true },
  ];
  const opt = new AdamW(specs);
  opt.apply([tf.zeros([2]), tf.zeros([2])], { lr: 1, wd: 0.5, lastLayerLr: 0 });
  // zero gradient: only weight decay moves a weight; a has none, b has lr 0.
  assert.deepEqual(Array.from(a.dataSync()), [1, 1]);
  assert.deepEqual(Array.from(b.dataSync()), [1, 1]);
  opt.apply([tf.tensor1d([1, -1]), tf.zeros([2])], { lr: 0.1, wd: 0.5 });
  assertClose(b.dataSync()[0]!, 1 - 0.1 * 0.5);
  const state = opt.getState();
  const opt2 = new AdamW(specs.map((s) => ({ ...s, variable: tf.variable(s.variable.clone()) })));
  opt2.setState(state);
  assert.deepEqual(opt2.getState(), state);
  assert.throws(() => opt2.setState({ step: 1, moments: {} }), /missing tensor "a.bias.exp_avg"/);
  assert.throws(() => new AdamW([specs[0]!, specs[0]!]), /listed twice/);
});

test('clipping by global norm: scaled by max / (norm + 1e-6) only above the threshold', () => {
  const g = [tf.tensor1d([3, 0]), tf.tensor2d([[0, 4]])];
  const { grads, norm } = clipByGlobalNorm(g, 1);
  assertClose(norm, 5);
  const c = 1 / (5 + 1e-6);
  assertClose(grads[0]!.dataSync()[0]!, 3 * c);
  assertClose(grads[1]!.dataSync()[1]!, 4 * c);
  const same = clipByGlobalNorm(g, 10);
  assert.equal(same.grads[0], g[0]);
  assertClose(same.norm, 5);
});

test("clipping options of the dense probes: the norm summed in float64 on the host, torch's test max / (norm + 1e-6) < 1", () => {
  // A norm 5e-7 below the maximum: the trainer's test (norm > max) leaves it, torch's coefficient test scales it.
  const g = [tf.tensor1d([3, 0]), tf.tensor1d([0, 4])];
  const max = 5 + 5e-7;
  assert.equal(clipByGlobalNorm(g, max).grads[0], g[0]);
  const torch = clipByGlobalNorm(g, max, { sumOn: 'host', when: 'coef-below-one' });
  assert.equal(torch.norm, 5);
  assert.notEqual(torch.grads[0], g[0]);
  assert.equal(torch.grads[0]!.dataSync()[0], Math.fround(3 * Math.fround(max / (5 + 1e-6))));
  const above = clipByGlobalNorm(g, 1, { sumOn: 'host', when: 'coef-below-one' });
  assertClose(above.grads[1]!.dataSync()[1]!, 4 / (5 + 1e-6));
  // The host sum is float64 over each tensor's float32 sum of squares.
  const h = [tf.tensor1d([0.1, 0.2]), tf.tensor1d([0.3])];
  const sq = [Math.fround(Math.fround(Math.fround(0.1) ** 2) + Math.fround(Math.fround(0.2) ** 2)), Math.fround(Math.fround(0.3) ** 2)];
  assert.equal(clipByGlobalNorm(h, 0, { sumOn: 'host' }).norm, Math.sqrt(sq[0]! + sq[1]!));
});

test("AdamW over plainParams is the dense probes' PyTorch AdamW: decay on every tensor, one lr", () => {
  const w0 = [
    [0.5, -1.5],
    [2, 0.25],
  ];
  const vars = { weight: tf.variable(tf.tensor1d(w0[0]!)), bias: tf.variable(tf.tensor1d(w0[1]!)) };
  const specs = plainParams(vars);
  assert.deepEqual(
    specs.map((p) => [p.name, p.lrMult, p.wdMult, p.isLastLayer]),
    [
      ['weight', 1, 1, false],
      ['bias', 1, 1, false],
    ],
  );
  const opt = new AdamW(specs);
  const grads = [
    [
      [0.1, -0.2],
      [0.3, 0],
    ],
    [
      [-0.05, 0.4],
      [0.2, -0.1],
    ],
  ];
  const w = w0.map((r) => [...r]);
  const m = w0.map((r) => r.map(() => 0));
  const v = w0.map((r) => r.map(() => 0));
  grads.forEach((g, t) => {
    const lr = 0.01 * (t + 1);
    opt.apply(
      g.map((x) => tf.tensor1d(x)),
      { lr, wd: 0.05 },
    );
    for (let p = 0; p < 2; p++) {
      for (let i = 0; i < 2; i++) {
        m[p]![i] = 0.9 * m[p]![i]! + 0.1 * g[p]![i]!;
        v[p]![i] = 0.999 * v[p]![i]! + 0.001 * g[p]![i]! ** 2;
        const denom = Math.sqrt(v[p]![i]!) / Math.sqrt(1 - 0.999 ** (t + 1)) + 1e-8;
        w[p]![i] = w[p]![i]! * (1 - lr * 0.05) - (lr / (1 - 0.9 ** (t + 1))) * (m[p]![i]! / denom);
      }
    }
    [vars.weight, vars.bias].forEach((x, p) =>
      x.dataSync().forEach((got, i) => assertClose(got, w[p]![i]!, 1e-6, `step ${t + 1} ${p}[${i}]`)),
    );
  });
});

/** timm's Lamb run by fixtures/make_deit_reference.py (torch 1.13, float32). */
interface LambCase {
  name: string;
  options: LambOptions;
  params: { name: string; shape: number[]; data: number[]; lrMult: number; wdMult: number }[];
  steps: { lr: number; wd: number; grad_norm: number; grads: number[][]; params: number[][] }[];
  moments: Record<string, number[]>;
}
const deitRef = JSON.parse(readFileSync(new URL('./fixtures/deit-reference.json', import.meta.url), 'utf8')) as { lamb: LambCase[] };

function lambSpecs(c: LambCase): ParamSpec[] {
  return c.params.map((p) => ({
    name: p.name,
    variable: tf.variable(tf.tensor(p.data, p.shape)),
    lrMult: p.lrMult,
    wdMult: p.wdMult,
    isLastLayer: false,
  }));
}

/** Steps `from`..`to` of a fixture case, each parameter checked against torch after every step. */
function runLambSteps(c: LambCase, opt: Lamb, specs: ParamSpec[], from: number, to: number): void {
  for (let t = from; t < to; t++) {
    const st = c.steps[t]!;
    const before = specs.map((s) => Array.from(s.variable.dataSync()));
    const grads = st.grads.map((g, i) => tf.tensor(g, c.params[i]!.shape));
    const norm = opt.apply(grads, { lr: st.lr, wd: st.wd });
    tf.dispose(grads);
    assertClose(norm, st.grad_norm, 1e-5, `${c.name} step ${t + 1} grad norm`);
    specs.forEach((s, i) => {
      const got = s.variable.dataSync();
      const want = st.params[i]!;
      // The update itself (p_t - p_{t-1}) to 1e-4 of its largest entry, and the value to 1e-6.
      const scale = Math.max(...want.map((w, k) => Math.abs(w - before[i]![k]!)));
      want.forEach((w, k) => {
        const what = `${c.name} step ${t + 1} ${s.name}[${k}]`;
        assertClose(got[k]!, w, 1e-6, what);
        const d = got[k]! - before[i]![k]!;
        const dw = w - before[i]![k]!;
        if (!(Math.abs(d - dw) <= 1e-4 * scale + 1e-9)) throw new Error(`${what}: update ${d}, torch ${dw}`);
      });
    });
  }
}

test("Lamb: DeiT-III settings (eps 1e-8, clip 1.0, wd 0.05, lr multipliers) and timm's other switches, step by step against timm's Lamb", () => {
  for (const c of deitRef.lamb) {
    const specs = lambSpecs(c);
    const opt = new Lamb(specs, c.options);
    runLambSteps(c, opt, specs, 0, c.steps.length);
    assert.equal(opt.step, c.steps.length);
    const { moments } = opt.getState();
    for (const [k, want] of Object.entries(c.moments)) {
      const got = moments[k];
      assert.ok(got, `${c.name}: state has ${k}`);
      want.forEach((w, j) => assertClose(got.data[j]!, w, 1e-6, `${c.name} ${k}[${j}]`));
    }
    opt.dispose();
  }
  // The fixture exercises both sides of the clip (norm above and below max_grad_norm = 1).
  const norms = deitRef.lamb[0]!.steps.map((s) => s.grad_norm);
  assert.ok(norms.some((n) => n > 1) && norms.some((n) => n < 1), `grad norms ${norms}`);
});

test('Lamb: checkpoint state round trip mid-run continues exactly as the uninterrupted torch run', () => {
  const c = deitRef.lamb[0]!;
  const specs = lambSpecs(c);
  const opt = new Lamb(specs, c.options);
  runLambSteps(c, opt, specs, 0, 2);
  const state = opt.getState();
  assert.deepEqual(Object.keys(state.moments).slice(0, 2), ['blocks.0.attn.qkv.weight.exp_avg', 'blocks.0.attn.qkv.weight.exp_avg_sq']);
  const specs2 = specs.map((s) => ({ ...s, variable: tf.variable(s.variable.clone()) }));
  const opt2 = new Lamb(specs2, c.options);
  opt2.setState(state);
  assert.equal(opt2.step, 2);
  runLambSteps(c, opt2, specs2, 2, c.steps.length);
});

test('Lamb: bad options and inputs name what is wrong', () => {
  const v = tf.variable(tf.ones([2, 2]));
  const spec = { name: 'w', variable: v, lrMult: 1, wdMult: 1, isLastLayer: false };
  assert.throws(() => new Lamb([spec], { maxGradNorm: 0 }), /maxGradNorm must be > 0 or null/);
  assert.throws(() => new Lamb([spec], { beta2: 1 }), /beta2 must be in \[0, 1\)/);
  assert.throws(() => new Lamb([spec, spec]), /"w" listed twice/);
  const opt = new Lamb([spec]);
  assert.throws(() => opt.apply([], { lr: 1, wd: 0 }), /expected 1 gradients, got 0/);
  assert.throws(() => opt.apply([tf.ones([4])], { lr: 1, wd: 0 }), /gradient 0 \("w"\) has shape \[4\], expected \[2,2\]/);
  assert.equal(opt.step, 0);
  assert.throws(() => opt.setState({ step: 1, moments: {} }), /missing tensor "w.exp_avg"/);
});
