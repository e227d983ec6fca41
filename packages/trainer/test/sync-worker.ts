/**
 * Worker of threads.test.ts: joins the shared buffer as workerData.rank and runs one collective
 * on plain arrays (cpu backend), posting what it got back.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { SharedMemorySync } from '../src/threads.js';

interface Job {
  buffer: SharedArrayBuffer;
  rank: number;
  worldSize: number;
  op: 'allReduce' | 'broadcast' | 'gather' | 'fail';
  /** allReduce: this rank's tensors; broadcast: this rank's state. */
  arrays: { shape: number[]; data: number[] }[];
}

async function main(): Promise<void> {
  const j = workerData as Job;
  await tf.setBackend('cpu');
  const sync = new SharedMemorySync(j.buffer, j.rank, j.worldSize);
  if (j.op === 'allReduce') {
    const grads = j.arrays.map((a) => Float32Array.from(a.data));
    await sync.allReduce(grads);
    parentPort!.postMessage(grads.map((g, i) => ({ shape: j.arrays[i]!.shape, data: Array.from(g) })));
  } else if (j.op === 'broadcast') {
    const state: Record<string, Float32Array> = {};
    j.arrays.forEach((a, i) => {
      state[`t${i}`] = Float32Array.from(a.data);
    });
    const out = await sync.broadcast(state, { from: j.rank });
    parentPort!.postMessage({ meta: out.meta, state: Object.entries(out.state).map(([k, v]) => ({ name: k, data: Array.from(v) })) });
  } else if (j.op === 'gather') {
    parentPort!.postMessage(await sync.gather({ rank: j.rank, words: j.arrays[0]!.data }));
  } else {
    // Rank 0 fails before the collective; the others wait in it until the main thread aborts.
    if (j.rank === 0) throw new Error('rank 0 failed on purpose');
    await sync.allReduce([Float32Array.from(j.arrays[0]!.data)]);
    parentPort!.postMessage('passed the barrier');
  }
}

main().catch((err: unknown) => {
  SharedMemorySync.abort(workerData.buffer as SharedArrayBuffer);
  throw err;
});
