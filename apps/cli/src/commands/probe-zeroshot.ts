/**
 * `vitreg probe --task zeroshot`: zero-shot classification with a whole CLIP checkpoint (both towers), as
 * open_clip's zero-shot ImageNet evaluation: --tokenizer FILE (bpe_simple_vocab_16e6.txt.gz), --classes
 * FILE | imagenet (default: the data's class names), --templates FILE | openai | simple (default openai: OpenAI's
 * 80 templates). The probe command runs it beside its other tasks, one results file and sweep columns
 * `zeroshot_top1`, `zeroshot_top5` per checkpoint.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { writeJsonAtomic } from '@vitreg/core';
import {
  IMAGENET_CLASSNAMES,
  OPENAI_IMAGENET_TEMPLATES,
  parseLines,
  runZeroShot,
  SIMPLE_IMAGENET_TEMPLATES,
  type DataPart,
} from '@vitreg/probe';
import { ClipTokenizer, loadClip } from '@vitreg/registers';
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

async function lines(file: string, what: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new CliError(`${file}: cannot read the ${what} (${(err as Error).message})`);
  }
  try {
    return parseLines(text, file, what);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

/**
 * Zero-shot top-1 / top-5 of one CLIP checkpoint on a data part; writes `file` (results JSON). OpenAI's
 * weights: `quickGelu` (from --model clip_* or --config {"act_layer":"quick_gelu"}).
 */
export async function zeroShotTask(
  weights: string,
  part: DataPart,
  s: ZeroShotSettings,
  opts: { file: string; size: number; batchSize: number; quickGelu: boolean; data: string },
): Promise<{ top1: number; top5: number; registers: number }> {
  let model;
  try {
    model = await loadClip(weights, opts.quickGelu ? { act_layer: 'quick_gelu' } : {});
  } catch (err) {
    throw new CliError(`--weights ${weights}: ${(err as Error).message}`);
  }
  try {
    let tokenizer: ClipTokenizer;
    try {
      tokenizer = await ClipTokenizer.fromFile(s.tokenizer, { contextLength: model.config.text.context_length });
    } catch (err) {
      throw new CliError(`--tokenizer: ${(err as Error).message}`);
    }
    if (tokenizer.vocabSize !== model.config.text.vocab_size)
      throw new CliError(
        `--tokenizer ${s.tokenizer}: a vocabulary of ${tokenizer.vocabSize} tokens, the text tower of ${weights} has ${model.config.text.vocab_size}`,
      );
    const classNames =
      s.classes === null ? undefined : s.classes === 'imagenet' ? IMAGENET_CLASSNAMES : await lines(s.classes, 'class names');
    const templates =
      s.templates === 'openai'
        ? OPENAI_IMAGENET_TEMPLATES
        : s.templates === 'simple'
          ? SIMPLE_IMAGENET_TEMPLATES
          : await lines(s.templates, 'templates');
    let r;
    try {
      r = await runZeroShot(model, tokenizer, part, { classNames, templates, size: opts.size, batchSize: opts.batchSize });
    } catch (err) {
      throw new CliError(`zeroshot: ${(err as Error).message}`);
    }
    const report = {
      task: 'zeroshot',
      weights: resolve(weights),
      data: opts.data,
      tokenizer: resolve(s.tokenizer),
      classSource: s.classes ?? 'data',
      templateSource: s.templates,
      size: opts.size,
      ...r,
    };
    await writeJsonAtomic(opts.file, report);
    return { top1: r.top1, top5: r.top5, registers: model.config.vision.num_register_tokens };
  } finally {
    model.dispose();
  }
}
