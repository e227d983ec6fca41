// StrykerJS mutation testing of one module at a time, on demand (not in CI): `npm run mutate -- <module>`.
// scripts/mutate.mjs picks the module's test files and line ranges and passes them here through
// VITREG_MUTATE (Stryker's `mutate` patterns, comma-separated) and VITREG_MUTATE_TESTS (test files,
// space-separated). Each mutant runs node's test runner on those files against the TypeScript sources,
// in a sandbox copy outside the tree (so other work in the tree never sees a mutant).
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const mutate = (process.env.VITREG_MUTATE ?? '').split(',').filter(Boolean);
const tests = process.env.VITREG_MUTATE_TESTS ?? '';
const report = process.env.VITREG_MUTATE_REPORT ?? 'tmp/mutation/report';

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  mutate,
  testRunner: 'command',
  commandRunner: { command: `node --conditions=vitreg-source --import tsx --test --test-concurrency=1 ${tests}` },
  coverageAnalysis: 'off',
  checkers: [],
  concurrency: Number(process.env.VITREG_MUTATE_CONCURRENCY ?? 2),
  timeoutMS: Number(process.env.VITREG_MUTATE_TIMEOUT_MS ?? 20000),
  timeoutFactor: 2.5,
  reporters: ['clear-text', 'progress', 'json'],
  jsonReporter: { fileName: `${report}.json` },
  clearTextReporter: { allowColor: false, logTests: false, reportMutants: true, reportScoreTable: true },
  tempDirName: join(tmpdir(), 'vitreg-stryker'),
  cleanTempDir: true,
  // The sandbox copies the tree (node_modules is linked): not the builds, runs or reports.
  ignorePatterns: ['**/dist', '.nx', 'runs', 'tmp', 'out'],
  disableTypeChecks: false,
  ignoreStatic: false,
  logLevel: 'info',
};
