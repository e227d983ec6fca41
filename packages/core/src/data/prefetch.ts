/**
 * Keeps the model fed: loads items ahead of the consumer with a bounded number of loads in flight.
 * Image decoding through sharp runs on libuv's thread pool, so several decodes proceed in parallel
 * with the training step on the main thread; results come back in the order of the indices.
 *
 * How many images decode at the same time is the size of libuv's thread pool, UV_THREADPOOL_SIZE
 * (default 4, at most 1024), which must be set in the environment before Node starts; each decode
 * uses up to `sharp.concurrency()` libvips threads (1 on glibc Linux without jemalloc). For many
 * small JPEGs, many images at once with one thread each is the fast setting.
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
  const prefetcher = new Prefetcher(indices, async (index) => transform(await dataset.get(index), index), opts.prefetch ?? 2 * batchSize);
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

export interface BatchPrefetcherOptions {
  /**
   * Loads submitted and not yet finished, prefetched and direct together (default 256). Loads are
   * started from the main thread, so one blocked by a long synchronous step starts no new load:
   * keep this at least a step's batch so a whole batch is queued on libuv's pool at once (the pool
   * works through it while the step computes). Decodes running at once: min(this, UV_THREADPOOL_SIZE).
   */
  concurrency?: number;
  /** Prefetched batches waiting to be taken (default 2); prefetching one more drops the oldest. */
  maxBatches?: number;
}

interface Job {
  index: number;
  started: boolean;
  cancelled: boolean;
  resolve(item: DatasetItem): void;
  reject(err: unknown): void;
}

interface PrefetchedBatch {
  jobs: Job[];
  items: Promise<DatasetItem[]>;
}

/** The number of images sharp can decode at once: libuv's thread pool size (UV_THREADPOOL_SIZE, default 4). */
export function uvThreadpoolSize(): number {
  const n = Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10);
  return Number.isInteger(n) && n > 0 ? Math.min(n, 1024) : 4;
}

/**
 * Loads the next step's batch while the current step computes, like a PyTorch DataLoader with
 * workers and a prefetch queue. `prefetch(indices)` queues the items of a future batch; `take(indices)`
 * returns the items of a batch in the order of `indices`: the prefetched ones when that exact batch
 * was prefetched (its loads not yet started go first), else loaded now, ahead of every prefetch. At
 * most `concurrency` loads are in flight; prefetched batches wait in a queue of `maxBatches` (oldest
 * dropped first, their loads not yet started cancelled). An error of a load rejects the `take` of
 * its batch (never a prefetch). Items are the dataset's own: equal to `ds.get(i)` for each index.
 *
 * ```ts
 * const loader = new BatchPrefetcher(ds, { concurrency: 256 });
 * for (let s = 0; s < steps; s++) {
 *   loader.prefetch(indicesOf(s + 1)); // decoded on libuv's pool while step s computes
 *   const items = await loader.take(indicesOf(s));
 * }
 * ```
 */
export class BatchPrefetcher {
  readonly concurrency: number;
  readonly maxBatches: number;
  /** Batches taken from the queue (`hits`) and loaded on the spot (`misses`). */
  readonly stats = { hits: 0, misses: 0 };
  private readonly batches = new Map<string, PrefetchedBatch>();
  private urgent: Job[] = [];
  private background: Job[] = [];
  private running = 0;

  constructor(
    readonly dataset: Dataset,
    opts: BatchPrefetcherOptions | number = {},
  ) {
    const o = typeof opts === 'number' ? { concurrency: opts } : opts;
    this.concurrency = o.concurrency ?? 256;
    this.maxBatches = o.maxBatches ?? 2;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) {
      throw new Error(`BatchPrefetcher: concurrency must be a positive integer, got ${this.concurrency}`);
    }
    if (!Number.isInteger(this.maxBatches) || this.maxBatches < 1) {
      throw new Error(`BatchPrefetcher: maxBatches must be a positive integer, got ${this.maxBatches}`);
    }
  }

  /** Loads in flight now. */
  get inFlight(): number {
    return this.running;
  }

  /** Batches prefetched and not yet taken. */
  get queued(): number {
    return this.batches.size;
  }

  /** Queues the loads of a batch that a later `take` with the same indices (same order) will get. */
  prefetch(indices: readonly number[]): void {
    const key = batchKey(indices);
    if (this.batches.has(key)) return;
    const jobs = indices.map((i) => this.job(i));
    const items = Promise.all(jobs.map((j) => j.promise));
    // Rejections surface in take(); this only keeps Node from reporting them as unhandled meanwhile.
    items.catch(() => undefined);
    this.batches.set(key, { jobs: jobs.map((j) => j.job), items });
    while (this.batches.size > this.maxBatches) {
      const [oldest, batch] = this.batches.entries().next().value as [string, PrefetchedBatch];
      this.batches.delete(oldest);
      for (const job of batch.jobs) if (!job.started) job.cancelled = true;
    }
    this.background.push(...jobs.map((j) => j.job));
    this.pump();
  }

  /** The items of `indices`, in order: from the prefetched batch with these indices, else loaded now. */
  take(indices: readonly number[]): Promise<DatasetItem[]> {
    const key = batchKey(indices);
    const batch = this.batches.get(key);
    if (batch) {
      this.batches.delete(key);
      this.stats.hits++;
      const waiting = batch.jobs.filter((j) => !j.started);
      if (waiting.length > 0) {
        const set = new Set(waiting);
        this.background = this.background.filter((j) => !set.has(j));
        this.urgent.push(...waiting);
        this.pump();
      }
      return batch.items;
    }
    this.stats.misses++;
    const jobs = indices.map((i) => this.job(i));
    this.urgent.push(...jobs.map((j) => j.job));
    this.pump();
    return Promise.all(jobs.map((j) => j.promise));
  }

  /** Drops every prefetched batch (loads not yet started are cancelled), e.g. when the batches to come changed. */
  clear(): void {
    for (const batch of this.batches.values()) for (const job of batch.jobs) if (!job.started) job.cancelled = true;
    this.batches.clear();
    this.background = [];
  }

  private job(index: number): { job: Job; promise: Promise<DatasetItem> } {
    let job!: Job;
    const promise = new Promise<DatasetItem>((resolve, reject) => {
      job = { index, started: false, cancelled: false, resolve, reject };
    });
    return { job, promise };
  }

  /** Starts queued loads, urgent ones first, while fewer than `concurrency` run. */
  private pump(): void {
    while (this.running < this.concurrency) {
      const job = this.urgent.shift() ?? this.background.shift();
      if (!job) return;
      if (job.cancelled) continue;
      job.started = true;
      this.running++;
      let load: Promise<DatasetItem>;
      try {
        // Called synchronously, so sharp queues its decode on libuv's pool right now.
        load = this.dataset.get(job.index);
      } catch (err) {
        load = Promise.reject(err);
      }
      load.then(job.resolve, job.reject).finally(() => {
        this.running--;
        this.pump();
      });
    }
  }
}

/** Identifies a batch by its indices in order. */
function batchKey(indices: readonly number[]): string {
  return indices.join(',');
}
