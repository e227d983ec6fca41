/**
 * Data-parallel training over worker threads on one machine.
 *
 * `SharedMemorySync` is a `GradientSync` over one SharedArrayBuffer shared by every thread:
 *   control  Int32Array [count, generation, abort, unused, length of rank 0, ..., length of rank W-1]
 *   slots    one Float32Array slot of `slotFloats` values per rank
 * A barrier counts arrivals and bumps `generation` (Atomics.wait / notify). `allReduce` streams the
 * flattened gradients through the slots in chunks of `slotFloats`: each rank writes its chunk,
 * barrier, every rank sums all slots in rank order (so every rank gets bit-identical results) and
 * divides by the world size, barrier again before the slots are reused; the means go back into the
 * caller's buffers. `broadcast` is the same
 * with rank 0 writing and the others reading; `gather` collects one small JSON value per rank
 * (each rank's step report for `commitStep`, rank 0's layout for `broadcast`).
 *
 * `trainThreads(config, { workers, engineOptions })` starts `workers` worker threads, each running
 * `initBackend(<the main thread's backend>)`, resolving its own step engine from `engineOptions`
 * (tfjs without them) and `train(config, { sync, engine })` with rank = its index.
 * `train.batch_size` is per thread: the global batch is batch_size x workers.
 */
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { getBackendName, startThread, type BackendName } from '@vitreg/core';
import type { TrainConfig } from './config.js';
import { checkThreadsOnDevice, type TrainEngineOptions } from './onnx/engine-select.js';
import { contiguousView, flattenBuffers, unflattenInto, type GradientSync } from './sync.js';
import type { TrainOptions, TrainResult } from './loop.js';

const COUNT = 0;
const GENERATION = 1;
const ABORT = 2;
const HEADER = 4;

/** Default slot: 4 Mi floats (16 MiB) per rank; larger gradients go through in several chunks. */
export const DEFAULT_SLOT_FLOATS = 1 << 22;

/** Most worker threads `trainThreads` starts. */
export const MAX_WORKERS = 64;

function controlInts(worldSize: number): number {
  return HEADER + worldSize;
}

export class SharedMemorySync implements GradientSync {
  readonly rank: number;
  readonly worldSize: number;
  /** Floats per rank slot. */
  readonly slotFloats: number;
  private readonly ctrl: Int32Array;
  private readonly slots: Float32Array[];

  /** A zeroed buffer for `worldSize` ranks; hand the same buffer to every rank's SharedMemorySync. */
  static createBuffer(worldSize: number, slotFloats = DEFAULT_SLOT_FLOATS): SharedArrayBuffer {
    if (!Number.isInteger(worldSize) || worldSize < 1)
      throw new Error(`SharedMemorySync: worldSize must be a positive integer, got ${worldSize}`);
    if (!Number.isInteger(slotFloats) || slotFloats < 1024)
      throw new Error(`SharedMemorySync: slotFloats must be an integer >= 1024, got ${slotFloats}`);
    return new SharedArrayBuffer(4 * controlInts(worldSize) + 4 * slotFloats * worldSize);
  }

