/**
 * Number-for-number parity with each model family's official code (fixtures in test/fixtures/families,
 * written by make_families.py): every output (CLS, registers, patches, pre-norm tokens, last attention,
 * last keys and values, every block's patch tokens, CLIP's pooled embedding) within numpy.allclose(atol=1e-4,
 * rtol=1e-4), the tolerance of the DINOv2 parity, for every weight file in every naming the family is
 * released in, on the wasm and the pure-JS cpu backends:
 * - DINO (facebookresearch/dino): 64x64 batch 2 (the training size), 96x96, 64x112 and 80x48 (its legacy
 *   interpolation, which resamples even the unchanged axis of 64x112);
 * - DeiT-III: models_v2 `.pth` ({"model": ...}, gamma_N, classifier head) and timm's deit3 names, 64x64
 *   against models_v2, 48x80 against timm (dynamic_img_size, which models_v2 does not run); timm's deit3
 *   with 4 registers;
 * - OpenCLIP: the whole open_clip CLIP model (image tower taken), 64x64 against open_clip (tokens after
 *   ln_post) and open_clip v2.22.0 (tokens unnormalised: final_norm_tokens false), 48x80 against timm's
 *   conversion; timm's CLIP names; a CLIP-style timm tower with 4 registers;
 * - OpenAI CLIP (QuickGELU): the whole model's state dict, 64x64.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@vitreg/core';
import { loadWeights, type ViTConfig, type VisionTransformer } from '../src/index.ts';
import { FAMILIES, FAMILY_CASES as cases, familyReference, type FamilyCase as Case } from './family-helpers.ts';
import { allclose } from './helpers.ts';

const HEADS = { num_heads: 3 }; // the fixtures use head dim 16

async function outputs(model: VisionTransformer, input: { shape: number[]; data: Float32Array }) {
  const x = tf.tensor4d(input.data, input.shape as [number, number, number, number]);
  const out = model.forward(x, { attention: 'last', layers: true, keys: true, values: true });
  const R = model.config.num_register_tokens;
  const res = {
    cls: await out.cls.data(),
    registers: await out.registers.data(),
    patches: await out.patches.data(),
    prenorm: await out.prenorm.data(),
    pooled: out.pooled ? await out.pooled.data() : undefined,
    last_attn: await out.attention![0].data(),
    last_keys: await out.keys!.data(),
    last_values: await out.values!.data(),
    layers: await Promise.all(
      out.layers!.map((l) => tf.tidy(() => tf.slice(l, [0, 1 + R, 0], [l.shape[0], l.shape[1] - 1 - R, l.shape[2]])).data()),
    ),
  };
  tf.dispose([
    x,
    out.cls,
    out.registers,
    out.patches,
    out.prenorm,
    out.embeddings,
    ...out.attention!,
    ...out.layers!,
    out.keys!,
    out.values!,
  ]);
  if (out.pooled) out.pooled.dispose();
  return res;
}

function check(name: string, actual: ArrayLike<number> | undefined, expected: { data: Float32Array } | undefined) {
  assert.ok(expected, `reference tensor ${name} missing`);
  assert.ok(actual, `${name}: the model gave no such output`);
  const err = allclose(actual, expected.data);
  assert.equal(err, null, `${name}: ${err}`);
}

const label = (c: Case) => `${c.file}${c.config ? ` ${JSON.stringify(c.config)}` : ''}`;

for (const backend of ['wasm', 'cpu'] as const) {
  describe(`family parity on ${backend}`, () => {
    before(async () => {
      await initBackend(backend, { log: () => {} });
    });
    for (const c of cases) {
      test(`${label(c)}: ${c.inputs.join(', ')}`, async () => {
        const r = await familyReference(c.ref);
        const model = await loadWeights(join(FAMILIES, c.file), { config: { ...HEADS, ...c.config } });
        let compared = 0;
        for (const input of c.inputs) {
          const o = await outputs(model, r[`${input}.input_nhwc`]!);
          const want = (name: string) => r[`${input}.${c.rename?.[name] ?? name}`];
          for (const name of ['cls', 'registers', 'patches', 'prenorm', 'pooled', 'last_attn', 'last_keys', 'last_values'] as const) {
            if (c.skip?.includes(name) || (name === 'registers' && model.config.num_register_tokens === 0)) continue;
            if (name === 'pooled' && !want('pooled')) {
              assert.equal(o.pooled, undefined, 'a pooled output without a projection');
              continue;
            }
            check(`${input}.${c.rename?.[name] ?? name}`, o[name], want(name));
            compared++;
          }
          o.layers.forEach((l, k) => check(`${input}.layer${k}.patches_prenorm`, l, r[`${input}.layer${k}.patches_prenorm`]));
        }
        assert.ok(compared >= 4 * c.inputs.length);
        model.dispose();
      });
    }
  });
}

describe('the parity can fail', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });
  const patches = async (file: string, config: Partial<ViTConfig>, input: string, ref: string, key = 'patches') => {
    const r = await familyReference(ref);
    const m = await loadWeights(join(FAMILIES, file), { config: { ...HEADS, ...config } });
    const o = await outputs(m, r[`${input}.input_nhwc`]!);
    m.dispose();
    return allclose(key === 'pooled' ? o.pooled! : o.patches, r[`${input}.${key}`]!.data);
  };
  test("DINO's legacy interpolation is needed, on the 64x112 input whose row count does not change", async () => {
    assert.equal(await patches('dino.pth', {}, 'rect64x112', 'dino'), null);
    assert.notEqual(await patches('dino.pth', { interpolate_offset: 0 }, 'rect64x112', 'dino'), null);
    assert.notEqual(await patches('dino.pth', { interpolate_antialias: true, interpolate_offset: 0 }, 'rect64x112', 'dino'), null);
  });
  test("DeiT-III at other sizes needs timm's antialiased resampling", async () => {
    assert.notEqual(await patches('deit3.timm.safetensors', { interpolate_antialias: false }, 'rect48x80', 'deit3'), null);
  });
  test("OpenAI CLIP needs QuickGELU; OpenCLIP's LAION-style tower exact GELU", async () => {
    assert.notEqual(await patches('clip_openai.pth', {}, 'sq64', 'clip_openai', 'pooled'), null);
    assert.notEqual(await patches('openclip.safetensors', { act_layer: 'quick_gelu' }, 'sq64', 'openclip'), null);
  });
  test('open_clip before and after 2.23 return different patch tokens', async () => {
    assert.notEqual(await patches('openclip.safetensors', {}, 'sq64', 'openclip', 'tokens_v2_22'), null);
    assert.notEqual(await patches('openclip.safetensors', { final_norm_tokens: false }, 'sq64', 'openclip'), null);
  });
});
