/**
 * One configurable ViT: the DINOv2 architecture with 0-16 register tokens, and the fields in which the
 * other families the paper studies differ from it (DINO, DeiT-III, OpenCLIP / OpenAI CLIP image towers).
 * Named configs for the released sizes of each family and tiny sizes that train on a CPU.
 */

export interface ViTConfig {
  /** Token width D. */
  embed_dim: number;
  /** Number of transformer blocks. */
  depth: number;
  /** Attention heads; embed_dim must divide by it. */
  num_heads: number;
  /** Side of a square patch in pixels (14 for DINOv2, 16 for DINO, DeiT-III and CLIP B/16, 8 for DINO S/8). */
  patch_size: number;
  /** Register tokens inserted after CLS (0-16), in every family; they get no positional embedding. */
  num_register_tokens: number;
  /** MLP hidden width = embed_dim * mlp_ratio (SwiGLU: rounded as DINOv2 does, see ffnHiddenDim). */
  mlp_ratio: number;
  /** 'mlp' (fc1, activation `act_layer`, fc2) or 'swiglu' (w12, silu gate, w3) as ViT-g. */
  ffn_layer: 'mlp' | 'swiglu';
  /**
   * Activation of the 'mlp' FFN: 'gelu' is the exact (erf) GELU of torch.nn.GELU (DINOv2, DINO, DeiT-III,
   * OpenCLIP's LAION models); 'quick_gelu' is x * sigmoid(1.702 x) (OpenAI CLIP, open_clip's `QuickGELU`
   * and its `-quickgelu` models). SwiGLU takes no activation: it must be 'gelu' there.
   */
  act_layer: 'gelu' | 'quick_gelu';
  /** Training resolution; the positional grid is img_size / patch_size on a side. */
  img_size: number;
  /**
   * Whether CLS has its own slot in `pos_embed` ([1, 1 + grid^2, D]; DINOv2, DINO, CLIP) or not
   * ([1, grid^2, D]: DeiT-III's models_v2 and timm's `no_embed_class` add the positional embedding to the
   * patches before CLS is prepended, so CLS gets none).
   */
  pos_embed_cls: boolean;
  /** Bicubic interpolation of the positional grid with antialias (register models, timm) or without. */
  interpolate_antialias: boolean;
  /**
   * 0: size-based interpolation (DINOv2 with registers; timm's `resample_abs_pos_embed`, used for DeiT-III
   * and CLIP at other sizes). Otherwise the legacy scale_factor = (n + offset) / grid per axis (0.1: DINO v1
   * and the first DINOv2 release), which resamples even an axis whose length does not change.
   */
  interpolate_offset: number;
  /** Bias on the patch embedding (Conv2d); CLIP's `conv1` has none. */
  patch_bias: boolean;
  /** A LayerNorm on all tokens after the positional embedding, before the first block (CLIP's `ln_pre`). */
  pre_norm: boolean;
  /** LayerScale initial value, or null for no LayerScale (DINO, CLIP). */
  layerscale_init: number | null;
  qkv_bias: boolean;
  proj_bias: boolean;
  ffn_bias: boolean;
  /**
   * Width of a final projection of the normalised CLS token, the output `pooled` = norm(CLS) @ proj (CLIP's
   * `ln_post(x[:, 0]) @ proj`, the image embedding), or null for none.
   */
  proj_dim: number | null;
  /**
   * Whether the register and patch outputs are taken after the final LayerNorm (true: DINOv2, DINO,
   * DeiT-III, open_clip >= 2.23's `output_tokens`) or are the last block's tokens unnormalised (false:
   * open_clip 2.11-2.22's `output_tokens`). CLS and `pooled` are normalised either way.
   */
  final_norm_tokens: boolean;
  /**
   * Stochastic depth rate, used when training: of the last block, increasing linearly from 0 over the
   * blocks (timm's rule), or of every block with `drop_path_uniform`.
   */
  drop_path_rate: number;
  /** The same drop path rate in every block (DINOv2's `drop_path_uniform`, DeiT-III's models_v2). */
  drop_path_uniform: boolean;
  /**
   * DINOv2's Block: where a block's rate exceeds 0.1, its residual branches run on a random subset of
   * max(floor(B (1 - rate)), 1) images of the batch, scaled by B / subset (`drop_add_residual_stochastic_depth`),
   * instead of dropping each image independently. Below 0.1 (and when false) each image is dropped
   * with probability rate and the kept ones scaled by 1 / (1 - rate).
   */
  drop_path_batch_subset: boolean;
  /** LayerNorm epsilon (1e-6 in DINOv2, DINO and DeiT-III; 1e-5, torch's default, in CLIP). */
  norm_eps: number;
}

