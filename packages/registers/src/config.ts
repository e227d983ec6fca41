/**
 * One configurable ViT family: the DINOv2 architecture with 0-16 register tokens. Named configs for the
 * official DINOv2 models (with and without registers), DeiT-III style patch-16 models, and tiny sizes
 * that train on a CPU.
 */

export interface ViTConfig {
  /** Token width D. */
  embed_dim: number;
  /** Number of transformer blocks. */
  depth: number;
  /** Attention heads; embed_dim must divide by it. */
  num_heads: number;
  /** Side of a square patch in pixels (14 for DINOv2, 16 for DeiT-III). */
  patch_size: number;
  /** Register tokens appended after CLS (0-16). */
  num_register_tokens: number;
  /** MLP hidden width = embed_dim * mlp_ratio (SwiGLU: rounded as DINOv2 does, see ffnHiddenDim). */
  mlp_ratio: number;
  /** 'mlp' (fc1, exact GELU, fc2) or 'swiglu' (w12, silu gate, w3) as ViT-g. */
  ffn_layer: 'mlp' | 'swiglu';
  /** Training resolution; the positional grid is img_size / patch_size on a side. */
  img_size: number;
  /** Bicubic interpolation of the positional grid with antialias (register models) or without. */
  interpolate_antialias: boolean;
  /** 0: size-based interpolation; else DINOv2's legacy scale_factor = (n + offset) / grid (0.1). */
  interpolate_offset: number;
  /** LayerScale initial value, or null for no LayerScale. */
  layerscale_init: number | null;
  qkv_bias: boolean;
  proj_bias: boolean;
  ffn_bias: boolean;
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
  /** LayerNorm epsilon (1e-6 in DINOv2). */
  norm_eps: number;
}

const base = {
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

const sizes = {
  s: { embed_dim: 384, depth: 12, num_heads: 6 },
  b: { embed_dim: 768, depth: 12, num_heads: 12 },
  l: { embed_dim: 1024, depth: 24, num_heads: 16 },
  g: { embed_dim: 1536, depth: 40, num_heads: 24, ffn_layer: 'swiglu' },
} as const;

// DeiT-III's models_v2: the same drop path rate in every block, each image dropped on its own.
const deit3 = {
  ...base, patch_size: 16, img_size: 224, layerscale_init: 1e-6, ...reg4Interp, num_register_tokens: 0,
  drop_path_uniform: true, drop_path_batch_subset: false,
} as const;
const tiny = { ...base, ...reg4Interp, patch_size: 8, img_size: 64, embed_dim: 96, depth: 4, num_heads: 3, layerscale_init: 1e-5 } as const;

export const CONFIGS: Record<string, ViTConfig> = {};
for (const [s, size] of Object.entries(sizes)) {
  CONFIGS[`dinov2_vit${s}14`] = { ...base, ...legacyInterp, ...size };
  CONFIGS[`dinov2_vit${s}14_reg`] = { ...base, ...reg4Interp, ...size };
}
for (const [s, name] of [['s', 'small'], ['b', 'base'], ['l', 'large']] as const) {
  const size = sizes[s];
  CONFIGS[`deit3_${name}_patch16`] = { ...deit3, ...size };
  CONFIGS[`deit3_${name}_patch16_reg4`] = { ...deit3, ...size, num_register_tokens: 4 };
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

const FIELDS: Record<keyof ViTConfig, 'int' | 'number' | 'bool' | 'ffn' | 'ls'> = {
  embed_dim: 'int', depth: 'int', num_heads: 'int', patch_size: 'int', num_register_tokens: 'int',
  mlp_ratio: 'number', ffn_layer: 'ffn', img_size: 'int', interpolate_antialias: 'bool',
  interpolate_offset: 'number', layerscale_init: 'ls', qkv_bias: 'bool', proj_bias: 'bool',
  ffn_bias: 'bool', drop_path_rate: 'number', drop_path_uniform: 'bool', drop_path_batch_subset: 'bool',
  norm_eps: 'number',
};

/** Training-only fields that configs saved before they existed lack: filled with these values. */
const TRAINING_DEFAULTS: Partial<ViTConfig> = { drop_path_uniform: false, drop_path_batch_subset: false };

/** Field names of ViTConfig, for parsers of user-given overrides. */
export const CONFIG_FIELDS = Object.keys(FIELDS) as (keyof ViTConfig)[];

/**
 * Checks every field (unknown fields too) and the relations between them. Errors name the field and
 * what was expected.
 */
export function validateConfig(given: Record<string, unknown>, source = 'config'): ViTConfig {
  const cfg: Record<string, unknown> = { ...TRAINING_DEFAULTS, ...given };
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
    if (kind === 'ls' && v !== null && !(typeof v === 'number' && Number.isFinite(v))) throw bad('a number or null');
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
  if (c.drop_path_rate < 0 || c.drop_path_rate >= 1) {
    throw new Error(`${source}: field "drop_path_rate" must be in [0, 1), got ${c.drop_path_rate}`);
  }
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
