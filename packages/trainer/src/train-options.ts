/**
 * The options and the result of a training run (`train`, `trainClipObjective`, `trainThreads`): types only,
 * apart from the loops so that loop.ts, clip-loop.ts and clip-setup.ts import them without a circle.
 */
import type { EngineFactory } from './engine.js';
import type { EvalResult } from './evaluate.js';
import type { StopSignal } from './stop.js';
import type { GradientSync } from './sync.js';

export interface TrainOptions {
  /** Run folder: config.json, metrics.jsonl, checkpoints/, eval.json. */
  outDir: string;
  /**
   * Continue from the newest checkpoint in outDir. `true`: that checkpoint, whose config must equal this
   * one; without one the run starts fresh and says so. `'auto'`: the same, but a folder whose newest
   * checkpoint is of another config is a RunMismatchError naming the first differing field (before any
   * work), and a fresh start is silent. `false` (default): start fresh.
   */
  resume?: boolean | 'auto';
  /**
   * Stop on request: once `stop` is aborted (an AbortSignal, or a SharedStop from stopOnSignals, which
   * also reaches worker threads), the run ends after the step in progress with a checkpoint, and the
   * result's `interrupted` says at which step. With several ranks every rank stops after the same step.
   */
  stop?: StopSignal | { flag: Int32Array };
  sync?: GradientSync;
  /** The step engine (default `tfjsEngine`); not available through trainThreads, whose threads run tfjs. */
  engine?: EngineFactory;
  /** Stop after this step with a checkpoint, as an interrupted run would (for tests and preemption). */
  stopAfter?: number;
  /** Draw a progress bar / progress lines on stderr (default true; rank 0 only). */
  progress?: boolean;
  /** Also return a SHA-256 of the final student weights (`TrainResult.checksum`), to compare ranks or runs. */
  checksum?: boolean;
  /**
   * With several ranks, every rank appends one line per step to `<outDir>/ranks/<rankName>.jsonl`
   * (its own loss, timings, rank, world size, membership); default `rank-<rank>`.
   */
  rankName?: string;
  /** Also log the (epoch, index) of every image a rank trained on in its per-rank file. */
  logSamples?: boolean;
  /** Where a rank's notes go (membership changes); default stderr on rank 0. */
  log?: (line: string) => void;
}

export interface TrainResult {
  outDir: string;
  /** Last step run (equals config.train.steps unless stopped early). */
  step: number;
  /** Final evaluation (absent when stopped early). */
  eval?: EvalResult;
  checkpoint: string;
  /** With `checksum: true`: SHA-256 (hex) of this rank's student backbone and heads. */
  checksum?: string;
  /** The run stopped on request (`stop`) after `step`, with a checkpoint of it; `signal` when a signal asked. */
  interrupted?: { step: number; signal?: NodeJS.Signals };
}
