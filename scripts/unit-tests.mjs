/**
 * The unit suite: every test file given on the command line, two at a time, through node:test's `run`
 * (TAP on stdout, exit status 1 when a test failed). `node --test FILES` starts the files in path order
 * whatever order they are given, so the root test/ folder (the launchers, the hosts, the Slurm sweep: some
 * of the longest files) ran last, with one lane idle while the last long file finished. Here the longest
 * files start first (longest processing time first), then the rest in path order, so both lanes end together.
 * Run it as test.sh does: node --conditions=vitreg-source --import tsx scripts/unit-tests.mjs FILES...
 * (the test processes inherit those flags).
 */
import { relative, resolve } from 'node:path';
import { run } from 'node:test';
import { tap } from 'node:test/reporters';

/** The longest files, longest first (seconds of one file in `npm test` on 2 cores, 2026-12-05; the last TAP line lists them). */
const LONGEST = [
  'apps/worker/test/cluster.test.ts', // ~70 s: 13 local cluster jobs
  'test/launchers.test.ts', // ~65 s, most of it waiting on torchrun and Slurm
  'test/hosts.test.ts', // ~50 s: jobs between network namespaces
  'apps/cli/test/demo.test.ts', // ~35 s
  'apps/cli/test/sweep-run.test.ts', // ~30 s
  'test/sweep-slurm.test.ts', // ~30 s, waiting on Slurm
  'packages/trainer/test/train-dino.test.ts', // ~27 s
  'packages/trainer/test/threads.test.ts', // ~26 s
  'apps/cli/test/stop-resume.test.ts', // ~24 s
];

const root = resolve(import.meta.dirname, '..');
const given = [...new Set(process.argv.slice(2).map((f) => relative(root, resolve(f))))].sort();
const first = LONGEST.filter((f) => given.includes(f));
const files = [...first, ...given.filter((f) => !first.includes(f))].map((f) => resolve(root, f));

let failed = false;
/** Seconds per file (the runner's `test:complete` of a whole file), for the list above. */
const seconds = new Map();
const stream = run({ files, concurrency: 2 });
stream.on('test:complete', (ev) => {
  if (ev.nesting === 0 && ev.file && resolve(root, ev.name) === ev.file) {
    seconds.set(relative(root, ev.file), (ev.details?.duration_ms ?? 0) / 1000);
  }
});
stream.on('test:fail', () => (failed = true));
const out = stream.compose(tap);
out.pipe(process.stdout, { end: false });
out.on('end', () => {
  const slowest = [...seconds].sort((a, b) => b[1] - a[1]).slice(0, 12);
  process.stdout.write(`# slowest files: ${slowest.map(([f, s]) => `${f} ${s.toFixed(0)} s`).join(', ')}\n`);
  if (failed) process.exitCode = 1;
});
