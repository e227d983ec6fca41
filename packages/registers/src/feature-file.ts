/**
 * An encoder's outputs over many images as one safetensors file (what `vitreg features` writes): each
 * batch's outputs under fixed tensor names, streamed to the file batch by batch by core's FeatureWriter,
 * so memory holds one batch. Token order is [CLS, registers, patches]; patches are row-major over the
 * patch grid.
 */
import { FeatureWriter, Progress } from '@vitreg/core';
import type { Encoder, EncoderOutput, HostArray, ImageBatch } from './encoder.js';

/** Which attention maps a features file holds: none, the last block's, or every block's. */
export type FeatureAttention = 'none' | 'last' | 'all';

/**
 * One encode's outputs under the file's tensor names: cls, registers, patches, prenorm, pooled (CLIP
 * towers), attention (`attention: 'last'`) or attention.layerK (`'all'`), and layerK.prenorm (`layers`).
 */
export function featureTensors(out: EncoderOutput, opts: { attention: FeatureAttention; layers: boolean }): Map<string, HostArray> {
  const named = new Map<string, HostArray>([
    ['cls', out.cls],
    ['registers', out.registers],
    ['patches', out.patches],
    ['prenorm', out.prenorm],
  ]);
  if (out.pooled) named.set('pooled', out.pooled);
  if (opts.attention === 'last') named.set('attention', out.attention![0]!);
  if (opts.attention === 'all') out.attention!.forEach((a, k) => named.set(`attention.layer${k}`, a));
  if (opts.layers) out.layers!.forEach((l, k) => named.set(`layer${k}.prenorm`, l));
  return named;
}

export interface FeatureFileOptions {
  /** Images the batches hold in all (the file's first axis). */
  count: number;
  attention?: FeatureAttention;
  /** Every block's output tokens too (layerK.prenorm). */
  layers?: boolean;
  /** The file's `__metadata__`, given the patch grid [rows, cols] of the first batch. */
  metadata?: (grid: [number, number]) => Record<string, string>;
  /** A progress line on stderr (default true). */
  progress?: boolean;
}

/**
 * Runs `encoder` over `batches` (normalised NHWC float32 images) and writes its outputs to `path` (see
 * featureTensors for the names), streamed batch by batch and moved into place at the end; on any error
 * (also one thrown by `batches`, passed on as it is) the partial file is removed and an earlier file at
 * `path` stays. Returns the patch grid of the last batch. The encoder is not disposed.
 */
export async function writeFeatureFile(
  encoder: Encoder,
  batches: AsyncIterable<ImageBatch>,
  path: string,
  o: FeatureFileOptions,
): Promise<{ grid: [number, number] }> {
  const p = encoder.config.patch_size;
  const opts = { attention: o.attention ?? 'none', layers: o.layers ?? false };
  let grid: [number, number] = [0, 0];
  const writer = new FeatureWriter(path, o.count, () => o.metadata?.(grid) ?? {});
  const progress = o.progress === false ? undefined : new Progress({ total: o.count, label: 'features', unit: 'img' });
  try {
    for await (const batch of batches) {
      grid = [batch.shape[1] / p, batch.shape[2] / p];
      const out = await encoder.encode(batch, opts);
      await writer.add(featureTensors(out, opts), batch.shape[0]);
      progress?.tick(batch.shape[0]);
    }
    await writer.finish();
  } catch (err) {
    await writer.abort();
    throw err;
  }
  progress?.done();
  return { grid };
}
