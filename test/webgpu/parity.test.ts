/**
 * Parity with the official DINOv2 code on WebGPU (SwiftShader in CI): the fixtures of
 * packages/registers/test/parity.test.ts for the three models (4 registers, none, SwiGLU) on both inputs
 * (224x224 batch 2, 98x140), every output (CLS, registers, patches, pre-norm tokens, last attention, last
 * keys, every block's patch tokens) within numpy.allclose(atol=1e-4, rtol=1e-4), as on wasm and cpu.
 * Run by scripts/test-webgpu.sh.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@vitreg/core';
import { loadWeights, type VisionTransformer } from '@vitreg/registers';
import { allclose, FIXTURES, reference } from '../../packages/registers/test/helpers.ts';

const HEADS = { num_heads: 3 }; // the fixtures use head dim 32

async function outputs(model: VisionTransformer, input: { shape: number[]; data: Float32Array }) {
  const x = tf.tensor4d(input.data, input.shape as [number, number, number, number]);
  const out = model.forward(x, { attention: 'last', layers: true, keys: true });
  const R = model.config.num_register_tokens;
  const res = {
    cls: await out.cls.data(),
    registers: await out.registers.data(),
    patches: await out.patches.data(),
    prenorm: await out.prenorm.data(),
    last_attn: await out.attention![0]!.data(),
    last_keys: await out.keys!.data(),
    layers: await Promise.all(
      out.layers!.map((l) => {
        const [B, N, D] = l.shape;
        const patches = tf.slice(l, [0, 1 + R, 0], [B, N - 1 - R, D]);
        return patches.data().finally(() => patches.dispose());
      }),
    ),
  };
  tf.dispose([x, out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...out.attention!, ...out.layers!, out.keys!]);
  return res;
}

function check(name: string, actual: ArrayLike<number>, expected: { data: Float32Array } | undefined) {
  assert.ok(expected, `reference tensor ${name} missing`);
  assert.equal(allclose(actual, expected.data), null, name);
}

describe('parity on webgpu', () => {
  before(async () => {
    const info = await initBackend('webgpu', { log: () => {} });
    console.log(`# webgpu adapter: ${info.adapter!.name} (${info.adapter!.description})`);
  });
  for (const [file, refName] of [
    ['reg4.dinov2.safetensors', 'reg4'],
    ['reg0.dinov2.safetensors', 'reg0'],
    ['reg4_swiglu.dinov2.safetensors', 'reg4_swiglu'],
  ] as const) {
    test(file, async () => {
      const r = await reference(refName);
      const inputs = refName === 'reg4' ? r : await reference('reg4');
      const model = await loadWeights(join(FIXTURES, file), { config: HEADS });
      for (const input of ['sq224', 'rect98x140']) {
        const o = await outputs(model, inputs[`${input}.input_nhwc`]!);
        const key = (name: string) => `${input}.${name}`;
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
