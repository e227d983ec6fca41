/**
 * The graphs that keep the ONNX Runtime engine's state on a WebGPU device (src/onnx/engine-device.ts), run
 * here on ONNX Runtime's CPU provider against the host loops they replace (engine-optim.ts, themselves
 * checked against optim.ts's tfjs AdamW / LAMB in onnx-engine.test.ts): clipping by the global norm and per
 * module, AdamW and LAMB (with and without its clip, trust-ratio clip, a zero weight decay, a zero tensor),
 * three steps each with per-tensor multipliers and a last-layer learning rate; the EMA teacher; the copy
 * graph. Parameters within 1e-6 (float32 rounding of the same operations; the norms are summed in float32
 * here, in float64 there), norms within 1e-5 relative.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '@vitreg/core';
import {
  clipGroups,
  copyGraph,
  emaGraph,
  optimizerFeeds,
  optimizerGraph,
  optimizerNames,
  type OptimizerGraphSpec,
} from '../src/onnx/engine-device.js';
import { clipGradients, clipPerModule, emaUpdate, FlatOptimizer } from '../src/onnx/engine-optim.js';
import type { TrainedParam } from '../src/onnx/engine-params.js';
import { SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';

/** Ten tensors in two modules, laid out as engine-params.ts lays out a run (student offsets = gradient offsets + 3). */
function params(): TrainedParam[] {
  const specs: [string, number[], string, number, number, boolean][] = [
    ['backbone.cls_token', [1, 1, 4], 'backbone', 0.5, 0, false],
    ['backbone.blocks.0.attn.qkv.weight', [6, 4], 'backbone', 0.75, 1, false],
    ['backbone.norm.bias', [4], 'backbone', 1, 0, false],
    ['dino_head.mlp.weight', [3, 4], 'dino_head', 1, 1, false],
    ['dino_head.last_layer.weight_g', [1, 3], 'dino_head', 1, 1, true],
    // Tensors sharing a module and multipliers with one above.
    ['backbone.blocks.0.attn.proj.weight', [4, 4], 'backbone', 0.75, 1, false],
    ['backbone.blocks.0.mlp.fc1.weight', [8, 4], 'backbone', 0.75, 1, false],
    ['dino_head.mlp.2.weight', [2, 3], 'dino_head', 1, 1, false],
    // The same module and learning rate, no weight decay.
    ['backbone.blocks.0.norm1.weight', [4], 'backbone', 0.75, 0, false],
    // The multipliers of dino_head.mlp.weight in another module (clipped apart).
    ['backbone.pos_embed', [1, 2, 4], 'backbone', 1, 1, false],
  ];
  let off = 0;
  return specs.map(([name, shape, module, lrMult, wdMult, isLastLayer]) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const p = { name, shape, offset: off + 3, size, gradOffset: off, lrMult, wdMult, isLastLayer, module };
    off += size;
    return p;
  });
}

const rand = (n: number, rng: Rng, scale = 1) => Float32Array.from({ length: n }, () => rng.normal() * scale);

function close(actual: Float32Array | number[], expected: Float32Array | number[], atol: number, rtol: number, what: string) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    assert.ok(Math.abs(a - e) <= atol + rtol * Math.abs(e), `${what}[${i}]: graph ${a} vs host ${e}`);
  }
}

interface Case {
  name: string;
  spec: OptimizerGraphSpec;
  lastLayerLr?: number;
  wd: number;
  /** A tensor whose weights are all zero (LAMB's trust ratio falls back to 1). */
  zeroTensor?: boolean;
  /** The weights' scale (LAMB: large weights give trust ratios above 1, where the trust clip acts). */
  wScale?: number;
}

