/**
 * Every family's checkpoints in every naming: inferred configs, the same weights whatever the naming,
 * writing each family back to its own names (the same tensor names and values as the official file),
 * conversions between namings that keep the outputs, registers in every family, the named configs'
 * sizes against the official constructors, and the errors of what a naming cannot hold.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, readSafetensors, toFloat32, writeSafetensors } from '@vitreg/core';
import {
  encodeStateDict,
  getConfig,
  loadWeights,
  NAMINGS,
  parameterShapes,
  readCheckpoint,
  readWeights,
  saveWeights,
  stripPrefix,
  VisionTransformer,
  type StateDict,
  type ViTConfig,
} from '../src/index.ts';
import { allclose } from './helpers.ts';
import { FAMILIES, familyReference } from './family-helpers.ts';
import { CONFIGS, validateConfig } from '../src/config.ts';
import { type Naming } from '../src/namings.ts';

const HEADS = { num_heads: 3 };
let dir: string;

before(async () => {
  await initBackend('wasm', { log: () => {} });
  dir = await mkdtemp(join(tmpdir(), 'vitreg-family-weights-'));
});
test.after(async () => rm(dir, { recursive: true, force: true }));

const read = (file: string, config: Partial<ViTConfig> = {}) => readWeights(join(FAMILIES, file), { config: { ...HEADS, ...config } });

async function patches(model: VisionTransformer, input: { shape: number[]; data: Float32Array }) {
  return tf.tidy(() => model.forward(tf.tensor4d(input.data, input.shape as [number, number, number, number])).patches).data();
}

test('each family file: its naming and the config its release conventions give', async () => {
  const dino = await read('dino.pth');
  assert.equal(dino.naming, 'dino');
  assert.deepEqual(
    [
      dino.config.layerscale_init,
      dino.config.interpolate_antialias,
      dino.config.interpolate_offset,
      dino.config.norm_eps,
      dino.config.pos_embed_cls,
      dino.config.pre_norm,
      dino.config.proj_dim,
    ],
    [null, false, 0.1, 1e-6, true, false, null],
  );
  assert.deepEqual([dino.config.patch_size, dino.config.img_size, dino.config.embed_dim, dino.config.depth], [16, 64, 48, 2]);

  const deit = await read('deit3.models_v2.pth');
  assert.equal(deit.naming, 'deit3');
  assert.deepEqual(
    [
      deit.config.pos_embed_cls,
      deit.config.interpolate_antialias,
      deit.config.interpolate_offset,
      deit.config.norm_eps,
      deit.config.pre_norm,
      deit.config.proj_dim,
    ],
    [false, true, 0, 1e-6, false, null],
  );
  assert.equal(typeof deit.config.layerscale_init, 'number');
  assert.ok(!deit.stateDict['head.weight'] && !deit.stateDict['head.bias'], 'the classifier head is left out');
  const deitTimm = await read('deit3.timm.safetensors');
  assert.equal(deitTimm.naming, 'timm');
  assert.deepEqual(deitTimm.config, deit.config);

  const clip = await read('openclip.safetensors');
  assert.equal(clip.naming, 'clip');
  assert.deepEqual(
    [
      clip.config.pre_norm,
      clip.config.proj_dim,
      clip.config.patch_bias,
      clip.config.norm_eps,
      clip.config.act_layer,
      clip.config.layerscale_init,
      clip.config.pos_embed_cls,
    ],
    [true, 32, false, 1e-5, 'gelu', null, true],
  );
  const { tensors } = await readCheckpoint(join(FAMILIES, 'openclip.safetensors'));
  assert.ok(tensors['token_embedding.weight'] && tensors['transformer.resblocks.0.ln_1.weight'], 'the file holds a text tower');
  assert.equal(
    Object.keys(stripPrefix(tensors, 'openclip')).every((k) => !k.startsWith('token_') && !k.startsWith('ln_final')),
    true,
    'the image tower is taken',
  );
  const clipTimm = await read('clip.timm.safetensors');
  assert.equal(clipTimm.naming, 'timm');
  assert.deepEqual(clipTimm.config, clip.config);
  const openai = await read('clip_openai.pth');
  assert.equal(openai.naming, 'clip');
  assert.deepEqual(openai.config, clip.config, 'OpenAI CLIP reads as CLIP; QuickGELU is not in the tensors');

  const reg = await read('clip_reg4.timm.safetensors');
  assert.deepEqual(
    [reg.config.num_register_tokens, reg.config.pos_embed_cls, reg.config.pre_norm, reg.config.proj_dim],
    [4, false, true, 32],
  );
  // timm names DINOv2's register models and a deit3 with registers alike (reg_token, no class slot): both
  // read into DINOv2's layout, a zero class slot, which computes the same (see the parity).
  const deitReg = await read('deit3_reg4.timm.safetensors');
  assert.deepEqual([deitReg.config.num_register_tokens, deitReg.config.pos_embed_cls, deitReg.config.pre_norm], [4, true, false]);
  assert.ok(deitReg.stateDict.pos_embed.data.subarray(0, 48).every((v) => v === 0));
});

/** The tensors of a file as its own code names them (prefix and classifier dropped), as Float32Arrays. */
async function officialTensors(file: string, drop: (k: string) => boolean = () => false): Promise<StateDict> {
  const { tensors } = await readCheckpoint(join(FAMILIES, file));
  const out: StateDict = {};
  for (const [k, t] of Object.entries(stripPrefix(tensors, file))) if (!drop(k)) out[k] = { shape: t.shape, data: toFloat32(t) };
  return out;
}

