import { defineConfig } from 'tsup';

export default defineConfig({
  // thread-worker: the entry of the training threads of trainThreads, found next to the bundle.
  entry: ['src/index.ts', 'src/thread-worker.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  // import.meta.url in the CommonJS build (threads.ts resolves the worker entry from it).
  shims: true,
  // threads.ts calls import.meta.resolve only when running from source (.ts, under tsx), never in
  // dist, so the CommonJS build's empty import.meta there is harmless.
  esbuildOptions(options) {
    options.logOverride = { ...options.logOverride, 'empty-import-meta': 'silent' };
  },
});
