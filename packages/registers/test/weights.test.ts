/** Weight files: namings, dtypes, round trips, stored configs and the errors of bad files. */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { fromFloat32, initBackend, readSafetensors, toFloat32, writeSafetensors } from '@vitreg/core';
import { getConfig, loadWeights, readWeights, saveWeights, VisionTransformer } from '../src/index.ts';
import { allclose, FIXTURES, reference } from './helpers.ts';

const HEADS = { num_heads: 3 };
let dir: string;

before(async () => {
  await initBackend('auto', { log: () => {} });
  dir = await mkdtemp(join(tmpdir(), 'vitreg-weights-'));
});
test.after(async () => rm(dir, { recursive: true, force: true }));

/** cls + pos[0] in cls_token and a zero class slot: timm stores them folded, which is the same model. */
function folded(sd: Record<string, { shape: number[]; data: Float32Array }>) {
  const out = { ...sd };
  const D = sd.cls_token.shape[2];
  const cls = sd.cls_token.data.map((v, i) => v + sd.pos_embed.data[i]);
  const pos = sd.pos_embed.data.slice();
  pos.fill(0, 0, D);
  out.cls_token = { shape: sd.cls_token.shape, data: cls };
  out.pos_embed = { shape: sd.pos_embed.shape, data: pos };
  return out;
}

async function forwardCls(model: VisionTransformer, input: { shape: number[]; data: Float32Array }) {
  return tf.tidy(() => model.forward(tf.tensor4d(input.data, input.shape as [number, number, number, number])).patches).data();
}

test('every naming and the .pth give the same state dict', async () => {
  const base = await readWeights(join(FIXTURES, 'reg4.dinov2.safetensors'), { config: HEADS });
  for (const f of ['reg4.dinov2.pth', 'reg4.timm.safetensors', 'reg4.hf.safetensors']) {
    const other = await readWeights(join(FIXTURES, f), { config: HEADS });
    assert.deepEqual(other.config, base.config, f);
    const theirs = folded(other.stateDict);
    for (const [k, v] of Object.entries(folded(base.stateDict))) {
      if (k === 'mask_token' && f.includes('timm')) continue; // timm files have no mask token
      const o = theirs[k];
      assert.ok(o, `${f}: ${k} missing`);
      assert.deepEqual(o.shape, v.shape, `${f}: ${k}`);
      // timm folds pos[0] into cls (a float add), everything else is a pure rename/reshape.
      assert.equal(allclose(o.data, v.data, k === 'cls_token' || k === 'pos_embed' ? 1e-6 : 0, 0), null, `${f}: ${k}`);
    }
  }
  assert.equal(base.naming, 'dinov2');
  assert.equal((await readWeights(join(FIXTURES, 'reg4.hf.safetensors'), { config: HEADS })).naming, 'hf');
  assert.equal((await readWeights(join(FIXTURES, 'reg4.timm.safetensors'), { config: HEADS })).naming, 'timm');
});

test('the inferred config follows the official release conventions', async () => {
  const reg4 = (await readWeights(join(FIXTURES, 'reg4.dinov2.safetensors'), { config: HEADS })).config;
  assert.equal(reg4.num_register_tokens, 4);
  assert.equal(reg4.interpolate_antialias, true);
  assert.equal(reg4.interpolate_offset, 0);
  assert.equal(reg4.img_size, 518);
  assert.equal(reg4.ffn_layer, 'mlp');
  const reg0 = (await readWeights(join(FIXTURES, 'reg0.dinov2.safetensors'), { config: HEADS })).config;
  assert.equal(reg0.num_register_tokens, 0);
  assert.equal(reg0.interpolate_antialias, false);
  assert.equal(reg0.interpolate_offset, 0.1);
  const sw = (await readWeights(join(FIXTURES, 'reg4_swiglu.dinov2.safetensors'), { config: HEADS })).config;
  assert.equal(sw.ffn_layer, 'swiglu');
  await assert.rejects(readWeights(join(FIXTURES, 'reg4.dinov2.safetensors')), /cannot infer num_heads: embed_dim 96.*num_heads/);
});

test('the parity test can fail: the wrong interpolation is caught', async () => {
  const r = await reference('reg0');
  const model = await loadWeights(join(FIXTURES, 'reg0.dinov2.safetensors'), {
    config: { ...HEADS, interpolate_antialias: true, interpolate_offset: 0 },
  });
  const got = await forwardCls(model, r['sq224.input_nhwc']);
  assert.notEqual(allclose(got, r['sq224.patches'].data), null);
  model.dispose();
});

