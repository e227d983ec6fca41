/**
 * Hugging Face `Dinov2` / `Dinov2WithRegisters` checkpoint names to and from the DINOv2 names: q/k/v
 * joined into (and split from) qkv, layer_scale <-> ls, layernorm <-> norm.
 */
import type { ViTConfig } from './config.js';
import { withClassSlot, type Entry, type StateDict } from './state-dict.js';

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
export function fromHf(sd: StateDict): StateDict {
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

export function toHf(sd: StateDict, c: ViTConfig): StateDict {
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
    if (!m)
      throw new Error(
        `the Hugging Face Dinov2 layout has no name for tensor "${k}"; write this model as dinov2, timm or its family's naming`,
      );
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
