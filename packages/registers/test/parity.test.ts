/**
 * Number-for-number parity with the official DINOv2 code: every output (CLS, registers, patches,
 * pre-norm tokens, last attention, last keys, every block's patch tokens) within
 * numpy.allclose(atol=1e-4, rtol=1e-4), for every weight file: three models (4 registers, none,
 * SwiGLU), the DINOv2 / timm / Hugging Face namings, .pth and safetensors, and the F16 and BF16 timm
 * files — those against the official model run with the same F16 / BF16 weights widened to float32
 * (reg4.timm.lowp.reference.safetensors, written by make_lowp_reference.py).
 * wasm: every file on both inputs (224x224 batch 2, 98x140). cpu (pure JS, ~10x slower): every file
 * on the 98x140 input, and reg4.dinov2.safetensors on the 224x224 one too.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@vitreg/core';
import { loadWeights, type VisionTransformer } from '../src/index.ts';
import { allclose, FIXTURES, reference } from './helpers.ts';

const HEADS = { num_heads: 3 }; // the fixtures use head dim 32, not DINOv2's 64

async function outputs(model: VisionTransformer, input: { shape: number[]; data: Float32Array }) {
  const x = tf.tensor4d(input.data, input.shape as [number, number, number, number]);
  const out = model.forward(x, { attention: 'last', layers: true, keys: true });
  const res = {
    cls: await out.cls.data(),
    registers: await out.registers.data(),
    patches: await out.patches.data(),
    prenorm: await out.prenorm.data(),
    last_attn: await out.attention![0].data(),
    last_keys: await out.keys!.data(),
    layers: await Promise.all(
      out.layers!.map(async (l) => {
        const R = model.config.num_register_tokens;
        const [B, N, D] = l.shape;
        return tf.slice(l, [0, 1 + R, 0], [B, N - 1 - R, D]).data();
      }),
    ),
  };
  tf.dispose([x, out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...out.attention!, ...out.layers!, out.keys!]);
  return res;
}

function check(name: string, actual: ArrayLike<number>, expected: { data: Float32Array } | undefined) {
  assert.ok(expected, `reference tensor ${name} missing`);
  const err = allclose(actual, expected.data);
  assert.equal(err, null, `${name}: ${err}`);
}

/** [weights file, reference file stem, key prefix in it]; inputs always come from reg4.reference. */
const cases: [string, string, string][] = [
  ['reg4.dinov2.safetensors', 'reg4', ''],
  ['reg4.dinov2.pth', 'reg4', ''],
  ['reg4.timm.safetensors', 'reg4', ''],
  ['reg4.hf.safetensors', 'reg4', ''],
  ['reg0.dinov2.safetensors', 'reg0', ''],
  ['reg4_swiglu.dinov2.safetensors', 'reg4_swiglu', ''],
  ['reg4.timm.f16.safetensors', 'reg4.timm.lowp', 'f16.'],
  ['reg4.timm.bf16.safetensors', 'reg4.timm.lowp', 'bf16.'],
];

for (const backend of ['wasm', 'cpu'] as const) {
  describe(`parity on ${backend}`, () => {
    before(async () => {
      await initBackend(backend, { log: () => {} });
    });
    for (const [file, refName, prefix] of cases) {
      test(`${file}${backend === 'cpu' && file !== 'reg4.dinov2.safetensors' ? ' (98x140)' : ''}`, async () => {
        const r = await reference(refName);
        const inputs = refName === 'reg4' ? r : await reference('reg4');
        const model = await loadWeights(join(FIXTURES, file), { config: HEADS });
        const both = backend === 'wasm' || file === 'reg4.dinov2.safetensors';
        for (const input of both ? ['sq224', 'rect98x140'] : ['rect98x140']) {
          const o = await outputs(model, inputs[`${input}.input_nhwc`]!);
          const key = (name: string) => `${prefix}${input}.${name}`;
          check(key('cls'), o.cls, r[key('cls')]);
          if (model.config.num_register_tokens > 0) check(key('registers'), o.registers, r[key('registers')]);
          check(key('patches'), o.patches, r[key('patches')]);
          check(key('prenorm'), o.prenorm, r[key('prenorm')]);
          check(key('last_attn'), o.last_attn, r[key('last_attn')]);
          check(key('last_keys'), o.last_keys, r[key('last_keys')]);
          o.layers.forEach((l, k) => check(key(`layer${k}.patches_prenorm`), l, r[key(`layer${k}.patches_prenorm`)]));
        }
        model.dispose();
      });
    }
  });
}
