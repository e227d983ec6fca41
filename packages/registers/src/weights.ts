/**
 * Checkpoint names and layouts: load a VisionTransformer from the checkpoints of every family the paper
 * studies, in every naming they are released in, in F32, F16 or BF16, and save back to any of them:
 * - dinov2: the official DINOv2 state dict (.pth or safetensors);
 * - timm: timm's `vit_*_reg4_dinov2`, `deit3_*` (and its CLIP towers: `norm_pre`, `head` as projection);
 * - hf: Hugging Face `Dinov2` / `Dinov2WithRegisters`;
 * - dino: facebookresearch/dino's ViTs (the DINOv2 names without `mask_token` or LayerScale);
 * - deit3: facebookresearch/deit `models_v2` (`blocks.N.gamma_1`, `pos_embed` without class slot, the
 *   state dict wrapped in `{"model": ...}`);
 * - clip: open_clip / OpenAI CLIP `VisionTransformer` (`conv1`, `class_embedding`, `positional_embedding`,
 *   `ln_pre`, `transformer.resblocks.N.attn.in_proj_weight`, `ln_post`, `proj`), also inside a whole CLIP
 *   model (`visual.` prefix; the text tower is left out).
 * The config is inferred from the tensors with the family's conventions unless the file carries one
 * (files vitreg writes do, in `__metadata__`), a named model is given, or fields are overridden.
 * Classifier heads (`head.weight` / `head.bias` of DeiT-III and timm) are not part of the backbone and are
 * left out.
 *
 * This file reads and writes checkpoint files and builds models from them, and exports the public names
 * of its parts: the state dict and the class slot of pos_embed (state-dict.ts), the namings and their
 * dispatch (namings.ts, one adapter per family in naming-*.ts), config inference (infer-config.ts) and
 * PyTorch layouts (torch-layout.ts).
 *
 * Internally every conversion goes through the DINOv2 names in PyTorch layouts (Linear [out, in], patch
 * embedding [D, 3, p, p]; `norm_pre.*` for CLIP's ln_pre, `proj` [D, out] for CLIP's projection); only
 * `toModelLayout` / `fromModelLayout` know the model's own layouts.
 */
import { endianness } from 'node:os';
import { extname } from 'node:path';
import { fromFloat32, hostTensor, readPth, readSafetensors, toFloat32, writeSafetensors, type HostTensor } from '@vitreg/core';
import { getConfig, validateConfig, type ViTConfig } from './config.js';
import { inferConfig } from './infer-config.js';
import { checkVitFits } from './memory-need.js';
import { parameterShapes, VisionTransformer } from './model.js';
import { detectNaming, NAMINGS, renameStateDict, toDinov2Names, type Naming } from './namings.js';
import { fitPosEmbed, type StateDict } from './state-dict.js';
import { checkStateDict, fromModelLayout, toModelLayout, torchShapes } from './torch-layout.js';

export type WeightDType = 'F32' | 'F16' | 'BF16';

const METADATA_CONFIG = 'vitreg_config';
const METADATA_NAMING = 'vitreg_naming';

// ---------------------------------------------------------------------------------------------------
// Reading files

/** Raw tensors and metadata of a .pth or .safetensors file (by extension; .pt/.pth/.bin are torch zips). */
export async function readCheckpoint(path: string): Promise<{ tensors: Record<string, HostTensor>; metadata: Record<string, string> }> {
  const ext = extname(path).toLowerCase();
  if (ext === '.pth' || ext === '.pt' || ext === '.bin' || ext === '.ckpt') return { tensors: await readPth(path), metadata: {} };
  return readSafetensors(path);
}

/** Names of a first block's first norm weight in each naming: where a backbone's tensors are found. */
const BLOCK_ANCHOR =
  /^(.*?)(blocks\.0\.norm1\.weight|blocks\.0\.0\.norm1\.weight|encoder\.layer\.0\.norm1\.weight|transformer\.resblocks\.0\.ln_1\.weight)$/;
/** Patch embeddings in each naming: an image tower has one (CLIP's text tower has blocks but none). */
const PATCH_EMBEDS = ['patch_embed.proj.weight', 'conv1.weight', 'embeddings.patch_embeddings.projection.weight'];

/**
 * Keeps the backbone's tensors and strips wrapper prefixes ("module.", "model.", "backbone.",
 * "teacher.backbone.", "visual.", "dinov2_with_registers.", ...), found as whatever precedes the first
 * block's first norm weight. A teacher copy is preferred over a student copy, as DINOv2 and DINO evaluate the
 * teacher; a tower with a patch embedding over one without (CLIP's image tower, not its text tower).
 */
