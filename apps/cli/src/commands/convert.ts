/** `vitreg convert`: rewrite a checkpoint in DINOv2, timm or Hugging Face names, in F32, F16 or BF16. */
import { existsSync } from 'node:fs';
import { writeSafetensors } from '@vitreg/core';
import { encodeStateDict, NAMINGS, readWeights } from '@vitreg/registers';
import { choiceFlag, CliError, parseCommandArgs, type Command } from '../cli.js';
import { configFlag } from '../inputs.js';

const usage = `
Usage: vitreg convert IN --to dinov2|timm|hf [--dtype f32|f16|bf16] --out OUT.safetensors
                      [--model NAME] [--config JSON|FILE.json]

Reads IN (.safetensors or .pth, any of the three namings, F32/F16/BF16) and writes the same weights
as OUT.safetensors in the requested naming and dtype, with the model config in __metadata__ so that
vitreg reads it back without --config:
  dinov2  the official state dict (cls_token, pos_embed with a class slot, register_tokens, qkv)
  timm    vit_*_patch14_reg4_dinov2 (reg_token; cls position folded into cls_token; no mask_token)
  hf      transformers Dinov2WithRegisters (embeddings.*, encoder.layer.N.attention.attention.query, ...)
`;

export const convert: Command = {
  summary: 'convert weights between DINOv2, timm and Hugging Face names and F32/F16/BF16',
  usage,
  async run(argv) {
    const { values, positionals } = parseCommandArgs('convert', argv, {
      to: { type: 'string' },
      dtype: { type: 'string' },
      out: { type: 'string' },
      model: { type: 'string' },
      config: { type: 'string' },
    });
    if (positionals.length !== 1) throw new CliError(`expected one input file, got ${positionals.length}`);
    const [input] = positionals;
    if (!existsSync(input)) throw new CliError(`${input} does not exist`);
    if (!values.to) throw new CliError(`--to is required: one of ${NAMINGS.join(', ')}`);
    const naming = choiceFlag('to', values.to, NAMINGS, 'dinov2');
    const dtype = choiceFlag('dtype', values.dtype?.toLowerCase(), ['f32', 'f16', 'bf16'] as const, 'f32').toUpperCase() as 'F32' | 'F16' | 'BF16';
    if (!values.out) throw new CliError('--out OUT.safetensors is required');
    if (!values.out.endsWith('.safetensors')) throw new CliError(`--out: expected a .safetensors path, got ${values.out}`);
    let loaded;
    try {
      loaded = await readWeights(input, { model: values.model, config: configFlag(values.config) });
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    const { tensors, metadata } = encodeStateDict(loaded.stateDict, loaded.config, { naming, dtype });
    await writeSafetensors(values.out, tensors, metadata);
    process.stderr.write(`${input} (${loaded.naming}) -> ${values.out} (${naming}, ${dtype}, ${Object.keys(tensors).length} tensors)\n`);
  },
};
