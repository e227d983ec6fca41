/**
 * The entry of a training thread of a cluster worker (started by thread-pool.ts): one rank running
 * @vitreg/trainer's `train` with a `GrpcRingSync` (ring-sync.ts), whose collectives the agent (the
 * process's main thread) runs across the cluster.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initBackend } from '@vitreg/core';
import { resolveTrainEngine, train } from '@vitreg/trainer';
import type { ThreadData, ThreadToAgent } from './messages.js';
import { GrpcRingSync } from './ring-sync.js';

const d = workerData as ThreadData;

async function main(): Promise<void> {
  const log = (line: string) => parentPort!.postMessage({ kind: 'log', thread: d.thread, line } as ThreadToAgent);
  await initBackend(d.backend, d.rank === 0 ? { log, verbose: d.verbose ?? false } : { log: () => {} });
  const sync = new GrpcRingSync(d.thread, d.rank, d.worldSize, d.membership);
  // Each thread its own engine (an EngineFactory cannot cross threads); the first thread says which.
  const engine = await resolveTrainEngine(d.engine, d.thread === 0 ? { log } : {});
  const result = await train(d.config, {
    engine: engine.factory,
    outDir: d.outDir,
    resume: d.resume,
    sync,
    ...(d.stopFlag ? { stop: { flag: d.stopFlag } } : {}),
    progress: d.progress,
    checksum: d.checksum,
    rankName: d.rankName,
    logSamples: d.logSamples,
    log,
  });
  parentPort!.postMessage({ kind: 'done', thread: d.thread, result } as ThreadToAgent);
}

// Only when started as a training thread (workerData holds its config).
if (parentPort && (workerData as ThreadData | undefined)?.config) {
  main().catch((err: unknown) => {
    throw err;
  });
}