/** The DINOv2 architecture: the values of the family fields that DINOv2 does not vary. */
const dinov2Arch = {
  act_layer: 'gelu',
  pos_embed_cls: true,
  patch_bias: true,
  pre_norm: false,
  proj_dim: null,
  final_norm_tokens: true,
} as const;

const base = {
  ...dinov2Arch,
  patch_size: 14,
  mlp_ratio: 4,
  ffn_layer: 'mlp',
  img_size: 518,
  layerscale_init: 1.0,
  qkv_bias: true,
  proj_bias: true,
  ffn_bias: true,
  drop_path_rate: 0,
  drop_path_uniform: false,
  drop_path_batch_subset: true,
  norm_eps: 1e-6,
} as const;

/** The original DINOv2 release interpolates the legacy way; the register release size-based with antialias. */
const legacyInterp = { num_register_tokens: 0, interpolate_antialias: false, interpolate_offset: 0.1 } as const;
const reg4Interp = { num_register_tokens: 4, interpolate_antialias: true, interpolate_offset: 0 } as const;
/** timm's `resample_abs_pos_embed` (bicubic, antialias, to the new size): DeiT-III and CLIP at other sizes. */
const timmInterp = { interpolate_antialias: true, interpolate_offset: 0 } as const;

const sizes = {
  s: { embed_dim: 384, depth: 12, num_heads: 6 },
  b: { embed_dim: 768, depth: 12, num_heads: 12 },
  l: { embed_dim: 1024, depth: 24, num_heads: 16 },
  g: { embed_dim: 1536, depth: 40, num_heads: 24, ffn_layer: 'swiglu' },
} as const;

// DINO (facebookresearch/dino vision_transformer.py): no LayerScale, legacy interpolation, timm's drop path.
const dino = {
  ...base,
  ...legacyInterp,
  patch_size: 16,
  img_size: 224,
  layerscale_init: null,
  drop_path_batch_subset: false,
} as const;
// DeiT-III's models_v2: no class slot in pos_embed, the same drop path rate in every block, each image
// dropped on its own; other sizes interpolate as timm does.
const deit3 = {
  ...base,
  ...timmInterp,
  num_register_tokens: 0,
  patch_size: 16,
  img_size: 224,
  layerscale_init: 1e-6,
  pos_embed_cls: false,
  drop_path_uniform: true,
  drop_path_batch_subset: false,
} as const;
// CLIP's image tower (open_clip / OpenAI VisionTransformer): ln_pre, no conv bias, no LayerScale, eps 1e-5,
// ln_post(CLS) @ proj; OpenAI's weights use QuickGELU, OpenCLIP's LAION ones exact GELU.
const clip = {
  ...base,
  ...timmInterp,
  num_register_tokens: 0,
  img_size: 224,
  layerscale_init: null,
  patch_bias: false,
  pre_norm: true,
  norm_eps: 1e-5,
  drop_path_batch_subset: false,
} as const;
const tiny = { ...base, ...reg4Interp, patch_size: 8, img_size: 64, embed_dim: 96, depth: 4, num_heads: 3, layerscale_init: 1e-5 } as const;