const CASES: Case[] = [
  {
    name: 'AdamW, per-module clipping (DINO)',
    spec: { kind: 'adamw', clip: 'module', maxNorm: 0.5, beta1: 0.9, beta2: 0.999, eps: 1e-8 },
    wd: 0.04,
    lastLayerLr: 0,
  },
  { name: 'AdamW, global clipping', spec: { kind: 'adamw', clip: 'global', maxNorm: 1.0, beta1: 0.9, beta2: 0.95, eps: 1e-8 }, wd: 0.05 },
  {
    name: 'AdamW, norms only (clip_grad 0)',
    spec: { kind: 'adamw', clip: 'global', maxNorm: 0, beta1: 0.9, beta2: 0.999, eps: 1e-6 },
    wd: 0,
  },
  {
    name: 'LAMB with its clip and a global clip before it',
    spec: { kind: 'lamb', clip: 'global', maxNorm: 2, beta1: 0.9, beta2: 0.999, eps: 1e-6, maxGradNorm: 1.0 },
    wd: 0.02,
    zeroTensor: true,
    wScale: 4,
  },
  {
    name: 'LAMB without clipping, trust clip, always adapt, no weight decay',
    spec: {
      kind: 'lamb',
      clip: 'none',
      maxNorm: 0,
      beta1: 0.9,
      beta2: 0.99,
      eps: 1e-6,
      maxGradNorm: null,
      trustClip: true,
      alwaysAdapt: true,
    },
    wd: 0,
    wScale: 4,
  },
];

for (const c of CASES) {
  test(`optimizer graph on the CPU provider equals the host loops: ${c.name}`, async (t) => {
    const ort = await tryOrt();
    if (!ort) return t.skip(SKIP_NO_ORT);
    const ps = params();
    const total = ps.reduce((n, p) => n + p.size, 0);
    const rng = new Rng(7);
    const w = rand(total + 3, rng, c.wScale ?? 0.5);
    if (c.zeroTensor) w.subarray(ps[3]!.offset, ps[3]!.offset + ps[3]!.size).fill(0);
    const hostW = w.slice();
    const opt = new FlatOptimizer(c.spec.kind, ps, total, {
      beta1: c.spec.beta1,
      beta2: c.spec.beta2,
      eps: c.spec.eps,
      ...(c.spec.kind === 'lamb' ? { maxGradNorm: c.spec.maxGradNorm, trustClip: c.spec.trustClip, alwaysAdapt: c.spec.alwaysAdapt } : {}),
    });
    const { bytes } = optimizerGraph(ps, c.spec);
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const devW: Record<string, Float32Array> = {};
    const devM: Record<string, Float32Array> = {};
    const devV: Record<string, Float32Array> = {};
    for (const p of ps) {
      devW[p.name] = w.slice(p.offset, p.offset + p.size);
      devM[p.name] = new Float32Array(p.size);
      devV[p.name] = new Float32Array(p.size);
    }
    const lr = 0.01;
    for (let step = 1; step <= 3; step++) {
      const grads = rand(total, rng, step === 2 ? 3 : 0.3);
      const hp = { lr, wd: c.wd, lastLayerLr: c.lastLayerLr };
      // The host: clipping as engine.ts's clip, then the optimiser.
      const g = grads.slice();
      let hostNorms: number[] = [];
      if (c.spec.clip === 'global') hostNorms = [clipGradients(g, ps, c.spec.maxNorm)];
      if (c.spec.clip === 'module') hostNorms = Object.values(clipPerModule(g, ps, c.spec.maxNorm));
      const lamb = opt.apply(hostW, g, hp);
      if (lamb !== undefined) hostNorms.push(lamb);
      // The graph.
      const lrOf = (p: TrainedParam) => (p.isLastLayer ? (c.lastLayerLr ?? lr) : lr) * p.lrMult;
      const feeds = optimizerFeeds(ps, c.spec, step, lrOf, (p) => c.wd * p.wdMult);
      const inputs: Record<string, InstanceType<typeof ort.Tensor>> = {
        hp: new ort.Tensor('float32', feeds.hp, [ps.length, 3]),
        bc: new ort.Tensor('float32', feeds.bc, [2]),
      };
      for (const p of ps) {
        const n = optimizerNames(p.name);
        inputs[n.w] = new ort.Tensor('float32', devW[p.name]!, p.shape);
        inputs[n.g] = new ort.Tensor('float32', grads.slice(p.gradOffset, p.gradOffset + p.size), p.shape);
        inputs[n.m] = new ort.Tensor('float32', devM[p.name]!, p.shape);
        inputs[n.v] = new ort.Tensor('float32', devV[p.name]!, p.shape);
      }
      const out = await session.run(inputs);
      for (const p of ps) {
        const n = optimizerNames(p.name);
        devW[p.name] = out[n.newW]!.data as Float32Array;
        devM[p.name] = out[n.newM]!.data as Float32Array;
        devV[p.name] = out[n.newV]!.data as Float32Array;
        close(devW[p.name]!, hostW.subarray(p.offset, p.offset + p.size), 1e-6, 1e-5, `step ${step} ${p.name}`);
        close(devM[p.name]!, opt.m.subarray(p.gradOffset, p.gradOffset + p.size), 1e-7, 1e-5, `step ${step} exp_avg ${p.name}`);
        close(devV[p.name]!, opt.v.subarray(p.gradOffset, p.gradOffset + p.size), 1e-7, 1e-5, `step ${step} exp_avg_sq ${p.name}`);
      }
      const expectedNorms = clipGroups(ps, c.spec.clip).length + (c.spec.kind === 'lamb' ? 1 : 0);
      assert.equal(hostNorms.length, expectedNorms);
      if (expectedNorms > 0) close(out.norms!.data as Float32Array, hostNorms, 0, 1e-5, `step ${step} norms`);
    }
    await session.release();
  });
}