const isHead = (k: string) => k === 'head.weight' || k === 'head.bias';

test("each family written back to its own names: the official file's tensor names, shapes and values", async () => {
  const cases: [string, Naming, (k: string) => boolean][] = [
    ['dino.pth', 'dino', () => false],
    ['deit3.models_v2.pth', 'deit3', isHead],
    ['deit3.timm.safetensors', 'timm', isHead],
    ['deit3_reg4.timm.safetensors', 'timm', isHead],
    ['openclip.safetensors', 'clip', () => false],
    ['clip_openai.pth', 'clip', () => false],
    ['clip.timm.safetensors', 'timm', (k) => k === 'head.bias'], // timm's conversion adds a zero bias; vitreg's projection has none
    ['clip_reg4.timm.safetensors', 'timm', (k) => k === 'head.bias'],
  ];
  for (const [file, naming, drop] of cases) {
    const loaded = await read(file);
    assert.equal(loaded.naming, naming, file);
    const { tensors } = encodeStateDict(loaded.stateDict, loaded.config, { naming });
    const want = await officialTensors(file, drop);
    assert.deepEqual(Object.keys(tensors).sort(), Object.keys(want).sort(), `${file}: names`);
    for (const [k, w] of Object.entries(want)) {
      assert.deepEqual(tensors[k]!.shape, w.shape, `${file}: ${k} shape`);
      assert.equal(allclose(toFloat32(tensors[k]!), w.data, 0, 0), null, `${file}: ${k} values`);
    }
  }
});

