/** Messages between a worker's agent (main thread) and its training threads. */
import type { BackendName } from '@vitreg/core';
import type { TrainConfig, TrainEngineOptions, TrainResult } from '@vitreg/trainer';

/** workerData of a training thread. */
export interface ThreadData {
  config: TrainConfig;
  outDir: string;
  resume: boolean | 'auto';
  backend: BackendName;
  /** The rank-0 thread's backend line with the reasons the faster backends were skipped. */
  verbose?: boolean;
  /** The step engine (--engine, --device, --engine-threads); each thread resolves its own. */
  engine?: TrainEngineOptions;
  /** Index of the thread in its process. */
  thread: number;
  rank: number;
  worldSize: number;
  membership: number;
  rankName: string;
  logSamples: boolean;
  progress: boolean;
  checksum: boolean;
  /** The process's stop request (shared memory; set by its signals): `train`'s `stop`. */
  stopFlag?: Int32Array;
}

interface Collective {
  thread: number;
  /** Collective number within the membership epoch (the same on every rank). */
  seq: number;
  membership: number;
  step: number;
}

export type ThreadToAgent =
  /** `data` is a view of a SharedArrayBuffer: the agent writes the means into it. */
  | (Collective & { kind: 'allReduce'; data: Float32Array })
  | (Collective & { kind: 'broadcast'; payload?: Uint8Array })
  | (Collective & { kind: 'commit'; values: Record<string, number> })
  | { kind: 'checkpoint'; thread: number; step: number; path: string }
  | { kind: 'log'; thread: number; line: string }
  | { kind: 'done'; thread: number; result: TrainResult };

export type AgentToThread =
  | { kind: 'result'; seq: number; payload?: Uint8Array; reports?: Record<string, number>[] }
  /** The collective was dropped: the membership changed (`next`: this thread's place in the new one, null while unknown). */
  | { kind: 'aborted'; seq: number; reason: string; next: { membership: number; rank: number; worldSize: number } | null };
