/**
 * The DINOv2 recipe pieces against values the official code computed on small tensors
 * (fixtures/dinov2_reference.json, written by fixtures/make_dinov2_reference.py with PyTorch 1.13 and
 * facebookresearch/dinov2): Sinkhorn-Knopp on 1 and 2 ranks, the DINO head's trained weight_g, the
 * parameter groups, per-module clipping, the batch-subset drop path and the schedules.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { VisionTransformer, dropPathFactors, getConfig } from '@vitreg/registers';
import { sinkhornKnopp, type ReduceSum } from '../src/centering.js';
import { scaledLr } from '../src/config.js';
import { presetConfig, validateTrainConfig } from '../src/config-validate.js';
import { DinoHead } from '../src/heads.js';
import { clipPerModule } from '../src/optim.js';
import { isNoDecay, paramGroups } from '../src/param-groups.js';
import { cosineSchedule } from '../src/schedules.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

type Matrix = number[][];
const ref = JSON.parse(readFileSync(new URL('./fixtures/dinov2_reference.json', import.meta.url), 'utf8'));

function assertMatrix(got: tf.Tensor, want: Matrix, tol: number, what: string): void {
  const g = got.arraySync() as Matrix;
  assert.equal(g.length, want.length, `${what}: rows`);
  want.forEach((row, i) =>
    row.forEach((w, j) => {
      // Relative to the row's largest entry: Sinkhorn targets span 1e-19 .. 1.
      const scale = Math.max(...row.map(Math.abs), 1e-30);
      if (!(Math.abs(g[i]![j]! - w) <= tol * scale)) throw new Error(`${what}[${i}][${j}]: expected ${w}, got ${g[i]![j]}`);
    }),
  );
}

/** Sums over the given number of in-process "ranks": each call waits for the others' call, sums in rank order. */
function inProcessRanks(n: number): ReduceSum[] {
  let pending: { tensors: tf.Tensor[]; resolve: (t: tf.Tensor[]) => void }[] = [];
  return Array.from(
    { length: n },
    (_, rank) => (tensors: tf.Tensor[]) =>
      new Promise<tf.Tensor[]>((resolve) => {
        pending[rank] = { tensors, resolve };
        if (pending.filter(Boolean).length < n) return;
        const all = pending;
        pending = [];
        const sums = all[0]!.tensors.map((_, k) =>
          tf.tidy(() => all.slice(1).reduce((acc, p) => tf.add(acc, p.tensors[k]!), all[0]!.tensors[k]!)),
        );
        for (const p of all) p.resolve(sums.map((s) => tf.clone(s)));
        tf.dispose(sums);
      }),
  );
}

test('Sinkhorn-Knopp on one rank equals DINOLoss / iBOTPatchLoss.sinkhorn_knopp_teacher', async () => {
  const { temperature, dino_rows, ibot_rows } = ref.inputs;
  const [reduce] = inProcessRanks(1);
  const [dino, ibot] = await sinkhornKnopp(
    [
      { logits: tf.tensor2d(dino_rows), temperature },
      { logits: tf.tensor2d(ibot_rows), temperature },
    ],
    reduce!,
  );
  assertMatrix(dino!, ref.sinkhorn_1_rank.dino[0], 2e-5, 'DINO targets');
  assertMatrix(ibot!, ref.sinkhorn_1_rank.ibot[0], 2e-5, 'iBOT targets');
  // An assignment: every row sums to 1.
  for (const row of dino!.arraySync() as Matrix)
    assertClose(
      row.reduce((a, b) => a + b, 0),
      1,
      1e-5,
      'row sum',
    );
});

test('Sinkhorn-Knopp on two ranks (uneven iBOT rows) equals the official code under torch.distributed with 2 gloo ranks', async () => {
  const { temperature, dino_rows, ibot_rows, ibot_split } = ref.inputs;
  const reducers = inProcessRanks(2);
  const half = dino_rows.length / 2;
  const results = await Promise.all(
    [0, 1].map((rank) => {
      const ibotStart = rank === 0 ? 0 : ibot_split[0];
      return sinkhornKnopp(
        [
          { logits: tf.tensor2d(dino_rows.slice(rank * half, (rank + 1) * half)), temperature },
          { logits: tf.tensor2d(ibot_rows.slice(ibotStart, ibotStart + ibot_split[rank])), temperature },
        ],
        reducers[rank]!,
      );
    }),
  );
  for (const rank of [0, 1]) {
    assertMatrix(results[rank]![0]!, ref.sinkhorn_2_ranks.dino[rank], 2e-5, `rank ${rank} DINO targets`);
    assertMatrix(results[rank]![1]!, ref.sinkhorn_2_ranks.ibot[rank], 2e-5, `rank ${rank} iBOT targets`);
  }
  // Not the single-rank targets of each half: the sums really span both ranks.
  const [reduce] = inProcessRanks(1);
  const alone = await sinkhornKnopp([{ logits: tf.tensor2d(dino_rows.slice(0, half)), temperature }], reduce!);
  const diff = Math.max(...(tf.abs(tf.sub(alone[0]!, results[0]![0]!)).dataSync() as Float32Array));
  assert.ok(diff > 1e-3, `a rank alone gives other targets (max difference ${diff})`);
});

