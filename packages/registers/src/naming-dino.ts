/**
 * The DINOv2 names themselves (chunked blocks, `blocks.<chunk>.<i>.`, flattened) and facebookresearch/dino's,
 * which are the same names with a class slot in pos_embed and no mask token.
 */
import type { ViTConfig } from './config.js';
import { withClassSlot, type StateDict } from './state-dict.js';

/** DINOv2 names -> DINO: the same names, with a class slot in pos_embed and no mask token. */
export function toDino(sd: StateDict, c: ViTConfig): StateDict {
  const { mask_token: _, ...rest } = withClassSlot(sd, c);
  return rest;
}

/** Chunked DINOv2 blocks ("blocks.<chunk>.<i>.") -> "blocks.<i>.". */
export function unchunk(sd: StateDict): StateDict {
  const out: StateDict = {};
  for (const [k, v] of Object.entries(sd)) out[k.replace(/^blocks\.\d+\.(\d+)\./, 'blocks.$1.')] = v;
  return out;
}
