/**
 * What a `clip` run is made of before it trains (clip-loop.ts): the engine's settings (tfjs, or the
 * ONNX Runtime settings of a factory resolveTrainEngine made) and the step engine of those settings
 * (`clipStepEngine`: clip-engine.ts's TfjsClipEngine or onnx/clip-engine.ts's OnnxClipEngine), the tokenizer (a BPE file, or the synthetic
 * captions' word vocabulary), the ClipConfig of a training config, and the caption data (the synthetic
 * shapes with their captions, a CSV / TSV table, or WebDataset shards); and the synthetic classes'
 * zero-shot prompts.
 */
import { existsSync, statSync } from 'node:fs';
import { InputError, SYNTHETIC_SHAPES } from '@vitreg/core';
import { ClipTokenizer, validateClipConfig, wordMerges, type ClipConfig, type ClipModel } from '@vitreg/registers';
import { TfjsClipEngine, type ClipStepEngine } from './clip-engine.js';
import { assertDataSource, modelConfig, type TrainConfig } from './config.js';
import { captionSource, type CaptionSource } from './clip-train.js';
import { readCaptionTable } from './data-captions.js';
import { WebDatasetStream } from './data-webdataset.js';
import { syntheticSplits } from './data.js';
import type { TrainOptions } from './train-options.js';
import type { AdamWOptions } from './optim.js';
import { OnnxClipEngine } from './onnx/clip-engine.js';
import { onnxFactorySettings } from './onnx/clip-settings.js';
import type { SessionSettings } from './onnx/engine-sessions.js';
import { tfjsEngine } from './tfjs-engine.js';

/** What `train()` says for objective clip with an engine factory that is neither tfjs's nor one resolveTrainEngine made. */
export const CLIP_ONNX_REFUSAL =
  'objective clip: this engine factory is neither tfjsEngine nor an onnxruntime engine of resolveTrainEngine (the clip objective runs graphs of its own); pass one of those';

/** The ONNX Runtime settings of a run's engine factory (null: tfjs); throws CLIP_ONNX_REFUSAL for an unknown factory. */
export function clipEngineSettings(engine: TrainOptions['engine']): SessionSettings | null {
  if (engine === undefined || engine === tfjsEngine) return null;
  const settings = onnxFactorySettings(engine);
  if (!settings) throw new InputError(CLIP_ONNX_REFUSAL);
  return settings;
}

/** The step engine of a clip run: ONNX Runtime with `settings` (clipEngineSettings'), tfjs where they are null; AdamW with `optim`'s betas and eps. */
export function clipStepEngine(model: ClipModel, settings: SessionSettings | null, optim: AdamWOptions): ClipStepEngine {
  const adam: AdamWOptions = { beta1: optim.beta1, beta2: optim.beta2, eps: optim.eps };
  return settings ? new OnnxClipEngine(model, { ...settings, ...adam }) : new TfjsClipEngine(model, adam);
}

/** Words of the synthetic captions (data-captions.ts syntheticCaption): each one token with the built-in vocabulary. */
export const CAPTION_WORDS = [
  ...'a on dark background small large light bright shaded grainy striped checkered'.split(' '),
  ...SYNTHETIC_SHAPES,
  'plain', // data.synthetic_background 'flat' (syntheticCaption)
];

/**
 * The caption grammar's prompts of a synthetic class (its zero-shot classifier): 16 on the textured
 * backgrounds, 4 on a flat one (data.synthetic_background, whose captions say "plain").
 */
export function syntheticPrompts(shape: string, background: 'textured' | 'flat' = 'textured'): string[] {
  const out: string[] = [];
  const textures = background === 'flat' ? ['plain'] : ['shaded', 'grainy', 'striped', 'checkered'];
  for (const size of ['small', 'large'])
    for (const light of ['light', 'bright'])
      for (const tex of textures) out.push(`a ${size} ${light} ${shape} on a dark ${tex} background`);
  return out;
}

/** The tokenizer of a clip config: clip.tokenizer's file, or the synthetic captions' word vocabulary. */
export async function clipTokenizer(c: TrainConfig): Promise<ClipTokenizer> {
  const contextLength = c.clip.text_context_length;
  if (c.clip.tokenizer === '') {
    if (c.data.source !== 'synthetic')
      throw new InputError(
        `clip.tokenizer: data "${c.data.source}" needs CLIP's BPE vocabulary (--tokenizer FILE, bpe_simple_vocab_16e6.txt.gz)`,
      );
    return new ClipTokenizer(wordMerges(CAPTION_WORDS), { contextLength });
  }
  try {
    return await ClipTokenizer.fromFile(c.clip.tokenizer, { contextLength });
  } catch (err) {
    throw new InputError(`clip.tokenizer (--tokenizer): ${(err as Error).message}`, { cause: err });
  }
}

/** The ClipConfig of a training config (image tower at crops.global_crops_size; vocabulary 0: the tokenizer's). */
export function clipModelConfig(c: TrainConfig, vocabSize: number): ClipConfig {
  const vit = modelConfig(c);
  const k = c.clip;
  return validateClipConfig(
    {
      vision: { ...vit, img_size: c.crops.global_crops_size, proj_dim: k.proj_dim },
      text: {
        context_length: k.text_context_length,
        vocab_size: k.text_vocab_size || vocabSize,
        width: k.text_width,
        heads: k.text_heads,
        layers: k.text_layers,
        mlp_ratio: k.text_mlp_ratio,
        act_layer: k.text_act_layer,
        proj_dim: k.proj_dim,
      },
      init_logit_scale: k.init_logit_scale,
      init_logit_bias: k.init_logit_bias,
    },
    'config clip',
  );
}

/**
 * The caption data of a clip config: train pairs, labelled val pairs (synthetic only) and their class names;
 * `webdataset`: a folder of .tar shards or one .tar, streamed per rank by `WebDatasetStream` (`train` unused).
 */
export interface CaptionData {
  train: CaptionSource;
  val: CaptionSource | null;
  classNames: string[];
  webdataset?: string;
}

/** The caption data of a clip config (see CaptionData). */
export async function openCaptionData(c: TrainConfig): Promise<CaptionData> {
  assertDataSource(c);
  const d = c.data;
  if (d.source === 'synthetic') {
    const { train, val } = syntheticSplits(c);
    return { train: captionSource(train), val: captionSource(val), classNames: train.classNames };
  }
  if ((existsSync(d.source) && statSync(d.source).isDirectory()) || d.source.endsWith('.tar')) {
    // Lists the shards now, so a wrong folder is refused before the model is built.
    await WebDatasetStream.open(d.source, { rank: 0, worldSize: 1, batchSize: 1, seed: 0 });
    const byIndex = async (): Promise<never> => {
      throw new Error(`data: ${d.source}: WebDataset shards are read as a stream, not by index`);
    };
    return { train: { length: 0, get: byIndex }, val: null, classNames: [], webdataset: d.source };
  }
  const rows = await readCaptionTable(d.source, {
    imgKey: c.clip.csv_img_key,
    captionKey: c.clip.csv_caption_key,
    separator: c.clip.csv_separator || undefined,
  });
  return { train: captionSource(rows), val: null, classNames: [] };
}