test('EMA graph on the CPU provider equals emaUpdate; the copy graph copies', async (t) => {
  const ort = await tryOrt();
  if (!ort) return t.skip(SKIP_NO_ORT);
  const ps = params();
  const total = ps[ps.length - 1]!.offset + ps[ps.length - 1]!.size;
  const rng = new Rng(3);
  const teacher = rand(total, rng);
  const student = rand(total, rng);
  const momentum = 0.996;
  const session = await ort.InferenceSession.create(emaGraph(ps).bytes, { intraOpNumThreads: 1 });
  const inputs: Record<string, InstanceType<typeof ort.Tensor>> = {
    ema: new ort.Tensor('float32', Float32Array.of(momentum, 1 - momentum), [2]),
  };
  for (const p of ps) {
    inputs[`t.${p.name}`] = new ort.Tensor('float32', teacher.slice(p.offset, p.offset + p.size), p.shape);
    inputs[`s.${p.name}`] = new ort.Tensor('float32', student.slice(p.offset, p.offset + p.size), p.shape);
  }
  const out = await session.run(inputs);
  emaUpdate(teacher, student, momentum);
  for (const p of ps)
    close(out[`new_t.${p.name}`]!.data as Float32Array, teacher.subarray(p.offset, p.offset + p.size), 1e-7, 1e-6, p.name);
  await session.release();

  const copy = await ort.InferenceSession.create(copyGraph(ps).bytes, { intraOpNumThreads: 1 });
  const host = new Float32Array(total);
  const fetches: Record<string, InstanceType<typeof ort.Tensor>> = {};
  const feeds: Record<string, InstanceType<typeof ort.Tensor>> = {};
  for (const p of ps) {
    feeds[`in.${p.name}`] = new ort.Tensor('float32', student.slice(p.offset, p.offset + p.size), p.shape);
    fetches[`out.${p.name}`] = new ort.Tensor('float32', host.subarray(p.offset, p.offset + p.size), p.shape);
  }
  await copy.run(feeds, fetches);
  assert.deepEqual(host.subarray(3), student.subarray(3));
  await copy.release();
});
