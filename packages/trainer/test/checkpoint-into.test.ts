/**
 * Loading a checkpoint straight into the ONNX Runtime engine's buffers (issue 16, state-read.ts): the
 * values equal an independent read of the same files (readSafetensors, and @vitreg/registers'
 * weightsFromStateDict for the backbones' layouts), in F32, F16 and another naming; every bad checkpoint
 * (missing tensors, wrong sizes, a truncated file) is refused naming the file and the tensors, with the
 * engine's state unchanged. Engines without targets still get the state through importState.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fromFloat32, readSafetensors, Rng, toFloat32, writeSafetensors, type HostTensor } from '@vitreg/core';
import { saveWeights, weightsFromStateDict, type StateDict, type ViTConfig } from '@vitreg/registers';
import { modelConfig, type PartialTrainConfig } from '../src/config.js';
import type { EngineState, StepEngine } from '../src/engine.js';
import { OnnxRuntimeEngine } from '../src/onnx/engine.js';
import { loadTrainingState, restoreTrainingState, saveTrainingState } from '../src/state.js';
import { tinyRun } from './onnx-engine-helpers.js';

const config = tinyRun('tiny-dino', {
  model: { ffn_layer: 'swiglu', layerscale_init: 0.1, qkv_bias: true },
  train: { centering: 'centering' },
  ibot: { separate_head: true },
} as PartialTrainConfig);
const vit: ViTConfig = modelConfig(config);
const ctx = { config, vit, numClasses: 5 };

let root = '';
/** The checkpoint every test starts from, and the state it holds (copies). */
let dir = '';
let saved: EngineState;

/** A copy of an engine's whole state (its views and centres copied). */
function snapshot(e: StepEngine): EngineState {
  const s = e.exportState();
  return {
    tensors: Object.fromEntries(Object.entries(s.tensors).map(([k, v]) => [k, Float32Array.from(v)])),
    optimizerStep: s.optimizerStep,
  };
}

/** A fresh engine whose importState must not be called (the direct path writes its buffers). */
function engine(seed: number): OnnxRuntimeEngine {
  const e = new OnnxRuntimeEngine({ ...ctx, config: { ...config, train: { ...config.train, seed } } });
  e.importState = () => assert.fail('importState called: the load did not go into the engine buffers');
  return e;
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vitreg-ckinto-'));
  const a = new OnnxRuntimeEngine(ctx);
  const rng = new Rng(11);
  const s = a.exportState();
  for (const v of Object.values(s.tensors)) for (let i = 0; i < v.length; i++) v[i] = rng.normal();
  // The centres are exported as the engine's own arrays: the values just written are the state.
  a.optimizer.step = 7;
  const train = { step: 7, epoch: 0, cursor: 56, config, world_size: 1 };
  dir = await saveTrainingState(root, vit, a.stateLayout(), a.exportState(), train);
  saved = snapshot(a);
  a.dispose();
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Every tensor of the checkpoint in `d`, read independently: safetensors as stored, backbones converted by @vitreg/registers. */
async function independentRead(d: string): Promise<Record<string, Float32Array>> {
  const out: Record<string, Float32Array> = {};
  for (const [file, prefix] of [
    ['model.safetensors', 'student.backbone.'],
    ['teacher.safetensors', 'teacher.backbone.'],
  ] as const) {
    const { tensors } = await readSafetensors(join(d, file));
    const sd: StateDict = {};
    for (const [k, t] of Object.entries(tensors)) sd[k] = { shape: t.shape, data: toFloat32(t) };
    for (const [k, v] of Object.entries(weightsFromStateDict(sd, vit))) out[`${prefix}${k}`] = v;
  }
  for (const [k, t] of Object.entries((await readSafetensors(join(d, 'heads.safetensors'))).tensors)) out[k] = toFloat32(t);
  for (const [k, t] of Object.entries((await readSafetensors(join(d, 'optimizer.safetensors'))).tensors))
    out[`optimizer.${k}`] = toFloat32(t);
  return out;
}

/** Asserts that every tensor of `e`'s state equals `want`'s (by name, every name present). */
function assertState(e: StepEngine, want: Record<string, Float32Array>, what: string): void {
  const got = e.exportState().tensors;
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort(), `${what}: names`);
  for (const [k, v] of Object.entries(got)) assert.deepEqual(v, want[k], `${what}: ${k}`);
}

/** Rewrites the safetensors file `path` through `edit` (tensors by name, metadata kept). */
async function rewrite(path: string, edit: (t: Record<string, HostTensor>) => void): Promise<void> {
  const { tensors, metadata } = await readSafetensors(path);
  edit(tensors);
  await writeSafetensors(path, tensors, metadata);
}