export const CONFIGS: Record<string, ViTConfig> = {};
for (const [s, size] of Object.entries(sizes)) {
  CONFIGS[`dinov2_vit${s}14`] = { ...base, ...legacyInterp, ...size };
  CONFIGS[`dinov2_vit${s}14_reg`] = { ...base, ...reg4Interp, ...size };
}
for (const [name, size, patch] of [
  ['s16', sizes.s, 16],
  ['s8', sizes.s, 8],
  ['b16', sizes.b, 16],
  ['b8', sizes.b, 8],
] as const) {
  CONFIGS[`dino_vit${name}`] = { ...dino, ...size, patch_size: patch };
}
const deit3Sizes = {
  small: sizes.s,
  medium: { embed_dim: 512, depth: 12, num_heads: 8 },
  base: sizes.b,
  large: sizes.l,
} as const;
for (const [name, size] of Object.entries(deit3Sizes)) {
  CONFIGS[`deit3_${name}_patch16`] = { ...deit3, ...size };
  CONFIGS[`deit3_${name}_patch16_reg4`] = { ...deit3, ...size, num_register_tokens: 4 };
}
CONFIGS['deit3_huge_patch14'] = { ...deit3, embed_dim: 1280, depth: 32, num_heads: 16, patch_size: 14 };
CONFIGS['deit3_huge_patch14_reg4'] = { ...CONFIGS['deit3_huge_patch14'], num_register_tokens: 4 };
// open_clip's model_configs (ViT-B-32.json, ...): heads = width / head_width (64 unless given).
const clipSizes = {
  vitb32: { embed_dim: 768, depth: 12, num_heads: 12, patch_size: 32, proj_dim: 512 },
  vitb16: { embed_dim: 768, depth: 12, num_heads: 12, patch_size: 16, proj_dim: 512 },
  vitl14: { embed_dim: 1024, depth: 24, num_heads: 16, patch_size: 14, proj_dim: 768 },
  vitl14_336: { embed_dim: 1024, depth: 24, num_heads: 16, patch_size: 14, proj_dim: 768, img_size: 336 },
  vith14: { embed_dim: 1280, depth: 32, num_heads: 16, patch_size: 14, proj_dim: 1024 },
  vitg14: { embed_dim: 1408, depth: 40, num_heads: 16, patch_size: 14, proj_dim: 1024, mlp_ratio: 4.3637 },
  vitbigg14: { embed_dim: 1664, depth: 48, num_heads: 16, patch_size: 14, proj_dim: 1280, mlp_ratio: 4.9231 },
} as const;
for (const name of ['vitb32', 'vitb16', 'vitl14', 'vitl14_336'] as const) {
  CONFIGS[`clip_${name}`] = { ...clip, ...clipSizes[name], act_layer: 'quick_gelu' };
}
for (const [name, size] of Object.entries(clipSizes)) {
  if (name !== 'vitl14_336') CONFIGS[`openclip_${name}`] = { ...clip, ...size };
}
CONFIGS['vit_tiny_patch8'] = { ...tiny, num_register_tokens: 0 };
CONFIGS['vit_tiny_patch8_reg4'] = { ...tiny };
CONFIGS['vit_micro_patch8'] = { ...tiny, embed_dim: 64, depth: 2, num_heads: 2, img_size: 32, num_register_tokens: 0 };
CONFIGS['vit_micro_patch8_reg4'] = { ...tiny, embed_dim: 64, depth: 2, num_heads: 2, img_size: 32 };

/** Every named config, for `--model` and error messages. */
export const MODEL_NAMES: string[] = Object.keys(CONFIGS);

/** A named config with optional overrides (e.g. `{ num_register_tokens: 8 }`), validated. */
export function getConfig(name: string, overrides: Partial<ViTConfig> = {}): ViTConfig {
  const found = CONFIGS[name];
  if (!found) throw new Error(`unknown model "${name}"; expected one of ${MODEL_NAMES.join(', ')}`);
  return validateConfig({ ...found, ...overrides });
}

type FieldKind = 'int' | 'number' | 'bool' | 'ffn' | 'act' | 'ls' | 'dim';
const FIELDS: Record<keyof ViTConfig, FieldKind> = {
  embed_dim: 'int',
  depth: 'int',
  num_heads: 'int',
  patch_size: 'int',
  num_register_tokens: 'int',
  mlp_ratio: 'number',
  ffn_layer: 'ffn',
  act_layer: 'act',
  img_size: 'int',
  pos_embed_cls: 'bool',
  interpolate_antialias: 'bool',
  interpolate_offset: 'number',
  patch_bias: 'bool',
  pre_norm: 'bool',
  layerscale_init: 'ls',
  qkv_bias: 'bool',
  proj_bias: 'bool',
  ffn_bias: 'bool',
  proj_dim: 'dim',
  final_norm_tokens: 'bool',
  drop_path_rate: 'number',
  drop_path_uniform: 'bool',
  drop_path_batch_subset: 'bool',
  norm_eps: 'number',
};

/**
 * Fields that configs saved before they existed lack, filled with these values: the training fields, and
 * the family fields with the DINOv2 architecture's values (the only family vitreg had then).
 */
const LATER_FIELDS: Partial<ViTConfig> = { drop_path_uniform: false, drop_path_batch_subset: false, ...dinov2Arch };

/** Field names of ViTConfig, for parsers of user-given overrides. */
export const CONFIG_FIELDS = Object.keys(FIELDS) as (keyof ViTConfig)[];

