/**
 * Shards a dataset over the ranks of a job, like PyTorch's `DistributedSampler`: every epoch the
 * indices are shuffled with `seed + epoch` (the same permutation on every rank), padded by repeating
 * the start to a multiple of the world size (or truncated when `dropLast`), and rank `r` takes
 * positions `r, r + worldSize, r + 2 * worldSize, ...`. Within an epoch the shards never overlap.
 *
 * On top of PyTorch's sampler it keeps a read position so a run can resume mid-epoch: `next(n)`
 * hands out the next `n` indices of this rank (rolling into the following epoch when one ends),
 * and `state()` / `restore()` save and reload `{ epoch, position }`.
 */
import { Rng } from '../rng.js';

export interface DistributedSamplerOptions {
  /** Number of items in the dataset. */
  length: number;
  rank: number;
  worldSize: number;
  seed: number;
  shuffle?: boolean;
  /** Drop the tail so every rank gets the same count without padding (default false: pad by repetition). */
  dropLast?: boolean;
}

/** Where a sampler stands: the epoch, and how many of this rank's indices of it were consumed. */
export interface SamplerState {
  epoch: number;
  position: number;
}

export class DistributedSampler {
  readonly length: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  /** Indices this rank gets per epoch. */
  readonly numSamples: number;
  /** Indices over all ranks per epoch (`numSamples * worldSize`). */
  readonly totalSize: number;
  private epoch = 0;
  private position = 0;
  private cache: { epoch: number; indices: number[] } | null = null;

  constructor(opts: DistributedSamplerOptions) {
    const { length, rank, worldSize, seed } = opts;
    if (!Number.isInteger(length) || length < 1) {
      throw new Error(`DistributedSampler: length must be a positive integer, got ${length}`);
    }
    if (!Number.isInteger(worldSize) || worldSize < 1) {
      throw new Error(`DistributedSampler: worldSize must be a positive integer, got ${worldSize}`);
    }
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) {
      throw new Error(`DistributedSampler: rank must be an integer in [0, ${worldSize}), got ${rank}`);
    }
    if (!Number.isInteger(seed)) throw new Error(`DistributedSampler: seed must be an integer, got ${seed}`);
    this.length = length;
    this.rank = rank;
    this.worldSize = worldSize;
    this.seed = seed;
    this.shuffle = opts.shuffle ?? true;
    this.dropLast = opts.dropLast ?? false;
    if (this.dropLast && length % worldSize !== 0) {
      this.numSamples = Math.ceil((length - worldSize) / worldSize);
    } else {
      this.numSamples = Math.ceil(length / worldSize);
    }
    if (this.numSamples < 1) {
      throw new Error(`DistributedSampler: dropLast with length ${length} < worldSize ${worldSize} leaves no samples`);
    }
    this.totalSize = this.numSamples * worldSize;
  }

  /** Starts epoch `epoch` from its beginning (a different shuffle per epoch). */
  setEpoch(epoch: number): void {
    if (!Number.isInteger(epoch) || epoch < 0) {
      throw new Error(`DistributedSampler: epoch must be a non-negative integer, got ${epoch}`);
    }
    this.epoch = epoch;
    this.position = 0;
  }

  /** This rank's indices for the current epoch, in order (`numSamples` of them). */
  indices(): number[] {
    if (this.cache?.epoch !== this.epoch) {
      this.cache = { epoch: this.epoch, indices: this.shard(this.epoch) };
    }
    return this.cache.indices.slice();
  }

  /**
   * The next `count` indices of this rank, advancing the position; when the epoch runs out it
   * continues with the next epoch, so the result always has exactly `count` entries.
   */
  next(count: number): number[] {
    if (!Number.isInteger(count) || count < 1) {
      throw new Error(`DistributedSampler: count must be a positive integer, got ${count}`);
    }
    const out: number[] = [];
    while (out.length < count) {
      if (this.position >= this.numSamples) this.setEpoch(this.epoch + 1);
      const epochIndices = this.indices();
      const take = Math.min(count - out.length, this.numSamples - this.position);
      out.push(...epochIndices.slice(this.position, this.position + take));
      this.position += take;
    }
    return out;
  }

  state(): SamplerState {
    return { epoch: this.epoch, position: this.position };
  }

  restore(state: SamplerState): void {
    const { epoch, position } = state;
    if (!Number.isInteger(epoch) || epoch < 0) {
      throw new Error(`DistributedSampler.restore: epoch must be a non-negative integer, got ${epoch}`);
    }
    if (!Number.isInteger(position) || position < 0 || position > this.numSamples) {
      throw new Error(`DistributedSampler.restore: position must be an integer in [0, ${this.numSamples}], got ${position}`);
    }
    this.epoch = epoch;
    this.position = position;
  }

  private shard(epoch: number): number[] {
    const range = Array.from({ length: this.length }, (_, i) => i);
    const all = this.shuffle ? new Rng(this.seed + epoch).shuffle(range) : range;
    let padded: number[];
    if (this.dropLast) {
      padded = all.slice(0, this.totalSize);
    } else {
      padded = all;
      while (padded.length < this.totalSize) {
        padded = padded.concat(all.slice(0, this.totalSize - padded.length));
      }
    }
    const mine: number[] = [];
    for (let i = this.rank; i < this.totalSize; i += this.worldSize) mine.push(padded[i]);
    return mine;
  }
}