export function stripPrefix(tensors: Record<string, HostTensor>, file: string): Record<string, HostTensor> {
  const prefixes = Object.keys(tensors)
    .map((k) => BLOCK_ANCHOR.exec(k)?.[1])
    .filter((p): p is string => p !== undefined);
  if (prefixes.length === 0) {
    throw new Error(
      `${file}: no transformer blocks found (expected a tensor such as "blocks.0.norm1.weight", "encoder.layer.0.norm1.weight" or "transformer.resblocks.0.ln_1.weight")`,
    );
  }
  const images = prefixes.filter((p) => PATCH_EMBEDS.some((e) => tensors[p + e] !== undefined));
  const pool = images.length > 0 ? images : prefixes;
  const prefix = pool.find((p) => p.includes('teacher')) ?? pool.sort((a, b) => a.length - b.length)[0];
  if (!prefix) return tensors;
  const out: Record<string, HostTensor> = {};
  for (const [k, v] of Object.entries(tensors)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

/** The tensors as Float32Arrays (stored as F32, F16, BF16 or F64), in a state dict. */
function decode(tensors: Record<string, HostTensor>, file: string): StateDict {
  const out: StateDict = {};
  for (const [k, t] of Object.entries(tensors)) {
    if (!['F32', 'F16', 'BF16', 'F64'].includes(t.dtype)) {
      throw new Error(`${file}: tensor "${k}" has dtype ${t.dtype}; expected F32, F16, BF16 or F64`);
    }
    out[k] = { shape: [...t.shape], data: float32Of(t) };
  }
  return out;
}

/**
 * A tensor's values as float32: F32 data that is 4-byte aligned is viewed in place (the reader hands
 * out a fresh buffer per tensor, so nothing else writes to it; a large checkpoint is not held twice),
 * anything else is decoded into a new array.
 */
function float32Of(t: HostTensor): Float32Array {
  if (t.dtype === 'F32' && t.data.byteOffset % 4 === 0 && endianness() === 'LE' && t.data.byteLength % 4 === 0) {
    return new Float32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4);
  }
  return toFloat32(t);
}

// ---------------------------------------------------------------------------------------------------
// Public API

export interface LoadOptions {
  /** A named config (see MODEL_NAMES) to use instead of the inferred one. */
  model?: string;
  /** Fields that override the inferred, stored or named config, e.g. { num_heads: 3 }. */
  config?: Partial<ViTConfig>;
  trainable?: boolean;
}

export interface LoadedWeights {
  config: ViTConfig;
  /** The naming the file used (its family's, for the official releases). */
  naming: Naming;
  /** DINOv2 names, PyTorch layouts, pos_embed as the config lays it out. */
  stateDict: StateDict;
}

/** Reads and converts a checkpoint without building a model. */
export async function readWeights(path: string, opts: LoadOptions = {}): Promise<LoadedWeights> {
  const file = path;
  const { tensors, metadata } = await readCheckpoint(path);
  const stripped = stripPrefix(tensors, file);
  const stored = metadata[METADATA_NAMING];
  if (stored !== undefined && !NAMINGS.includes(stored as Naming)) {
    throw new Error(`${file}: __metadata__.${METADATA_NAMING} is "${stored}"; expected one of ${NAMINGS.join(', ')}`);
  }
  const naming = (stored as Naming | undefined) ?? detectNaming(Object.keys(stripped));
  const sd = toDinov2Names(decode(stripped, file), naming);
  let config: ViTConfig;
  if (opts.model) config = getConfig(opts.model);
  else if (metadata[METADATA_CONFIG]) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(metadata[METADATA_CONFIG]);
    } catch {
      throw new Error(`${file}: __metadata__.${METADATA_CONFIG} is not valid JSON`);
    }
    config = validateConfig(parsed as Record<string, unknown>, `${file}: __metadata__.${METADATA_CONFIG}`);
  } else config = inferConfig(sd, file, opts.config, naming);
  if (opts.config) config = validateConfig({ ...config, ...opts.config }, 'config override');
  const fitted = fitPosEmbed(sd, config);
  checkStateDict(fitted, config, file);
  return { config, naming, stateDict: fitted };
}

/** Builds a VisionTransformer from a .pth or .safetensors checkpoint in any naming (see NAMINGS). */
export async function loadWeights(path: string, opts: LoadOptions = {}): Promise<VisionTransformer> {
  const { config, stateDict } = await readWeights(path, opts);
  return modelFromStateDict(stateDict, config, opts.trainable ?? false);
}

