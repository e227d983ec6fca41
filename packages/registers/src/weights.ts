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
 * Internally every conversion goes through the DINOv2 names in PyTorch layouts (Linear [out, in], patch
 * embedding [D, 3, p, p]; `norm_pre.*` for CLIP's ln_pre, `proj` [D, out] for CLIP's projection); only
 * `toModelLayout` / `fromModelLayout` know the model's own layouts.
 */
import { extname } from 'node:path';
import { fromFloat32, readPth, readSafetensors, toFloat32, writeSafetensors, type HostTensor } from '@vitreg/core';
import { getConfig, posLength, validateConfig, type ViTConfig } from './config.js';
import { parameterShapes, VisionTransformer } from './model.js';

export type Naming = 'dinov2' | 'timm' | 'hf' | 'dino' | 'deit3' | 'clip';
export const NAMINGS: Naming[] = ['dinov2', 'timm', 'hf', 'dino', 'deit3', 'clip'];
export type WeightDType = 'F32' | 'F16' | 'BF16';

/** A state dict as Float32Arrays with shapes (PyTorch layouts). */
export type StateDict = Record<string, { shape: number[]; data: Float32Array }>;
type Entry = StateDict[string];

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
const BLOCK_ANCHOR = /^(.*?)(blocks\.0\.norm1\.weight|blocks\.0\.0\.norm1\.weight|encoder\.layer\.0\.norm1\.weight|transformer\.resblocks\.0\.ln_1\.weight)$/;
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
    throw new Error(`${file}: no transformer blocks found (expected a tensor such as "blocks.0.norm1.weight", "encoder.layer.0.norm1.weight" or "transformer.resblocks.0.ln_1.weight")`);
  }
  const images = prefixes.filter((p) => PATCH_EMBEDS.some((e) => tensors[p + e] !== undefined));
  const pool = images.length > 0 ? images : prefixes;
  const prefix = pool.find((p) => p.includes('teacher')) ?? pool.sort((a, b) => a.length - b.length)[0];
  if (!prefix) return tensors;
  const out: Record<string, HostTensor> = {};
  for (const [k, v] of Object.entries(tensors)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

/**
 * Which naming a (prefix-stripped) set of tensor names uses. DINO and timm's plain ViTs share their names;
 * they read as 'dino' (timm's DINO models are DINO's weights).
 */
export function detectNaming(names: string[]): Naming {
  const has = (n: string) => names.includes(n);
  if (names.some((n) => n.startsWith('embeddings.') || n.startsWith('encoder.layer.'))) return 'hf';
  if (has('class_embedding') || names.some((n) => n.startsWith('transformer.resblocks.'))) return 'clip';
  if (names.some((n) => /^blocks\.\d+\.gamma_[12]$/.test(n))) return 'deit3';
  if (has('reg_token')) return 'timm';
  if (has('register_tokens') || has('mask_token')) return 'dinov2';
  // timm's deit3_* and DINOv2 models without a mask token, timm's CLIP towers.
  if (has('norm_pre.weight') || names.some((n) => /^blocks\.\d+\.ls1\.gamma$/.test(n))) return 'timm';
  if (!has('pos_embed') && names.some((n) => /\.mlp\.fc1\./.test(n))) return 'timm';
  return 'dino';
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

const isSquare = (n: number) => n > 0 && Number.isInteger(Math.sqrt(n));

/** A zero mask token where the naming has none (only DINOv2's training uses it). */
function withMaskToken(sd: StateDict): StateDict {
  const D = sd.cls_token?.shape[sd.cls_token.shape.length - 1];
  if (!sd.mask_token && D) sd.mask_token = { shape: [1, D], data: new Float32Array(D) };
  return sd;
}

/** Renames by a list of [from, to] name pairs; every other name is kept. */
function renamed(sd: StateDict, pairs: [RegExp, string][]): StateDict {
  const out: StateDict = {};
  for (const [k, v] of Object.entries(sd)) {
    const hit = pairs.find(([re]) => re.test(k));
    out[hit ? k.replace(hit[0], hit[1]) : k] = v;
  }
  return out;
}

/** A classifier's `head.weight` / `head.bias`, which are not part of the backbone. */
function withoutClassifier(sd: StateDict): StateDict {
  const out = { ...sd };
  delete out['head.weight'];
  delete out['head.bias'];
  return out;
}

/**
 * timm -> DINOv2 names: reg_token, fc1/fc2 for SwiGLU (SwiGLUPacked), no mask token; `head.weight` is CLIP's
 * projection (transposed) when it has no bias, or a zero one in a tower with `norm_pre` (timm's conversion of
 * CLIP), and a classifier, left out, otherwise (e.g. CLIP fine-tuned on ImageNet). `pos_embed` is kept as is,
 * class slot or not (see fitPosEmbed).
 */
function fromTimm(sd: StateDict): StateDict {
  let out = renamed(sd, [[/^reg_token$/, 'register_tokens']]);
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
  const head = out['head.weight'];
  const bias = out['head.bias'];
  const zeroBias = !!bias && bias.data.every((v) => v === 0);
  if (head && head.shape.length === 2 && (!bias || (zeroBias && out['norm_pre.weight']))) {
    out.proj = { shape: [head.shape[1], head.shape[0]], data: transpose2d(head.data, head.shape[0], head.shape[1]) };
  }
  out = withoutClassifier(out);
  return withMaskToken(out);
}

/** DINOv2 names -> timm: the inverse of fromTimm (the class position folded into cls_token for register models, as timm's dinov2 models are). */
function toTimm(sd: StateDict, c: ViTConfig): StateDict {
  const out: StateDict = {};
  for (const [k, v] of Object.entries(c.num_register_tokens > 0 && c.pos_embed_cls ? withoutClassSlot(sd, c) : sd)) {
    if (k === 'mask_token') continue;
    const m = /^(blocks\.\d+\.mlp\.)(w12|w3)\.(weight|bias)$/.exec(k);
    if (m) out[`${m[1]}${m[2] === 'w12' ? 'fc1' : 'fc2'}.${m[3]}`] = v;
    else if (k === 'register_tokens') out.reg_token = v;
    else if (k === 'proj') out['head.weight'] = { shape: [v.shape[1], v.shape[0]], data: transpose2d(v.data, v.shape[0], v.shape[1]) };
    else out[k] = v;
  }
  return out;
}

/** facebookresearch/deit models_v2 -> DINOv2 names: gamma_1/gamma_2 -> ls1/ls2.gamma, reg_token; no classifier. */
function fromDeit3(sd: StateDict): StateDict {
  return withMaskToken(withoutClassifier(renamed(sd, [
    [/^(blocks\.\d+\.)gamma_([12])$/, '$1ls$2.gamma'],
    [/^reg_token$/, 'register_tokens'],
  ])));
}

/** DINOv2 names -> models_v2: no class slot in pos_embed (CLS's position folded into cls_token), gamma_1/gamma_2. */
function toDeit3(sd: StateDict, c: ViTConfig): StateDict {
  const { mask_token: _, ...rest } = withoutClassSlot(sd, c);
  return renamed(rest, [[/^(blocks\.\d+\.)ls([12])\.gamma$/, '$1gamma_$2'], [/^register_tokens$/, 'reg_token']]);
}

/** DINOv2 names -> DINO: the same names, with a class slot in pos_embed and no mask token. */
function toDino(sd: StateDict, c: ViTConfig): StateDict {
  const { mask_token: _, ...rest } = withClassSlot(sd, c);
  return rest;
}

/** open_clip / OpenAI CLIP names of a block's tensors, by DINOv2 name (ls_1/ls_2 from open_clip's ls_init_value). */
const CLIP_BLOCK: [string, string][] = [
  ['ln_1.weight', 'norm1.weight'],
  ['ln_1.bias', 'norm1.bias'],
  ['attn.in_proj_weight', 'attn.qkv.weight'],
  ['attn.in_proj_bias', 'attn.qkv.bias'],
  ['attn.out_proj.weight', 'attn.proj.weight'],
  ['attn.out_proj.bias', 'attn.proj.bias'],
  ['ls_1.gamma', 'ls1.gamma'],
  ['ln_2.weight', 'norm2.weight'],
  ['ln_2.bias', 'norm2.bias'],
  ['mlp.c_fc.weight', 'mlp.fc1.weight'],
  ['mlp.c_fc.bias', 'mlp.fc1.bias'],
  ['mlp.c_proj.weight', 'mlp.fc2.weight'],
  ['mlp.c_proj.bias', 'mlp.fc2.bias'],
  ['ls_2.gamma', 'ls2.gamma'],
];
/** Top-level CLIP names (`register_embedding` [R, D] is vitreg's, for towers trained with registers). */
const CLIP_TOP: [string, string][] = [
  ['conv1.weight', 'patch_embed.proj.weight'],
  ['conv1.bias', 'patch_embed.proj.bias'],
  ['ln_pre.weight', 'norm_pre.weight'],
  ['ln_pre.bias', 'norm_pre.bias'],
  ['ln_post.weight', 'norm.weight'],
  ['ln_post.bias', 'norm.bias'],
  ['proj', 'proj'],
];

/** CLIP -> DINOv2 names; tensors it does not know are kept as `clip:NAME` and reported as unexpected. */
function fromClip(sd: StateDict): StateDict {
  const out: StateDict = {};
  const top = new Map(CLIP_TOP);
  const block = new Map(CLIP_BLOCK);
  const D = sd.class_embedding?.shape[0];
  for (const [k, v] of Object.entries(sd)) {
    const m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(k);
    const inBlock = m && block.get(m[2]);
    if (inBlock) out[`blocks.${m[1]}.${inBlock}`] = v;
    else if (top.has(k)) out[top.get(k)!] = v;
    else if (k === 'class_embedding' && v.shape.length === 1) out.cls_token = { shape: [1, 1, v.shape[0]], data: v.data };
    else if (k === 'positional_embedding' && v.shape.length === 2) out.pos_embed = { shape: [1, ...v.shape], data: v.data };
    else if (k === 'register_embedding' && v.shape.length === 2 && v.shape[1] === D) out.register_tokens = { shape: [1, ...v.shape], data: v.data };
    else out[`clip:${k}`] = v;
  }
  return withMaskToken(out);
}

/** DINOv2 names -> CLIP's (a class slot in the positional embedding, no mask token). */
function toClip(sd: StateDict, c: ViTConfig): StateDict {
  if (c.ffn_layer === 'swiglu') throw new Error('the CLIP naming has no SwiGLU FFN (mlp.c_fc / mlp.c_proj are a plain MLP); write this model as dinov2 or timm');
  const out: StateDict = {};
  const top = new Map(CLIP_TOP.map(([a, b]) => [b, a] as [string, string]));
  const block = new Map(CLIP_BLOCK.map(([a, b]) => [b, a] as [string, string]));
  for (const [k, v] of Object.entries(withClassSlot(sd, c))) {
    const m = /^blocks\.(\d+)\.(.+)$/.exec(k);
    if (k === 'mask_token') continue;
    if (k === 'cls_token') out.class_embedding = { shape: [v.shape[2]], data: v.data };
    else if (k === 'pos_embed') out.positional_embedding = { shape: v.shape.slice(1), data: v.data };
    else if (k === 'register_tokens') out.register_embedding = { shape: v.shape.slice(1), data: v.data };
    else if (top.has(k)) out[top.get(k)!] = v;
    else if (m && block.has(m[2])) out[`transformer.resblocks.${m[1]}.${block.get(m[2])}`] = v;
    else throw new Error(`cannot name tensor "${k}" in the CLIP layout`);
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

function concatRows(parts: Entry[]): Entry {
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
  const qkv: Record<string, Record<string, Entry>> = {};
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
  for (const [k, v] of Object.entries(withClassSlot(sd, c))) {
    const t = top.get(k);
    if (t) {
      out[t] = v;
      continue;
    }
    const m = /^blocks\.(\d+)\.(.+)$/.exec(k);
    if (!m) throw new Error(`the Hugging Face Dinov2 layout has no name for tensor "${k}"; write this model as dinov2, timm or its family's naming`);
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
    if (!hit) throw new Error(`the Hugging Face Dinov2 layout has no name for tensor "${k}"`);
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

/** A state dict in any naming -> DINOv2 names (pos_embed as stored: see fitPosEmbed). */
export function toDinov2Names(sd: StateDict, naming: Naming): StateDict {
  if (naming === 'hf') return fromHf(sd);
  if (naming === 'timm') return fromTimm(sd);
  if (naming === 'deit3') return fromDeit3(sd);
  if (naming === 'clip') return fromClip(sd);
  const out = Object.keys(sd).some((k) => /^blocks\.\d+\.\d+\./.test(k)) ? unchunk(sd) : sd;
  return naming === 'dino' ? withMaskToken({ ...out }) : out;
}

// ---------------------------------------------------------------------------------------------------
// The class slot of pos_embed

/**
 * The same model with a class slot in pos_embed: a zero slot when there was none (CLS had no position).
 * Exact: CLS gets cls_token + 0.
 */
function withClassSlot(sd: StateDict, c: ViTConfig): StateDict {
  const pos = sd.pos_embed;
  if (!pos || pos.shape.length !== 3 || pos.shape[1] !== posLength(c) || c.pos_embed_cls) return sd;
  const D = pos.shape[2];
  const data = new Float32Array((pos.shape[1] + 1) * D);
  data.set(pos.data, D);
  return { ...sd, pos_embed: { shape: [1, pos.shape[1] + 1, D], data } };
}

/** The same model without a class slot: the slot's position folded into cls_token (one float add per value). */
function withoutClassSlot(sd: StateDict, c: ViTConfig): StateDict {
  const pos = sd.pos_embed;
  const cls = sd.cls_token;
  if (!pos || !cls || pos.shape.length !== 3 || pos.shape[1] !== posLength(c) || !c.pos_embed_cls) return sd;
  const D = pos.shape[2];
  const folded = new Float32Array(D);
  for (let i = 0; i < D; i++) folded[i] = cls.data[i] + pos.data[i];
  return { ...sd, cls_token: { shape: cls.shape, data: folded }, pos_embed: { shape: [1, pos.shape[1] - 1, D], data: pos.data.slice(D) } };
}

/**
 * Brings pos_embed to the config's layout: a file without class slot read into a model with one
 * (pos_embed_cls, e.g. timm's DINOv2 register models) gets a zero slot; a file with one read into a model
 * without (DeiT-III) has the slot folded into cls_token. Both give the same outputs. Other mismatches are
 * left for checkStateDict to report.
 */
export function fitPosEmbed(sd: StateDict, c: ViTConfig): StateDict {
  const pos = sd.pos_embed;
  if (!pos || pos.shape.length !== 3) return sd;
  const want = posLength(c);
  if (c.pos_embed_cls && pos.shape[1] + 1 === want) {
    return withClassSlot(sd, { ...c, pos_embed_cls: false });
  }
  if (!c.pos_embed_cls && pos.shape[1] === want + 1) return withoutClassSlot(sd, { ...c, pos_embed_cls: true });
  return sd;
}

// ---------------------------------------------------------------------------------------------------
// Config inference

/** Heads of the released models whose head width is not 64: ViT-H (DeiT-III, OpenCLIP; 80), OpenCLIP ViT-g (88), ViT-bigG (104). */
const HEADS_BY_WIDTH: Record<number, number> = { 1280: 16, 1408: 16, 1664: 16 };

/** What the tensors cannot tell, by family: each family's release conventions. */
type Conventions = Pick<ViTConfig, 'interpolate_antialias' | 'interpolate_offset' | 'norm_eps' | 'pos_embed_cls'> & { layerscale: number };

function conventions(naming: Naming, sd: StateDict, hasClassSlot: boolean, R: number): Conventions {
  const dinov2 = { interpolate_antialias: R > 0, interpolate_offset: R > 0 ? 0 : 0.1, norm_eps: 1e-6, pos_embed_cls: hasClassSlot, layerscale: 1.0 };
  const timm = { interpolate_antialias: true, interpolate_offset: 0 };
  switch (naming) {
    case 'clip':
      return { ...timm, norm_eps: 1e-5, pos_embed_cls: hasClassSlot, layerscale: 1e-5 };
    case 'deit3':
      return { ...timm, norm_eps: 1e-6, pos_embed_cls: hasClassSlot, layerscale: 1e-6 };
    case 'dino':
      return { interpolate_antialias: false, interpolate_offset: 0.1, norm_eps: 1e-6, pos_embed_cls: hasClassSlot, layerscale: 1e-5 };
    case 'timm':
      if (sd['norm_pre.weight']) return { ...timm, norm_eps: 1e-5, pos_embed_cls: hasClassSlot, layerscale: 1e-5 };
      // timm's DINOv2 register models fold CLS's position into cls_token: read back into DINOv2's layout.
      if (!hasClassSlot && R > 0) return { ...dinov2, pos_embed_cls: true };
      if (!hasClassSlot) return { ...timm, norm_eps: 1e-6, pos_embed_cls: false, layerscale: 1e-6 }; // deit3_*
      return dinov2;
    default:
      return dinov2;
  }
}

/**
 * The config the tensors (DINOv2 names) imply, with the release conventions of the naming's family for
 * what they cannot tell (eps, interpolation, LayerScale's initial value; CLIP's activation is taken as
 * exact GELU, OpenCLIP's: OpenAI's weights need `act_layer: 'quick_gelu'`, or a `clip_*` named config).
 */
export function inferConfig(sd: StateDict, file: string, overrides: Partial<ViTConfig> = {}, naming: Naming = 'dinov2'): ViTConfig {
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
  const positions = pos.shape[1];
  const hasClassSlot = isSquare(positions - 1);
  if (!hasClassSlot && !isSquare(positions)) {
    throw new Error(`${file}: tensor "pos_embed" has ${positions} positions; expected a square grid, with or without a class slot`);
  }
  const grid = Math.sqrt(hasClassSlot ? positions - 1 : positions);
  const swiglu = !!sd['blocks.0.mlp.w12.weight'];
  const hidden = swiglu ? need('blocks.0.mlp.w3.weight').shape[1] : need('blocks.0.mlp.fc1.weight').shape[0];
  let mlpRatio = swiglu ? (hidden * 3) / 2 / D : hidden / D;
  if (!swiglu && Math.trunc(D * mlpRatio) !== hidden) mlpRatio = (hidden + 0.5) / D; // int(D * ratio) must give hidden back
  const heads = HEADS_BY_WIDTH[D] ?? D / 64;
  if (overrides.num_heads === undefined && !Number.isInteger(heads)) {
    throw new Error(`${file}: cannot infer num_heads: embed_dim ${D} is not a multiple of 64; give it, e.g. --config '{"num_heads": N}'`);
  }
  const conv = conventions(naming, sd, hasClassSlot, R);
  return validateConfig({
    embed_dim: D,
    depth,
    num_heads: Number.isInteger(heads) ? heads : 1,
    patch_size: p,
    num_register_tokens: R,
    mlp_ratio: mlpRatio,
    ffn_layer: swiglu ? 'swiglu' : 'mlp',
    act_layer: 'gelu',
    img_size: grid * p,
    pos_embed_cls: conv.pos_embed_cls,
    interpolate_antialias: conv.interpolate_antialias,
    interpolate_offset: conv.interpolate_offset,
    patch_bias: !!sd['patch_embed.proj.bias'],
    pre_norm: !!sd['norm_pre.weight'],
    layerscale_init: sd['blocks.0.ls1.gamma'] ? conv.layerscale : null,
    qkv_bias: !!sd['blocks.0.attn.qkv.bias'],
    proj_bias: !!sd['blocks.0.attn.proj.bias'],
    ffn_bias: !!(sd['blocks.0.mlp.fc1.bias'] ?? sd['blocks.0.mlp.w12.bias']),
    proj_dim: sd.proj?.shape.length === 2 ? sd.proj.shape[1] : null,
    final_norm_tokens: true,
    drop_path_rate: 0,
    norm_eps: conv.norm_eps,
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
  const unexpected = Object.keys(sd).filter((k) => !expected[k]).map((k) => k.replace(/^(hf|clip):/, ''));
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
  const extras = [c.pos_embed_cls ? '' : 'no class position', c.pre_norm ? 'pre-norm' : '', c.proj_dim !== null ? `projection ${c.proj_dim}` : ''].filter(Boolean);
  return `dim ${c.embed_dim}, depth ${c.depth}, heads ${c.num_heads}, patch ${c.patch_size}, ${c.num_register_tokens} registers, ${c.ffn_layer}${extras.map((e) => `, ${e}`).join('')}`;
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

/** A model from a DINOv2-named state dict in PyTorch layouts. */
export function modelFromStateDict(sd: StateDict, config: ViTConfig, trainable = false): VisionTransformer {
  const fitted = fitPosEmbed(sd, config);
  checkStateDict(fitted, config, 'state dict');
  const weights: Record<string, Float32Array> = {};
  for (const name of Object.keys(parameterShapes(config))) weights[name] = toModelLayout(name, fitted[name]);
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

/**
 * A DINOv2-named state dict renamed to `naming` (PyTorch layouts), in the layout the naming's own code
 * loads: a class slot in pos_embed for dinov2, hf, dino and clip (a zero slot where the config has none);
 * none for deit3 (CLS's position folded into cls_token) and for timm register models (as timm's dinov2
 * models); no mask token outside dinov2 and hf. Fields a naming has no name for (e.g. `norm_pre` in hf,
 * SwiGLU in clip) are an error naming them.
 */
export function renameStateDict(sd: StateDict, config: ViTConfig, naming: Naming): StateDict {
  switch (naming) {
    case 'timm':
      return toTimm(sd, config);
    case 'hf':
      return toHf(sd, config);
    case 'dino':
      return toDino(sd, config);
    case 'deit3':
      return toDeit3(sd, config);
    case 'clip':
      return toClip(sd, config);
    default:
      return withClassSlot(sd, config);
  }
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

/** Saves the model as safetensors in any naming (see NAMINGS), F32/F16/BF16, config in __metadata__. */
export async function saveWeights(model: VisionTransformer, path: string, opts: SaveOptions = {}): Promise<void> {
  const { tensors, metadata } = encodeStateDict(await stateDictOf(model), model.config, opts);
  await writeSafetensors(path, tensors, metadata);
}