/**
 * Checks every field (unknown fields too) and the relations between them. Errors name the field and
 * what was expected.
 */
export function validateConfig(given: Record<string, unknown>, source = 'config'): ViTConfig {
  const cfg: Record<string, unknown> = { ...LATER_FIELDS, ...given };
  for (const key of Object.keys(cfg)) {
    if (!(key in FIELDS)) throw new Error(`${source}: unknown field "${key}"; expected one of ${CONFIG_FIELDS.join(', ')}`);
  }
  for (const [key, kind] of Object.entries(FIELDS)) {
    const v = cfg[key];
    const bad = (what: string) => new Error(`${source}: field "${key}" must be ${what}, got ${JSON.stringify(v)}`);
    if (v === undefined) throw new Error(`${source}: field "${key}" is missing`);
    if (kind === 'int' && !(Number.isInteger(v) && (v as number) >= 0)) throw bad('a non-negative integer');
    if (kind === 'number' && !(typeof v === 'number' && Number.isFinite(v))) throw bad('a number');
    if (kind === 'bool' && typeof v !== 'boolean') throw bad('true or false');
    if (kind === 'ffn' && v !== 'mlp' && v !== 'swiglu') throw bad('"mlp" or "swiglu"');
    if (kind === 'act' && v !== 'gelu' && v !== 'quick_gelu') throw bad('"gelu" or "quick_gelu"');
    if (kind === 'ls' && v !== null && !(typeof v === 'number' && Number.isFinite(v))) throw bad('a number or null');
    if (kind === 'dim' && v !== null && !(Number.isInteger(v) && (v as number) >= 1)) throw bad('a positive integer or null');
  }
  const c = cfg as unknown as ViTConfig;
  const positive: (keyof ViTConfig)[] = ['embed_dim', 'depth', 'num_heads', 'patch_size', 'img_size'];
  for (const key of positive) {
    if ((c[key] as number) < 1) throw new Error(`${source}: field "${key}" must be at least 1, got ${c[key]}`);
  }
  if (c.num_register_tokens > 16) {
    throw new Error(`${source}: field "num_register_tokens" must be between 0 and 16, got ${c.num_register_tokens}`);
  }
  if (c.embed_dim % c.num_heads !== 0) {
    throw new Error(`${source}: field "num_heads" (${c.num_heads}) must divide embed_dim (${c.embed_dim})`);
  }
  if (c.img_size % c.patch_size !== 0) {
    throw new Error(`${source}: field "img_size" (${c.img_size}) must be a multiple of patch_size (${c.patch_size})`);
  }
  if (c.mlp_ratio <= 0) throw new Error(`${source}: field "mlp_ratio" must be positive, got ${c.mlp_ratio}`);
  if (c.ffn_layer === 'swiglu' && c.act_layer !== 'gelu') {
    throw new Error(
      `${source}: field "act_layer" must be "gelu" with ffn_layer "swiglu" (SwiGLU has its own SiLU gate), got ${JSON.stringify(c.act_layer)}`,
    );
  }
  if (c.drop_path_rate < 0 || c.drop_path_rate >= 1) {
    throw new Error(`${source}: field "drop_path_rate" must be in [0, 1), got ${c.drop_path_rate}`);
  }
  if (c.interpolate_offset < 0) throw new Error(`${source}: field "interpolate_offset" must be 0 or positive, got ${c.interpolate_offset}`);
  if (c.norm_eps <= 0) throw new Error(`${source}: field "norm_eps" must be positive, got ${c.norm_eps}`);
  return { ...c };
}

/** Hidden width of the FFN: D * ratio, or for SwiGLU DINOv2's (int(h * 2/3) + 7) // 8 * 8. */
export function ffnHiddenDim(c: ViTConfig): number {
  const hidden = Math.trunc(c.embed_dim * c.mlp_ratio);
  return c.ffn_layer === 'swiglu' ? Math.floor((Math.trunc((hidden * 2) / 3) + 7) / 8) * 8 : hidden;
}

/** Side of the positional grid stored in the weights. */
export function posGrid(c: ViTConfig): number {
  return c.img_size / c.patch_size;
}

/** Number of positions in `pos_embed`: grid^2, plus one class slot when `pos_embed_cls`. */
export function posLength(c: ViTConfig): number {
  return (c.pos_embed_cls ? 1 : 0) + posGrid(c) ** 2;
}