test('every naming that can hold a family gives the same outputs after a round trip', async () => {
  const cases: [string, string, string, Partial<ViTConfig>, Naming[]][] = [
    ['dino.pth', 'dino', 'rect64x112', {}, ['dinov2', 'timm', 'hf', 'dino', 'deit3']],
    ['deit3.models_v2.pth', 'deit3', 'rect48x80', {}, ['dinov2', 'timm', 'hf', 'dino', 'deit3', 'clip']],
    ['deit3_reg4.timm.safetensors', 'deit3_reg4', 'rect48x80', {}, ['dinov2', 'timm', 'hf', 'dino', 'deit3', 'clip']],
    ['openclip.safetensors', 'openclip', 'rect48x80', {}, ['dinov2', 'timm', 'dino', 'deit3', 'clip']],
    ['clip_reg4.timm.safetensors', 'clip_reg4', 'rect48x80', {}, ['dinov2', 'timm', 'dino', 'deit3', 'clip']],
  ];
  for (const [file, ref, input, config, namings] of cases) {
    const r = await familyReference(ref);
    const model = await loadWeights(join(FAMILIES, file), { config: { ...HEADS, ...config } });
    const want = r[`${input}.patches`]!.data;
    assert.equal(allclose(await patches(model, r[`${input}.input_nhwc`]!), want), null, `${file} as read`);
    for (const naming of namings) {
      const path = join(dir, `${ref}.${naming}.safetensors`);
      await saveWeights(model, path, { naming });
      // Without the stored config the file must be read from its tensors alone; with it, exactly as saved.
      const again = await loadWeights(path);
      assert.deepEqual(again.config, model.config, `${file} as ${naming}: stored config`);
      assert.equal(allclose(await patches(again, r[`${input}.input_nhwc`]!), want), null, `${file} as ${naming}`);
      again.dispose();
    }
    model.dispose();
  }
});

test("a family file read through another naming's tensors alone infers the same model", async () => {
  // vitreg's own files carry the config; strip it and the naming to read them as a downloaded file would be.
  const model = await loadWeights(join(FAMILIES, 'deit3.models_v2.pth'), { config: HEADS });
  for (const naming of ['deit3', 'timm'] as Naming[]) {
    const { tensors } = encodeStateDict((await read('deit3.models_v2.pth')).stateDict, model.config, { naming });
    const path = join(dir, `bare.${naming}.safetensors`);
    await writeSafetensors(path, tensors, { format: 'pt' });
    const back = await readWeights(path, { config: HEADS });
    assert.equal(back.naming, naming);
    assert.deepEqual(back.config, model.config, naming);
  }
  model.dispose();
});

test("timm's CLIP head: a projection with a zero bias, a classifier (left out) with any other", async () => {
  const { tensors } = await readCheckpoint(join(FAMILIES, 'clip.timm.safetensors'));
  const bias = toFloat32(tensors['head.bias']!);
  assert.ok(
    bias.every((v) => v === 0),
    "timm's conversion writes a zero bias",
  );
  const path = join(dir, 'clip.ft.safetensors');
  await writeSafetensors(
    path,
    { ...tensors, 'head.bias': { dtype: 'F32', shape: [32], data: new Uint8Array(new Float32Array(32).fill(0.5).buffer) } },
    { format: 'pt' },
  );
  const ft = await readWeights(path, { config: HEADS });
  assert.equal(ft.config.proj_dim, null);
  assert.ok(!ft.stateDict.proj && !ft.stateDict['head.weight']);
  assert.equal((await read('clip.timm.safetensors')).config.proj_dim, 32);
});

test('what a naming cannot hold is an error naming it', async () => {
  const clip = await read('openclip.safetensors');
  assert.throws(
    () => encodeStateDict(clip.stateDict, clip.config, { naming: 'hf' }),
    /Hugging Face Dinov2 layout has no name for tensor "(norm_pre\.weight|proj)"/,
  );
  const swiglu = getConfig('vit_micro_patch8', { ffn_layer: 'swiglu' });
  const m = new VisionTransformer(swiglu, { seed: 1 });
  await assert.rejects(saveWeights(m, join(dir, 'x.safetensors'), { naming: 'clip' }), /CLIP naming has no SwiGLU FFN/);
  m.dispose();
  assert.deepEqual(NAMINGS, ['dinov2', 'timm', 'hf', 'dino', 'deit3', 'clip']);
});

