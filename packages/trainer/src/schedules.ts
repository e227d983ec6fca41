/**
 * Per-step schedules of every training in vitreg, each a pure function of the step (0-based):
 * - `cosineSchedule`, DINOv2's `CosineScheduler` (the trainer's learning rate, weight decay, teacher
 *   momentum and temperature): an optional frozen start (value 0), a linear warm-up from
 *   `startWarmupValue` to `base` (numpy linspace, both ends included), then a half-cosine from `base`
 *   down (or up) to `final`; after `totalSteps` the value stays `final`;
 * - `polySchedule` and `cosineAnnealingSchedule`, mmcv's `poly` and `CosineAnnealing` learning-rate
 *   policies with its linear warm-up, which multiplies the scheduled value by a factor rising from
 *   `warmupRatio` (the dense probes' heads, as DINOv2's mmseg / depth configs train them).
 */
export interface CosineScheduleOptions {
  base: number;
  final: number;
  totalSteps: number;
  warmupSteps?: number;
  startWarmupValue?: number;
  freezeSteps?: number;
}

/** A schedule is a pure function of the step (0-based), so resuming needs no schedule state. */
export type Schedule = (step: number) => number;

export function cosineSchedule(opts: CosineScheduleOptions): Schedule {
  const { base, final, totalSteps } = opts;
  const warmup = opts.warmupSteps ?? 0;
  const start = opts.startWarmupValue ?? 0;
  const freeze = opts.freezeSteps ?? 0;
  if (!(totalSteps >= 0) || warmup < 0 || freeze < 0) {
    throw new Error(`cosineSchedule: expected totalSteps, warmupSteps, freezeSteps >= 0, got ${totalSteps}, ${warmup}, ${freeze}`);
  }
  const cosineLen = totalSteps - warmup - freeze;
  if (cosineLen < 0) {
    throw new Error(`cosineSchedule: warmupSteps + freezeSteps (${warmup + freeze}) exceed totalSteps (${totalSteps})`);
  }
  return (step: number) => {
    if (step >= totalSteps) return final;
    if (step < freeze) return 0;
    const w = step - freeze;
    if (w < warmup) return warmup === 1 ? start : start + ((base - start) * w) / (warmup - 1);
    const i = w - warmup;
    return final + 0.5 * (base - final) * (1 + Math.cos((Math.PI * i) / cosineLen));
  };
}

/** A constant schedule. */
export function constantSchedule(value: number): Schedule {
  return () => value;
}

/** mmcv's linear warm-up: the scheduled `lr` times a factor rising from `ratio` at iteration 0 to 1 at `warmupSteps`. */
function mmcvWarmup(lr: number, t: number, warmupSteps: number, ratio: number): number {
  if (t >= warmupSteps) return lr;
  const k = (1 - t / warmupSteps) * (1 - ratio);
  return lr * (1 - k);
}

export interface PolyScheduleOptions {
  base: number;
  totalSteps: number;
  /** Linear warm-up iterations (default 0) from `warmupRatio` (default 1e-6) of the scheduled value. */
  warmupSteps?: number;
  warmupRatio?: number;
  /** Default 1. */
  power?: number;
  /** Default 0. */
  minLr?: number;
}

/** mmcv's `poly` policy: (base - minLr) (1 - t / totalSteps)^power + minLr, with mmcv's linear warm-up. */
export function polySchedule(o: PolyScheduleOptions): Schedule {
  const minLr = o.minLr ?? 0;
  const power = o.power ?? 1;
  return (t) => mmcvWarmup((o.base - minLr) * (1 - t / o.totalSteps) ** power + minLr, t, o.warmupSteps ?? 0, o.warmupRatio ?? 1e-6);
}

export interface CosineAnnealingOptions {
  base: number;
  totalSteps: number;
  /** Linear warm-up iterations (default 0) from `warmupRatio` (default 1e-3) of the scheduled value. */
  warmupSteps?: number;
  warmupRatio?: number;
  /** The final value as a fraction of `base` (default 1e-8). */
  minLrRatio?: number;
}

/** mmcv's `CosineAnnealing` policy: a half cosine from base to base x minLrRatio over totalSteps, with mmcv's linear warm-up. */
export function cosineAnnealingSchedule(o: CosineAnnealingOptions): Schedule {
  const end = o.base * (o.minLrRatio ?? 1e-8);
  return (t) =>
    mmcvWarmup(end + ((o.base - end) / 2) * (Math.cos((Math.PI * t) / o.totalSteps) + 1), t, o.warmupSteps ?? 0, o.warmupRatio ?? 1e-3);
}
