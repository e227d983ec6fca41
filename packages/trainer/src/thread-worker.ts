/**
 * Entry of one training thread started by `trainThreads`: loads the backend, resolves its step engine
 * from `workerData.engineOptions` (tfjs without them), joins the shared buffer as rank `workerData.rank`
 * and runs `train`; posts its TrainResult (with the weights
 * checksum when asked) to the main thread. A failure aborts the shared barriers so the other
 * ranks stop instead of waiting forever.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initBackend } from '@vitreg/core';
import { SharedMemorySync, type ThreadWorkerData } from './threads.js';
import { train } from './loop.js';
import { resolveTrainEngine } from './onnx/engine-select.js';

const d = workerData as ThreadWorkerData;

async function main(): Promise<void> {
  await initBackend(d.backend, d.rank === 0 ? {} : { log: () => {} });
  const engine = d.engineOptions
    ? (await resolveTrainEngine(d.engineOptions, d.rank === 0 ? { log: (line) => process.stderr.write(`[vitreg] ${line}\n`) } : {})).factory
    : undefined;
  const sync = new SharedMemorySync(d.buffer, d.rank, d.worldSize);
  const result = await train(d.config, { ...d.opts, sync, engine, progress: d.rank === 0 && d.opts.progress !== false });
  parentPort!.postMessage(result);
}

// No top-level await: the CommonJS build of this file must load too. The rethrown error reaches the
// main thread as the Worker's 'error' event.
main().catch((err: unknown) => {
  SharedMemorySync.abort(d.buffer);
  throw err;
});
