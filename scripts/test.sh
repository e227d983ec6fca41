#!/usr/bin/env bash
# The whole test suite: build (tsup: ESM + CJS + .d.ts) and typecheck every package through nx,
# then run every package's tests with node's test runner against the TypeScript sources. The runner
# goes last so its "# pass N / # fail N" summary ends the output.
set -euo pipefail
cd "$(dirname "$0")/.."
npx nx run-many -t build typecheck --outputStyle=static
shopt -s nullglob
files=(test/*.test.ts proto/test/*.test.ts packages/*/test/*.test.ts apps/*/test/*.test.ts)
exec node --conditions=vitreg-source --import tsx --test --test-concurrency=2 "${files[@]}"
