#!/usr/bin/env node
// Mutation testing of one module, on demand (not in CI):
//   npm run mutate -- packages/trainer/src/losses.ts [--tests a.test.ts,b.test.ts] [--lines 10-80,120-140] [--concurrency N]
//   npm run mutate -- packages/trainer/src/losses.ts --survivors tmp/mutation/packages_trainer_src_losses_ts.json [--timeouts yes]
//   [--timeout-ms N]: Stryker's timeoutMS (default 20000; a mutant's limit is its dry run's time x 2.5 + N)
// Runs StrykerJS (stryker.config.mjs) on the module's lines of numerical code, each mutant checked by the
// module's test files (node's test runner on the TypeScript sources). The table below names, for the
// modules of the numerical core, the test files that check them and the spans of lines worth mutating
// (the numbers; not log lines or error messages); any other module gets the test files that import it.
// Prints Stryker's table (killed, survived, timeout, score) and writes tmp/mutation/<module>.json.
// --survivors <report.json> re-checks only the mutants an earlier run left alive (each one's exact source range;
// mutants nested inside such a range come along), for after tests were added: the report goes to
// tmp/mutation/<module>-survivors.json and the combined score is printed at the end. With --timeouts yes the
// mutants that timed out are checked again too (on a loaded machine a slow test run can pass the limit, and a
// timeout counts as killed: rerun them with a larger --timeout-ms to tell a hang from a slow run).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * module -> { tests, spans? } (spans absent: the whole file). Each span is [first, stop]: from the first line
 * containing `first` (searched after the previous span) up to the line before the next one containing `stop`
 * (null: the file's end), the blank and comment lines before it left out. Resolved to Stryker's line ranges on each run, so that
 * lines added above a span move it along; a text not found is an error naming it.
 */
const modules = {
  'packages/trainer/src/losses.ts': {
    tests: [
      'packages/trainer/test/losses.test.ts',
      'packages/trainer/test/losses-edges.test.ts',
      'packages/trainer/test/bce.test.ts',
      'packages/trainer/test/code-defaults.test.ts',
    ],
  },
  // sinkhorn-step.test.ts checks its wiring into the step too (slow: add it with --tests when the step changes).
  'packages/trainer/src/centering.ts': { tests: ['packages/trainer/test/centering.test.ts', 'packages/trainer/test/recipe.test.ts'] },
  // The updates (AdamW, globalNorm, clipping, LAMB), the defaults and the state's layout; not the constructors'
  // argument checks. Spans between source lines (see above), not line numbers, which went stale once already.
  'packages/trainer/src/optim.ts': {
    tests: [
      'packages/trainer/test/optim.test.ts',
      'packages/trainer/test/optim-edges.test.ts',
      'packages/trainer/test/optim-leaks.test.ts',
      'packages/trainer/test/recipe.test.ts',
    ],
    spans: [
      ['this.beta1 = opts.beta1 ?? 0.9;', 'const names = new Set'], // AdamW's defaults
      ['apply(grads: tf.Tensor[], hp: StepHyperparams): void {', 'export interface ClipOptions'], // AdamW's update, state, globalNorm
      ['export function clipByGlobalNorm(', 'export interface LambOptions'], // clipByGlobalNorm, clipPerModule
      ['this.beta1 = opts.beta1 ?? 0.9;', 'for (const [k, v] of ['], // Lamb's defaults
      ['apply(grads: tf.Tensor[], hp: StepHyperparams): number {', null], // Lamb's update and state, the state's layout
    ],
  },
  'packages/trainer/src/schedules.ts': {
    tests: [
      'packages/trainer/test/schedules.test.ts',
      'packages/trainer/test/schedules-dinov2.test.ts',
      'packages/trainer/test/recipe.test.ts',
    ],
  },
  'packages/trainer/src/param-groups.ts': {
    tests: ['packages/trainer/test/param-groups.test.ts', 'packages/trainer/test/recipe.test.ts', 'packages/trainer/test/optim.test.ts'],
  },
  // memory-fit.test.ts checks maxMaskedPatches (the memory check's bound on the masked rows).
  'packages/trainer/src/masking.ts': {
    tests: ['packages/trainer/test/parts.test.ts', 'packages/trainer/test/masking.test.ts', 'packages/trainer/test/memory-fit.test.ts'],
  },
  'packages/trainer/src/knn.ts': { tests: ['packages/trainer/test/knn.test.ts', 'packages/trainer/test/knn-edges.test.ts'] },
  'packages/probe/src/lost.ts': { tests: ['packages/probe/test/lost.test.ts', 'packages/probe/test/lost-k.test.ts'] },
  'packages/probe/src/corloc.ts': { tests: ['packages/probe/test/corloc.test.ts'] },
  // dense-heads.test.ts checks these functions against PyTorch too, but trains heads (slow): add it with --tests.
  'packages/probe/src/dense-metrics.ts': { tests: ['packages/probe/test/dense-metrics.test.ts', 'packages/probe/test/dense-eval.test.ts'] },
  'packages/probe/src/dense-segmentation.ts': {
    tests: ['packages/probe/test/dense-heads.test.ts', 'packages/probe/test/dense-eval.test.ts'],
  },
  'packages/probe/src/dense-depth.ts': { tests: ['packages/probe/test/dense-heads.test.ts', 'packages/probe/test/dense-eval.test.ts'] },
  'apps/worker/src/ring.ts': { tests: ['apps/worker/test/ring.test.ts', 'apps/worker/test/ring-memory.test.ts'] },
  'packages/core/src/data/sampler.ts': {
    tests: ['packages/core/test/data-sampler.test.ts', 'packages/core/test/data-sampler-edges.test.ts'],
  },
};

function usage(msg) {
  if (msg) process.stderr.write(`mutate: ${msg}\n`);
  process.stderr.write(
    'usage: npm run mutate -- <module.ts> [--tests a.test.ts,b.test.ts] [--lines 10-80,120-140] [--concurrency N]\n' +
      '                         [--survivors earlier-report.json [--timeouts yes]] [--timeout-ms N]\n' +
      `known modules: ${Object.keys(modules).join(', ')}\n`,
  );
  process.exit(2);
}

const args = process.argv.slice(2);
const flags = {};
const positional = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a.startsWith('--')) {
    if (i + 1 >= args.length) usage(`${a} needs a value`);
    flags[a.slice(2)] = args[++i];
  } else positional.push(a);
}
if (positional.length !== 1) usage(positional.length ? 'one module at a time' : 'which module?');
const module = relative(root, join(process.cwd(), positional[0]));
if (!existsSync(join(root, module))) usage(`${module}: no such file`);
for (const k of Object.keys(flags))
  if (!['tests', 'lines', 'concurrency', 'survivors', 'timeouts', 'timeout-ms'].includes(k)) usage(`unknown flag --${k}`);
