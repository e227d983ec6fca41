/**
 * Shards a dataset over the ranks of a data-parallel job, elastically.
 *
 * The data is an endless sequence of epochs; epoch `e` is the items shuffled with `seed + e` (the
 * same permutation on every rank). A global cursor counts the positions the whole job has consumed.
 * A step of a world of W ranks taking B items each covers positions [cursor, cursor + W * B): rank r
 * takes cursor + r, cursor + r + W, cursor + r + 2W, ... (PyTorch's `DistributedSampler` layout).
 * Hence:
 * - the union of a step over the ranks does not depend on W: W ranks x B items are the items of one
 *   rank taking W * B, which is what makes a run on W processes equal to one process;
 * - every item of an epoch is seen exactly once: an epoch's last step continues into the next epoch
 *   instead of padding or dropping;
 * - when the world size changes mid-epoch (a worker leaves or joins), the job goes on from the same
 *   cursor with the new W, and still no item of the epoch is skipped or seen twice.
 * The sampler itself holds no position: the cursor is the training state (one integer, in the
 * checkpoint), so every rank computes its share from (cursor, rank, world size) alone.
 */
import { Rng } from '../rng.js';

export interface DistributedSamplerOptions {
  /** Number of items in the dataset. */
  length: number;
  seed: number;
  shuffle?: boolean;
}

/** One drawn item: the dataset index, its epoch, and its global position in the stream. */
export interface SampleRef {
  epoch: number;
  index: number;
  position: number;
}

export class DistributedSampler {
  readonly length: number;
  readonly seed: number;
  readonly shuffle: boolean;
  private cache = new Map<number, number[]>();

  constructor(opts: DistributedSamplerOptions) {
    const { length, seed } = opts;
    if (!Number.isInteger(length) || length < 1) {
      throw new Error(`DistributedSampler: length must be a positive integer, got ${length}`);
    }
    if (!Number.isInteger(seed)) throw new Error(`DistributedSampler: seed must be an integer, got ${seed}`);
    this.length = length;
    this.seed = seed;
    this.shuffle = opts.shuffle ?? true;
  }

  /** The order of epoch `epoch` (a copy). */
  permutation(epoch: number): number[] {
    return this.order(epoch).slice();
  }

  /** The epoch that global position `position` falls in. */
  epochOf(position: number): number {
    checkPosition(position, 'position');
    return Math.floor(position / this.length);
  }

  /** The item at global position `position`. */
  at(position: number): SampleRef {
    const epoch = this.epochOf(position);
    return { epoch, index: this.order(epoch)[position - epoch * this.length]!, position };
  }

  /**
   * Rank `rank`'s `count` items of the step that starts at global position `cursor` in a world of
   * `worldSize` ranks: positions cursor + rank + worldSize * j, j = 0 .. count - 1. The next step
   * starts at cursor + worldSize * count.
   */
  batch(cursor: number, rank: number, worldSize: number, count: number): SampleRef[] {
    checkPosition(cursor, 'cursor');
    if (!Number.isInteger(worldSize) || worldSize < 1) throw new Error(`DistributedSampler: worldSize must be a positive integer, got ${worldSize}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) throw new Error(`DistributedSampler: rank must be an integer in [0, ${worldSize}), got ${rank}`);
    if (!Number.isInteger(count) || count < 1) throw new Error(`DistributedSampler: count must be a positive integer, got ${count}`);
    return Array.from({ length: count }, (_, j) => this.at(cursor + rank + worldSize * j));
  }

  private order(epoch: number): number[] {
    let o = this.cache.get(epoch);
    if (!o) {
      const range = Array.from({ length: this.length }, (_, i) => i);
      o = this.shuffle ? new Rng(this.seed + epoch).shuffle(range) : range;
      // A step spans at most two epochs: keep the two newest orders.
      if (this.cache.size >= 2) this.cache.delete(Math.min(...this.cache.keys()));
      this.cache.set(epoch, o);
    }
    return o;
  }
}

function checkPosition(p: number, what: string): void {
  if (!Number.isSafeInteger(p) || p < 0) throw new Error(`DistributedSampler: ${what} must be a non-negative integer, got ${p}`);
}
