/** Test helpers of the model-family fixtures (test/fixtures/families, written by make_families.py). */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, toFloat32 } from '@vitreg/core';
import type { ViTConfig } from '../src/index.ts';

export const FAMILIES = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'families');

type Ref = Record<string, { shape: number[]; data: Float32Array }>;
const refs = new Map<string, Ref>();

/** The tensors of one family reference file (NAME.reference.safetensors) as Float32Arrays with shapes. */
export async function familyReference(name: string): Promise<Ref> {
  const cached = refs.get(name);
  if (cached) return cached;
  const { tensors } = await readSafetensors(join(FAMILIES, `${name}.reference.safetensors`));
  const out: Ref = {};
  for (const [k, t] of Object.entries(tensors)) out[k] = { shape: t.shape, data: toFloat32(t) };
  refs.set(name, out);
  return out;
}

/** A family fixture compared with its official reference (families.test.ts on tfjs, onnx-families.test.ts on ONNX Runtime). */
export interface FamilyCase {
  file: string;
  ref: string;
  inputs: string[];
  config?: Partial<ViTConfig>;
  /** Reference keys this model's outputs are not compared with (what the official code does not return). */
  skip?: string[];
  /** Output -> reference key renames, e.g. open_clip v2.22.0's tokens. */
  rename?: Record<string, string>;
}

export const FAMILY_CASES: FamilyCase[] = [
  { file: 'dino.pth', ref: 'dino', inputs: ['sq64', 'sq96', 'rect64x112', 'rect80x48'] },
  { file: 'deit3.models_v2.pth', ref: 'deit3', inputs: ['sq64', 'rect48x80'] },
  { file: 'deit3.timm.safetensors', ref: 'deit3', inputs: ['sq64', 'rect48x80'] },
  { file: 'deit3_reg4.timm.safetensors', ref: 'deit3_reg4', inputs: ['sq64', 'rect48x80'] },
  { file: 'openclip.safetensors', ref: 'openclip', inputs: ['sq64', 'rect48x80'] },
  {
    file: 'openclip.safetensors',
    ref: 'openclip',
    inputs: ['sq64'],
    config: { final_norm_tokens: false },
    skip: ['cls'],
    rename: { patches: 'tokens_v2_22', pooled: 'pooled_v2_22' },
  },
  { file: 'clip.timm.safetensors', ref: 'openclip', inputs: ['sq64', 'rect48x80'] },
  { file: 'clip_reg4.timm.safetensors', ref: 'clip_reg4', inputs: ['sq64', 'rect48x80'] },
  // OpenAI's code returns ln_post(CLS) @ proj only: the normalised patch tokens are not compared.
  { file: 'clip_openai.pth', ref: 'clip_openai', inputs: ['sq64'], config: { act_layer: 'quick_gelu' }, skip: ['patches'] },
];
