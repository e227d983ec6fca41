import { defineConfig } from 'tsup';

export default defineConfig({
  // main: the vitreg-worker bin; thread: the training threads' entry, found next to the bundle.
  entry: ['src/index.ts', 'src/main.ts', 'src/thread.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  // import.meta.url in the CommonJS build (the agent and the local launcher resolve entries from it).
  shims: true,
});
