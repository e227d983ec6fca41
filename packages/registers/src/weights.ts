/**
 * Checkpoint names and layouts: load a VisionTransformer from the official DINOv2 state dict (.pth or
 * safetensors), timm (`vit_*_patch14_reg4_dinov2`) or Hugging Face `Dinov2WithRegisters` names, in F32,
 * F16 or BF16, and save back to any of the three. The config is inferred from the tensors unless the file
 * carries one (files vitreg writes do, in `__metadata__`), a named model is given, or fields are overridden.
 *
 * Internally every conversion goes through the DINOv2 names in PyTorch layouts (Linear [out, in],
 * patch embedding [D, 3, p, p]); only `toModelLayout` / `fromModelLayout` know the model's own layouts.
 */
import { extname } from 'node:path';
import { fromFloat32, readPth, readSafetensors, toFloat32, writeSafetensors, type HostTensor } from '@vitreg/core';
import { getConfig, validateConfig, type ViTConfig } from './config.js';
import { parameterShapes, VisionTransformer } from './model.js';

export type Naming = 'dinov2' | 'timm' | 'hf';
export const NAMINGS: Naming[] = ['dinov2', 'timm', 'hf'];
export type WeightDType = 'F32' | 'F16' | 'BF16';

/** A state dict as Float32Arrays with shapes (PyTorch layouts). */
export type StateDict = Record<string, { shape: number[]; data: Float32Array }>;

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

/**
 * Keeps the backbone's tensors and strips wrapper prefixes ("module.", "backbone.", "teacher.backbone.",
 * "dinov2_with_registers.", ...), found as whatever precedes the first block's norm1 weight. A teacher copy
 * is preferred over a student copy, as DINOv2 evaluates the teacher.
 */
