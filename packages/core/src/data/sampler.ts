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
 * `RASampler` is the same over DeiT's repeated-augmentation list (each image R times in a row).
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
  /**
   * Which copy of the image this is under repeated augmentation (`RASampler`): 0 .. repeats - 1.
   * Absent for `DistributedSampler`, where (epoch, index) already names one draw.
   */
  repeat?: number;
}

/** What the trainer needs of a sampler driven by the global cursor (DistributedSampler, RASampler). */
export interface CursorSampler {
  /** Number of items in the dataset. */
  readonly length: number;
  /** Positions per epoch (the epoch of position p is floor(p / epochLength)). */
  readonly epochLength: number;
  permutation(epoch: number): number[];
  epochOf(position: number): number;
  at(position: number): SampleRef;
  batch(cursor: number, rank: number, worldSize: number, count: number): SampleRef[];
}

export class DistributedSampler implements CursorSampler {
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

  /** Positions per epoch: every item once. */
  get epochLength(): number {
    return this.length;
  }

  /** The order of epoch `epoch` (a copy). */
  permutation(epoch: number): number[] {
    return this.order(epoch).slice();
  }

  /** The epoch that global position `position` falls in. */
  epochOf(position: number): number {
    checkPosition('DistributedSampler', position, 'position');
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
    checkBatch('DistributedSampler', cursor, rank, worldSize, count);
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

function checkPosition(who: string, p: number, what: string): void {
  if (!Number.isSafeInteger(p) || p < 0) throw new Error(`${who}: ${what} must be a non-negative integer, got ${p}`);
}

function checkBatch(who: string, cursor: number, rank: number, worldSize: number, count: number): void {
  checkPosition(who, cursor, 'cursor');
  if (!Number.isInteger(worldSize) || worldSize < 1) throw new Error(`${who}: worldSize must be a positive integer, got ${worldSize}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize)
    throw new Error(`${who}: rank must be an integer in [0, ${worldSize}), got ${rank}`);
  if (!Number.isInteger(count) || count < 1) throw new Error(`${who}: count must be a positive integer, got ${count}`);
}

export interface RASamplerOptions extends DistributedSamplerOptions {
  /** Copies of each image (deit/samplers.py `num_repeats`, default 3). */
  repeats?: number;
  /**
   * An epoch is floor(length / epochMultiple) * epochMultiple positions (default 256, the
   * `len(dataset) // 256 * 256` of deit/samplers.py). 1 makes an epoch `length` positions.
   */
  epochMultiple?: number;
}

/**
 * Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019) as DeiT's `RASampler`
 * (deit/samplers.py), on the global cursor of `DistributedSampler`.
 *
 * The official sampler, per epoch e with N items, R repeats and W ranks: perm = randperm(N) seeded
 * with e; the list perm[0] x R, perm[1] x R, ... (repeat_interleave); rank r takes list[r::W] and
 * keeps its first floor((N // 256) * 256 / W) entries (`num_selected_samples`). Together the ranks
 * take list positions [0, W * floor(E / W)) with E = (N // 256) * 256, rank r the ones = r mod W,
 * so the padding of the list (to a multiple of W) is never reached. That is exactly the
 * `DistributedSampler` layout over the repeated list, cut at E:
 * - here an epoch is E = floor(N / epochMultiple) * epochMultiple positions of the repeated list of
 *   that epoch's permutation (the same permutation as DistributedSampler: Rng(seed + epoch), not
 *   torch's randperm seeded with the epoch); position q of an epoch is copy q mod R of image
 *   perm[floor(q / R)];
 * - an epoch therefore shows ceil(E / R) distinct images (about N / R), each R times (the last one
 *   fewer when E is not a multiple of R); the rest of the permutation is not seen that epoch;
 * - the R copies of an image are consecutive positions, so in a step (positions c + r + W j) they go
 *   to R different ranks (W >= R) at the same j, or straddle two steps when they wrap around rank
 *   W - 1 -> 0, as with the official interleaving;
 * - E does not depend on W, which keeps the job exact when the world size changes; it equals the
 *   official epoch when W divides E (any power of two up to 256 when N >= 256). The official
 *   DataLoader's drop_last also drops each rank's last partial batch of an epoch; here the epoch's
 *   last step runs into the next epoch, as with DistributedSampler.
 * Every SampleRef carries `repeat` (0 .. R - 1), so the copies of one image get different
 * augmentations: fork the per-image generator with it.
 */
export class RASampler implements CursorSampler {
  readonly length: number;
  readonly seed: number;
  readonly shuffle: boolean;
  readonly repeats: number;
  readonly epochMultiple: number;
  readonly epochLength: number;
  private readonly orders: DistributedSampler;

  constructor(opts: RASamplerOptions) {
    this.repeats = opts.repeats ?? 3;
    this.epochMultiple = opts.epochMultiple ?? 256;
    if (!Number.isInteger(this.repeats) || this.repeats < 1) {
      throw new Error(`RASampler: repeats must be a positive integer, got ${this.repeats}`);
    }
    if (!Number.isInteger(this.epochMultiple) || this.epochMultiple < 1) {
      throw new Error(`RASampler: epochMultiple must be a positive integer, got ${this.epochMultiple}`);
    }
    this.orders = new DistributedSampler(opts);
    this.length = this.orders.length;
    this.seed = this.orders.seed;
    this.shuffle = this.orders.shuffle;
    this.epochLength = Math.floor(this.length / this.epochMultiple) * this.epochMultiple;
    if (this.epochLength === 0) {
      throw new Error(
        `RASampler: length ${this.length} < epochMultiple ${this.epochMultiple} gives empty epochs (deit/samplers.py keeps len // 256 * 256 samples); lower epochMultiple`,
      );
    }
  }

  /** The image order of epoch `epoch` (a copy); the epoch shows its first ceil(epochLength / repeats) images. */
  permutation(epoch: number): number[] {
    return this.orders.permutation(epoch);
  }

  /** The epoch that global position `position` falls in. */
  epochOf(position: number): number {
    checkPosition('RASampler', position, 'position');
    return Math.floor(position / this.epochLength);
  }

  /** The item at global position `position`: copy q mod R of image perm[floor(q / R)], q its place in the epoch. */
  at(position: number): SampleRef {
    const epoch = this.epochOf(position);
    const q = position - epoch * this.epochLength;
    const k = Math.floor(q / this.repeats);
    return { epoch, index: this.orders.at(epoch * this.length + k).index, position, repeat: q - k * this.repeats };
  }

  /** As DistributedSampler.batch: positions cursor + rank + worldSize * j, j = 0 .. count - 1. */
  batch(cursor: number, rank: number, worldSize: number, count: number): SampleRef[] {
    checkBatch('RASampler', cursor, rank, worldSize, count);
    return Array.from({ length: count }, (_, j) => this.at(cursor + rank + worldSize * j));
  }
}