test("DINO head: weight_g is a trained parameter; output and gradients equal dinov2's DINOHead", () => {
  const r = ref.dino_head;
  assert.equal(r.requires_grad_weight_g, true);
  const head = new DinoHead({ inDim: 8, outDim: 6, hiddenDim: 16, bottleneckDim: 4, nlayers: 3 }, new Rng(0));
  assert.deepEqual(Array.from(head.params['last_layer.weight_g']!.dataSync()), [1, 1, 1, 1, 1, 1], 'g starts at 1');
  const t = (m: Matrix) => m[0]!.map((_, j) => m.map((row) => row[j]!)); // torch [out, in] -> [in, out]
  for (const [name, v] of Object.entries(r.state as Record<string, number[] | Matrix>)) {
    const param = head.params[name];
    assert.ok(param, `torch parameter ${name} exists here`);
    const value = Array.isArray(v[0]) ? t(v as Matrix) : v;
    param!.assign(tf.tensor(value as number[] | Matrix, param!.shape));
  }
  assert.equal(Object.keys(head.params).length, Object.keys(r.state).length, 'the same parameters');
  const x = tf.tensor2d(r.x);
  assertMatrix(head.forward(x), r.out, 1e-5, 'head output');
  const rr = tf.tensor2d(r.r);
  const { grads } = tf.variableGrads(
    () => tf.sum(tf.mul(head.forward(x), rr)) as tf.Scalar,
    [head.params['last_layer.weight_g']!, head.params['last_layer.weight_v']!],
  );
  assertMatrix(grads[head.params['last_layer.weight_g']!.name]!, t(r.grad_weight_g), 1e-4, 'grad weight_g');
  assertMatrix(grads[head.params['last_layer.weight_v']!.name]!, t(r.grad_weight_v), 1e-4, 'grad weight_v');
});

test('parameter groups: every lr / wd multiplier and last-layer flag equals get_params_groups_with_decay (layer decay 0.9, patch embed 0.2)', () => {
  const vit = new VisionTransformer(
    getConfig('dinov2_vits14_reg', { embed_dim: 32, depth: 3, num_heads: 2, img_size: 28, num_register_tokens: 2 }),
    { seed: 0 },
  );
  const head = new DinoHead({ inDim: 32, outDim: 6, hiddenDim: 16, bottleneckDim: 4, nlayers: 3 }, new Rng(0));
  const opts = { layerDecay: 0.9, patchEmbedLrMult: 0.2, weightDecayRule: 'dinov2' as const };
  for (const [module, specs] of [
    ['backbone', paramGroups('backbone', vit.params, 3, opts)],
    ['dino_head', paramGroups('dino_head', head.params, 0, opts)],
  ] as const) {
    const want = ref.param_groups[module] as Record<string, { lr_multiplier: number; wd_multiplier: number; is_last_layer: boolean }>;
    assert.deepEqual(
      specs.map((s) => s.name.slice(module.length + 1)).sort(),
      Object.keys(want).sort(),
      `${module}: the official parameter names`,
    );
    for (const s of specs) {
      const w = want[s.name.slice(module.length + 1)]!;
      assertClose(s.lrMult, w.lr_multiplier, 1e-12, `${s.name} lr multiplier`);
      assert.equal(s.wdMult, w.wd_multiplier, `${s.name} wd multiplier`);
      assert.equal(s.isLastLayer, w.is_last_layer, `${s.name} last layer`);
    }
  }
  // The tokens are decayed under DINOv2's rule (only biases, norms and LayerScale are exempt).
  assert.equal(ref.param_groups.backbone.register_tokens.wd_multiplier, 1);
  vit.dispose();
  head.dispose();
});

