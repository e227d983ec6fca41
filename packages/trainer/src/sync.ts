/**
 * Synchronisation between data-parallel replicas. The training loop calls, every step whatever the
 * world size: `allReduce` (the mean of the gradients, and of any other per-rank statistic), then
 * `commitStep` (every rank reached this point: the step may now change the state). It calls
 * `broadcast` to start every rank from rank 0's state, and again after a cluster's membership
 * changed (a worker left or joined: the calls above then throw `MembershipChanged`, the step is
 * dropped, the ranks re-sync from the new rank 0 and go on).
 *
 * Implementations: `LocalGradientSync` (one process, one rank), `SharedMemorySync` (threads of one
 * process), and the cluster's ring all-reduce in @vitreg/worker.
 */
export interface GradientSync {
  /** This replica's index in [0, worldSize); in a cluster it can change between membership epochs. */
  readonly rank: number;
  readonly worldSize: number;
  /** A cluster's membership epoch (it grows each time workers leave or join); absent elsewhere. */
  readonly membership?: number;
  /**
   * Replaces the values of each buffer, in place, by their mean over all replicas. Every replica
   * passes the same number of buffers with the same lengths in the same order (gradients in the
   * step engine's parameter order, then the per-rank statistics); afterwards the buffers hold
   * bit-identical values on every replica. Resolves once the buffers hold the means.
   */
  allReduce(buffers: Float32Array[]): Promise<void>;
  /** Rank 0's `state` and `meta` (JSON), delivered to every replica; the others' arguments are ignored. */
  broadcast(state: Record<string, Float32Array>, meta?: unknown): Promise<{ state: Record<string, Float32Array>; meta: unknown }>;
  /**
   * Step barrier and commit: resolves once every replica reached step `step` (all its reductions
   * done, nothing changed yet) to every replica's `values` in rank order. In a cluster it throws
   * `MembershipChanged` when the membership changed first: then no replica applies the step.
   */
  commitStep(step: number, values: Record<string, number>): Promise<Record<string, number>[]>;
  /** Rank 0 wrote a checkpoint of `step` at `path` (a cluster records it). */
  checkpointWritten?(step: number, path: string): Promise<void>;
}

/** Thrown by a cluster's collectives when workers left or joined: the step is dropped and the ranks re-sync. */
export class MembershipChanged extends Error {
  constructor(
    message: string,
    readonly membership: number,
  ) {
    super(message);
    this.name = 'MembershipChanged';
  }
}

/** True for a MembershipChanged error (by name, so that it holds across module copies and threads). */
export function isMembershipChanged(err: unknown): err is MembershipChanged {
  return err instanceof Error && err.name === 'MembershipChanged';
}

/** World size 1: the mean over one replica is the value itself. */
export class LocalGradientSync implements GradientSync {
  readonly rank = 0;
  readonly worldSize = 1;

  async allReduce(_buffers: Float32Array[]): Promise<void> {
    // The mean over one replica is the values themselves.
  }

  async broadcast(state: Record<string, Float32Array>, meta?: unknown): Promise<{ state: Record<string, Float32Array>; meta: unknown }> {
    return { state, meta };
  }

  async commitStep(_step: number, values: Record<string, number>): Promise<Record<string, number>[]> {
    return [values];
  }
}

/**
 * The one Float32Array that `buffers` are consecutive views of (same underlying buffer, each starting
 * where the previous one ends), or null when they are not: a sync then reduces that view in place, with
 * no copy (the ONNX Runtime engine's gradients and batch means are such views of one SharedArrayBuffer).
 */
export function contiguousView(buffers: readonly Float32Array[]): Float32Array | null {
  const first = buffers[0];
  if (!first) return null;
  let end = first.byteOffset + first.byteLength;
  for (let i = 1; i < buffers.length; i++) {
    const b = buffers[i]!;
    if (b.buffer !== first.buffer || b.byteOffset !== end) return null;
    end += b.byteLength;
  }
  return new Float32Array(first.buffer, first.byteOffset, (end - first.byteOffset) / 4);
}

/** The values of `buffers`, one after the other, in one new Float32Array (what a sync sends). */
export function flattenBuffers(buffers: readonly Float32Array[]): Float32Array<ArrayBuffer> {
  const flat = new Float32Array(buffers.reduce((n, b) => n + b.length, 0));
  let off = 0;
  for (const b of buffers) {
    flat.set(b, off);
    off += b.length;
  }
  return flat;
}

/** Copies `flat` back into `buffers`, in order (the inverse of flattenBuffers); the lengths must add up. */
export function unflattenInto(flat: Float32Array, buffers: Float32Array[]): void {
  const total = buffers.reduce((n, b) => n + b.length, 0);
  if (flat.length !== total) throw new Error(`unflattenInto: ${flat.length} values for buffers of ${total} values in all`);
  let off = 0;
  for (const b of buffers) {
    b.set(flat.subarray(off, off + b.length));
    off += b.length;
  }
}
