/**
 * Image files as batches for a model: decoded one at a time (core's loadImage and a transform), stacked
 * into NHWC float32 batches of one size each, so a long list of files never sits in memory at once.
 */
import { InputError } from './errors.js';
import { loadImage, stackImages, type ImageTransform } from './image.js';

/** A batch of normalised NHWC float32 images [B, H, W, 3] and the files it holds. */
export interface ImageFileBatch {
  data: Float32Array;
  shape: [number, number, number, number];
  files: string[];
}

/**
 * `files` decoded with `transform`, in order, in batches of at most `batchSize` images of one size: a file
 * that comes out another size than the batch so far starts the next batch (with a transform that gives
 * one size, every batch but the last holds `batchSize`). A file that cannot be read is an InputError
 * naming it.
 */
export async function* imageFileBatches(
  files: readonly string[],
  transform: ImageTransform,
  batchSize: number,
): AsyncGenerator<ImageFileBatch> {
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) {
    throw new Error(`imageFileBatches: batchSize must be an integer >= 1, got ${batchSize}`);
  }
  let pending: { data: Float32Array; height: number; width: number; path: string }[] = [];
  const flush = (): ImageFileBatch => {
    const batch = { ...stackImages(pending), files: pending.map((p) => p.path) };
    pending = [];
    return batch;
  };
  for (const f of files) {
    const img = await loadImage(f, transform).catch((err: Error) => {
      throw new InputError(err.message, { cause: err });
    });
    const otherSize = pending.length > 0 && (pending[0].height !== img.height || pending[0].width !== img.width);
    if (otherSize || pending.length === batchSize) yield flush();
    pending.push({ data: img.data, height: img.height, width: img.width, path: f });
  }
  if (pending.length > 0) yield flush();
}
