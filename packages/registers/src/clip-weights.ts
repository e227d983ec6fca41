/**
 * Whole CLIP checkpoints (both towers) in their own names: open_clip's `CLIP.state_dict()` and OpenAI CLIP's
 * (`clip.model.CLIP`; the same names): `visual.*` (the image tower, read and written by weights.ts's `clip`
 * naming), `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.*`, `ln_final.*`,
 * `text_projection`, `logit_scale` and, for SigLIP, `logit_bias`; `.pth` or `.safetensors`, F32/F16/BF16.
 * Files vitreg writes carry both configs in `__metadata__`; otherwise the text config is inferred from the
 * tensors (heads = width / 64 unless given) and the activation is exact GELU unless `act_layer` says
 * QuickGELU (OpenAI's weights), for both towers.
 */
import { fromFloat32, toFloat32, writeSafetensors, type HostTensor } from '@vitreg/core';
import { ClipModel, validateClipConfig, type ClipConfig } from './clip-model.js';
import type { ViTConfig } from './config.js';
import { transpose2d } from './state-dict.js';
import { TextTransformer, textParameterShapes, isTextLinearWeight, validateTextConfig, type TextConfig } from './text-tower.js';
import { encodeStateDict, modelFromStateDict, readCheckpoint, readWeights, stateDictOf, type WeightDType } from './weights.js';

const METADATA_CLIP = 'vitreg_clip_config';
/** Entries of OpenAI's JIT-era state dicts and buffers that are not parameters. */
const IGNORED = new Set(['attn_mask', 'input_resolution', 'context_length', 'vocab_size']);

export interface ClipLoadOptions {
  /** The activation of both towers: 'quick_gelu' for OpenAI's weights (default: the file's config, else 'gelu'). */
  act_layer?: 'gelu' | 'quick_gelu';
  /** Image-tower config fields that override the inferred or stored ones (e.g. { num_heads: 3 }). */
  vision?: Partial<ViTConfig>;
  /** Text-tower config fields that override the inferred or stored ones (e.g. { heads: 2 }). */
  text?: Partial<TextConfig>;
  trainable?: boolean;
}

/** The torch layout of a text parameter: Linear weights [out, in]. */
function torchTextShape(name: string, shape: number[]): number[] {
  return isTextLinearWeight(name) ? [shape[1]!, shape[0]!] : shape;
}

/** Loads a whole CLIP model (both towers, logit_scale, logit_bias) from an open_clip or OpenAI CLIP checkpoint. */
export async function loadClip(path: string, opts: ClipLoadOptions = {}): Promise<ClipModel> {
  const { tensors, metadata } = await readCheckpoint(path);
  let stored: Partial<ClipConfig> | undefined;
  if (metadata[METADATA_CLIP]) {
    try {
      stored = JSON.parse(metadata[METADATA_CLIP]) as Partial<ClipConfig>;
    } catch {
      throw new Error(`${path}: __metadata__.${METADATA_CLIP} is not valid JSON`);
    }
  }
  const act = opts.act_layer ? { act_layer: opts.act_layer } : {};
  const vision = await readWeights(path, { config: { ...act, ...opts.vision } });
  const anchor = Object.keys(tensors).find((k) => k.endsWith('token_embedding.weight') && !k.includes('visual.'));
  if (anchor === undefined)
    throw new Error(`${path}: no text tower (expected a tensor "token_embedding.weight"); for the image tower alone use loadWeights`);
  const prefix = anchor.slice(0, -'token_embedding.weight'.length);
  const text: Record<string, { shape: number[]; data: Float32Array }> = {};
  let logitScale: number | undefined;
  let logitBias: number | undefined;
  for (const [full, t] of Object.entries(tensors)) {
    if (!full.startsWith(prefix) || full.startsWith(`${prefix}visual.`)) continue;
    const k = full.slice(prefix.length);
    if (IGNORED.has(k)) continue;
    if (!['F32', 'F16', 'BF16', 'F64'].includes(t.dtype))
      throw new Error(`${path}: tensor "${full}" has dtype ${t.dtype}; expected F32, F16, BF16 or F64`);
    const data = toFloat32(t);
    if (k === 'logit_scale' || k === 'logit_bias') {
      if (data.length !== 1) throw new Error(`${path}: tensor "${full}" must hold one value, has shape [${t.shape}]`);
      if (k === 'logit_scale') logitScale = data[0];
      else logitBias = data[0];
    } else text[k] = { shape: [...t.shape], data };
  }
  if (logitScale === undefined) throw new Error(`${path}: no "logit_scale" tensor (a whole CLIP model has one)`);
  const textConfig = validateTextConfig(
    { ...(stored?.text ?? inferTextConfig(text, path, { ...act, ...opts.text })), ...act, ...opts.text },
    `${path}: text config`,
  );
  const config = validateClipConfig(
    {
      vision: vision.config,
      text: textConfig,
      init_logit_scale: stored?.init_logit_scale ?? Math.log(1 / 0.07),
      init_logit_bias: logitBias === undefined ? null : (stored?.init_logit_bias ?? logitBias),
    },
    `${path}: clip config`,
  );
  // Every text tensor, with its shape: one error listing what is missing, unexpected or misshapen.
  const shapes = textParameterShapes(textConfig);
  const problems: string[] = [];
  for (const [name, shape] of Object.entries(shapes)) {
    const want = torchTextShape(name, shape);
    const got = text[name];
    if (!got) problems.push(`missing "${prefix}${name}" [${want}]`);
    else if (got.shape.join() !== want.join()) problems.push(`"${prefix}${name}" has shape [${got.shape}], expected [${want}]`);
  }
  for (const name of Object.keys(text)) if (!shapes[name]) problems.push(`unexpected "${prefix}${name}"`);
  if (problems.length > 0)
    throw new Error(`${path}: the text tower does not match its config (${JSON.stringify(textConfig)}): ${problems.join('; ')}`);
  const weights: Record<string, Float32Array> = {};
  for (const name of Object.keys(shapes)) {
    const t = text[name]!;
    weights[name] = isTextLinearWeight(name) ? transpose2d(t.data, t.shape[0]!, t.shape[1]!) : t.data;
  }
  const trainable = opts.trainable ?? false;
  return new ClipModel(config, {
    visual: modelFromStateDict(vision.stateDict, vision.config, trainable),
    text: new TextTransformer(textConfig, { weights, trainable }),
    logitScale,
    logitBias,
    trainable,
  });
}