export function stripPrefix(tensors: Record<string, HostTensor>, file: string): Record<string, HostTensor> {
  const anchors = /^(.*?)(blocks\.0\.norm1\.weight|blocks\.0\.0\.norm1\.weight|encoder\.layer\.0\.norm1\.weight)$/;
  const prefixes = Object.keys(tensors)
    .map((k) => anchors.exec(k)?.[1])
    .filter((p): p is string => p !== undefined);
  if (prefixes.length === 0) {
    throw new Error(`${file}: no transformer blocks found (expected a tensor such as "blocks.0.norm1.weight" or "encoder.layer.0.norm1.weight")`);
  }
  const prefix = prefixes.find((p) => p.includes('teacher')) ?? prefixes.sort((a, b) => a.length - b.length)[0];
  if (!prefix) return tensors;
  const out: Record<string, HostTensor> = {};
  for (const [k, v] of Object.entries(tensors)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

/** Which naming a (prefix-stripped) set of tensor names uses. */
export function detectNaming(names: string[]): Naming {
  if (names.some((n) => n.startsWith('embeddings.') || n.startsWith('encoder.layer.'))) return 'hf';
  if (names.includes('reg_token')) return 'timm';
  if (names.includes('register_tokens') || names.includes('mask_token')) return 'dinov2';
  return names.some((n) => /\.mlp\.fc1\./.test(n)) && !names.includes('mask_token') && !names.includes('pos_embed') ? 'timm' : 'dinov2';
}

// ---------------------------------------------------------------------------------------------------
// Naming conversions (PyTorch layouts)

function decode(tensors: Record<string, HostTensor>, file: string): StateDict {
  const out: StateDict = {};
  for (const [k, t] of Object.entries(tensors)) {
    if (!['F32', 'F16', 'BF16', 'F64'].includes(t.dtype)) {
      throw new Error(`${file}: tensor "${k}" has dtype ${t.dtype}; expected F32, F16, BF16 or F64`);
    }
    out[k] = { shape: [...t.shape], data: toFloat32(t) };
  }
  return out;
}

const isSquare = (n: number) => Number.isInteger(Math.sqrt(n));

/** timm -> DINOv2: reg_token, class position folded into cls_token (no class slot), fc1/fc2 for SwiGLU. */
function fromTimm(sd: StateDict): StateDict {
  const out: StateDict = {};
  for (const [k, v] of Object.entries(sd)) {
    if (k === 'reg_token') out.register_tokens = v;
    else out[k] = v;
  }
  const pos = out.pos_embed;
  if (pos && pos.shape.length === 3 && isSquare(pos.shape[1])) {
    // No class slot: cls_token already holds cls + pos[0], so the class slot is zero.
    const D = pos.shape[2];
    const data = new Float32Array((pos.shape[1] + 1) * D);
    data.set(pos.data, D);
    out.pos_embed = { shape: [1, pos.shape[1] + 1, D], data };
  }
  // timm packs SwiGLU as mlp.fc1 [2h, D] / mlp.fc2 [D, h] (SwiGLUPacked); DINOv2 calls them w12 / w3.
  for (const k of Object.keys(out)) {
    const m = /^blocks\.(\d+)\.mlp\.fc1\.weight$/.exec(k);
    const fc2 = m && out[`blocks.${m[1]}.mlp.fc2.weight`];
    if (m && fc2 && out[k].shape[0] === 2 * fc2.shape[1]) {
      for (const [a, b] of [['fc1', 'w12'], ['fc2', 'w3']]) {
        for (const s of ['weight', 'bias']) {
          const from = `blocks.${m[1]}.mlp.${a}.${s}`;
          if (out[from]) {
            out[`blocks.${m[1]}.mlp.${b}.${s}`] = out[from];
            delete out[from];
          }
        }
      }
    }
  }
  if (!out.mask_token && out.cls_token) out.mask_token = { shape: [1, out.cls_token.shape[2]], data: new Float32Array(out.cls_token.shape[2]) };
  return out;
}

/** DINOv2 -> timm: the inverse of fromTimm (class slot kept when there are no registers, as timm's dinov2 models do). */
function toTimm(sd: StateDict, c: ViTConfig): StateDict {
  const out: StateDict = {};
  const D = c.embed_dim;
  for (const [k, v] of Object.entries(sd)) {
    if (k === 'mask_token') continue;
    const m = /^(blocks\.\d+\.mlp\.)(w12|w3)\.(weight|bias)$/.exec(k);
    if (m) out[`${m[1]}${m[2] === 'w12' ? 'fc1' : 'fc2'}.${m[3]}`] = v;
    else if (k === 'register_tokens') out.reg_token = v;
    else out[k] = v;
  }
  if (c.num_register_tokens > 0) {
    const pos = sd.pos_embed;
    const cls = sd.cls_token;
    const folded = new Float32Array(D);
    for (let i = 0; i < D; i++) folded[i] = cls.data[i] + pos.data[i];
    out.cls_token = { shape: [1, 1, D], data: folded };
    out.pos_embed = { shape: [1, pos.shape[1] - 1, D], data: pos.data.slice(D) };
  }
  return out;
}

const HF_BLOCK: [string, string][] = [
  ['norm1', 'norm1'],
  ['attention.output.dense', 'attn.proj'],
  ['layer_scale1.lambda1', 'ls1.gamma'],
  ['norm2', 'norm2'],
  ['mlp.fc1', 'mlp.fc1'],
  ['mlp.fc2', 'mlp.fc2'],
  ['mlp.weights_in', 'mlp.w12'],
  ['mlp.weights_out', 'mlp.w3'],
  ['layer_scale2.lambda1', 'ls2.gamma'],
];
const HF_TOP: [string, string][] = [
  ['embeddings.cls_token', 'cls_token'],
  ['embeddings.mask_token', 'mask_token'],
  ['embeddings.register_tokens', 'register_tokens'],
  ['embeddings.position_embeddings', 'pos_embed'],
  ['embeddings.patch_embeddings.projection.weight', 'patch_embed.proj.weight'],
  ['embeddings.patch_embeddings.projection.bias', 'patch_embed.proj.bias'],
  ['layernorm.weight', 'norm.weight'],
  ['layernorm.bias', 'norm.bias'],
];

function concatRows(parts: { shape: number[]; data: Float32Array }[]): { shape: number[]; data: Float32Array } {
  const data = new Float32Array(parts.reduce((n, p) => n + p.data.length, 0));
  let off = 0;
  for (const p of parts) {
    data.set(p.data, off);
    off += p.data.length;
  }
  return { shape: [parts.reduce((n, p) => n + p.shape[0], 0), ...parts[0].shape.slice(1)], data };
}

/** Hugging Face Dinov2WithRegisters -> DINOv2: q/k/v joined into qkv, layer_scale -> ls, layernorm -> norm. */
function fromHf(sd: StateDict): StateDict {
  const out: StateDict = {};
  const top = new Map(HF_TOP);
  const qkv: Record<string, Record<string, { shape: number[]; data: Float32Array }>> = {};
  for (const [k, v] of Object.entries(sd)) {
    const t = top.get(k);
    if (t) {
      out[t] = v;
      continue;
    }
    const m = /^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$/.exec(k);
    if (!m) {
      out[`hf:${k}`] = v; // reported as unexpected
      continue;
    }
    const [, i, mid, leaf] = m;
    const q = /^attention\.attention\.(query|key|value)$/.exec(mid);
    if (q) {
      (qkv[`blocks.${i}.attn.qkv.${leaf}`] ??= {})[q[1]] = v;
      continue;
    }
    const hit = HF_BLOCK.find(([h]) => `${mid}.${leaf}` === h || mid === h);
    if (!hit) {
      out[`hf:${k}`] = v;
      continue;
    }
    out[hit[1].endsWith('gamma') ? `blocks.${i}.${hit[1]}` : `blocks.${i}.${hit[1]}.${leaf}`] = v;
  }
  for (const [k, parts] of Object.entries(qkv)) {
    const missing = ['query', 'key', 'value'].filter((p) => !parts[p]);
    if (missing.length) throw new Error(`${k}: missing the ${missing.join(', ')} part(s) of the attention projection`);
    out[k] = concatRows([parts.query, parts.key, parts.value]);
  }
  return out;
}

function toHf(sd: StateDict, c: ViTConfig): StateDict {
  const out: StateDict = {};
  const top = new Map(HF_TOP.map(([a, b]) => [b, a] as [string, string]));
  const D = c.embed_dim;
  for (const [k, v] of Object.entries(sd)) {
    const t = top.get(k);
    if (t) {
      out[t] = v;
      continue;
    }
    const m = /^blocks\.(\d+)\.(.+)$/.exec(k);
    if (!m) throw new Error(`cannot name tensor "${k}" in the Hugging Face layout`);
    const [, i, rest] = m;
    const qkv = /^attn\.qkv\.(weight|bias)$/.exec(rest);
    if (qkv) {
      const per = v.data.length / 3;
      ['query', 'key', 'value'].forEach((name, j) => {
        out[`encoder.layer.${i}.attention.attention.${name}.${qkv[1]}`] = {
          shape: qkv[1] === 'weight' ? [D, v.shape[1]] : [D],
          data: v.data.slice(j * per, (j + 1) * per),
        };
      });
      continue;
    }
    if (rest === 'ls1.gamma' || rest === 'ls2.gamma') {
      out[`encoder.layer.${i}.layer_scale${rest[2]}.lambda1`] = v;
      continue;
    }
    const hit = HF_BLOCK.find(([, d]) => rest.startsWith(`${d}.`));
    if (!hit) throw new Error(`cannot name tensor "${k}" in the Hugging Face layout`);
    out[`encoder.layer.${i}.${hit[0]}${rest.slice(hit[1].length)}`] = v;
  }
  return out;
}

/** Chunked DINOv2 blocks ("blocks.<chunk>.<i>.") -> "blocks.<i>.". */
function unchunk(sd: StateDict): StateDict {
  const out: StateDict = {};
  for (const [k, v] of Object.entries(sd)) out[k.replace(/^blocks\.\d+\.(\d+)\./, 'blocks.$1.')] = v;
  return out;
}

/** A state dict in any naming -> DINOv2 names. */
export function toDinov2Names(sd: StateDict, naming: Naming): StateDict {
  if (naming === 'hf') return fromHf(sd);
  if (naming === 'timm') return fromTimm(sd);
  return Object.keys(sd).some((k) => /^blocks\.\d+\.\d+\./.test(k)) ? unchunk(sd) : sd;
}

// ---------------------------------------------------------------------------------------------------
// Config inference

/** The config the tensors (DINOv2 names) imply, with DINOv2's release conventions for what they cannot tell. */
export function inferConfig(sd: StateDict, file: string, overrides: Partial<ViTConfig> = {}): ViTConfig {
  const need = (k: string) => {
    const t = sd[k];
    if (!t) throw new Error(`${file}: cannot infer the model config: tensor "${k}" is missing`);
    return t;
  };
  const pe = need('patch_embed.proj.weight');
  if (pe.shape.length !== 4 || pe.shape[1] !== 3 || pe.shape[2] !== pe.shape[3]) {
    throw new Error(`${file}: tensor "patch_embed.proj.weight" has shape [${pe.shape}]; expected [D, 3, p, p]`);
  }
  const D = pe.shape[0];
  const p = pe.shape[2];
  const depth = 1 + Math.max(...Object.keys(sd).map((k) => Number(/^blocks\.(\d+)\./.exec(k)?.[1] ?? -1)));
  const R = sd.register_tokens?.shape[1] ?? 0;
  const pos = need('pos_embed');
  const grid = Math.sqrt(pos.shape[1] - 1);
  if (!Number.isInteger(grid)) throw new Error(`${file}: tensor "pos_embed" has ${pos.shape[1]} positions; expected 1 + a square grid`);
  const swiglu = !!sd['blocks.0.mlp.w12.weight'];
  const hidden = swiglu ? need('blocks.0.mlp.w3.weight').shape[1] : need('blocks.0.mlp.fc1.weight').shape[0];
  if (overrides.num_heads === undefined && D % 64 !== 0) {
    throw new Error(`${file}: cannot infer num_heads: embed_dim ${D} is not a multiple of 64; give it, e.g. --config '{"num_heads": N}'`);
  }
  return validateConfig({
    embed_dim: D,
    depth,
    num_heads: D / 64,
    patch_size: p,
    num_register_tokens: R,
    mlp_ratio: swiglu ? (hidden * 3) / 2 / D : hidden / D,
    ffn_layer: swiglu ? 'swiglu' : 'mlp',
    img_size: grid * p,
    interpolate_antialias: R > 0,
    interpolate_offset: R > 0 ? 0 : 0.1,
    layerscale_init: sd['blocks.0.ls1.gamma'] ? 1.0 : null,
    qkv_bias: !!sd['blocks.0.attn.qkv.bias'],
    proj_bias: !!sd['blocks.0.attn.proj.bias'],
    ffn_bias: !!(sd['blocks.0.mlp.fc1.bias'] ?? sd['blocks.0.mlp.w12.bias']),
    drop_path_rate: 0,
    norm_eps: 1e-6,
    ...overrides,
  }, file);
}

// ---------------------------------------------------------------------------------------------------
// Layouts

/** PyTorch shape of each parameter of a config (DINOv2 names). */
export function torchShapes(c: ViTConfig): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [name, shape] of Object.entries(parameterShapes(c))) {
    if (name === 'patch_embed.proj.weight') out[name] = [c.embed_dim, 3, c.patch_size, c.patch_size];
    else if (isLinearWeight(name)) out[name] = [shape[1], shape[0]];
    else out[name] = shape;
  }
  return out;
}

