/**
 * `npm run bench -- sync-handoff [--params-m 22,304] [--tensors 150] [--repeat 5]`
 * What a cluster worker's training thread pays to hand a step's gradients to its agent (the process's
 * main thread, which runs the ring) and take the means back, without the ring itself (bench allreduce
 * measures that). `--params-m` million float32 gradients (22: ViT-S/14, 304: ViT-L/14), in `--tensors`
 * consecutive views of one buffer as the ONNX Runtime engine hands them out. Two ways, each a worker
 * thread talking to this thread over the real message port:
 *  - `stage` (what GrpcRingSync does, ring-sync.ts): the views copied into the thread's shared stage,
 *    kept from step to step, which the agent reduces in place, and copied back;
 *  - `fresh` (the reference, the handoff before it): the views copied into a new array, transferred to
 *    the agent and back, and copied out.
 * The agent here answers at once (a world of one: the mean is the values). One warm-up, then `repeat`
 * timed calls; one JSON line per (size, way): seconds (median per call), gb_per_s (gradient bytes per
 * second), and every value checked after each call.
 */
import { parseArgs } from 'node:util';
import { availableParallelism } from 'node:os';
import { startThread } from '@vitreg/core';
import type { ThreadToAgent } from '@vitreg/worker';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'params-m': { type: 'string', default: '22,304' },
      tensors: { type: 'string', default: '150' },
      repeat: { type: 'string', default: '5' },
    },
  });
  const repeat = Number(values.repeat);
  const tensors = Number(values.tensors);
  for (const m of values['params-m'].split(',').map(Number)) {
    for (const way of ['stage', 'fresh'] as const) {
      const floats = Math.round(m * 1e6);
      const seconds = await measure({ floats, tensors, repeat, way });
      const line = {
        case: 'sync-handoff',
        way,
        params_m: m,
        tensors,
        mb: +((floats * 4) / 2 ** 20).toFixed(1),
        seconds: +seconds.toFixed(4),
        gb_per_s: +((floats * 4) / seconds / 1e9).toFixed(2),
        cpus: availableParallelism(),
      };
      process.stdout.write(JSON.stringify(line) + '\n');
    }
  }
}

/** One worker thread doing `repeat` + 1 handoffs the given way; this thread is the agent. */
function measure(cfg: { floats: number; tensors: number; repeat: number; way: 'stage' | 'fresh' }): Promise<number> {
  const w = startThread(new URL('./_sync-handoff-thread.ts', import.meta.url), cfg);
  return new Promise((resolve, reject) => {
    w.on('message', (m: ThreadToAgent | { kind: 'timed'; seconds: number }) => {
      if (m.kind === 'timed') {
        resolve(m.seconds);
        void w.terminate();
      } else if (m.kind === 'allReduce') {
        // A world of one: the values are their mean. Shared (the agent's way): in place, no data back;
        // the reference's own array: transferred back.
        if (m.data.buffer instanceof SharedArrayBuffer) w.postMessage({ kind: 'result', seq: m.seq });
        else w.postMessage({ kind: 'result', seq: m.seq, data: m.data }, [m.data.buffer as ArrayBuffer]);
      }
    });
    w.on('error', reject);
  });
}
