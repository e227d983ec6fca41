/**
 * CLIP's text tower and the two-tower model against the official code (fixtures in
 * test/fixtures/clip-text, written by make_clip_text.py from open_clip and openai/CLIP on random weights):
 * text features, the text tokens after ln_final and after every block, image features and both logit
 * matrices (logit_scale, and SigLIP's logit_bias) within numpy.allclose(atol=1e-4, rtol=1e-4), for an
 * open_clip CLIP (GELU, .safetensors), an open_clip CLIP with logit_bias and OpenAI's CLIP (QuickGELU, .pth);
 * own-name round trips; logit_scale's initial value and clamp; the wrong activation and a missing causal
 * mask miss the references.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, readSafetensors, toFloat32 } from '@vitreg/core';
import { ClipModel, getClipConfig, LOGIT_SCALE_MAX, loadClip, loadWeights, saveClip, type ClipModel as Clip } from '../src/index.ts';
import { allclose } from './helpers.ts';

const DIR = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'clip-text');
const HEADS = { vision: { num_heads: 3 }, text: { heads: 2 } }; // head dim 16 in both tiny towers

async function ref(name: string): Promise<Record<string, { shape: number[]; data: Float32Array }>> {
  const { tensors } = await readSafetensors(join(DIR, `${name}.reference.safetensors`));
  return Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, { shape: t.shape, data: toFloat32(t) }]));
}

async function outputs(model: Clip, r: Awaited<ReturnType<typeof ref>>) {
  const [B, L] = r.ids.shape as [number, number];
  const ids = Int32Array.from(r.ids.data);
  const full = model.text.forward(ids, B, { layers: true });
  const text = model.encodeText(ids, B);
  const x = tf.tensor4d(r.input_nhwc.data, r.input_nhwc.shape as [number, number, number, number]);
  const image = model.encodeImage(x);
  const [perImage, perText] = model.logits(image, text);
  const res = {
    L,
    text_features: await text.data(),
    full_features: await full.features.data(),
    text_tokens: await full.tokens.data(),
    layers: await Promise.all(full.layers!.map((l) => l.data())),
    image_features: await image.data(),
    logits_per_image: await perImage.data(),
    logits_per_text: await perText.data(),
  };
  tf.dispose([full.features, full.tokens, ...full.layers!, text, x, image, perImage, perText]);
  return res;
}

function check(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  const bad = allclose(actual, expected);
  assert.equal(bad, null, `${what}: ${bad}`);
}

describe('CLIP text tower parity (wasm)', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });

  const cases = [
    { name: 'openclip', file: 'openclip.safetensors', opts: {}, tokens: true },
    { name: 'siglip', file: 'siglip.safetensors', opts: {}, tokens: true },
    { name: 'clip_openai', file: 'clip_openai.pth', opts: { act_layer: 'quick_gelu' as const }, tokens: false },
  ];
  for (const c of cases) {
    test(`${c.name}: text and image features, logits vs the official code`, async () => {
      const r = await ref(c.name);
      const model = await loadClip(join(DIR, c.file), { ...HEADS, ...c.opts });
      assert.equal(model.logitBias !== null, c.name === 'siglip');
      const o = await outputs(model, r);
      check(o.text_features, r.text_features.data, 'text_features (encode, cut after the last end-of-text)');
      check(o.full_features, r.text_features.data, 'text_features (all 12 positions)');
      check(o.image_features, r.image_features.data, 'image_features');
      check(o.logits_per_image, r.logits_per_image.data, 'logits_per_image');
      check(o.logits_per_text, r.logits_per_text.data, 'logits_per_text');
      if (c.tokens) {
        check(o.text_tokens, r.text_tokens.data, 'text tokens after ln_final');
        o.layers.forEach((l, i) => check(l, r[`text_layer${i}`]!.data, `text block ${i}`));
      }
      model.dispose();
    });
  }

  test('own-name round trip (open_clip and openai namings; F16), and the image tower read alone', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vitreg-clip-'));
    try {
      const r = await ref('siglip');
      const model = await loadClip(join(DIR, 'siglip.safetensors'), HEADS);
      await saveClip(model, join(dir, 'a.safetensors'));
      const back = await loadClip(join(DIR, 'siglip.safetensors'), HEADS);
      const again = await loadClip(join(dir, 'a.safetensors'));
      assert.deepEqual(again.config, back.config);
      const o = await outputs(again, r);
      check(o.text_features, r.text_features.data, 'round trip text_features');
      check(o.logits_per_image, r.logits_per_image.data, 'round trip logits');
      const saved = await readSafetensors(join(dir, 'a.safetensors'));
      const official = await readSafetensors(join(DIR, 'siglip.safetensors'));
      assert.deepEqual(Object.keys(saved.tensors).sort(), Object.keys(official.tensors).sort(), 'the official tensor names');
      for (const [k, t] of Object.entries(official.tensors)) assert.deepEqual(saved.tensors[k]!.shape, t.shape, k);
      await assert.rejects(saveClip(model, join(dir, 'b.safetensors'), { naming: 'openai' }), /no logit_bias/);
      const oa = await loadClip(join(DIR, 'clip_openai.pth'), { ...HEADS, act_layer: 'quick_gelu' });
      await saveClip(oa, join(dir, 'oa.safetensors'), { naming: 'openai', dtype: 'F16' });
      const oaBack = await loadClip(join(dir, 'oa.safetensors'));
      assert.equal(oaBack.config.text.act_layer, 'quick_gelu');
      assert.equal(oaBack.config.vision.act_layer, 'quick_gelu');
      // The image tower of such a file, for everything that reads one model.
      const tower = await loadWeights(join(dir, 'a.safetensors'));
      assert.deepEqual(tower.config, model.config.vision);
      for (const m of [model, back, again, oa, oaBack, tower]) m.dispose();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('the wrong activation and a missing text tower miss or are refused', async () => {
    const r = await ref('clip_openai');
    const gelu = await loadClip(join(DIR, 'clip_openai.pth'), HEADS);
    const o = await outputs(gelu, r);
    assert.notEqual(allclose(o.text_features, r.text_features.data), null, 'GELU instead of QuickGELU must miss');
    gelu.dispose();
    await assert.rejects(
      loadClip(join(DIR, 'openclip.safetensors'), { vision: { num_heads: 3 } }),
      /heads cannot be inferred from width 32/,
    );
    await assert.rejects(loadClip(join(DIR, '..', 'families', 'clip.timm.safetensors'), HEADS), /no text tower/);
  });

  test('logit_scale starts at log(1/0.07) and is clamped to [0, log 100]', () => {
    const config = getClipConfig('openclip_vitb16', {
      vision: { depth: 1, embed_dim: 64, num_heads: 1 },
      text: { layers: 1, width: 64, heads: 1, vocab_size: 10 },
    });
    assert.equal(config.text.context_length, 77);
    const m = new ClipModel(config);
    assert.ok(Math.abs(m.logitScale.dataSync()[0]! - Math.log(1 / 0.07)) < 1e-6);
    m.logitScale.assign(tf.scalar(7));
    m.clampLogitScale();
    assert.ok(Math.abs(m.logitScale.dataSync()[0]! - LOGIT_SCALE_MAX) < 1e-6);
    m.logitScale.assign(tf.scalar(-1));
    m.clampLogitScale();
    assert.equal(m.logitScale.dataSync()[0], 0);
    assert.equal(m.logitBias, null);
    m.dispose();
  });
});

describe('CLIP text tower gradients (wasm)', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });

  test('every parameter gets a gradient; token embedding and attention weights match finite differences', async () => {
    const model = await loadClip(join(DIR, 'openclip.safetensors'), { ...HEADS, trainable: true });
    const r = await ref('openclip');
    const B = r.ids.shape[0]!;
    const ids = Int32Array.from(r.ids.data);
    const w = tf.tensor2d(
      Array.from({ length: B * 24 }, (_, i) => Math.sin(i)),
      [B, 24],
    );
    const loss = () => tf.tidy(() => tf.sum(tf.mul(model.encodeText(ids, B), w)) as tf.Scalar);
    const { grads } = tf.variableGrads(loss, model.text.variables());
    const names = Object.keys(model.text.params);
    assert.equal(Object.keys(grads).length, names.length);
    for (const [name, index] of [
      ['token_embedding.weight', 40 * 32 + 3],
      ['transformer.resblocks.0.attn.in_proj_weight', 5 * 96 + 40],
      ['positional_embedding', 2 * 32 + 7],
    ] as const) {
      const v = model.text.params[name]!;
      const g = (await grads[v.name]!.data())[index]!;
      const base = (await v.data()) as Float32Array;
      const at = async (d: number) => {
        const x = base.slice();
        x[index]! += d;
        v.assign(tf.tensor(x, v.shape));
        const l = loss();
        const out = (await l.data())[0]!;
        l.dispose();
        return out;
      };
      const h = 1e-2;
      const numeric = ((await at(h)) - (await at(-h))) / (2 * h);
      v.assign(tf.tensor(base, v.shape));
      assert.ok(Math.abs(numeric - g) < 2e-2 * Math.max(1, Math.abs(g)), `${name}[${index}]: analytic ${g} vs numeric ${numeric}`);
    }
    // Ids no row uses get no gradient (the host scatter of the embedding's gradient).
    const gEmb = (await grads[model.text.params['token_embedding.weight']!.name]!.data()) as Float32Array;
    const used = new Set(ids);
    for (let id = 0; id < 64; id++)
      if (!used.has(id))
        assert.equal(
          gEmb.subarray(id * 32, id * 32 + 32).reduce((a, b) => a + Math.abs(b), 0),
          0,
        );
    tf.dispose(Object.values(grads));
    w.dispose();
    model.dispose();
  });
});
