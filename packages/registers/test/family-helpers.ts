/** Test helpers of the model-family fixtures (test/fixtures/families, written by make_families.py). */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, toFloat32 } from '@vitreg/core';

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
