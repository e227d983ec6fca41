/**
 * clipParamSpecs' weight-decay rule against open_clip's, applied to open_clip's own parameter names: the model
 * written with encodeClip (open_clip names and layouts, what saveClip writes), each tensor traced back to its
 * vitreg parameter by a distinct constant value, and open_clip_train/optim.py's `make_wd_exclude` (open_clip
 * commit 8120efe and later) evaluated on the written name and shape.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, toFloat32 } from '@vitreg/core';
import { ClipModel, encodeClip, type ClipConfig } from '@vitreg/registers';
import { clipModelConfig, presetConfig } from '../src/index.ts';
import { clipParamSpecs } from '../src/clip-train.ts';

/** `CLIP.no_weight_decay()` of open_clip's model.py (its own set and its VisionTransformer's, prefixed). */
const OPEN_CLIP_NO_WD = new Set(['positional_embedding', 'visual.positional_embedding', 'visual.class_embedding']);

/** open_clip's `make_wd_exclude(model)(name, p)`: `p.ndim <= 1` or a declared name. */
const openClipExcludes = (name: string, shape: readonly number[]): boolean => shape.length <= 1 || OPEN_CLIP_NO_WD.has(name);

/** open_clip name -> wdMult of the vitreg parameter written there, and the vitreg names not written at all. */
async function decayByOpenClipName(
  config: ClipConfig,
): Promise<{ wd: Map<string, { wdMult: number; shape: number[] }>; unwritten: string[] }> {
  const model = new ClipModel(config, { trainable: true });
  const specs = clipParamSpecs(model);
  specs.forEach((s, i) => s.variable.assign(tf.fill(s.variable.shape, i + 1)));
  const { tensors } = await encodeClip(model);
  const wd = new Map<string, { wdMult: number; shape: number[] }>();
  const written = new Set<number>();
  for (const [name, t] of Object.entries(tensors)) {
    const i = toFloat32(t)[0]! - 1;
    assert.ok(Number.isInteger(i) && specs[i], `${name}: traced to no parameter (value ${i + 1})`);
    wd.set(name, { wdMult: specs[i]!.wdMult, shape: [...t.shape] });
    written.add(i);
  }
  const unwritten = specs.filter((_, i) => !written.has(i)).map((s) => `${s.name}:${s.wdMult}`);
  model.dispose();
  return { wd, unwritten };
}

test("clipParamSpecs decays exactly what open_clip's make_wd_exclude decays, by open_clip name (tiny-clip, SigLIP bias, ln_pre)", async () => {
  await initBackend('wasm', { log: () => {} });
  const base = clipModelConfig(presetConfig('tiny-clip'), 40);
  const config: ClipConfig = { ...base, vision: { ...base.vision, pre_norm: true }, init_logit_bias: -10 };
  const { wd, unwritten } = await decayByOpenClipName(config);
  const decayed: string[] = [];
  for (const [name, { wdMult, shape }] of wd) {
    // vitreg's register tokens (no open_clip counterpart) are not decayed, as open_clip's declared reg_tokens.
    const want = name === 'visual.register_embedding' ? 0 : openClipExcludes(name, shape) ? 0 : 1;
    assert.equal(wdMult, want, `${name} [${shape}]: wdMult ${wdMult}, open_clip's rule gives ${want}`);
    if (wdMult === 1) decayed.push(name.replace(/\.\d+\./, '.N.'));
  }
  // The list, spelled out: every matrix (the token embedding and both projections included), nothing else.
  assert.deepEqual([...new Set(decayed)].sort(), [
    'text_projection',
    'token_embedding.weight',
    'transformer.resblocks.N.attn.in_proj_weight',
    'transformer.resblocks.N.attn.out_proj.weight',
    'transformer.resblocks.N.mlp.c_fc.weight',
    'transformer.resblocks.N.mlp.c_proj.weight',
    'visual.conv1.weight',
    'visual.proj',
    'visual.transformer.resblocks.N.attn.in_proj_weight',
    'visual.transformer.resblocks.N.attn.out_proj.weight',
    'visual.transformer.resblocks.N.mlp.c_fc.weight',
    'visual.transformer.resblocks.N.mlp.c_proj.weight',
  ]);
  for (const n of [
    'positional_embedding',
    'visual.positional_embedding',
    'visual.class_embedding',
    'visual.ln_pre.weight',
    'logit_scale',
    'logit_bias',
  ])
    assert.equal(wd.get(n)?.wdMult, 0, `${n} is not decayed`);
  // The one parameter CLIP files do not hold: the image tower's mask token (unused by CLIP), not decayed.
  assert.deepEqual(unwritten, ['visual.mask_token:0']);
});
