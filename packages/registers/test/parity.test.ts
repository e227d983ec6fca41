/**
 * Number-for-number parity with the official DINOv2 code: every output of the fixtures (three models,
 * three namings, .pth and safetensors, F32/F16/BF16, two input sizes) within numpy.allclose(1e-4, 1e-4).
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
    layers: await Promise.all(out.layers!.map(async (l) => {
      const R = model.config.num_register_tokens;
      const [B, N, D] = l.shape;
      return tf.slice(l, [0, 1 + R, 0], [B, N - 1 - R, D]).data();
    })),
  };
  tf.dispose([x, out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...out.attention!, ...out.layers!, out.keys!]);
  return res;
}

function check(name: string, actual: ArrayLike<number>, expected: { data: Float32Array } | undefined) {
  assert.ok(expected, `reference tensor ${name} missing`);
  const err = allclose(actual, expected.data);
  assert.equal(err, null, `${name}: ${err}`);
}

before(async () => {
  await initBackend('auto', { log: () => {} });
});

const cases: [string, string][] = [
  ['reg4', 'reg4.dinov2.safetensors'],
  ['reg4', 'reg4.dinov2.pth'],
  ['reg4', 'reg4.timm.safetensors'],
  ['reg4', 'reg4.hf.safetensors'],
  ['reg0', 'reg0.dinov2.safetensors'],
  ['reg4_swiglu', 'reg4_swiglu.dinov2.safetensors'],
];

for (const [ref, file] of cases) {
  describe(`parity ${file}`, () => {
    for (const input of ['sq224', 'rect98x140']) {
      test(input, async () => {
        const r = await reference(ref);
        const model = await loadWeights(join(FIXTURES, file), { config: HEADS });
        const o = await outputs(model, r[`${input}.input_nhwc`]);
        check(`${input}.cls`, o.cls, r[`${input}.cls`]);
        if (model.config.num_register_tokens > 0) check(`${input}.registers`, o.registers, r[`${input}.registers`]);
        check(`${input}.patches`, o.patches, r[`${input}.patches`]);
        check(`${input}.prenorm`, o.prenorm, r[`${input}.prenorm`]);
        check(`${input}.last_attn`, o.last_attn, r[`${input}.last_attn`]);
        check(`${input}.last_keys`, o.last_keys, r[`${input}.last_keys`]);
        o.layers.forEach((l, k) => check(`${input}.layer${k}.patches_prenorm`, l, r[`${input}.layer${k}.patches_prenorm`]));
        model.dispose();
      });
    }
  });
}