test('save and reload in every naming and dtype', async () => {
  const model = await loadWeights(join(FIXTURES, 'reg4_swiglu.dinov2.safetensors'), { config: HEADS });
  const input = (await reference('reg4_swiglu'))['rect98x140.input_nhwc'];
  const want = await forwardCls(model, input);
  const sd = (await readWeights(join(FIXTURES, 'reg4_swiglu.dinov2.safetensors'), { config: HEADS })).stateDict;
  for (const naming of ['dinov2', 'timm', 'hf'] as const) {
    for (const dtype of ['F32', 'F16', 'BF16'] as const) {
      const path = join(dir, `out.${naming}.${dtype}.safetensors`);
      await saveWeights(model, path, { naming, dtype });
      const { tensors, metadata } = await readSafetensors(path);
      assert.equal(metadata.vitreg_naming, naming);
      assert.equal(JSON.parse(metadata.vitreg_config).num_heads, 3, 'config travels in __metadata__');
      assert.ok(Object.values(tensors).every((t) => t.dtype === dtype));
      if (naming === 'timm') assert.ok(tensors.reg_token && tensors['blocks.0.mlp.fc1.weight'] && !tensors.mask_token);
      if (naming === 'hf')
        assert.ok(tensors['encoder.layer.1.attention.attention.value.bias'] && tensors['encoder.layer.0.mlp.weights_in.weight']);
      // No --config needed: the stored config is used.
      const back = await readWeights(path);
      assert.equal(back.config.num_heads, 3);
      const got = folded(back.stateDict);
      for (const [k, v] of Object.entries(folded(sd))) {
        if (k === 'mask_token' && naming === 'timm') continue;
        const expected = dtype === 'F32' ? v.data : toFloat32(fromFloat32(v.data, v.shape, dtype));
        const tol = dtype === 'F32' ? (k === 'cls_token' ? 1e-6 : 0) : 1e-2;
        assert.equal(allclose(got[k].data, expected, tol, dtype === 'F32' ? 0 : 1e-2), null, `${naming} ${dtype} ${k}`);
      }
      if (dtype === 'F32') {
        const again = await loadWeights(path);
        assert.equal(allclose(await forwardCls(again, input), want, 1e-5, 1e-5), null, `${naming}: outputs after reload`);
        again.dispose();
      }
    }
  }
  model.dispose();
});

test('the F16 / BF16 parity references can fail: they tell the weight dtypes apart', async () => {
  // parity.test.ts holds the F16 and BF16 files to allclose(1e-4, 1e-4) against the official model run
  // with the same rounded weights; here the wrong weights must miss those references.
  const input = (await reference('reg4'))['rect98x140.input_nhwc'];
  const lowp = await reference('reg4.timm.lowp');
  const patches = async (file: string) => {
    const m = await loadWeights(join(FIXTURES, file), { config: HEADS });
    const out = await forwardCls(m, input);
    m.dispose();
    return out;
  };
  const f32 = await patches('reg4.timm.safetensors');
  const f16 = await patches('reg4.timm.f16.safetensors');
  assert.notEqual(allclose(f32, lowp['f16.rect98x140.patches'].data), null, 'F32 weights vs the F16 reference');
  assert.notEqual(allclose(f32, lowp['bf16.rect98x140.patches'].data), null, 'F32 weights vs the BF16 reference');
  assert.notEqual(allclose(f16, lowp['bf16.rect98x140.patches'].data), null, 'F16 weights vs the BF16 reference');
  assert.equal(allclose(f16, lowp['f16.rect98x140.patches'].data), null, 'F16 weights vs their own reference');
});

test('a file that does not match lists every missing, unexpected and misshapen tensor', async () => {
  const { tensors } = await readSafetensors(join(FIXTURES, 'reg4.dinov2.safetensors'));
  delete tensors['blocks.1.norm2.bias'];
  tensors['blocks.0.extra.weight'] = fromFloat32(new Float32Array(4), [4]);
  tensors['blocks.0.attn.proj.bias'] = fromFloat32(new Float32Array(95), [95]);
  const path = join(dir, 'broken.safetensors');
  await writeSafetensors(path, tensors);
  await assert.rejects(readWeights(path, { config: HEADS }), (err: Error) => {
    assert.match(err.message, /broken\.safetensors/);
    assert.match(err.message, /missing: blocks\.1\.norm2\.bias/);
    assert.match(err.message, /unexpected: blocks\.0\.extra\.weight/);
    assert.match(err.message, /wrong shape: blocks\.0\.attn\.proj\.bias \[95\] \(expected \[96\]\)/);
    return true;
  });
  await assert.rejects(
    readWeights(join(FIXTURES, 'reg4.dinov2.safetensors'), { model: 'dinov2_vits14_reg' }),
    /wrong shape: cls_token \[1,1,96\] \(expected \[1,1,384\]\)/,
  );
  await assert.rejects(
    readWeights(join(FIXTURES, 'reg4.dinov2.safetensors'), { config: { num_heads: 5 } }),
    /"num_heads" \(5\) must divide embed_dim \(96\)/,
  );
  await assert.rejects(readWeights(join(dir, 'nope.safetensors')), /nope\.safetensors/);
});

test('any register count from 0 to 16 builds and runs', async () => {
  for (const R of [0, 1, 16]) {
    const m = new VisionTransformer(getConfig('vit_micro_patch8_reg4', { num_register_tokens: R }), { seed: 1 });
    const out = m.forward(tf.zeros([2, 16, 24, 3]) as tf.Tensor4D);
    assert.deepEqual(out.registers.shape, [2, R, 64]);
    assert.deepEqual(out.patches.shape, [2, 6, 64]);
    assert.deepEqual(out.prenorm.shape, [2, 1 + R + 6, 64]);
    m.dispose();
  }
  assert.throws(() => getConfig('vit_micro_patch8_reg4', { num_register_tokens: 17 }), /between 0 and 16/);
  assert.throws(() => getConfig('nope'), /unknown model "nope"; expected one of .*dinov2_vits14_reg/);
});
