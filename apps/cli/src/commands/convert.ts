/**
 * `vitreg convert`: rewrite a checkpoint of any family in any naming (its own by default), in F32, F16 or
 * BF16, with the model config in __metadata__.
 */
import { existsSync } from 'node:fs';
import { writeSafetensors } from '@vitreg/core';
import { encodeStateDict, NAMINGS, readWeights } from '@vitreg/registers';
import { choiceFlag, CliError, parseFlags, type Command } from '../cli.js';
import { configFlag } from '../inputs.js';

const usage = `
Usage: vitreg convert IN [--to ${NAMINGS.join('|')}] [--dtype f32|f16|bf16] --out OUT.safetensors
                      [--model NAME] [--config JSON|FILE.json]

Reads IN (.safetensors or .pth, any naming below, F32/F16/BF16) and writes the same weights as
OUT.safetensors in the requested naming (default: IN's own, so each family is written back to its own
names) and dtype, with the model config in __metadata__ so that vitreg reads it back without --config:
  dinov2  the official DINOv2 state dict (cls_token, pos_embed with a class slot, register_tokens, qkv)
  timm    vit_*_reg4_dinov2 (reg_token; cls position folded into cls_token; no mask_token), deit3_*
          (pos_embed without class slot, ls1.gamma), CLIP towers (norm_pre, head.weight = proj^T)
  hf      transformers Dinov2WithRegisters (embeddings.*, encoder.layer.N.attention.attention.query, ...)
  dino    facebookresearch/dino ViTs (the DINOv2 names without mask_token)
  deit3   facebookresearch/deit models_v2 (blocks.N.gamma_1/gamma_2, pos_embed without class slot)
  clip    open_clip / OpenAI CLIP VisionTransformer (conv1, class_embedding, positional_embedding, ln_pre,
          transformer.resblocks.N.attn.in_proj_weight, ln_post, proj)
Input prefixes ("module.", "model.", "teacher.backbone.", "visual." of a whole CLIP model) are
stripped; a classifier head and a CLIP text tower are not part of the backbone and are left out.
A naming that has no name for a tensor of the model (e.g. hf for CLIP's ln_pre) is an error naming it.
OpenAI CLIP's QuickGELU is not in the tensors: give --model clip_vitb16 (or another clip_* name) or
--config '{"act_layer": "quick_gelu"}' so that the stored config says so.
`;

export const convert: Command = {
  summary: 'convert weights between the DINOv2, timm, Hugging Face, DINO, DeiT-III and CLIP namings and F32/F16/BF16',
  usage,
  async run(argv) {
    const f = parseFlags('convert', argv, {
      to: { type: 'string' },
      dtype: { type: 'string' },
      out: { type: 'string' },
      model: { type: 'string' },
      config: { type: 'string' },
    });
    const { values, positionals } = f;
    if (positionals.length !== 1) f.fail(`expected one input file, got ${positionals.length}`);
    const input = positionals[0] ?? '';
    const to = values.to === undefined ? undefined : f.choice('to', NAMINGS, 'dinov2');
    const dtype = f
      .check(() => choiceFlag('dtype', values.dtype?.toLowerCase(), ['f32', 'f16', 'bf16'] as const, 'f32'), 'f32')
      .toUpperCase() as 'F32' | 'F16' | 'BF16';
    const out = f.require('out', '--out OUT.safetensors is required');
    if (out && !out.endsWith('.safetensors')) f.fail(`--out: expected a .safetensors path, got ${out}`);
    const config = f.check(() => configFlag(values.config), undefined);
    if (input && !existsSync(input)) f.fail(`${input} does not exist`);
    f.done();
    let loaded;
    try {
      loaded = await readWeights(input, { model: values.model, config });
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    const naming = to ?? loaded.naming;
    let encoded;
    try {
      encoded = encodeStateDict(loaded.stateDict, loaded.config, { naming, dtype });
    } catch (err) {
      throw new CliError(`--to ${naming}: ${(err as Error).message}`);
    }
    await writeSafetensors(out, encoded.tensors, encoded.metadata);
    process.stderr.write(`${input} (${loaded.naming}) -> ${out} (${naming}, ${dtype}, ${Object.keys(encoded.tensors).length} tensors)\n`);
  },
};
