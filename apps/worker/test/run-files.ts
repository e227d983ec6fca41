/**
 * Reading a cluster job's run folder in tests (apps/worker/test/cluster.test.ts, test/hosts.test.ts):
 * rank 0's metrics.jsonl, the per-rank files in ranks/, checkpoints' weights; and the checks made of them
 * (every image of an epoch exactly once, the largest weight difference).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadWeights } from '@vitreg/registers';

/** One line of metrics.jsonl or of a rank's file. */
export type Line = Record<string, number> & { samples?: [number, number][]; final?: boolean; checksum?: string };

/** The lines of a JSONL file (a last line cut short by a killed writer is left out). */
export async function jsonl(path: string): Promise<Line[]> {
  const lines = (await readFile(path, 'utf8')).split('\n');
  const out: Line[] = [];
  for (const [i, l] of lines.entries()) {
    if (!l.trim()) continue;
    try {
      out.push(JSON.parse(l) as Line);
    } catch (e) {
      if (i < lines.length - 1) throw e;
    }
  }
  return out;
}

/** Waits until rank 0's metrics.jsonl has a line for step >= `step`. */
export async function untilStep(outDir: string, step: number, timeoutMs = 120_000): Promise<void> {
  const path = join(outDir, 'metrics.jsonl');
  for (const t0 = Date.now(); ;) {
    if (existsSync(path) && (await jsonl(path)).some((l) => l.step >= step)) return;
    if (Date.now() - t0 > timeoutMs) throw new Error(`no step ${step} in ${path} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The last final weights checksum of each named rank, from the per-rank files. */
export async function rankChecksums(outDir: string, names: string[]): Promise<string[]> {
  const sums: string[] = [];
  for (const n of names) {
    const f = (await jsonl(join(outDir, 'ranks', `${n}.jsonl`))).filter((l) => l.final);
    if (f.length) sums.push(f[f.length - 1]!.checksum!);
  }
  return sums;
}

/**
 * Every committed step's images, from the per-rank files: a step counts when rank 0's metrics.jsonl
 * has it with the same membership (a step dropped by a membership change is logged but not counted).
 */
export async function committedSamples(outDir: string): Promise<[number, number][]> {
  const committed = new Map<number, number>();
  for (const l of await jsonl(join(outDir, 'metrics.jsonl'))) if (l.membership !== undefined) committed.set(l.step, l.membership);
  const seen: [number, number][] = [];
  for (const f of await readdir(join(outDir, 'ranks'))) {
    for (const l of await jsonl(join(outDir, 'ranks', f))) if (l.samples && committed.get(l.step) === l.membership) seen.push(...l.samples);
  }
  return seen;
}

/** Each image of every complete epoch exactly once, none twice in the last (partial) one. */
export function assertEpochsExact(samples: [number, number][], length: number): void {
  const byEpoch = new Map<number, number[]>();
  for (const [e, i] of samples) byEpoch.set(e, [...(byEpoch.get(e) ?? []), i]);
  const last = Math.max(...byEpoch.keys());
  for (const [e, idx] of byEpoch) {
    assert.equal(new Set(idx).size, idx.length, `epoch ${e}: an image was trained on twice`);
    if (e < last)
      assert.deepEqual(
        [...idx].sort((a, b) => a - b),
        Array.from({ length }, (_, i) => i),
        `epoch ${e}: images missing`,
      );
  }
}

/** A checkpoint folder's model weights as host arrays. */
export async function weights(checkpoint: string): Promise<Record<string, Float32Array>> {
  const m = await loadWeights(join(checkpoint, 'model.safetensors'));
  const out: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(m.params)) out[k] = v.dataSync() as Float32Array;
  m.dispose();
  return out;
}

/** The largest absolute difference of two sets of weights (b must hold every tensor of a). */
export function maxDiff(a: Record<string, Float32Array>, b: Record<string, Float32Array>): number {
  let d = 0;
  for (const [k, x] of Object.entries(a)) {
    const y = b[k];
    assert.ok(y && y.length === x.length, `tensor ${k}: missing or of another size`);
    for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i]! - y[i]!));
  }
  return d;
}
