/**
 * Config inference: the ViTConfig a DINOv2-named state dict implies (widths, depth, heads, patch size,
 * registers, FFN, biases), with each family's release conventions for what the tensors cannot tell.
 */
import { validateConfig, type ViTConfig } from './config.js';
import type { Naming } from './namings.js';
import type { StateDict } from './state-dict.js';

const isSquare = (n: number) => n > 0 && Number.isInteger(Math.sqrt(n));

/** Heads of the released models whose head width is not 64: ViT-H (DeiT-III, OpenCLIP; 80), OpenCLIP ViT-g (88), ViT-bigG (104). */
const HEADS_BY_WIDTH: Record<number, number> = { 1280: 16, 1408: 16, 1664: 16 };

/** What the tensors cannot tell, by family: each family's release conventions. */
type Conventions = Pick<ViTConfig, 'interpolate_antialias' | 'interpolate_offset' | 'norm_eps' | 'pos_embed_cls'> & { layerscale: number };

function conventions(naming: Naming, sd: StateDict, hasClassSlot: boolean, R: number): Conventions {
  const dinov2 = {
    interpolate_antialias: R > 0,
    interpolate_offset: R > 0 ? 0 : 0.1,
    norm_eps: 1e-6,
    pos_embed_cls: hasClassSlot,
    layerscale: 1.0,
  };
  const timm = { interpolate_antialias: true, interpolate_offset: 0 };
  switch (naming) {
    case 'clip':
      return { ...timm, norm_eps: 1e-5, pos_embed_cls: hasClassSlot, layerscale: 1e-5 };
    case 'deit3':
      return { ...timm, norm_eps: 1e-6, pos_embed_cls: hasClassSlot, layerscale: 1e-6 };
    case 'dino':
      return { interpolate_antialias: false, interpolate_offset: 0.1, norm_eps: 1e-6, pos_embed_cls: hasClassSlot, layerscale: 1e-5 };
    case 'timm':
      if (sd['norm_pre.weight']) return { ...timm, norm_eps: 1e-5, pos_embed_cls: hasClassSlot, layerscale: 1e-5 };
      // timm's DINOv2 register models fold CLS's position into cls_token: read back into DINOv2's layout.
      if (!hasClassSlot && R > 0) return { ...dinov2, pos_embed_cls: true };
      if (!hasClassSlot) return { ...timm, norm_eps: 1e-6, pos_embed_cls: false, layerscale: 1e-6 }; // deit3_*
      return dinov2;
    default:
      return dinov2;
  }
}

/**
 * The config the tensors (DINOv2 names) imply, with the release conventions of the naming's family for
 * what they cannot tell (eps, interpolation, LayerScale's initial value; CLIP's activation is taken as
 * exact GELU, OpenCLIP's: OpenAI's weights need `act_layer: 'quick_gelu'`, or a `clip_*` named config).
 */
export function inferConfig(sd: StateDict, file: string, overrides: Partial<ViTConfig> = {}, naming: Naming = 'dinov2'): ViTConfig {
  const need = (k: string) => {
    const t = sd[k];
    if (!t) throw new Error(`${file}: cannot infer the model config: tensor "${k}" is missing`);
    return t;
  };
  const pe = need('patch_embed.proj.weight');
  if (pe.shape.length !== 4 || pe.shape[1] !== 3 || pe.shape[2] !== pe.shape[3]) {
    throw new Error(`${file}: tensor "patch_embed.proj.weight" has shape [${pe.shape}]; expected [D, 3, p, p]`);
  }
  const D = pe.shape[0];
  const p = pe.shape[2];
  const depth = 1 + Math.max(...Object.keys(sd).map((k) => Number(/^blocks\.(\d+)\./.exec(k)?.[1] ?? -1)));
  const R = sd.register_tokens?.shape[1] ?? 0;
  const pos = need('pos_embed');
  const positions = pos.shape[1];
  const hasClassSlot = isSquare(positions - 1);
  if (!hasClassSlot && !isSquare(positions)) {
    throw new Error(`${file}: tensor "pos_embed" has ${positions} positions; expected a square grid, with or without a class slot`);
  }
  const grid = Math.sqrt(hasClassSlot ? positions - 1 : positions);
  const swiglu = !!sd['blocks.0.mlp.w12.weight'];
  const hidden = swiglu ? need('blocks.0.mlp.w3.weight').shape[1] : need('blocks.0.mlp.fc1.weight').shape[0];
  let mlpRatio = swiglu ? (hidden * 3) / 2 / D : hidden / D;
  if (!swiglu && Math.trunc(D * mlpRatio) !== hidden) mlpRatio = (hidden + 0.5) / D; // int(D * ratio) must give hidden back
  const heads = HEADS_BY_WIDTH[D] ?? D / 64;
  if (overrides.num_heads === undefined && !Number.isInteger(heads)) {
    throw new Error(`${file}: cannot infer num_heads: embed_dim ${D} is not a multiple of 64; give it, e.g. --config '{"num_heads": N}'`);
  }
  const conv = conventions(naming, sd, hasClassSlot, R);
  return validateConfig(
    {
      embed_dim: D,
      depth,
      num_heads: Number.isInteger(heads) ? heads : 1,
      patch_size: p,
      num_register_tokens: R,
      mlp_ratio: mlpRatio,
      ffn_layer: swiglu ? 'swiglu' : 'mlp',
      act_layer: 'gelu',
      img_size: grid * p,
      pos_embed_cls: conv.pos_embed_cls,
      interpolate_antialias: conv.interpolate_antialias,
      interpolate_offset: conv.interpolate_offset,
      patch_bias: !!sd['patch_embed.proj.bias'],
      pre_norm: !!sd['norm_pre.weight'],
      layerscale_init: sd['blocks.0.ls1.gamma'] ? conv.layerscale : null,
      qkv_bias: !!sd['blocks.0.attn.qkv.bias'],
      proj_bias: !!sd['blocks.0.attn.proj.bias'],
      ffn_bias: !!(sd['blocks.0.mlp.fc1.bias'] ?? sd['blocks.0.mlp.w12.bias']),
      proj_dim: sd.proj?.shape.length === 2 ? sd.proj.shape[1] : null,
      final_norm_tokens: true,
      drop_path_rate: 0,
      norm_eps: conv.norm_eps,
      ...overrides,
    },
    file,
  );
}
