/** A loop that ended early says so (issue 23): `stopped at N/M`, absolute counts for a resumed loop. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Progress } from '../src/progress.js';

test('Progress.stop: "stopped at N/M" (plain and TTY), counted from start, once; done() after it writes nothing', () => {
  const chunks: string[] = [];
  const clock = { t: 0 };
  const p = new Progress({
    total: 3000,
    start: 900,
    label: 'train',
    unit: 'step',
    stream: { isTTY: false, write: (c) => chunks.push(c) },
    now: () => clock.t,
  });
  for (let i = 0; i < 42; i++) {
    clock.t += 100;
    p.tick(1);
  }
  p.stop('loss 0.1234');
  p.stop();
  p.done();
  assert.deepEqual(chunks, ['train: stopped at 942/3000 in 0:04 (10.0 step/s) loss 0.1234\n']);

  const tty: string[] = [];
  const q = new Progress({ total: 10, label: 'x', stream: { isTTY: true, columns: 80, write: (c) => tty.push(c) }, now: () => clock.t });
  q.tick(4);
  q.stop();
  const last = tty.at(-1)!;
  assert.ok(last.startsWith('\rx [') && last.endsWith('] stopped at 4/10 in 0:00 (? it/s)\x1b[K\n'), JSON.stringify(last));
});