  constructor(buffer: SharedArrayBuffer, rank: number, worldSize: number) {
    if (!(buffer instanceof SharedArrayBuffer))
      throw new Error('SharedMemorySync: expected a SharedArrayBuffer from SharedMemorySync.createBuffer');
    if (!Number.isInteger(worldSize) || worldSize < 1)
      throw new Error(`SharedMemorySync: worldSize must be a positive integer, got ${worldSize}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize)
      throw new Error(`SharedMemorySync: rank must be an integer in [0, ${worldSize}), got ${rank}`);
    const ctrlBytes = 4 * controlInts(worldSize);
    const slotFloats = (buffer.byteLength - ctrlBytes) / 4 / worldSize;
    if (!Number.isInteger(slotFloats) || slotFloats < 1) {
      throw new Error(`SharedMemorySync: a buffer of ${buffer.byteLength} bytes was not made by createBuffer(${worldSize})`);
    }
    this.rank = rank;
    this.worldSize = worldSize;
    this.slotFloats = slotFloats;
    this.ctrl = new Int32Array(buffer, 0, controlInts(worldSize));
    this.slots = Array.from({ length: worldSize }, (_, r) => new Float32Array(buffer, ctrlBytes + 4 * slotFloats * r, slotFloats));
  }

  /** Wakes every rank waiting in a barrier with an error (a thread failed); later barriers fail at once. */
  static abort(buffer: SharedArrayBuffer): void {
    const ctrl = new Int32Array(buffer, 0, HEADER);
    Atomics.store(ctrl, ABORT, 1);
    Atomics.add(ctrl, GENERATION, 1);
    Atomics.notify(ctrl, GENERATION);
  }

  private checkAbort(): void {
    if (Atomics.load(this.ctrl, ABORT) !== 0) throw new Error(`SharedMemorySync rank ${this.rank}: aborted because another rank failed`);
  }

  /** Blocks until every rank has arrived. */
  private barrier(): void {
    this.checkAbort();
    const gen = Atomics.load(this.ctrl, GENERATION);
    if (Atomics.add(this.ctrl, COUNT, 1) === this.worldSize - 1) {
      Atomics.store(this.ctrl, COUNT, 0);
      Atomics.add(this.ctrl, GENERATION, 1);
      Atomics.notify(this.ctrl, GENERATION);
    } else {
      while (Atomics.load(this.ctrl, GENERATION) === gen) Atomics.wait(this.ctrl, GENERATION, gen);
    }
    this.checkAbort();
  }

  /** Publishes this rank's length, barrier, and checks every rank published the same one. */
  private agreeOnLength(what: string, length: number): void {
    Atomics.store(this.ctrl, HEADER + this.rank, length);
    this.barrier();
    for (let r = 0; r < this.worldSize; r++) {
      const other = Atomics.load(this.ctrl, HEADER + r);
      if (other !== length) {
        throw new Error(`SharedMemorySync.${what}: rank ${this.rank} has ${length} values but rank ${r} has ${other}`);
      }
    }
    this.barrier();
  }

  async allReduce(buffers: Float32Array[]): Promise<void> {
    if (this.worldSize === 1) return;
    // Consecutive views of one buffer (the ONNX Runtime engine's) are reduced in place; others through a copy.
    const whole = contiguousView(buffers);
    const flat = whole ?? flattenBuffers(buffers);
    const total = flat.length;
    this.agreeOnLength('allReduce', total);
    const own = this.slots[this.rank]!;
    const W = this.worldSize;
    for (let start = 0; start < total; start += this.slotFloats) {
      const n = Math.min(this.slotFloats, total - start);
      own.set(flat.subarray(start, start + n));
      this.barrier();
      // This rank's chunk is in its slot: `flat` takes the means in its place.
      const first = this.slots[0]!;
      for (let i = 0; i < n; i++) {
        let s = first[i]!;
        for (let r = 1; r < W; r++) s += this.slots[r]![i]!;
        flat[start + i] = s / W;
      }
      this.barrier();
    }
    if (!whole) unflattenInto(flat, buffers);
  }

  async broadcast(state: Record<string, Float32Array>, meta?: unknown): Promise<{ state: Record<string, Float32Array>; meta: unknown }> {
    if (this.worldSize === 1) return { state, meta };
    // Rank 0's names, sizes and meta first (as JSON), then the values through the slots.
    const layout = (
      await this.gather(
        this.rank === 0 ? { names: Object.keys(state), sizes: Object.values(state).map((v) => v.length), meta: meta ?? null } : null,
      )
    )[0] as { names: string[]; sizes: number[]; meta: unknown };
    const total = layout.sizes.reduce((n, v) => n + v, 0);
    const flat = new Float32Array(total);
    if (this.rank === 0) {
      let off = 0;
      for (const v of Object.values(state)) {
        flat.set(v, off);
        off += v.length;
      }
    }
    const slot = this.slots[0]!;
    for (let start = 0; start < total; start += this.slotFloats) {
      const n = Math.min(this.slotFloats, total - start);
      if (this.rank === 0) slot.set(flat.subarray(start, start + n));
      this.barrier();
      if (this.rank !== 0) flat.set(slot.subarray(0, n), start);
      this.barrier();
    }
    if (this.rank === 0) return { state, meta };
    const out: Record<string, Float32Array> = {};
    let off = 0;
    layout.names.forEach((k, i) => {
      out[k] = flat.slice(off, off + layout.sizes[i]!);
      off += layout.sizes[i]!;
    });
    return { state: out, meta: layout.meta };
  }

  async commitStep(_step: number, values: Record<string, number>): Promise<Record<string, number>[]> {
    return (await this.gather(values)) as Record<string, number>[];
  }

  /** Every rank's `value` (JSON-serialisable, at most 4 x slotFloats bytes as JSON), in rank order. */
  async gather(value: unknown): Promise<unknown[]> {
    const bytes = new TextEncoder().encode(JSON.stringify(value));
    const own = new Uint8Array(this.slots[this.rank]!.buffer, this.slots[this.rank]!.byteOffset, 4 * this.slotFloats);
    if (bytes.length > own.length) {
      SharedMemorySync.abort(this.ctrl.buffer as SharedArrayBuffer);
      throw new Error(`SharedMemorySync.gather: rank ${this.rank}'s value is ${bytes.length} bytes of JSON, the slot holds ${own.length}`);
    }
    own.set(bytes);
    Atomics.store(this.ctrl, HEADER + this.rank, bytes.length);
    this.barrier();
    const out: unknown[] = [];
    const decoder = new TextDecoder();
    for (let r = 0; r < this.worldSize; r++) {
      const s = this.slots[r]!;
      const len = Atomics.load(this.ctrl, HEADER + r);
      out.push(JSON.parse(decoder.decode(new Uint8Array(s.buffer, s.byteOffset, len).slice())));
    }
    this.barrier();
    return out;
  }
}

