import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cosineAnnealingSchedule, cosineSchedule, polySchedule } from '../src/schedules.js';
import { assertClose } from './helpers.js';

test('cosine schedule: linear warm-up (both ends included) then half cosine to the final value', () => {
  const s = cosineSchedule({ base: 1, final: 0.1, totalSteps: 10, warmupSteps: 3, startWarmupValue: 0 });
  // numpy.linspace(0, 1, 3) = [0, 0.5, 1]
  assert.deepEqual([s(0), s(1), s(2)], [0, 0.5, 1]);
  // cosine part: 7 steps, i = step - 3
  assertClose(s(3), 1);
  assertClose(s(5), 0.1 + 0.45 * (1 + Math.cos((Math.PI * 2) / 7)));
  assertClose(s(9), 0.1 + 0.45 * (1 + Math.cos((Math.PI * 6) / 7)));
  assert.equal(s(10), 0.1);
  assert.equal(s(1000), 0.1);
});

test('cosine schedule rising (weight decay 0.04 -> 0.2) and the teacher temperature warm-up', () => {
  const wd = cosineSchedule({ base: 0.04, final: 0.2, totalSteps: 100 });
  assertClose(wd(0), 0.04);
  assertClose(wd(50), 0.12);
  assert.ok(wd(99) > 0.199 && wd(99) < 0.2);
  const temp = cosineSchedule({ base: 0.07, final: 0.07, totalSteps: 30, warmupSteps: 30, startWarmupValue: 0.04 });
  assertClose(temp(0), 0.04);
  assertClose(temp(15), 0.04 + (0.03 * 15) / 29);
  assertClose(temp(29), 0.07);
  assert.equal(temp(500), 0.07);
});

test('cosine schedule: frozen start is 0 and bad lengths are rejected', () => {
  const s = cosineSchedule({ base: 2, final: 2, totalSteps: 5, freezeSteps: 2 });
  assert.deepEqual([0, 1, 2, 3, 4].map(s), [0, 0, 2, 2, 2]);
  assert.throws(() => cosineSchedule({ base: 1, final: 0, totalSteps: 3, warmupSteps: 4 }), /exceed totalSteps/);
});

test("mmcv's poly and cosine-annealing policies: the warm-up multiplies the scheduled value by a factor rising from warmupRatio", () => {
  const poly = polySchedule({ base: 1e-3, totalSteps: 100, warmupSteps: 10, power: 2, minLr: 1e-5 });
  assert.equal(poly(50), (1e-3 - 1e-5) * 0.5 ** 2 + 1e-5);
  assertClose(poly(0), (1e-3 - 1e-5 + 1e-5) * 1e-6, 1e-18);
  assertClose(poly(4), ((1e-3 - 1e-5) * 0.96 ** 2 + 1e-5) * (1 - 0.6 * (1 - 1e-6)), 1e-18);
  const cos = cosineAnnealingSchedule({ base: 2, totalSteps: 10, warmupSteps: 2, warmupRatio: 0.5, minLrRatio: 0.1 });
  assert.equal(cos(10), 0.2);
  assertClose(cos(1), (0.2 + 0.9 * (Math.cos(Math.PI / 10) + 1)) * 0.75);
  assert.equal(cos(5), 0.2 + 0.9 * (Math.cos(Math.PI / 2) + 1));
});

test('cosine schedule of 0 steps (a preset without a teacher-temperature warm-up): the final value at every step', () => {
  const s = cosineSchedule({ base: 0.04, final: 0.07, totalSteps: 0, warmupSteps: 0, startWarmupValue: 0.04 });
  assert.deepEqual([0, 1, 500].map(s), [0.07, 0.07, 0.07]);
});
