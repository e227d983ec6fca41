/**
 * Per-parameter optimisation settings, following DINOv2's `get_params_groups_with_decay`:
 * layer-wise learning-rate decay by block index, a learning-rate multiplier for the patch
 * embedding, no weight decay on biases, norms, LayerScale gammas and the learned tokens
 * (cls_token, register_tokens, pos_embed, mask_token), and a flag on the DINO head's last layer
 * (frozen during the first steps).
 */
import type * as tf from '@tensorflow/tfjs-core';

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
}

const TOKEN_PARAMS = new Set(['cls_token', 'register_tokens', 'pos_embed', 'mask_token']);

/** True when the parameter gets no weight decay. `name` is relative to its module (no `backbone.`). */
export function isNoDecay(name: string): boolean {
  const parts = name.split('.');
  const last = parts[parts.length - 1]!;
  return (
    last === 'bias' ||
    last === 'gamma' ||
    TOKEN_PARAMS.has(name) ||
    parts.some((p) => p.startsWith('norm'))
  );
}

/**
 * Layer index of a backbone parameter for layer-wise decay: 0 for the embeddings and tokens,
 * i + 1 for `blocks.i.*`, depth + 1 for everything after the blocks (final norm).
 */
export function layerId(name: string, depth: number): number {
  if (TOKEN_PARAMS.has(name) || name.startsWith('patch_embed.')) return 0;
  const m = /^blocks\.(\d+)\./.exec(name);
  if (m) return Number(m[1]) + 1;
  return depth + 1;
}

/**
 * ParamSpecs of one module. `prefix` is prepended to each name (`backbone`, `dino_head`, ...);
 * `depth` is the number of transformer blocks for the backbone and 0 for heads (no layer decay).
 */
export function paramGroups(
  prefix: string,
  params: Record<string, tf.Variable>,
  depth: number,
  opts: ParamGroupOptions = {},
): ParamSpec[] {
  const decay = opts.layerDecay ?? 1;
  const patchMult = opts.patchEmbedLrMult ?? 1;
  return Object.entries(params).map(([name, variable]) => {
    let lrMult = depth > 0 ? decay ** (depth + 1 - layerId(name, depth)) : 1;
    if (name.startsWith('patch_embed.')) lrMult *= patchMult;
    return {
      name: `${prefix}.${name}`,
      variable,
      lrMult,
      wdMult: isNoDecay(name) ? 0 : 1,
      isLastLayer: name.startsWith('last_layer.'),
    };
  });
}