if (flags.survivors && flags.lines) usage('--survivors and --lines: one or the other');
if (flags.timeouts && !flags.survivors) usage('--timeouts needs --survivors');

/** Test files of the tree that import the module by its relative path (the fallback for modules not in the table). */
function importers(mod) {
  const name = basename(mod).replace(/\.ts$/, '.js');
  const out = [];
  for (const top of ['packages', 'apps']) {
    for (const pkg of readdirSync(join(root, top))) {
      const dir = join(root, top, pkg, 'test');
      if (!existsSync(dir)) continue;
      for (const f of readdirSync(dir)) {
        if (f.endsWith('.test.ts') && readFileSync(join(dir, f), 'utf8').includes(`/${name}'`)) out.push(join(top, pkg, 'test', f));
      }
    }
  }
  return out;
}

/** A module's spans as Stryker's line ranges ('a-b,c-d', 1-based), or an error naming the text not found. */
function resolveSpans(mod, spans) {
  const src = readFileSync(join(root, mod), 'utf8').split('\n');
  let from = 0;
  return spans
    .map(([first, stop]) => {
      const a = src.findIndex((l, i) => i >= from && l.includes(first));
      if (a < 0) usage(`${mod}: no line containing "${first}" (after line ${from}): update its spans in scripts/mutate.mjs`);
      let b = stop === null ? src.length : src.findIndex((l, i) => i > a && l.includes(stop));
      if (b < 0) usage(`${mod}: no line containing "${stop}" after line ${a + 1}: update its spans in scripts/mutate.mjs`);
      // Blank and comment lines before the stop line (its doc comment) are left out.
      while (b - 1 > a && /^\s*(|\/\/.*|\/\*.*|\*.*)$/.test(src[b - 1])) b--;
      from = b;
      return `${a + 1}-${b}`;
    })
    .join(',');
}

