/**
 * open_clip / OpenAI CLIP `VisionTransformer` checkpoint names (`conv1`, `class_embedding`,
 * `positional_embedding`, `ln_pre`, `transformer.resblocks.N.attn.in_proj_weight`, `ln_post`, `proj`) to and
 * from the DINOv2 names.
 */
import type { ViTConfig } from './config.js';
import { withClassSlot, withMaskToken, type StateDict } from './state-dict.js';

/** open_clip / OpenAI CLIP names of a block's tensors, by DINOv2 name (ls_1/ls_2 from open_clip's ls_init_value). */
const CLIP_BLOCK: [string, string][] = [
  ['ln_1.weight', 'norm1.weight'],
  ['ln_1.bias', 'norm1.bias'],
  ['attn.in_proj_weight', 'attn.qkv.weight'],
  ['attn.in_proj_bias', 'attn.qkv.bias'],
  ['attn.out_proj.weight', 'attn.proj.weight'],
  ['attn.out_proj.bias', 'attn.proj.bias'],
  ['ls_1.gamma', 'ls1.gamma'],
  ['ln_2.weight', 'norm2.weight'],
  ['ln_2.bias', 'norm2.bias'],
  ['mlp.c_fc.weight', 'mlp.fc1.weight'],
  ['mlp.c_fc.bias', 'mlp.fc1.bias'],
  ['mlp.c_proj.weight', 'mlp.fc2.weight'],
  ['mlp.c_proj.bias', 'mlp.fc2.bias'],
  ['ls_2.gamma', 'ls2.gamma'],
];

/** Top-level CLIP names (`register_embedding` [R, D] is vitreg's, for towers trained with registers). */
const CLIP_TOP: [string, string][] = [
  ['conv1.weight', 'patch_embed.proj.weight'],
  ['conv1.bias', 'patch_embed.proj.bias'],
  ['ln_pre.weight', 'norm_pre.weight'],
  ['ln_pre.bias', 'norm_pre.bias'],
  ['ln_post.weight', 'norm.weight'],
  ['ln_post.bias', 'norm.bias'],
  ['proj', 'proj'],
];

/** CLIP -> DINOv2 names; tensors it does not know are kept as `clip:NAME` and reported as unexpected. */
export function fromClip(sd: StateDict): StateDict {
  const out: StateDict = {};
  const top = new Map(CLIP_TOP);
  const block = new Map(CLIP_BLOCK);
  const D = sd.class_embedding?.shape[0];
  for (const [k, v] of Object.entries(sd)) {
    const m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(k);
    const inBlock = m && block.get(m[2]);
    if (inBlock) out[`blocks.${m[1]}.${inBlock}`] = v;
    else if (top.has(k)) out[top.get(k)!] = v;
    else if (k === 'class_embedding' && v.shape.length === 1) out.cls_token = { shape: [1, 1, v.shape[0]], data: v.data };
    else if (k === 'positional_embedding' && v.shape.length === 2) out.pos_embed = { shape: [1, ...v.shape], data: v.data };
    else if (k === 'register_embedding' && v.shape.length === 2 && v.shape[1] === D)
      out.register_tokens = { shape: [1, ...v.shape], data: v.data };
    else out[`clip:${k}`] = v;
  }
  return withMaskToken(out);
}

/** DINOv2 names -> CLIP's (a class slot in the positional embedding, no mask token). */
export function toClip(sd: StateDict, c: ViTConfig): StateDict {
  if (c.ffn_layer === 'swiglu')
    throw new Error('the CLIP naming has no SwiGLU FFN (mlp.c_fc / mlp.c_proj are a plain MLP); write this model as dinov2 or timm');
  const out: StateDict = {};
  const top = new Map(CLIP_TOP.map(([a, b]) => [b, a] as [string, string]));
  const block = new Map(CLIP_BLOCK.map(([a, b]) => [b, a] as [string, string]));
  for (const [k, v] of Object.entries(withClassSlot(sd, c))) {
    const m = /^blocks\.(\d+)\.(.+)$/.exec(k);
    if (k === 'mask_token') continue;
    if (k === 'cls_token') out.class_embedding = { shape: [v.shape[2]], data: v.data };
    else if (k === 'pos_embed') out.positional_embedding = { shape: v.shape.slice(1), data: v.data };
    else if (k === 'register_tokens') out.register_embedding = { shape: v.shape.slice(1), data: v.data };
    else if (top.has(k)) out[top.get(k)!] = v;
    else if (m && block.has(m[2])) out[`transformer.resblocks.${m[1]}.${block.get(m[2])}`] = v;
    else throw new Error(`cannot name tensor "${k}" in the CLIP layout`);
  }
  return out;
}
