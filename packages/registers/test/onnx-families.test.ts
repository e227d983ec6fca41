/**
 * The ONNX Runtime engine against each model family's official code (the fixtures of families.test.ts,
 * written by make_families.py): DINO (legacy interpolation, no LayerScale), DeiT-III (no class slot in
 * pos_embed; models_v2 and timm names, with 4 registers), OpenCLIP (ln_pre, no patch bias, eps 1e-5,
 * the pooled projection; tokens after ln_post and open_clip 2.22's unnormalised ones), timm CLIP towers
 * and OpenAI CLIP (QuickGELU). Every output the official code returns (CLS, registers, patches, pre-norm
 * tokens, pooled, last attention, last keys and values, every block's patch tokens) within
 * numpy.allclose(atol=1e-4, rtol=1e-4), as families.test.ts does for the tfjs model.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadOnnxRuntime, OnnxEncoder, readWeights } from '../src/index.ts';
import { FAMILIES, FAMILY_CASES as cases, familyReference } from './family-helpers.ts';
import { allclose } from './helpers.ts';
import { type HostArray } from '../src/encoder.ts';

const HEADS = { num_heads: 3 }; // the fixtures use head dim 16

/** Patch rows of a [B, N, D] token tensor, as the fixtures store every block's tokens. */
function patchRows(t: HostArray, R: number): Float32Array {
  const [B, N, D] = t.shape as [number, number, number];
  const P = N - 1 - R;
  const out = new Float32Array(B * P * D);
  for (let b = 0; b < B; b++) out.set(t.data.subarray((b * N + 1 + R) * D, (b + 1) * N * D), b * P * D);
  return out;
}

before(async () => {
  await loadOnnxRuntime();
});

for (const c of cases) {
  test(`${c.file}${c.config ? ` ${JSON.stringify(c.config)}` : ''}: ${c.inputs.join(', ')}`, async () => {
    const r = await familyReference(c.ref);
    const { config, stateDict } = await readWeights(join(FAMILIES, c.file), { config: { ...HEADS, ...c.config } });
    const enc = await OnnxEncoder.fromWeights(config, stateDict, { threads: 1 });
    try {
      for (const input of c.inputs) {
        const x = r[`${input}.input_nhwc`]!;
        const o = await enc.encode(
          { data: x.data, shape: x.shape as [number, number, number, number] },
          { attention: 'last', keys: true, values: true, layers: true },
        );
        const got: Record<string, HostArray | undefined> = {
          cls: o.cls,
          registers: o.registers,
          patches: o.patches,
          prenorm: o.prenorm,
          pooled: o.pooled,
          last_attn: o.attention?.[0],
          last_keys: o.keys,
          last_values: o.values,
        };
        let compared = 0;
        for (const [name, actual] of Object.entries(got)) {
          const key = `${input}.${c.rename?.[name] ?? name}`;
          if (c.skip?.includes(name) || (name === 'registers' && config.num_register_tokens === 0)) continue;
          if (name === 'pooled' && !r[key]) {
            assert.equal(actual, undefined, 'a pooled output without a projection');
            continue;
          }
          assert.ok(actual, `${key}: no such output`);
          assert.ok(r[key], `reference tensor ${key} missing`);
          assert.deepEqual(actual.shape, r[key]!.shape, `${key}: shape`);
          assert.equal(allclose(actual.data, r[key]!.data), null, key);
          compared++;
        }
        assert.ok(compared >= 4);
        o.layers!.forEach((l, k) => {
          const key = `${input}.layer${k}.patches_prenorm`;
          assert.equal(allclose(patchRows(l, config.num_register_tokens), r[key]!.data), null, key);
        });
      }
    } finally {
      await enc.dispose();
    }
  });
}
