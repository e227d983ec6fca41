/**
 * DINOv2's defaults that live in its code rather than in its YAML (config.test.ts checks the YAML field by
 * field): DINOLoss' and iBOTPatchLoss' student temperature, centre momentum and Sinkhorn-Knopp iterations,
 * KoLeoLoss' epsilons (through its value and gradient), DINOHead's layout, init and normalisation epsilon,
 * MaskingGenerator's block limits, the train loop's mask size, warm-up start, checkpoints kept and AdamW
 * epsilon, and SSLMetaArch's loss-term counts. The official values are read from the code by
 * fixtures/make_dinov2_reference.py (`code_defaults`, `koleo` in dinov2_reference.json).
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { BatchPreparer } from '../src/batch.js';
import { sinkhornKnopp, type ReduceSum } from '../src/centering.js';
import { DEFAULT_CONFIG } from '../src/config.js';
import { presetConfig, validateTrainConfig } from '../src/config-validate.js';
import { DinoHead } from '../src/heads.js';
import { dinoCrossEntropy, dinoGlobalLocalLoss, koleoLoss } from '../src/losses.js';
import { MaskingGenerator } from '../src/masking.js';
import { assertClose, useWasm } from './helpers.js';

before(useWasm);

const ref = JSON.parse(readFileSync(new URL('./fixtures/dinov2_reference.json', import.meta.url), 'utf8'));
const code = ref.code_defaults;
/** The configs a DINOv2 run starts from: the defaults and the ViT-L/14 recipes. */
const dinoConfigs = () =>
  [
    ['defaults', validateTrainConfig({})],
    ['dinov2-l14', presetConfig('dinov2-l14')],
    ['dinov2-l14-reg4', presetConfig('dinov2-l14-reg4')],
  ] as const;

test('student temperature and centre momentum: DINOLoss and iBOTPatchLoss defaults (one field here serves both losses)', () => {
  for (const loss of ['DINOLoss', 'iBOTPatchLoss']) {
    assert.equal(DEFAULT_CONFIG.dino.student_temp, code[loss].student_temp, `${loss}.student_temp`);
    assert.equal(DEFAULT_CONFIG.dino.center_momentum, code[loss].center_momentum, `${loss}.center_momentum`);
  }
  for (const [name, c] of dinoConfigs()) {
    assert.equal(c.dino.student_temp, code.DINOLoss.student_temp, `${name}: dino.student_temp`);
    assert.equal(c.dino.center_momentum, code.DINOLoss.center_momentum, `${name}: dino.center_momentum`);
  }
});

test("Sinkhorn-Knopp's default iterations are sinkhorn_knopp_teacher's n_iterations", async () => {
  assert.equal(code.DINOLoss.n_iterations, code.iBOTPatchLoss.n_iterations);
  const one: ReduceSum = async (ts) => ts.map((t) => tf.clone(t));
  const rows = () => [{ logits: tf.tensor2d(ref.inputs.dino_rows), temperature: ref.inputs.temperature }];
  const values = async (iterations?: number) => {
    const [q] = await sinkhornKnopp(rows(), one, iterations);
    const v = Array.from(q!.dataSync());
    q!.dispose();
    return v;
  };
  const n = code.DINOLoss.n_iterations as number;
  const byDefault = await values();
  assert.deepEqual(byDefault, await values(n));
  for (const other of [n - 1, n + 1]) assert.notDeepEqual(byDefault, await values(other), `${other} iterations differ`);
});

test("KoLeo: KoLeoLoss' value and gradient (default eps 1e-8 in the normalisation, PairwiseDistance and the log); spreading the points lowers it", () => {
  assert.deepEqual([code.KoLeoLoss.eps, code.KoLeoLoss.pdist_eps, code.KoLeoLoss.pdist_norm], [1e-8, 1e-8, 2]);
  const got: Record<string, number> = {};
  for (const [name, r] of Object.entries(ref.koleo as Record<string, { input: number[][]; loss: number; grad: number[][] }>)) {
    const x = tf.tensor2d(r.input);
    const value = koleoLoss(x);
    const g = tf.grad((t: tf.Tensor) => koleoLoss(t as tf.Tensor2D))(x);
    got[name] = value.dataSync()[0]!;
    tf.dispose([x, value]);
    // The clumped batch has a duplicate row: its loss, -log(eps sqrt(D) + eps) / n + ..., measures eps itself
    // (its gradient is a difference of two ~1e7 terms: float noise, not compared).
    assertClose(got[name]!, r.loss, 1e-5, `${name}: loss`);
    if (name === 'clumped') {
      g.dispose();
      continue;
    }
    const gv = g.arraySync() as number[][];
    g.dispose();
    const scale = Math.max(...r.grad.flat().map(Math.abs));
    r.grad.forEach((row, i) => row.forEach((w, j) => assertClose(gv[i]![j]!, w, 1e-4 * scale, `${name}: grad[${i}][${j}]`)));
  }
  assert.ok(got.spread! < got.x! - 0.1, `spreading the points apart lowers the loss (${got.x} -> ${got.spread})`);
  assert.ok(got.clumped! > got.x! + 1, `two points in one direction raise it (${got.x} -> ${got.clumped})`);
});

