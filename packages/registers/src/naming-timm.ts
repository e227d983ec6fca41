/**
 * timm's checkpoint names (`vit_*_reg4_dinov2`, `deit3_*`, its CLIP towers) to and from the DINOv2 names,
 * as timm's own checkpoint_filter_fn adapters convert the official releases.
 */
import type { ViTConfig } from './config.js';
import { renamed, transpose2d, withMaskToken, withoutClassifier, withoutClassSlot, type StateDict } from './state-dict.js';

/**
 * timm -> DINOv2 names: reg_token, fc1/fc2 for SwiGLU (SwiGLUPacked), no mask token; `head.weight` is CLIP's
 * projection (transposed) when it has no bias, or a zero one in a tower with `norm_pre` (timm's conversion of
 * CLIP), and a classifier, left out, otherwise (e.g. CLIP fine-tuned on ImageNet). `pos_embed` is kept as is,
 * class slot or not (see fitPosEmbed).
 */
export function fromTimm(sd: StateDict): StateDict {
  let out = renamed(sd, [[/^reg_token$/, 'register_tokens']]);
  // timm packs SwiGLU as mlp.fc1 [2h, D] / mlp.fc2 [D, h] (SwiGLUPacked); DINOv2 calls them w12 / w3.
  for (const k of Object.keys(out)) {
    const m = /^blocks\.(\d+)\.mlp\.fc1\.weight$/.exec(k);
    const fc2 = m && out[`blocks.${m[1]}.mlp.fc2.weight`];
    if (m && fc2 && out[k].shape[0] === 2 * fc2.shape[1]) {
      for (const [a, b] of [
        ['fc1', 'w12'],
        ['fc2', 'w3'],
      ]) {
        for (const s of ['weight', 'bias']) {
          const from = `blocks.${m[1]}.mlp.${a}.${s}`;
          if (out[from]) {
            out[`blocks.${m[1]}.mlp.${b}.${s}`] = out[from];
            delete out[from];
          }
        }
      }
    }
  }
  const head = out['head.weight'];
  const bias = out['head.bias'];
  const zeroBias = !!bias && bias.data.every((v) => v === 0);
  if (head && head.shape.length === 2 && (!bias || (zeroBias && out['norm_pre.weight']))) {
    out.proj = { shape: [head.shape[1], head.shape[0]], data: transpose2d(head.data, head.shape[0], head.shape[1]) };
  }
  out = withoutClassifier(out);
  return withMaskToken(out);
}

/** DINOv2 names -> timm: the inverse of fromTimm (the class position folded into cls_token for register models, as timm's dinov2 models are). */
export function toTimm(sd: StateDict, c: ViTConfig): StateDict {
  const out: StateDict = {};
  for (const [k, v] of Object.entries(c.num_register_tokens > 0 && c.pos_embed_cls ? withoutClassSlot(sd, c) : sd)) {
    if (k === 'mask_token') continue;
    const m = /^(blocks\.\d+\.mlp\.)(w12|w3)\.(weight|bias)$/.exec(k);
    if (m) out[`${m[1]}${m[2] === 'w12' ? 'fc1' : 'fc2'}.${m[3]}`] = v;
    else if (k === 'register_tokens') out.reg_token = v;
    else if (k === 'proj') out['head.weight'] = { shape: [v.shape[1], v.shape[0]], data: transpose2d(v.data, v.shape[0], v.shape[1]) };
    else out[k] = v;
  }
  return out;
}
