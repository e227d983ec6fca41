/**
 * Host-only checkpoints (issue 16): saveCheckpoint given host weights (HostBackbone) writes the bytes a
 * tfjs model writes, and saveTrainingState / loadTrainingState convert on host arrays without making a
 * single tfjs tensor, reading back exactly what the model path (modelFromStateDict + weights()) gives.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { getConfig, modelFromStateDict, parameterShapes, VisionTransformer, type ViTConfig } from '@vitreg/registers';
import { loadCheckpoint, saveCheckpoint, type HostTensors } from '../src/checkpoint.js';
import { validateTrainConfig } from '../src/config-validate.js';
import { modelConfig } from '../src/config.js';
import type { EngineState, StateLayout } from '../src/engine.js';
import { loadTrainingState, saveTrainingState } from '../src/state.js';
import { useWasm } from './helpers.js';

before(useWasm);

function random(n: number, rng: Rng): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal();
  return a;
}

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

async function filesOf(dir: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  for (const f of (await readdir(dir)).sort()) out[f] = await readFile(join(dir, f));
  return out;
}

async function withTmp(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-ckhost-'));
  try {
    await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const RAW = {
  preset: 'tiny-supervised',
  model: { arch: 'vit_micro_patch8_reg4' },
  data: { train_size: 8, val_size: 4 },
  train: { steps: 2, batch_size: 2 },
};

for (const [what, change] of [
  ['mlp, registers', {}],
  ['SwiGLU, LayerScale, qkv bias, class position', { ffn_layer: 'swiglu', layerscale_init: 0.1, qkv_bias: true, pos_embed_cls: true }],
] as [string, Partial<ViTConfig>][]) {
  test(`saveCheckpoint: host weights write the same bytes as a tfjs model (${what})`, async () => {
    const vit: ViTConfig = { ...getConfig('vit_micro_patch8_reg4'), ...change };
    const student = new VisionTransformer(vit, { seed: 1 });
    const teacher = new VisionTransformer(vit, { seed: 2 });
    const rng = new Rng(3);
    const heads: HostTensors = { 'student.head.weight': { shape: [64, 5], data: random(320, rng) } };
    const moments: HostTensors = { 'student.backbone.cls_token.exp_avg': { shape: [1, 1, 64], data: random(64, rng) } };
    const state = { step: 7, epoch: 1, cursor: 14, config: validateTrainConfig(RAW), world_size: 1 };
    await withTmp(async (root) => {
      const fromModel = await saveCheckpoint(join(root, 'a'), { student, teacher, heads, optimizer: { step: 7, moments }, state });
      const host = {
        student: { config: vit, weights: await student.weights() },
        teacher: { config: vit, weights: await teacher.weights() },
      };
      const before = tf.memory().numTensors;
      const fromHost = await saveCheckpoint(join(root, 'b'), { ...host, heads, optimizer: { step: 7, moments }, state });
      assert.equal(tf.memory().numTensors, before);
      const [x, y] = [await filesOf(fromModel), await filesOf(fromHost)];
      assert.deepEqual(Object.keys(y), [
        'heads.safetensors',
        'model.safetensors',
        'optimizer.safetensors',
        'state.json',
        'teacher.safetensors',
      ]);
      assert.deepEqual(Object.keys(x), Object.keys(y));
      for (const f of Object.keys(x)) assert.ok(x[f]!.equals(y[f]!), `${f} differs between the model and the host path`);
    });
    student.dispose();
    teacher.dispose();
  });
}

test('saveTrainingState / loadTrainingState: no tfjs tensor, exact round trip, the values the model path reads', async () => {
  const config = validateTrainConfig(RAW);
  const vit = { ...modelConfig(config), ffn_layer: 'swiglu' as const };
  const rng = new Rng(5);
  const layout: StateLayout = {};
  const tensors: Record<string, Float32Array> = {};
  const add = (name: string, shape: number[]) => {
    layout[name] = shape;
    tensors[name] = random(size(shape), rng);
  };
  for (const [name, shape] of Object.entries(parameterShapes(vit))) {
    add(`student.backbone.${name}`, shape);
    add(`teacher.backbone.${name}`, shape);
    add(`optimizer.student.backbone.${name}.exp_avg`, shape);
    add(`optimizer.student.backbone.${name}.exp_avg_sq`, shape);
  }
  add('student.head.weight', [vit.embed_dim, 3]);
  add('center.dino', [1, 4]);
  const state: EngineState = { tensors, optimizerStep: 3 };
  const train = { step: 3, epoch: 0, cursor: 6, config, world_size: 1 };
  await withTmp(async (root) => {
    const saved = await tf.profile(async () => {
      await saveTrainingState(root, vit, layout, state, train);
    });
    assert.equal(saved.newTensors, 0, 'saveTrainingState made tfjs tensors');
    const dir = join(root, 'checkpoints', 'step-3');
    let loaded: Awaited<ReturnType<typeof loadTrainingState>> | undefined;
    const read = await tf.profile(async () => {
      loaded = await loadTrainingState(dir, config, vit, layout);
    });
    assert.equal(read.newTensors, 0, 'loadTrainingState made tfjs tensors');
    assert.ok(loaded);
    assert.equal(loaded.step, 3);
    assert.equal(loaded.cursor, 6);
    assert.equal(loaded.state.optimizerStep, 3);
    assert.deepEqual(Object.keys(loaded.state.tensors).sort(), Object.keys(layout).sort());
    for (const [name, v] of Object.entries(tensors)) assert.deepEqual(loaded.state.tensors[name], v, `${name} after the round trip`);
    // The model path (what resume did through tfjs) reads the same values from the same files.
    const ck = await loadCheckpoint(dir);
    for (const which of ['student', 'teacher'] as const) {
      const m = modelFromStateDict(ck[which]!, vit);
      for (const [k, v] of Object.entries(await m.weights())) {
        assert.deepEqual(loaded.state.tensors[`${which}.backbone.${k}`], v, `${which}.backbone.${k}: host and model paths differ`);
      }
      m.dispose();
    }
  });
});