function isLinearWeight(name: string): boolean {
  return /\.(qkv|proj|fc1|fc2|w12|w3)\.weight$/.test(name) && !name.startsWith('patch_embed');
}

function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  return out;
}

/** PyTorch layout -> model layout (Linear [out,in] -> [in,out]; conv [D,3,p,p] -> [p*p*3, D]). */
function toModelLayout(name: string, t: { shape: number[]; data: Float32Array }): Float32Array {
  if (name === 'patch_embed.proj.weight') {
    const [D, C, p] = t.shape;
    const out = new Float32Array(t.data.length);
    for (let d = 0; d < D; d++)
      for (let c = 0; c < C; c++)
        for (let kh = 0; kh < p; kh++)
          for (let kw = 0; kw < p; kw++) out[((kh * p + kw) * C + c) * D + d] = t.data[((d * C + c) * p + kh) * p + kw];
    return out;
  }
  if (isLinearWeight(name)) return transpose2d(t.data, t.shape[0], t.shape[1]);
  return t.data;
}

/** Model layout -> PyTorch layout. */
function fromModelLayout(name: string, data: Float32Array, c: ViTConfig, torchShape: number[]): Float32Array {
  if (name === 'patch_embed.proj.weight') {
    const D = c.embed_dim;
    const p = c.patch_size;
    const out = new Float32Array(data.length);
    for (let d = 0; d < D; d++)
      for (let ch = 0; ch < 3; ch++)
        for (let kh = 0; kh < p; kh++)
          for (let kw = 0; kw < p; kw++) out[((d * 3 + ch) * p + kh) * p + kw] = data[((kh * p + kw) * 3 + ch) * D + d];
    return out;
  }
  if (isLinearWeight(name)) return transpose2d(data, torchShape[1], torchShape[0]);
  return data;
}