test("parameter groups, timm's rule (DeiT-III): no decay for tensors of at most one dimension, biases, pos_embed and cls_token", () => {
  const cases: [string, number[], boolean][] = [
    ['cls_token', [1, 1, 8], true],
    ['pos_embed', [1, 5, 8], true],
    ['register_tokens', [1, 4, 8], false],
    ['blocks.0.ls1.gamma', [8], true],
    ['blocks.0.norm1.weight', [8], true],
    ['blocks.0.attn.qkv.bias', [24], true],
    ['blocks.0.attn.qkv.weight', [8, 24], false],
    ['patch_embed.proj.weight', [768, 8], false],
    ['weight', [8, 5], false],
    ['bias', [5], true],
  ];
  for (const [name, shape, exempt] of cases) assert.equal(isNoDecay(name, shape, 'timm'), exempt, name);
});

test('per-module clipping equals clip_grad_norm_ applied to each module on its own', () => {
  const r = ref.clip_per_module;
  const names: string[] = [];
  const grads: tf.Tensor[] = [];
  for (const [m, ts] of Object.entries(r.before as Record<string, (number[] | Matrix)[]>)) {
    ts.forEach((v, i) => {
      names.push(`${m}.p${i}`);
      grads.push(tf.tensor(v as number[]));
    });
  }
  const out = clipPerModule(names, grads, r.max_norm);
  let k = 0;
  for (const [m, ts] of Object.entries(r.after as Record<string, (number[] | Matrix)[]>)) {
    assertClose(out.norms[m]!, r.norms[m], 1e-5, `${m} norm`);
    for (const want of ts) {
      const got = Array.from(out.grads[k++]!.dataSync());
      want.flat().forEach((w, j) => assertClose(got[j]!, w as number, 1e-5, `${m} gradient ${j}`));
    }
  }
});

test("drop path: DINOv2's batch subset (drop_add_residual_stochastic_depth) and the per-image rule", () => {
  const r = ref.drop_subset;
  const factors = dropPathFactors(r.draws, r.rate, true);
  const x = tf.tensor3d(r.x);
  const y = tf.add(x, tf.mul(tf.tensor3d(factors, [factors.length, 1, 1]), tf.add(tf.mul(x, 2), 1)));
  const got = y.arraySync() as number[][][];
  r.y.forEach((img: Matrix, b: number) =>
    img.forEach((row, i) => row.forEach((v, j) => assertClose(got[b]![i]![j]!, v, 1e-6, `y[${b}][${i}][${j}]`))),
  );
  // Per image (rate <= 0.1 or no subset): 0 below the rate, 1 / (1 - rate) above; hand-computed.
  assert.deepEqual(Array.from(dropPathFactors([0.05, 0.5, 0.09, 0.1], 0.1, true)), [0, 1 / 0.9, 0, 1 / 0.9].map(Math.fround));
  assert.deepEqual(Array.from(dropPathFactors([0.3, 0.5], 0.4, false)), [0, 1 / 0.6].map(Math.fround));
});

test("schedules: DINOv2's CosineScheduler with a warm-up start value (lr from 1e-6, teacher temperature 0.04 -> 0.07)", () => {
  const lr = cosineSchedule({ base: 3e-3, final: 1e-5, totalSteps: 20, warmupSteps: 5, startWarmupValue: 1e-6 });
  ref.schedules.lr.forEach((v: number, i: number) => assertClose(lr(i), v, 1e-9, `lr ${i}`));
  const temp = cosineSchedule({ base: 0.07, final: 0.07, totalSteps: 6, warmupSteps: 6, startWarmupValue: 0.04 });
  ref.schedules.teacher_temp.slice(0, 6).forEach((v: number, i: number) => assertClose(temp(i), v, 1e-9, `teacher temp ${i}`));
});

test('learning-rate scaling: base_lr x sqrt(global batch / 1024) (DINOv2), x batch / 512, or none; the global batch counts every process', () => {
  const dino = presetConfig('dinov2-l14-reg4');
  assert.equal(dino.optim.base_lr, 2e-4);
  assertClose(scaledLr(dino, 96), 2e-4 * Math.sqrt((32 * 96) / 1024), 1e-12, 'ViT-L/14 on 96 GPUs');
  assertClose(scaledLr(dino, 1), 2e-4 * Math.sqrt(32 / 1024), 1e-12, 'on one GPU');
  assertClose(
    scaledLr(validateTrainConfig({ preset: 'tiny-supervised', optim: { scaling_rule: 'linear_wrt_512', base_lr: 5e-4 } }), 4),
    (5e-4 * 32 * 4) / 512,
    1e-12,
    'linear',
  );
  assert.equal(scaledLr(presetConfig('deit3-b16-in1k-reg4'), 8), 3e-3, 'DeiT-III: --unscale-lr');
  // ssl_default_config: 0.004 for a batch of 1024 = 64 x 16 GPUs.
  assertClose(scaledLr(validateTrainConfig({}), 16), 0.004, 1e-12, 'default');
});
