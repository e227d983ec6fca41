import { defineConfig } from 'tsup';

export default defineConfig({
  // src/index.ts bundles src/generated/ (written by scripts/generate.mjs before tsup runs).
  entry: ['src/index.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  // import.meta.url in the CommonJS build (PROTO_PATH is resolved from it).
  shims: true,
});
