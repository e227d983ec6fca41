/**
 * Per-parameter optimisation settings: layer-wise learning-rate decay by block index and a
 * learning-rate multiplier for the patch embedding (DINOv2's `get_params_groups_with_decay` and
 * `get_vit_lr_decay_rate`), the weight-decay exemptions of the recipe's code base (see `isNoDecay`),
 * and a flag on the DINO head's last layer (frozen during the first steps). Clipping is in optim.ts.
 */
import type * as tf from '@tensorflow/tfjs-core';

/**
 * Whose weight-decay exemptions: 'dinov2' (dinov2/utils/param_groups.py: names ending in `.bias` or
 * containing `norm` or `gamma`; the tokens, pos_embed and the last layer's weight_g ARE decayed) or
 * 'timm' (timm's `param_groups_weight_decay`, which DeiT-III's create_optimizer uses: tensors of at
 * most one dimension, names ending in `.bias`, and the model's `no_weight_decay()` names pos_embed,
 * cls_token, dist_token).
 */
export type WeightDecayRule = 'dinov2' | 'timm';
export const WEIGHT_DECAY_RULES: readonly WeightDecayRule[] = ['dinov2', 'timm'];

export interface ParamSpec {
  /** Full name, e.g. `backbone.blocks.3.attn.qkv.weight` or `dino_head.mlp.0.bias`. */
  name: string;
  variable: tf.Variable;
  lrMult: number;
  wdMult: number;
  isLastLayer: boolean;
}

export interface ParamGroupOptions {
  /** Multiplier per block away from the top: block i gets decay^(depth - i); 1 disables it. */
  layerDecay?: number;
  /** Extra learning-rate multiplier for `patch_embed.*`. */
  patchEmbedLrMult?: number;
  /** Weight-decay exemptions (default 'dinov2'). */
  weightDecayRule?: WeightDecayRule;
}

const TOKEN_PARAMS = new Set(['cls_token', 'register_tokens', 'pos_embed', 'mask_token']);
/** timm's VisionTransformer.no_weight_decay(). */
const TIMM_NO_WEIGHT_DECAY = new Set(['pos_embed', 'cls_token', 'dist_token']);

/**
 * True when the parameter gets no weight decay under `rule`. `name` is relative to its module (no
 * `backbone.` prefix), `shape` its shape in any layout (only its rank counts).
 */
export function isNoDecay(name: string, shape: readonly number[], rule: WeightDecayRule = 'dinov2'): boolean {
  if (rule === 'timm') return shape.length <= 1 || name.endsWith('.bias') || TIMM_NO_WEIGHT_DECAY.has(name);
  return name.endsWith('.bias') || name.includes('norm') || name.includes('gamma');
}

/**
 * Layer index of a backbone parameter for layer-wise decay: 0 for the embeddings, tokens and a norm
 * before the blocks (CLIP's ln_pre, as open_clip's layer groups), i + 1 for `blocks.i.*`, depth + 1
 * for everything after the blocks (final norm, projection).
 */
export function layerId(name: string, depth: number): number {
  if (TOKEN_PARAMS.has(name) || name.startsWith('patch_embed.') || name.startsWith('norm_pre.')) return 0;
  const m = /^blocks\.(\d+)\./.exec(name);
  if (m) return Number(m[1]) + 1;
  return depth + 1;
}

/**
 * ParamSpecs of one module. `prefix` is prepended to each name (`backbone`, `dino_head`, ...);
 * `depth` is the number of transformer blocks for the backbone and 0 for heads (no layer decay).
 */
export function paramGroups(prefix: string, params: Record<string, tf.Variable>, depth: number, opts: ParamGroupOptions = {}): ParamSpec[] {
  const decay = opts.layerDecay ?? 1;
  const patchMult = opts.patchEmbedLrMult ?? 1;
  const rule = opts.weightDecayRule ?? 'dinov2';
  return Object.entries(params).map(([name, variable]) => {
    let lrMult = depth > 0 ? decay ** (depth + 1 - layerId(name, depth)) : 1;
    if (name.startsWith('patch_embed.')) lrMult *= patchMult;
    return {
      name: `${prefix}.${name}`,
      variable,
      lrMult,
      wdMult: isNoDecay(name, variable.shape, rule) ? 0 : 1,
      isLastLayer: name.startsWith('last_layer.'),
    };
  });
}

/**
 * ParamSpecs that train every tensor alike: multipliers 1, weight decay on every tensor (biases and
 * norms too), no last layer. The dense probes' heads train this way (PyTorch's AdamW over
 * `model.parameters()` with one weight decay).
 */
export function plainParams(params: Record<string, tf.Variable>): ParamSpec[] {
  return Object.entries(params).map(([name, variable]) => ({ name, variable, lrMult: 1, wdMult: 1, isLastLayer: false }));
}