const known = modules[module];
const tests = (flags.tests ? flags.tests.split(',') : (known?.tests ?? importers(module))).filter((t) => existsSync(join(root, t)));
if (tests.length === 0) usage(`no test files for ${module} (give --tests)`);
/** An earlier report's mutants of the module: [key, status] (key: place, mutator and replacement). */
function reportMutants(file) {
  const j = JSON.parse(readFileSync(file, 'utf8'));
  const entry = Object.entries(j.files).find(([f]) => relative(root, join(root, f)) === module);
  if (!entry) usage(`${file} has no mutants of ${module}`);
  return entry[1].mutants.map((m) => {
    const { start, end } = m.location;
    return { key: `${start.line}:${start.column}-${end.line}:${end.column} ${m.mutatorName} ${m.replacement}`, m };
  });
}
const recheck = (s) => s === 'Survived' || s === 'NoCoverage' || (flags.timeouts === 'yes' && s === 'Timeout');
const alive = (s) => s === 'Survived' || s === 'NoCoverage';
let earlier;
let mutate;
if (flags.survivors) {
  earlier = reportMutants(flags.survivors);
  // Report columns count from 1, Stryker's ranges from 0.
  const ranges = [
    ...new Set(
      earlier
        .filter(({ m }) => recheck(m.status))
        .map(({ m }) => `${m.location.start.line}:${m.location.start.column - 1}-${m.location.end.line}:${m.location.end.column - 1}`),
    ),
  ];
  if (ranges.length === 0) {
    process.stderr.write(`mutate: ${flags.survivors} has no mutants to check again\n`);
    process.exit(0);
  }
  mutate = ranges.map((r) => `${module}:${r}`);
} else {
  const lines = flags.lines ?? (known?.spans ? resolveSpans(module, known.spans) : undefined);
  mutate = lines ? lines.split(',').map((r) => `${module}:${r}`) : [module];
}

process.stderr.write(
  `mutate: ${flags.survivors ? `${mutate.length} survivors' ranges of ${module}` : mutate.join(', ')}\n  tests: ${tests.join(' ')}\n`,
);
const reportBase = join('tmp', 'mutation', module.replace(/[/.]/g, '_') + (flags.survivors ? '-survivors' : ''));
const env = {
  ...process.env,
  VITREG_MUTATE: mutate.join(','),
  VITREG_MUTATE_TESTS: tests.join(' '),
  VITREG_MUTATE_REPORT: reportBase,
  ...(flags.concurrency ? { VITREG_MUTATE_CONCURRENCY: flags.concurrency } : {}),
  ...(flags['timeout-ms'] ? { VITREG_MUTATE_TIMEOUT_MS: flags['timeout-ms'] } : {}),
};
const r = spawnSync(join(root, 'node_modules', '.bin', 'stryker'), ['run', 'stryker.config.mjs'], { cwd: root, env, stdio: 'inherit' });
if (earlier && r.status === 0) {
  // The earlier run's mutants, each survivor replaced by this run's verdict on it.
  const now = new Map(reportMutants(join(root, `${reportBase}.json`)).map(({ key, m }) => [key, m.status]));
  const count = {};
  const left = [];
  for (const { key, m } of earlier) {
    const status = recheck(m.status) ? (now.get(key) ?? m.status) : m.status;
    count[status] = (count[status] ?? 0) + 1;
    if (alive(status)) left.push(key);
  }
  const killed = (count.Killed ?? 0) + (count.Timeout ?? 0);
  const valid = killed + (count.Survived ?? 0) + (count.NoCoverage ?? 0);
  process.stdout.write(
    `\nmutate: ${module} combined with ${flags.survivors}: ${JSON.stringify(count)}, score ${((100 * killed) / valid).toFixed(2)}%\n` +
      left.map((k) => `  still alive: ${k}\n`).join(''),
  );
}
process.exit(r.status ?? 1);