/** A copy of the checkpoint, changed by `change`. */
async function variant(name: string, change: (d: string) => Promise<void>): Promise<string> {
  const d = join(root, name);
  await cp(dir, d, { recursive: true });
  await change(d);
  return d;
}

test('a checkpoint loads into the ONNX Runtime engine buffers: every tensor equals an independent read of the files', async () => {
  const b = engine(3);
  try {
    const at = await restoreTrainingState(dir, config, vit, b);
    assert.deepEqual(at, { step: 7, cursor: 56 });
    assert.equal(b.optimizer.step, 7);
    assertState(b, await independentRead(dir), 'independent read');
    assertState(b, saved.tensors, 'saved state');
    // The centres are the engine's own arrays after the load, not the loader's.
    const centres = Object.values(b.centers).map((c) => c!.value);
    assert.equal(centres.length, 2);
    for (const k of ['dino', 'ibot'] as const) assert.deepEqual(b.centers[k]!.value, saved.tensors[`center.${k}`]);
  } finally {
    b.dispose();
  }
});

test('other dtypes (F16 backbone, F64 heads) and another naming (Hugging Face) load as before', async () => {
  const f16 = await variant('f16', async (d) => {
    await rewrite(join(d, 'model.safetensors'), (t) => {
      for (const [k, v] of Object.entries(t)) t[k] = fromFloat32(toFloat32(v), v.shape, 'F16');
    });
    await rewrite(join(d, 'heads.safetensors'), (t) => {
      for (const [k, v] of Object.entries(t))
        t[k] = { dtype: 'F64', shape: v.shape, data: new Uint8Array(Float64Array.from(toFloat32(v)).buffer) };
    });
  });
  const hf = await variant('hf', async (d) => {
    const weights: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(saved.tensors)) if (k.startsWith('teacher.backbone.')) weights[k.slice(17)] = v;
    await saveWeights({ config: vit, weights }, join(d, 'teacher.safetensors'), { naming: 'hf', metadata: { step: '7' } });
  });
  for (const d of [f16, hf]) {
    const b = engine(4);
    try {
      await restoreTrainingState(d, config, vit, b);
      // The HF-named file holds the saved values under other names and layouts (read as before, by readWeights).
      assertState(b, d === hf ? saved.tensors : await independentRead(d), d);
    } finally {
      b.dispose();
    }
  }
});

test("a model without class position (DeiT-III): the class slot of the file's pos_embed is folded into cls_token as readWeights does", async () => {
  const cfg = tinyRun('tiny-supervised', { model: { pos_embed_cls: false } } as PartialTrainConfig);
  const v = modelConfig(cfg);
  assert.equal(v.pos_embed_cls, false);
  const a = new OnnxRuntimeEngine({ config: cfg, vit: v, numClasses: 5 });
  const rng = new Rng(12);
  for (const t of Object.values(a.exportState().tensors)) for (let i = 0; i < t.length; i++) t[i] = rng.normal();
  const d = await saveTrainingState(join(root, 'no-cls-pos'), v, a.stateLayout(), a.exportState(), {
    step: 2,
    epoch: 0,
    cursor: 16,
    config: cfg,
    world_size: 1,
  });
  // The file's slot is written as zeros; another writer's may not be: give it values, so the fold shows.
  await rewrite(join(d, 'model.safetensors'), (t) => {
    const pos = toFloat32(t.pos_embed!);
    assert.equal(t.pos_embed!.shape[1], a.stateLayout()['student.backbone.pos_embed']![1]! + 1, 'the file has a class slot');
    for (let i = 0; i < v.embed_dim; i++) pos[i] = 0.5 + i / 64;
    t.pos_embed = fromFloat32(pos, t.pos_embed!.shape, 'F32');
  });
  const b = new OnnxRuntimeEngine({ config: { ...cfg, train: { ...cfg.train, seed: 2 } }, vit: v, numClasses: 5 });
  b.importState = () => assert.fail('importState called');
  try {
    await restoreTrainingState(d, cfg, v, b);
    const { tensors } = await readSafetensors(join(d, 'model.safetensors'));
    const sd: StateDict = {};
    for (const [k, t] of Object.entries(tensors)) sd[k] = { shape: t.shape, data: toFloat32(t) };
    const want = weightsFromStateDict(sd, v);
    const got = b.exportState().tensors;
    for (const [k, w] of Object.entries(want)) assert.deepEqual(got[`student.backbone.${k}`], w, k);
    assert.notDeepEqual(got['student.backbone.cls_token'], a.exportState().tensors['student.backbone.cls_token'], 'the slot was folded in');
  } finally {
    a.dispose();
    b.dispose();
  }
});

