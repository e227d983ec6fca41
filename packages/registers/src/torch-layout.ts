/**
 * PyTorch layouts against the model's own: each parameter's PyTorch shape, the conversions between the
 * two layouts (Linear [out, in] <-> [in, out]; patch embedding [D, 3, p, p] <-> [p*p*3, D]), and the check
 * of a state dict's names and shapes against a config.
 */
import type { ViTConfig } from './config.js';
import { parameterShapes } from './model.js';
import { transpose2d, type StateDict } from './state-dict.js';

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

/** Whether tensor `name`'s model layout differs from PyTorch's (toModelLayout moves its values). */
export function hasOwnModelLayout(name: string): boolean {
  return name === 'patch_embed.proj.weight' || isLinearWeight(name);
}

/**
 * PyTorch layout -> model layout (Linear [out,in] -> [in,out]; conv [D,3,p,p] -> [p*p*3, D]), into `out`
 * when given (a tensor whose layouts agree is then copied into it), else a new array (or `t.data` itself).
 */
export function toModelLayout(name: string, t: { shape: readonly number[]; data: Float32Array }, out?: Float32Array): Float32Array {
  if (name === 'patch_embed.proj.weight') {
    const [D, C, p] = t.shape as [number, number, number];
    out ??= new Float32Array(t.data.length);
    for (let d = 0; d < D; d++)
      for (let c = 0; c < C; c++)
        for (let kh = 0; kh < p; kh++)
          for (let kw = 0; kw < p; kw++) out[((kh * p + kw) * C + c) * D + d] = t.data[((d * C + c) * p + kh) * p + kw]!;
    return out;
  }
  if (isLinearWeight(name)) return transpose2d(t.data, t.shape[0]!, t.shape[1]!, out);
  if (out) out.set(t.data);
  return out ?? t.data;
}

/** Model layout -> PyTorch layout. */
export function fromModelLayout(name: string, data: Float32Array, c: ViTConfig, torchShape: number[]): Float32Array {
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
  const unexpected = Object.keys(sd)
    .filter((k) => !expected[k])
    .map((k) => k.replace(/^(hf|clip):/, ''));
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
  const extras = [
    c.pos_embed_cls ? '' : 'no class position',
    c.pre_norm ? 'pre-norm' : '',
    c.proj_dim !== null ? `projection ${c.proj_dim}` : '',
  ].filter(Boolean);
  return `dim ${c.embed_dim}, depth ${c.depth}, heads ${c.num_heads}, patch ${c.patch_size}, ${c.num_register_tokens} registers, ${c.ffn_layer}${extras.map((e) => `, ${e}`).join('')}`;
}