/**
 * A backbone's weights on the host, without a model: the model's own names and layouts (what
 * `VisionTransformer.weights()` returns), with its config. A training engine that keeps its parameters
 * in host buffers saves and loads checkpoints through these, so no backend (wasm heap) holds them.
 */
export interface HostBackbone {
  config: ViTConfig;
  weights: Record<string, Float32Array>;
}

/**
 * A DINOv2-named state dict in PyTorch layouts -> the model's weights (model names and layouts), on the
 * host: what modelFromStateDict gives the model, without building one. pos_embed is fitted to the
 * config; names and shapes are checked (one error listing every missing, unexpected or misshapen tensor).
 */
export function weightsFromStateDict(sd: StateDict, config: ViTConfig): Record<string, Float32Array> {
  const fitted = fitPosEmbed(sd, config);
  checkStateDict(fitted, config, 'state dict');
  const weights: Record<string, Float32Array> = {};
  for (const name of Object.keys(parameterShapes(config))) weights[name] = toModelLayout(name, fitted[name]);
  return weights;
}

/**
 * The model's weights (model names and layouts) -> a DINOv2-named state dict in PyTorch layouts, on the
 * host: what stateDictOf gives for a model holding these weights. Values that keep their layout are
 * shared with `weights`, not copied. A missing or mis-sized weight is an error naming it.
 */
export function stateDictFromWeights(weights: Record<string, Float32Array>, config: ViTConfig): StateDict {
  const model = parameterShapes(config);
  const out: StateDict = {};
  for (const [name, shape] of Object.entries(torchShapes(config))) {
    const data = weights[name];
    const size = model[name]!.reduce((a, b) => a * b, 1);
    if (!data || data.length !== size) {
      throw new Error(`weights: missing or mis-sized tensor "${name}" (expected ${size} values, got ${data?.length ?? 'none'})`);
    }
    out[name] = { shape, data: fromModelLayout(name, data, config, shape) };
  }
  return out;
}

/** A model from a DINOv2-named state dict in PyTorch layouts. */
export function modelFromStateDict(sd: StateDict, config: ViTConfig, trainable = false): VisionTransformer {
  checkStateDict(fitPosEmbed(sd, config), config, 'state dict');
  checkVitFits(config, { what: 'the model' }); // before its weights are allocated on the backend
  return new VisionTransformer(config, { weights: weightsFromStateDict(sd, config), trainable });
}

/** The model's weights as a DINOv2-named state dict in PyTorch layouts. */
export async function stateDictOf(model: VisionTransformer): Promise<StateDict> {
  return stateDictFromWeights(await model.weights(), model.config);
}

export interface SaveOptions {
  naming?: Naming;
  dtype?: WeightDType;
  metadata?: Record<string, string>;
}

/** Encodes a DINOv2-named state dict in the given naming and dtype as safetensors tensors + metadata. */
export function encodeStateDict(
  sd: StateDict,
  config: ViTConfig,
  opts: SaveOptions = {},
): { tensors: Record<string, HostTensor>; metadata: Record<string, string> } {
  return encode(sd, config, opts, false);
}

/** encodeStateDict; with `share`, F32 tensors view the state dict's arrays (same bytes, no copy) instead of copying them. */
function encode(
  sd: StateDict,
  config: ViTConfig,
  opts: SaveOptions,
  share: boolean,
): { tensors: Record<string, HostTensor>; metadata: Record<string, string> } {
  const naming = opts.naming ?? 'dinov2';
  const dtype = opts.dtype ?? 'F32';
  const tensors: Record<string, HostTensor> = {};
  for (const [k, v] of Object.entries(renameStateDict(sd, config, naming))) {
    tensors[k] = share && dtype === 'F32' ? hostTensor(v.data, v.shape) : fromFloat32(v.data, v.shape, dtype);
  }
  const metadata = { format: 'pt', ...opts.metadata, [METADATA_CONFIG]: JSON.stringify(config), [METADATA_NAMING]: naming };
  return { tensors, metadata };
}

/**
 * Saves the model as safetensors in any naming (see NAMINGS), F32/F16/BF16, config in __metadata__.
 * `model` may also be a HostBackbone (weights in host arrays, no model built): the file is byte for byte
 * the one a model holding those weights writes, and no backend memory is used.
 */
export async function saveWeights(model: VisionTransformer | HostBackbone, path: string, opts: SaveOptions = {}): Promise<void> {
  const sd = model instanceof VisionTransformer ? await stateDictOf(model) : stateDictFromWeights(model.weights, model.config);
  // The state dict is this call's own or the caller's arrays, written before we return: viewed, not copied.
  const { tensors, metadata } = encode(sd, model.config, opts, true);
  await writeSafetensors(path, tensors, metadata);
}
