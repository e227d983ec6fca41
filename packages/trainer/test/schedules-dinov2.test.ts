/**
 * cosineSchedule against DINOv2's CosineScheduler at its edges (fixtures/dinov2_reference.json
 * `schedules_more`): a frozen start followed by a warm-up, a one-step warm-up, a rising schedule, and the
 * steps past its end; and the lengths it refuses, named.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { constantSchedule, cosineSchedule } from '../src/schedules.js';
import { assertClose } from './helpers.js';

const ref = JSON.parse(readFileSync(new URL('./fixtures/dinov2_reference.json', import.meta.url), 'utf8'));

test("cosineSchedule equals DINOv2's CosineScheduler with freeze_iters, a one-step warm-up, a rising value, and past total_iters", () => {
  type Case = { opts: Record<string, number>; values: number[] };
  for (const { opts: o, values } of ref.schedules_more as Case[]) {
    const s = cosineSchedule({
      base: o.base_value!,
      final: o.final_value!,
      totalSteps: o.total_iters!,
      warmupSteps: o.warmup_iters,
      startWarmupValue: o.start_warmup_value,
      freezeSteps: o.freeze_iters,
    });
    values.forEach((v, i) => assertClose(s(i), v, 1e-12, `${JSON.stringify(o)} step ${i}`));
  }
});

test('cosineSchedule refuses negative or missing lengths and warm-up + freeze beyond the total, naming them', () => {
  const bad: [Parameters<typeof cosineSchedule>[0], RegExp][] = [
    [{ base: 1, final: 0, totalSteps: -1 }, /expected totalSteps, warmupSteps, freezeSteps >= 0, got -1, 0, 0$/],
    [{ base: 1, final: 0, totalSteps: NaN }, /got NaN, 0, 0$/],
    [{ base: 1, final: 0, totalSteps: 5, warmupSteps: -1 }, /got 5, -1, 0$/],
    [{ base: 1, final: 0, totalSteps: 5, freezeSteps: -2 }, /got 5, 0, -2$/],
    [{ base: 1, final: 0, totalSteps: 4, warmupSteps: 2, freezeSteps: 3 }, /warmupSteps \+ freezeSteps \(5\) exceed totalSteps \(4\)$/],
  ];
  for (const [opts, message] of bad) assert.throws(() => cosineSchedule(opts), message, JSON.stringify(opts));
  // Zero-length parts are fine: the whole run frozen, or all warm-up.
  assert.deepEqual([0, 1, 2].map(cosineSchedule({ base: 1, final: 0, totalSteps: 2, freezeSteps: 2 })), [0, 0, 0]);
  assert.equal(constantSchedule(0.25)(12345), 0.25);
});
