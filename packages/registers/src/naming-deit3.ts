/**
 * facebookresearch/deit `models_v2` (DeiT-III) checkpoint names to and from the DINOv2 names:
 * `blocks.N.gamma_1`, `pos_embed` without a class slot.
 */
import type { ViTConfig } from './config.js';
import { renamed, withMaskToken, withoutClassifier, withoutClassSlot, type StateDict } from './state-dict.js';

/** facebookresearch/deit models_v2 -> DINOv2 names: gamma_1/gamma_2 -> ls1/ls2.gamma, reg_token; no classifier. */
export function fromDeit3(sd: StateDict): StateDict {
  return withMaskToken(
    withoutClassifier(
      renamed(sd, [
        [/^(blocks\.\d+\.)gamma_([12])$/, '$1ls$2.gamma'],
        [/^reg_token$/, 'register_tokens'],
      ]),
    ),
  );
}

/** DINOv2 names -> models_v2: no class slot in pos_embed (CLS's position folded into cls_token), gamma_1/gamma_2. */
export function toDeit3(sd: StateDict, c: ViTConfig): StateDict {
  const { mask_token: _, ...rest } = withoutClassSlot(sd, c);
  return renamed(rest, [
    [/^(blocks\.\d+\.)ls([12])\.gamma$/, '$1gamma_$2'],
    [/^register_tokens$/, 'reg_token'],
  ]);
}
