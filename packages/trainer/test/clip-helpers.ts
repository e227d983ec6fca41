/** Test helpers of the CLIP losses and step: in-process ranks. */
import type { GradientSync } from '../src/index.ts';

/** In-process ranks: allReduce resolves once every rank passed its buffers, to their mean. */
export function pairSyncs(W: number): GradientSync[] {
  let pending: { bufs: Float32Array[][]; done: (() => void)[] } = { bufs: [], done: [] };
  return Array.from({ length: W }, (_, rank) => ({
    rank,
    worldSize: W,
    allReduce(buffers: Float32Array[]) {
      return new Promise<void>((resolve) => {
        pending.bufs[rank] = buffers;
        pending.done.push(resolve);
        if (pending.done.length === W) {
          const { bufs, done } = pending;
          pending = { bufs: [], done: [] };
          for (let b = 0; b < buffers.length; b++) {
            const mean = new Float32Array(buffers[b]!.length);
            for (const r of bufs) r[b]!.forEach((v, i) => (mean[i]! += v / W));
            for (const r of bufs) r[b]!.set(mean);
          }
          done.forEach((d) => d());
        }
      });
    },
    broadcast: async (state: Record<string, Float32Array>, meta?: unknown) => ({ state, meta }),
    commitStep: async (_s: number, v: Record<string, number>) => [v],
  }));
}
