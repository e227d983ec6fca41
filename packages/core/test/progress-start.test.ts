/** A resumed loop's progress counts absolute units (issue 23): 465/1200, with this session's rate and ETA. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Progress } from '../src/progress.js';

test('Progress with start: absolute counts, rate and ETA of this session only, no line for the units before', () => {
  const chunks: string[] = [];
  const clock = { t: 0 };
  const p = new Progress({
    total: 1200,
    start: 465,
    label: 'train',
    unit: 'step',
    stream: { isTTY: false, write: (c) => chunks.push(c) },
    now: () => clock.t,
  });
  assert.equal(p.n, 465);
  for (let i = 0; i < 15; i++) {
    clock.t += 100; // 10 steps/s
    p.tick(1);
  }
  // 480/1200 is the first line past 40%: this session's 15 steps at 10/s, 720 left: ETA 1:12.
  assert.deepEqual(chunks, ['train: 480/1200 (40%) 10.0 step/s ETA 1:12\n']);
  p.done();
  assert.equal(chunks[1], 'train: done 480/1200 in 0:02 (10.0 step/s)\n');
  assert.throws(() => new Progress({ total: 10, start: 11, label: 'x' }), /start must be a number in \[0, total\], got 11/);
});
