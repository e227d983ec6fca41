import assert from 'node:assert/strict';
import { test } from 'node:test';
import { log, setQuiet } from '../src/log.js';
import { formatDuration, Progress } from '../src/progress.js';

/** A stream that records what is written, and a clock the test moves by hand. */
function fakeStream(isTTY: boolean, columns?: number) {
  const chunks: string[] = [];
  return { chunks, stream: { isTTY, columns, write: (s: string) => chunks.push(s) } };
}
function fakeClock() {
  const clock = { t: 1000, now: () => clock.t };
  return clock;
}

test('plain output: one line per 10% and a final line, with rate and ETA', () => {
  const { chunks, stream } = fakeStream(false);
  const clock = fakeClock();
  const p = new Progress({ total: 100, label: 'features', unit: 'img', stream, now: clock.now });
  for (let i = 0; i < 100; i++) {
    clock.t += 10; // 100 img/s
    p.tick(1, i === 49 ? 'loss 0.5' : undefined);
  }
  p.done();
  assert.equal(chunks.length, 10);
  assert.ok(chunks.every((c) => c.endsWith('\n') && !c.includes('\r')));
  assert.equal(chunks[0], 'features: 10/100 (10%) 100 img/s ETA 0:01\n');
  assert.equal(chunks[4], 'features: 50/100 (50%) 100 img/s ETA 0:01 loss 0.5\n');
  assert.equal(chunks[8], 'features: 90/100 (90%) 100 img/s ETA 0:00 loss 0.5\n');
  assert.equal(chunks[9], 'features: done 100/100 in 0:01 (100 img/s) loss 0.5\n');
});

test('plain output: between 10% steps, at most one line per interval', () => {
  const { chunks, stream } = fakeStream(false);
  const clock = fakeClock();
  const p = new Progress({ total: 1_000_000, label: 'train', stream, interval: 5, now: clock.now });
  for (let i = 0; i < 22; i++) {
    clock.t += 1000;
    p.tick(10);
  }
  assert.deepEqual(
    chunks.map((c) => c.split(' ')[1]),
    ['50/1000000', '100/1000000', '150/1000000', '200/1000000'],
  );
  assert.match(chunks[0], /^train: 50\/1000000 \(0%\) 10.0 it\/s ETA 27:46:35\n$/);
});

test('TTY output: a bar redrawn in place, cut to the terminal width, ended by done()', () => {
  const { chunks, stream } = fakeStream(true, 60);
  const clock = fakeClock();
  const p = new Progress({ total: 8, label: 'eval', unit: 'img', stream, now: clock.now });
  for (let i = 0; i < 4; i++) {
    clock.t += 500;
    p.tick(1, 'a long information text that does not fit in sixty columns at all');
  }
  assert.equal(chunks.length, 4);
  assert.ok(chunks.every((c) => c.startsWith('\r') && c.endsWith('\x1b[K')));
  const line = chunks[3].slice(1, -3);
  assert.equal(line.length, 59);
  assert.ok(line.startsWith('eval [=======>       ] 4/8 2.00 img/s ETA 0:02 a long'), line);
  clock.t += 1000;
  p.tick(4);
  p.done();
  p.done();
  p.tick();
  assert.equal(chunks.length, 6);
  assert.ok(chunks[5].startsWith('\reval [===============] 8/8 in 0:03 (2.67 img/s)'), chunks[5]);
  assert.ok(chunks[5].endsWith('\x1b[K\n'));
});

test('TTY output: redraws at most every 100 ms', () => {
  const { chunks, stream } = fakeStream(true);
  const clock = fakeClock();
  const p = new Progress({ total: 1000, label: 'x', stream, now: clock.now });
  for (let i = 0; i < 1000; i++) {
    clock.t += 1;
    p.tick();
  }
  assert.equal(chunks.length, 10);
});

test('quiet mode silences progress and log lines', (t) => {
  const { chunks, stream } = fakeStream(false);
  const written: string[] = [];
  const original = process.stderr.write;
  t.after(() => {
    process.stderr.write = original;
    setQuiet(false);
  });
  process.stderr.write = ((s: string) => written.push(s) > 0) as typeof process.stderr.write;
  log('hello');
  setQuiet(true);
  log('hidden');
  const p = new Progress({ total: 10, label: 'q', stream });
  for (let i = 0; i < 10; i++) p.tick();
  p.done();
  setQuiet(false);
  log('back');
  process.stderr.write = original;
  assert.deepEqual(written, ['[vitreg] hello\n', '[vitreg] back\n']);
  assert.deepEqual(chunks, []);
});

test('formatDuration and bad totals', () => {
  assert.equal(formatDuration(0), '0:00');
  assert.equal(formatDuration(65.4), '1:05');
  assert.equal(formatDuration(3725), '1:02:05');
  assert.throws(() => new Progress({ total: -1, label: 'bad' }), /Progress 'bad': total must be a finite number >= 0, got -1/);
  assert.throws(() => new Progress({ total: Number.NaN, label: 'bad' }), /total must be/);
});

test('an empty loop still ends with one final line', () => {
  const { chunks, stream } = fakeStream(false);
  const clock = fakeClock();
  const p = new Progress({ total: 0, label: 'none', stream, now: clock.now });
  p.done();
  assert.deepEqual(chunks, ['none: done 0/0 in 0:00 (? it/s)\n']);
});
