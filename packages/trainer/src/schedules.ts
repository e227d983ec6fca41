/**
 * Per-step schedules, with the semantics of DINOv2's `CosineScheduler`: an optional frozen start
 * (value 0), a linear warm-up from `startWarmupValue` to `base` (numpy linspace, both ends included),
 * then a half-cosine from `base` down (or up) to `final`; after `totalSteps` the value stays `final`.
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