test('registers in every family: built, saved in its own names, read back with the same outputs', async () => {
  const own: [string, Naming, string][] = [
    ['dino_vits16', 'dino', 'register_tokens'],
    ['deit3_small_patch16', 'deit3', 'reg_token'],
    ['deit3_small_patch16', 'timm', 'reg_token'],
    ['clip_vitb16', 'clip', 'register_embedding'],
  ];
  const x = tf.randomNormal([1, 32, 48, 3], 0, 1, 'float32', 3) as tf.Tensor4D;
  for (const [name, naming, regName] of own) {
    const c = getConfig(name, {
      embed_dim: 32,
      depth: 1,
      num_heads: 2,
      img_size: 64,
      num_register_tokens: 3,
      ...(name.startsWith('clip') ? { proj_dim: 8 } : {}),
    });
    const m = new VisionTransformer(c, { seed: 4 });
    const path = join(dir, `${name}.reg.${naming}.safetensors`);
    await saveWeights(m, path, { naming });
    const { tensors } = await readSafetensors(path);
    const reg = tensors[regName];
    assert.ok(reg, `${name} as ${naming}: ${regName}`);
    assert.equal(reg.shape[reg.shape.length - 2], 3);
    const back = await loadWeights(path);
    const a = tf.tidy(() => m.forward(x).registers);
    const b = tf.tidy(() => back.forward(x).registers);
    assert.deepEqual(a.shape, [1, 3, 32]);
    assert.equal(allclose(await b.data(), await a.data(), 1e-6, 1e-6), null, `${name} as ${naming}`);
    tf.dispose([a, b]);
    m.dispose();
    back.dispose();
  }
  x.dispose();
});

test("named configs have the official models' parameter counts", () => {
  // sum of numel over the state dicts of the official constructors (make_families.py's checkouts, torch 1.13):
  // dino vit_small/vit_base(patch_size), models_v2 deit_*_patch16_LS(num_classes=0), open_clip
  // VisionTransformer(224, patch, width 768, 12 layers, 12 heads, output_dim 512).
  const official: Record<string, number> = {
    dino_vits16: 21665664,
    dino_vits8: 21670272,
    dino_vitb16: 85798656,
    dino_vitb8: 85807872,
    deit3_small_patch16: 21674496,
    deit3_medium_patch16: 38336512,
    deit3_base_patch16: 85816320,
    clip_vitb32: 87849216,
    clip_vitb16: 86192640,
  };
  for (const [name, n] of Object.entries(official)) {
    const shapes = parameterShapes(getConfig(name));
    const ours = Object.entries(shapes)
      .filter(([k]) => k !== 'mask_token')
      .reduce((s, [, v]) => s + v.reduce((a, b) => a * b, 1), 0);
    assert.equal(ours, n, name);
  }
  for (const name of ['clip_vitb32', 'clip_vitb16', 'clip_vitl14', 'clip_vitl14_336'])
    assert.equal(CONFIGS[name]!.act_layer, 'quick_gelu', name);
  for (const name of ['openclip_vitb16', 'openclip_vith14', 'openclip_vitbigg14']) assert.equal(CONFIGS[name]!.act_layer, 'gelu', name);
});

test('overrides are validated; configs saved before the family fields read as DINOv2', () => {
  assert.throws(() => getConfig('clip_vitb16', { act_layer: 'relu' as never }), /"act_layer" must be "gelu" or "quick_gelu", got "relu"/);
  assert.throws(() => getConfig('clip_vitb16', { proj_dim: 0 }), /"proj_dim" must be a positive integer or null, got 0/);
  assert.throws(() => getConfig('dino_vits16', { pos_embed_cls: 'no' as never }), /"pos_embed_cls" must be true or false/);
  assert.throws(() => getConfig('dinov2_vitg14', { act_layer: 'quick_gelu' }), /"act_layer" must be "gelu" with ffn_layer "swiglu"/);
  assert.throws(() => getConfig('dino_vits16', { interpolate_offset: -1 }), /"interpolate_offset" must be 0 or positive/);
  const old: Record<string, unknown> = { ...CONFIGS.dinov2_vits14_reg };
  for (const k of ['act_layer', 'pos_embed_cls', 'patch_bias', 'pre_norm', 'proj_dim', 'final_norm_tokens']) delete old[k];
  const c = validateConfig(old);
  assert.deepEqual(
    [c.act_layer, c.pos_embed_cls, c.patch_bias, c.pre_norm, c.proj_dim, c.final_norm_tokens],
    ['gelu', true, true, false, null, true],
  );
});
