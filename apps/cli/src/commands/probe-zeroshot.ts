/**
 * `vitreg probe --task zeroshot`'s flags: zero-shot classification with a whole CLIP checkpoint (both towers),
 * as open_clip's zero-shot ImageNet evaluation: --tokenizer FILE (bpe_simple_vocab_16e6.txt.gz), --classes
 * FILE | imagenet (default: the data's class names), --templates FILE | openai | simple (default openai: OpenAI's
 * 80 templates). The probe command runs it beside its other tasks (@vitreg/probe's runProbeSweep, through
 * runZeroShotTask: one resumable results file and sweep columns `zeroshot_top1`, `zeroshot_top5` per checkpoint).
 */
import { ZeroShotInputError } from '@vitreg/probe';
import { CliError } from '../cli.js';

export const ZEROSHOT_FLAGS = {
  tokenizer: { type: 'string' },
  classes: { type: 'string' },
  templates: { type: 'string' },
} as const;

export const ZEROSHOT_USAGE = `  --tokenizer FILE   zeroshot: CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz from open_clip or
                     openai/CLIP; nothing is downloaded)
  --classes C        zeroshot: class names in label order, one per line in FILE, or imagenet (ImageNet-1k's,
                     built in); default: the data's class names (folder names, the synthetic shapes)
  --templates T      zeroshot: prompt templates with {} for the class name, one per line in FILE, or
                     openai (OpenAI's 80, default) | simple (open_clip's 7)`;

export interface ZeroShotSettings {
  tokenizer: string;
  classes: string | null;
  templates: string;
}

/** The zero-shot flags, checked (--tokenizer is required). */
export function zeroShotSettings(values: { tokenizer?: string; classes?: string; templates?: string }): ZeroShotSettings {
  if (!values.tokenizer) throw new CliError('--task zeroshot needs --tokenizer FILE (bpe_simple_vocab_16e6.txt.gz)');
  return { tokenizer: values.tokenizer, classes: values.classes ?? null, templates: values.templates ?? 'openai' };
}

/**
 * runZeroShotTask's refusal of the checkpoint or the tokenizer as the CliError naming the flag (other
 * errors as they are).
 */
export function zeroShotCliError(err: unknown): unknown {
  if (!(err instanceof ZeroShotInputError)) return err;
  const flag = err.input === 'weights' ? '--weights ' : err.input === 'tokenizer' ? '--tokenizer: ' : '--tokenizer ';
  return new CliError(`${flag}${err.message}`);
}
