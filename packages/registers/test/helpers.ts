/** Test helpers: the parity fixtures and numpy's allclose rule. */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, toFloat32 } from '@vitreg/core';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'dinov2-parity');

/** The reference tensors of one fixture model as Float32Arrays with shapes. */
export async function reference(model: string): Promise<Record<string, { shape: number[]; data: Float32Array }>> {
  const { tensors } = await readSafetensors(join(FIXTURES, `${model}.reference.safetensors`));
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, t] of Object.entries(tensors)) out[k] = { shape: t.shape, data: toFloat32(t) };
  return out;
}

/**
 * numpy.allclose's rule per element, |a - b| <= atol + rtol * |b|. Returns null when it holds, or a
 * description of the worst element.
 */
export function allclose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 1e-4, rtol = 1e-4): string | null {
  if (actual.length !== expected.length) return `length ${actual.length} != ${expected.length}`;
  let worst = -1;
  let worstExcess = 0;
  let bad = 0;
  for (let i = 0; i < actual.length; i++) {
    const excess = Math.abs(actual[i] - expected[i]) - (atol + rtol * Math.abs(expected[i]));
    if (!(excess <= 0)) {
      bad++;
      if (worst < 0 || excess > worstExcess || Number.isNaN(excess)) {
        worst = i;
        worstExcess = excess;
      }
    }
  }
  return bad === 0 ? null : `${bad} elements differ; worst at ${worst}: ${actual[worst]} vs ${expected[worst]}`;
}
