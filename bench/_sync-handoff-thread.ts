/**
 * The training thread of `npm run bench -- sync-handoff`: a step's gradients as consecutive views of one
 * buffer, handed to the agent `repeat` + 1 times either through GrpcRingSync (`stage`) or the way it was
 * done before it (`fresh`: a new array transferred there and back, with this bench's own agent); posts the median seconds per call.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { flattenBuffers, unflattenInto } from '@vitreg/trainer';
import { GrpcRingSync } from '@vitreg/worker';

const { floats, tensors, repeat, way } = workerData as { floats: number; tensors: number; repeat: number; way: 'stage' | 'fresh' };
const port = parentPort!;
const flat = new Float32Array(floats);
const per = Math.ceil(floats / tensors);
const views: Float32Array[] = [];
for (let off = 0; off < floats; off += per) views.push(flat.subarray(off, Math.min(floats, off + per)));

const sync = way === 'stage' ? new GrpcRingSync(0, 0, 1, 1, port) : null;
let seq = 0;
/** The handoff before the stage: a fresh flat copy, transferred to the agent and back, copied out. */
function fresh(buffers: Float32Array[]): Promise<void> {
  const data = flattenBuffers(buffers);
  const s = seq++;
  return new Promise((resolve) => {
    const on = (m: { kind: string; seq: number; data?: Float32Array }) => {
      if (m.kind !== 'result' || m.seq !== s) return;
      port.off('message', on);
      unflattenInto(m.data!, buffers);
      resolve();
    };
    port.on('message', on);
    port.postMessage({ kind: 'allReduce', thread: 0, seq: s, membership: 1, step: 1, data }, [data.buffer]);
  });
}

const times: number[] = [];
for (let i = 0; i <= repeat; i++) {
  for (let j = 0; j < floats; j += 1009) flat[j] = i + j;
  const t0 = performance.now();
  await (sync ? sync.allReduce(views) : fresh(views));
  const t = (performance.now() - t0) / 1000;
  for (let j = 0; j < floats; j += 1009) {
    if (flat[j] !== Math.fround(i + j))
      throw new Error(`sync-handoff (${way}): value ${j} is ${flat[j]} after call ${i}, expected ${i + j}`);
  }
  if (i > 0) times.push(t);
}
times.sort((a, b) => a - b);
port.postMessage({ kind: 'timed', seconds: times[times.length >> 1]! });