/** The text config of open_clip-named text tensors (torch layouts): heads = width / 64, exact GELU (the activation is not in the tensors) unless `overrides` say otherwise. */
export function inferTextConfig(
  text: Record<string, { shape: number[] }>,
  file = 'checkpoint',
  overrides: Partial<TextConfig> = {},
): TextConfig {
  const emb = text['token_embedding.weight'];
  const pos = text.positional_embedding;
  if (!emb || emb.shape.length !== 2) throw new Error(`${file}: "token_embedding.weight" must be [vocab, width]`);
  if (!pos || pos.shape.length !== 2) throw new Error(`${file}: "positional_embedding" must be [context_length, width]`);
  const width = emb.shape[1]!;
  let layers = 0;
  while (text[`transformer.resblocks.${layers}.ln_1.weight`]) layers++;
  if (layers === 0) throw new Error(`${file}: no text blocks (expected "transformer.resblocks.0.ln_1.weight")`);
  const fc = text['transformer.resblocks.0.mlp.c_fc.weight'];
  if (!fc) throw new Error(`${file}: missing "transformer.resblocks.0.mlp.c_fc.weight"`);
  if (overrides.heads === undefined && width % 64 !== 0)
    throw new Error(`${file}: the text tower's heads cannot be inferred from width ${width} (not a multiple of 64): give text.heads`);
  return validateTextConfig(
    {
      context_length: pos.shape[0],
      vocab_size: emb.shape[0],
      width,
      heads: width / 64,
      layers,
      mlp_ratio: fc.shape[0]! / width,
      act_layer: 'gelu',
      norm_eps: 1e-5,
      proj_dim: text.text_projection ? text.text_projection.shape[1] : null,
      ...overrides,
    },
    `${file}: inferred text config`,
  );
}

export interface ClipSaveOptions {
  /** 'open_clip' (default) or 'openai' (the same names; refuses what OpenAI's CLIP cannot load: logit_bias, registers). */
  naming?: 'open_clip' | 'openai';
  dtype?: WeightDType;
}

/** The whole model as named tensors (open_clip / OpenAI names, PyTorch layouts) and metadata with both configs. */
export async function encodeClip(
  model: ClipModel,
  opts: ClipSaveOptions = {},
): Promise<{ tensors: Record<string, HostTensor>; metadata: Record<string, string> }> {
  const dtype = opts.dtype ?? 'F32';
  if (opts.naming === 'openai') {
    if (model.logitBias)
      throw new Error("the openai naming has no logit_bias (SigLIP): OpenAI's CLIP cannot load it; write it as open_clip");
    if (model.config.vision.num_register_tokens > 0)
      throw new Error("the openai naming has no register tokens: OpenAI's CLIP cannot load them; write it as open_clip");
  }
  const v = encodeStateDict(await stateDictOf(model.visual), model.config.vision, { naming: 'clip', dtype });
  const tensors: Record<string, HostTensor> = {};
  for (const [k, t] of Object.entries(v.tensors)) tensors[`visual.${k}`] = t;
  const host = await model.text.weights();
  for (const [name, shape] of Object.entries(textParameterShapes(model.config.text))) {
    const data = isTextLinearWeight(name) ? transpose2d(host[name]!, shape[0]!, shape[1]!) : host[name]!;
    tensors[name] = fromFloat32(data, torchTextShape(name, shape), dtype);
  }
  tensors.logit_scale = fromFloat32(Float32Array.from(await model.logitScale.data()), [], dtype);
  if (model.logitBias) tensors.logit_bias = fromFloat32(Float32Array.from(await model.logitBias.data()), [], dtype);
  const { text, init_logit_scale, init_logit_bias } = model.config;
  return { tensors, metadata: { ...v.metadata, [METADATA_CLIP]: JSON.stringify({ text, init_logit_scale, init_logit_bias }) } };
}

/** Saves a whole CLIP model as safetensors in open_clip's (or OpenAI's) names, both configs in __metadata__. */
export async function saveClip(model: ClipModel, path: string, opts: ClipSaveOptions = {}): Promise<void> {
  const { tensors, metadata } = await encodeClip(model, opts);
  await writeSafetensors(path, tensors, metadata);
}
