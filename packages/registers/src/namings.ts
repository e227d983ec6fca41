/**
 * The checkpoint namings vitreg reads and writes, which one a file uses, and the dispatch to each
 * family's adapter (naming-*.ts) in both directions: any naming -> DINOv2 names, DINOv2 names -> any naming.
 */
import type { ViTConfig } from './config.js';
import { fromClip, toClip } from './naming-clip.js';
import { fromDeit3, toDeit3 } from './naming-deit3.js';
import { toDino, unchunk } from './naming-dino.js';
import { fromHf, toHf } from './naming-hf.js';
import { fromTimm, toTimm } from './naming-timm.js';
import { withClassSlot, withMaskToken, type StateDict } from './state-dict.js';

export type Naming = 'dinov2' | 'timm' | 'hf' | 'dino' | 'deit3' | 'clip';
export const NAMINGS: Naming[] = ['dinov2', 'timm', 'hf', 'dino', 'deit3', 'clip'];

/**
 * Which naming a (prefix-stripped) set of tensor names uses. DINO and timm's plain ViTs share their names;
 * they read as 'dino' (timm's DINO models are DINO's weights).
 */
export function detectNaming(names: string[]): Naming {
  const has = (n: string) => names.includes(n);
  if (names.some((n) => n.startsWith('embeddings.') || n.startsWith('encoder.layer.'))) return 'hf';
  if (has('class_embedding') || names.some((n) => n.startsWith('transformer.resblocks.'))) return 'clip';
  if (names.some((n) => /^blocks\.\d+\.gamma_[12]$/.test(n))) return 'deit3';
  if (has('reg_token')) return 'timm';
  if (has('register_tokens') || has('mask_token')) return 'dinov2';
  // timm's deit3_* and DINOv2 models without a mask token, timm's CLIP towers.
  if (has('norm_pre.weight') || names.some((n) => /^blocks\.\d+\.ls1\.gamma$/.test(n))) return 'timm';
  if (!has('pos_embed') && names.some((n) => /\.mlp\.fc1\./.test(n))) return 'timm';
  return 'dino';
}

/** A state dict in any naming -> DINOv2 names (pos_embed as stored: see fitPosEmbed). */
export function toDinov2Names(sd: StateDict, naming: Naming): StateDict {
  if (naming === 'hf') return fromHf(sd);
  if (naming === 'timm') return fromTimm(sd);
  if (naming === 'deit3') return fromDeit3(sd);
  if (naming === 'clip') return fromClip(sd);
  const out = Object.keys(sd).some((k) => /^blocks\.\d+\.\d+\./.test(k)) ? unchunk(sd) : sd;
  return naming === 'dino' ? withMaskToken({ ...out }) : out;
}

/**
 * A DINOv2-named state dict renamed to `naming` (PyTorch layouts), in the layout the naming's own code
 * loads: a class slot in pos_embed for dinov2, hf, dino and clip (a zero slot where the config has none);
 * none for deit3 (CLS's position folded into cls_token) and for timm register models (as timm's dinov2
 * models); no mask token outside dinov2 and hf. Fields a naming has no name for (e.g. `norm_pre` in hf,
 * SwiGLU in clip) are an error naming them.
 */
export function renameStateDict(sd: StateDict, config: ViTConfig, naming: Naming): StateDict {
  switch (naming) {
    case 'timm':
      return toTimm(sd, config);
    case 'hf':
      return toHf(sd, config);
    case 'dino':
      return toDino(sd, config);
    case 'deit3':
      return toDeit3(sd, config);
    case 'clip':
      return toClip(sd, config);
    default:
      return withClassSlot(sd, config);
  }
}