/** Checks names and shapes against a config; one error listing every missing, unexpected or misshapen tensor. */
export function checkStateDict(sd: StateDict, c: ViTConfig, file: string): void {
  const expected = torchShapes(c);
  const missing = Object.keys(expected).filter((k) => !sd[k]);
  const unexpected = Object.keys(sd).filter((k) => !expected[k]).map((k) => k.replace(/^hf:/, ''));
  const wrong = Object.keys(expected)
    .filter((k) => sd[k] && sd[k].shape.join(',') !== expected[k].join(','))
    .map((k) => `${k} [${sd[k].shape}] (expected [${expected[k]}])`);
  if (missing.length + unexpected.length + wrong.length === 0) return;
  const parts = [];
  if (missing.length) parts.push(`missing: ${missing.join(', ')}`);
  if (unexpected.length) parts.push(`unexpected: ${unexpected.join(', ')}`);
  if (wrong.length) parts.push(`wrong shape: ${wrong.join(', ')}`);
  throw new Error(`${file}: weights do not match the model config (${describe(c)}): ${parts.join('; ')}`);
}

function describe(c: ViTConfig): string {
  return `dim ${c.embed_dim}, depth ${c.depth}, heads ${c.num_heads}, patch ${c.patch_size}, ${c.num_register_tokens} registers, ${c.ffn_layer}`;
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
  naming: Naming;
  /** DINOv2 names, PyTorch layouts. */
  stateDict: StateDict;
}