test('a bad checkpoint is refused naming the file and every tensor, with the engine state unchanged', async () => {
  const heads = (d: string) => join(d, 'heads.safetensors');
  const opt = (d: string) => join(d, 'optimizer.safetensors');
  const cases: [string, string, RegExp[]][] = [
    [
      'missing',
      await variant('missing', async (d) => {
        await rewrite(heads(d), (t) => delete t['student.dino_head.last_layer.weight_g']);
        await rewrite(opt(d), (t) => delete t['backbone.cls_token.exp_avg_sq']);
      }),
      [
        /\(2 problems; nothing was loaded\)/,
        /heads\.safetensors: tensor "student\.dino_head\.last_layer\.weight_g" is missing/,
        /optimizer\.safetensors: tensor "backbone\.cls_token\.exp_avg_sq" is missing/,
      ],
    ],
    [
      'wrong size',
      await variant('size', async (d) => {
        await rewrite(opt(d), (t) => {
          const v = toFloat32(t['backbone.pos_embed.exp_avg']!);
          t['backbone.pos_embed.exp_avg'] = fromFloat32(v.subarray(1), [v.length - 1], 'F32');
        });
        await rewrite(heads(d), (t) => {
          t['center.dino'] = fromFloat32(new Float32Array(3), [3], 'F32');
        });
      }),
      [
        /optimizer\.safetensors: tensor "backbone\.pos_embed\.exp_avg" has \d+ values/,
        /heads\.safetensors: tensor "center\.dino" has 3 values/,
      ],
    ],
    [
      'truncated',
      await variant('truncated', async (d) => {
        const f = join(d, 'teacher.safetensors');
        await truncate(f, (await stat(f)).size - 4);
      }),
      [/teacher\.safetensors: .*truncated/],
    ],
    [
      'truncated model',
      await variant('truncated-model', async (d) => {
        const f = join(d, 'model.safetensors');
        await truncate(f, (await stat(f)).size - 1000);
      }),
      [/model\.safetensors: .*truncated/],
    ],
    [
      'missing backbone tensor',
      await variant('missing-backbone', async (d) => {
        await rewrite(join(d, 'model.safetensors'), (t) => delete t['blocks.1.mlp.w3.weight']);
      }),
      [/model\.safetensors: .*missing: blocks\.1\.mlp\.w3\.weight/],
    ],
    [
      'bad optimiser step',
      await variant('adamw-step', async (d) => {
        const { tensors, metadata } = await readSafetensors(opt(d));
        await writeSafetensors(opt(d), tensors, { ...metadata, adamw_step: '-1' });
      }),
      [/optimizer\.safetensors: __metadata__\.adamw_step must be a non-negative integer/],
    ],
  ];
  const c = engine(5);
  try {
    const before = snapshot(c);
    for (const [what, d, patterns] of cases) {
      const err = await restoreTrainingState(d, config, vit, c).then(
        () => assert.fail(`${what}: loaded`),
        (e: Error) => e,
      );
      assert.match(
        err.message,
        new RegExp(`checkpoint ${d.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} does not fit`),
        `${what}: ${err.message}`,
      );
      for (const p of patterns) assert.match(err.message, p, what);
      assertState(c, before.tensors, `${what}: the engine state after the refusal`);
      assert.equal(c.optimizer.step, before.optimizerStep);
    }
  } finally {
    c.dispose();
  }
});

test('an engine without state targets gets the same state through importState; loadTrainingState reads the same', async () => {
  const seen: EngineState[] = [];
  const layout = saved.tensors;
  const fake = {
    name: 'fake',
    stateLayout: () => Object.fromEntries(Object.entries(layout).map(([k, v]) => [k, [v.length]])),
    importState: (s: EngineState) => void seen.push(s),
  } as unknown as StepEngine;
  await restoreTrainingState(dir, config, vit, fake);
  assert.equal(seen.length, 1);
  assert.equal(seen[0]!.optimizerStep, 7);
  for (const [k, v] of Object.entries(saved.tensors)) assert.deepEqual(seen[0]!.tensors[k], v, k);
  const loaded = await loadTrainingState(dir, config, vit, fake.stateLayout());
  assert.deepEqual(Object.keys(loaded.state.tensors), Object.keys(layout));
});
