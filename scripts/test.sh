#!/usr/bin/env bash
# The whole test suite: build (tsup: ESM + CJS + .d.ts) and typecheck every package through nx, typecheck
# the benches and root tests (tsconfig.tools.json), lint (ESLint and Prettier's check), then
# run every package's tests with node's test runner against the TypeScript sources (the unit suite), then
# the WebGPU suite (scripts/test-webgpu.sh: the webgpu backend through SwiftShader, or one line saying
# why it is skipped). Each runner ends with its "# pass N / # fail N" summary; the exit status fails
# when either suite failed.
set -euo pipefail
cd "$(dirname "$0")/.."
npx nx run-many -t build typecheck --outputStyle=static
# The benches and the root tests have no package of their own: typecheck them too, then lint the tree.
npx tsc -p tsconfig.tools.json
npm run lint
shopt -s nullglob
files=(test/*.test.ts proto/test/*.test.ts packages/*/test/*.test.ts apps/*/test/*.test.ts)
unit=0
# Two files at a time, the longest first (scripts/unit-tests.mjs says why). The tests run from the
# sources; the vitreg, vitreg-worker and vitreg-coordinator processes they start run the dist that nx
# built above from the same sources (VITREG_CHILDREN_FROM_DIST, @vitreg/core's childNodeArgs): a process
# from the sources cost about 0.7 CPU-seconds more to start (tsx's hooks over every module), and the
# suite starts a few hundred.
VITREG_CHILDREN_FROM_DIST=1 node --conditions=vitreg-source --import tsx scripts/unit-tests.mjs "${files[@]}" || unit=$?
webgpu=0
bash scripts/test-webgpu.sh || webgpu=$?
if ((unit != 0 || webgpu != 0)); then
  echo "tests failed: unit suite exit $unit, webgpu suite exit $webgpu"
  exit 1
fi
