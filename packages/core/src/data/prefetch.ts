/**
 * Keeps the model fed: loads items ahead of the consumer with a bounded number of loads in flight.
 * Image decoding through sharp runs on libuv's thread pool, so several decodes proceed in parallel
 * with the training step on the main thread; results come back in the order of the indices.
 */
import type { Dataset, DatasetItem } from './types.js';

/**
 * Runs `load(index)` for each index ahead of the consumer, at most `depth` at a time, and yields
 * the results in index order. An error from a load is thrown when the consumer reaches that item.
 */
export class Prefetcher<T> implements AsyncIterable<T> {
  private readonly indices: readonly number[];
  private readonly load: (index: number) => Promise<T>;
  private readonly depth: number;

  constructor(indices: readonly number[], load: (index: number) => Promise<T>, depth = 8) {
    if (!Number.isInteger(depth) || depth < 1) {
      throw new Error(`Prefetcher: depth must be a positive integer, got ${depth}`);
    }
    this.indices = indices;
    this.load = load;
    this.depth = depth;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    const pending: Promise<T>[] = [];
    let started = 0;
    const startNext = (): void => {
      const promise = this.load(this.indices[started++]);
      // Rejections are rethrown when awaited below; this only keeps Node from reporting them as unhandled meanwhile.
      promise.catch(() => undefined);
      pending.push(promise);
    };
    while (started < this.indices.length && pending.length < this.depth) startNext();
    while (pending.length > 0) {
      const value = await pending.shift()!;
      if (started < this.indices.length) startNext();
      yield value;
    }
  }
}

export interface BatchOptions {
  /** Items loaded and transformed ahead of the consumer (default: two batches). */
  prefetch?: number;
  /** Yield a last batch smaller than `batchSize` (default true). */
  keepLast?: boolean;
}

/**
 * Yields batches of `transform(item, index)` for `indices` in order, `batchSize` at a time, with up
 * to `prefetch` items loading ahead. `transform` may be synchronous (augmentations) or async.
 */
export async function* batches<T>(
  dataset: Dataset,
  indices: readonly number[],
  batchSize: number,
  transform: (item: DatasetItem, index: number) => T | Promise<T>,
  opts: BatchOptions = {},
): AsyncGenerator<T[]> {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new Error(`batches: batchSize must be a positive integer, got ${batchSize}`);
  }
  const keepLast = opts.keepLast ?? true;
  const prefetcher = new Prefetcher(
    indices,
    async (index) => transform(await dataset.get(index), index),
    opts.prefetch ?? 2 * batchSize,
  );
  let batch: T[] = [];
  for await (const value of prefetcher) {
    batch.push(value);
    if (batch.length === batchSize) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0 && keepLast) yield batch;
}