/** Reads and converts a checkpoint without building a model. */
export async function readWeights(path: string, opts: LoadOptions = {}): Promise<LoadedWeights> {
  const file = path;
  const { tensors, metadata } = await readCheckpoint(path);
  const stripped = stripPrefix(tensors, file);
  const naming = (metadata[METADATA_NAMING] as Naming | undefined) ?? detectNaming(Object.keys(stripped));
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
  } else config = inferConfig(sd, file, opts.config);
  if (opts.config) config = validateConfig({ ...config, ...opts.config }, 'config override');
  checkStateDict(sd, config, file);
  return { config, naming, stateDict: sd };
}

/** Builds a VisionTransformer from a .pth or .safetensors checkpoint in any of the three namings. */
export async function loadWeights(path: string, opts: LoadOptions = {}): Promise<VisionTransformer> {
  const { config, stateDict } = await readWeights(path, opts);
  return modelFromStateDict(stateDict, config, opts.trainable ?? false);
}

/** A model from a DINOv2-named state dict in PyTorch layouts. */
export function modelFromStateDict(sd: StateDict, config: ViTConfig, trainable = false): VisionTransformer {
  checkStateDict(sd, config, 'state dict');
  const weights: Record<string, Float32Array> = {};
  for (const name of Object.keys(parameterShapes(config))) weights[name] = toModelLayout(name, sd[name]);
  return new VisionTransformer(config, { weights, trainable });
}

/** The model's weights as a DINOv2-named state dict in PyTorch layouts. */
export async function stateDictOf(model: VisionTransformer): Promise<StateDict> {
  const shapes = torchShapes(model.config);
  const host = await model.weights();
  const out: StateDict = {};
  for (const [name, shape] of Object.entries(shapes)) out[name] = { shape, data: fromModelLayout(name, host[name], model.config, shape) };
  return out;
}

/** A DINOv2-named state dict renamed to `naming` (PyTorch layouts). */
export function renameStateDict(sd: StateDict, config: ViTConfig, naming: Naming): StateDict {
  if (naming === 'timm') return toTimm(sd, config);
  if (naming === 'hf') return toHf(sd, config);
  return sd;
}

export interface SaveOptions {
  naming?: Naming;
  dtype?: WeightDType;
  metadata?: Record<string, string>;
}

/** Encodes a DINOv2-named state dict in the given naming and dtype as safetensors tensors + metadata. */
export function encodeStateDict(sd: StateDict, config: ViTConfig, opts: SaveOptions = {}): { tensors: Record<string, HostTensor>; metadata: Record<string, string> } {
  const naming = opts.naming ?? 'dinov2';
  const dtype = opts.dtype ?? 'F32';
  const tensors: Record<string, HostTensor> = {};
  for (const [k, v] of Object.entries(renameStateDict(sd, config, naming))) tensors[k] = fromFloat32(v.data, v.shape, dtype);
  const metadata = { format: 'pt', ...opts.metadata, [METADATA_CONFIG]: JSON.stringify(config), [METADATA_NAMING]: naming };
  return { tensors, metadata };
}

/** Saves the model as safetensors in DINOv2, timm or Hugging Face names, F32/F16/BF16, config in __metadata__. */
export async function saveWeights(model: VisionTransformer, path: string, opts: SaveOptions = {}): Promise<void> {
  const { tensors, metadata } = encodeStateDict(await stateDictOf(model), model.config, opts);
  await writeSafetensors(path, tensors, metadata);
}