test('DINOHead: no BatchNorm, biases in the MLP, trunc-normal std 0.02, weight_g 1, L2 normalisation eps 1e-12', () => {
  const h = code.DINOHead;
  assert.deepEqual([h.use_bn, h.mlp_bias, h.init_std, h.normalize_eps_float32], [false, true, 0.02, 1e-12]);
  const head = new DinoHead({ inDim: 64, outDim: 5, hiddenDim: 256, bottleneckDim: 4, nlayers: 3 }, new Rng(0));
  try {
    assert.ok(!Object.keys(head.params).some((n) => /bn|running/.test(n)), 'no BatchNorm parameters');
    for (const l of ['mlp.0', 'mlp.2', 'mlp.4']) assert.ok(head.params[`${l}.bias`], `${l}.bias`);
    const w = Array.from(head.params['mlp.2.weight']!.dataSync());
    const std = Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
    assert.ok(Math.abs(std - h.init_std) < 0.0005, `init std ${std}`);
    assert.deepEqual(Array.from(head.params['last_layer.weight_g']!.dataSync()), new Array(5).fill(h.weight_g[0]));
    // An MLP output of norm 2e-11 is still normalised to length 1 by eps 1e-12 (eps 1e-10 would shrink it 5x).
    for (const l of ['mlp.0', 'mlp.2', 'mlp.4']) head.params[`${l}.weight`]!.assign(tf.zerosLike(head.params[`${l}.weight`]!));
    head.params['mlp.4.bias']!.assign(tf.tensor1d([1e-11, 1e-11, 1e-11, 1e-11]));
    const out = head.forward(tf.zeros([1, 64]) as tf.Tensor2D);
    const v = head.params['last_layer.weight_v']!.arraySync() as number[][];
    const want = [0, 1, 2, 3, 4].map((j) => v.reduce((a, row) => a + 0.5 * row[j]!, 0) / Math.hypot(...v.map((row) => row[j]!)));
    Array.from(out.dataSync()).forEach((o, j) => assertClose(o, want[j]!, 1e-5, `logit ${j}`));
    out.dispose();
  } finally {
    head.dispose();
  }
});

test("masks: MaskingGenerator's block limits, and train.py's max_num_patches (0.5 * img_size // patch_size * img_size // patch_size)", () => {
  const m = code.MaskingGenerator;
  const gen = new MaskingGenerator(16, 16) as unknown as { minNum: number; logAspect: [number, number] };
  assert.equal(gen.minNum, m.min_num_patches);
  assert.equal(m.max_aspect, null, 'max_aspect defaults to 1 / min_aspect');
  assertClose(gen.logAspect[0], Math.log(m.min_aspect), 1e-12, 'log min aspect');
  assertClose(gen.logAspect[1], Math.log(1 / m.min_aspect), 1e-12, 'log max aspect');
  assert.equal(m.attempts, 10);
  for (const [img, patch, want] of code.train.max_num_patches_at as [number, number, number][]) {
    const c = validateTrainConfig({
      model: { arch: 'vit_micro_patch8_reg4', patch_size: patch, img_size: img },
      crops: { global_crops_size: img, local_crops_size: patch * 2 },
    });
    const prep = new BatchPreparer(c, 5) as unknown as { maskGen: { maxNum: number } };
    assert.equal(prep.maskGen.maxNum, want, `max_num_patches at ${img} px, patch ${patch}`);
  }
});

test('train loop: lr warm-up from 0, 3 checkpoints kept, AdamW eps 1e-8 (torch default), and the checkpoint period that differs', () => {
  assert.equal(code.AdamW.amsgrad, false);
  for (const [name, c] of dinoConfigs()) {
    assert.equal(c.optim.warmup_lr, code.train.lr_start_warmup_value, `${name}: optim.warmup_lr`);
    assert.equal(c.train.keep_checkpoints, code.train.checkpoint_max_to_keep, `${name}: train.keep_checkpoints`);
    assert.equal(c.optim.eps, code.AdamW.eps, `${name}: optim.eps`);
  }
  // DINOv2's PeriodicCheckpointer saves every 3 epochs whatever train.saveckp_freq says (the YAML field is
  // unused); vitreg follows the YAML's 20 epochs (config.test.ts). Checkpoint timing changes no number.
  assert.equal(code.train.checkpoint_period, '3 * OFFICIAL_EPOCH_LENGTH');
  assert.equal(
    DEFAULT_CONFIG.train.checkpoint_every,
    ref.configs.default.train.saveckp_freq * ref.configs.default.train.OFFICIAL_EPOCH_LENGTH,
  );
});

test("SSLMetaArch's loss terms: DINO losses divided by 2 + max(2 x local crops, 1), the global one times 2", () => {
  assert.equal(code.SSLMetaArch.n_global_crops, 2);
  assert.equal(code.SSLMetaArch.loss_scales, 2);
  assert.equal(code.SSLMetaArch.ibot_loss_scale * code.SSLMetaArch.loss_scales, 1, 'iBOT: weight 1 overall');
  const rng = new Rng(5);
  const rows = (n: number) =>
    tf.tensor2d(
      Array.from({ length: n * 3 }, () => rng.normal()),
      [n, 3],
    );
  const probs = tf.softmax(rows(4)) as tf.Tensor2D;
  const student = rows(4);
  for (const [nLocal, localTerms] of code.SSLMetaArch.n_local_crops_loss_terms_at as [number, number][]) {
    const locals = Array.from({ length: nLocal }, () => rows(2));
    const { global, local } = dinoGlobalLocalLoss(student, probs, locals, 0.1);
    const terms = 2 + localTerms;
    const ce = dinoCrossEntropy([student], [probs], 0.1);
    assertClose(global.dataSync()[0]!, (code.SSLMetaArch.loss_scales * ce.dataSync()[0]!) / terms, 1e-5, `global, ${nLocal} local crops`);
    const views = tf.split(probs, 2) as tf.Tensor2D[];
    const lce = nLocal > 0 ? dinoCrossEntropy(locals, views, 0.1).dataSync()[0]! : 0;
    assertClose(local.dataSync()[0]!, lce / terms, 1e-5, `local, ${nLocal} local crops`);
    tf.dispose([global, local, ce, ...locals, ...views]);
  }
});