/** What a training thread receives as workerData. */
export interface ThreadWorkerData {
  config: TrainConfig;
  opts: Omit<TrainOptions, 'sync' | 'engine'>;
  backend: BackendName;
  /** The step engine's options, resolved by each thread (resolveTrainEngine); absent: the tfjs engine. */
  engineOptions?: TrainEngineOptions;
  rank: number;
  worldSize: number;
  buffer: SharedArrayBuffer;
}

export interface ThreadsOptions extends Omit<TrainOptions, 'sync' | 'engine'> {
  /** Worker threads, 1-64 (one per core is the fastest). */
  workers: number;
  /** Backend of every thread (default: the one initBackend chose in this thread, else 'auto'). */
  backend?: BackendName;
  /** Floats per rank of the shared buffer (default DEFAULT_SLOT_FLOATS). */
  slotFloats?: number;
  /**
   * The step engine of every thread, as options (an EngineFactory cannot cross to a worker thread): each
   * thread calls `resolveTrainEngine(engineOptions)` (rank 0 logs its line to stderr). Absent: tfjs.
   * `threads` is then each training thread's ONNX Runtime intra-op threads.
   */
  engineOptions?: TrainEngineOptions;
}

export interface ThreadsResult extends TrainResult {
  /** With `checksum: true`: every rank's weights checksum, in rank order (equal when the ranks agree). */
  checksums?: string[];
}

/** Starts one training thread on the worker entry next to this module (thread-worker.js / .cjs / .ts). */
function startWorker(data: ThreadWorkerData): Worker {
  const ext = extname(fileURLToPath(import.meta.url));
  return startThread(new URL(`./thread-worker${ext}`, import.meta.url), data);
}

/**
 * Trains `config` data-parallel over `opts.workers` threads (see the module comment) and returns
 * rank 0's result. Only rank 0 draws progress and writes metrics, eval.json and checkpoints; the
 * first thread to fail stops the others and its error is thrown with its rank named.
 */
export async function trainThreads(config: TrainConfig, opts: ThreadsOptions): Promise<ThreadsResult> {
  const { workers, backend, slotFloats, engineOptions, ...trainOpts } = opts;
  if (!Number.isInteger(workers) || workers < 1 || workers > MAX_WORKERS) {
    throw new Error(`trainThreads: workers must be an integer in [1, ${MAX_WORKERS}], got ${workers}`);
  }
  if (engineOptions) checkThreadsOnDevice(engineOptions, workers, 'trainThreads: workers');
  const buffer = SharedMemorySync.createBuffer(workers, slotFloats);
  const backendName: BackendName = backend ?? getBackendName() ?? 'auto';
  const threads: Worker[] = [];
  const results: Promise<TrainResult>[] = [];
  for (let rank = 0; rank < workers; rank++) {
    const data: ThreadWorkerData = { config, opts: trainOpts, backend: backendName, engineOptions, rank, worldSize: workers, buffer };
    const w = startWorker(data);
    threads.push(w);
    results.push(
      new Promise((resolve, reject) => {
        let result: TrainResult | undefined;
        w.on('message', (m: TrainResult) => {
          result = m;
        });
        w.on('error', (err) => reject(new Error(`training thread rank ${rank}: ${err.message}`, { cause: err })));
        w.on('exit', (code) => {
          if (result) resolve(result);
          else reject(new Error(`training thread rank ${rank} exited with code ${code} before finishing`));
        });
      }),
    );
  }
  try {
    // The first failure wins; the others are woken from their barriers and stopped.
    const all = await Promise.all(
      results.map((p) =>
        p.catch((err: Error) => {
          SharedMemorySync.abort(buffer);
          throw err;
        }),
      ),
    );
    const out: ThreadsResult = { ...all[0]! };
    if (opts.checksum) out.checksums = all.map((r) => r.checksum!);
    return out;
  } finally {
    await Promise.all(threads.map((w) => w.terminate()));
  }
}
