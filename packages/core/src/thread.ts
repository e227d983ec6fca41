/**
 * Starts a worker thread on a module given by URL. From dist (.js / .cjs) it is started as is; from
 * the TypeScript sources (`--import tsx`), the .ts file is started behind a bootstrap that registers
 * tsx's hooks, which a worker thread does not inherit (it does inherit execArgv, hence the export
 * conditions).
 */
import { Worker } from 'node:worker_threads';

export function startThread(entry: URL, workerData: unknown): Worker {
  if (!entry.pathname.endsWith('.ts')) return new Worker(entry, { workerData });
  // Source only (tsx is running): the ESM build of tsx's API, as this module's import would load it.
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); });`;
  return new Worker(boot, { eval: true, workerData });
}
