/**
 * Which step engine a run trains on, from the options the commands take (`vitreg train`, the cluster
 * worker, the demo, the bench): `--engine auto|tfjs|onnxruntime`, `--device cpu|cuda|webgpu` and
 * `--threads N` (ONNX Runtime's intra-op threads). The options are plain data, so a training thread or a
 * worker process resolves them itself (each rank its own engine); the resolution loads onnxruntime-node
 * once, checks the device with a one-node session, and says what it chose in one line.
 */
import { InputError, MALLOC_TUNABLES, mallocTunablesMissing } from '@vitreg/core';
import { ENGINE_CHOICES, loadOnnxRuntime, ONNX_DEVICES, type EngineChoice, type OnnxDevice } from '@vitreg/registers';
import type { EngineFactory } from '../engine.js';
import { tfjsEngine } from '../tfjs-engine.js';
import { TrainGraph } from './autodiff.js';
import { onnxRuntimeEngine } from './engine.js';
import { GraphSessions } from './engine-sessions.js';

/** The engine options of a training command (all optional: auto, cpu, ONNX Runtime's default threads). */
export interface TrainEngineOptions {
  engine?: EngineChoice;
  device?: OnnxDevice;
  threads?: number;
}

/** A resolved engine: its factory and what to log. */
export interface ResolvedTrainEngine {
  name: 'tfjs' | 'onnxruntime';
  factory: EngineFactory;
  /** One line: `onnxruntime 1.30.0 cpu, 2 threads` or `tfjs (onnxruntime-node does not load here: ...)`. */
  description: string;
}

/** Throws an InputError naming the option unless `o` is well-formed. */
export function checkTrainEngineOptions(o: TrainEngineOptions): void {
  if (o.engine !== undefined && !ENGINE_CHOICES.includes(o.engine)) {
    throw new InputError(`--engine: expected one of ${ENGINE_CHOICES.join(', ')}, got "${o.engine}"`);
  }
  if (o.device !== undefined && !ONNX_DEVICES.includes(o.device)) {
    throw new InputError(`--device: expected one of ${ONNX_DEVICES.join(', ')}, got "${o.device}"`);
  }
  if (o.threads !== undefined && !(Number.isInteger(o.threads) && o.threads >= 1)) {
    throw new InputError(`--threads: expected an integer >= 1, got "${o.threads}"`);
  }
  if (o.engine === 'tfjs' && ((o.device !== undefined && o.device !== 'cpu') || o.threads !== undefined)) {
    throw new InputError(
      `--${o.threads !== undefined ? 'threads' : 'device'} applies to --engine onnxruntime; tfjs picks its device with --backend`,
    );
  }
}

/**
 * Throws an InputError naming `flag` when `threads` training threads of one process would share ONNX
 * Runtime's WebGPU provider: onnxruntime-node 1.30 keeps one WebGPU device context per process, and threads
 * using it at once break it (measured through SwiftShader: two threads creating their first sessions together
 * killed the process with SIGSEGV; two running sessions together failed WebGPU validation, "Command encoding
 * already finished"). One process per GPU instead: `--nodes N` (a worker process each) or one process.
 */
export function checkThreadsOnDevice(o: TrainEngineOptions, threads: number, flag: string): void {
  if (threads > 1 && o.device === 'webgpu' && o.engine !== 'tfjs') {
    throw new InputError(
      `${flag} ${threads} with --device webgpu: ONNX Runtime's WebGPU provider keeps one device context per process and fails when several training threads use it at once; train in one process, or one process per worker (vitreg train --nodes N)`,
    );
  }
}

/** Starts a one-node session on `device`, so that a missing provider fails now, in one line. */
async function probeDevice(device: OnnxDevice, threads: number | undefined): Promise<void> {
  if (device === 'cpu') return;
  const sessions = new GraphSessions({ device, threads });
  try {
    const build = () => {
      const t = new TrainGraph();
      t.output(t.scale(t.input('x', [4]), 2), 'y');
      return {
        bytes: t.encode({ vitreg_graph: 'probe' }),
        inputs: t.inputs,
        outputs: t.outputs,
        parameters: [],
        gradients: [],
        nodes: t.nodeCount,
      };
    };
    await sessions.run('device probe', build, { x: new Float32Array(4) });
  } finally {
    await sessions.release();
  }
}

/**
 * The engine `o` asks for (see the module comment). `auto` is onnxruntime where onnxruntime-node loads
 * (and always when a device other than cpu or a thread count is given), else tfjs. `log` gets one line.
 */
export async function resolveTrainEngine(
  o: TrainEngineOptions = {},
  opts: { log?: (line: string) => void } = {},
): Promise<ResolvedTrainEngine> {
  checkTrainEngineOptions(o);
  const choice = o.engine ?? 'auto';
  const device = o.device ?? 'cpu';
  const explicit = choice === 'onnxruntime' || device !== 'cpu' || o.threads !== undefined;
  let resolved: ResolvedTrainEngine;
  if (choice === 'tfjs') resolved = { name: 'tfjs', factory: tfjsEngine, description: 'tfjs' };
  else {
    let ort: Awaited<ReturnType<typeof loadOnnxRuntime>> | null = null;
    let why = '';
    try {
      ort = await loadOnnxRuntime();
    } catch (err) {
      if (explicit) throw new InputError(`--engine onnxruntime: ${(err as Error).message}`, { cause: err });
      why = (err as Error).message;
    }
    if (!ort) resolved = { name: 'tfjs', factory: tfjsEngine, description: `tfjs (engine auto: ${why})` };
    else {
      try {
        await probeDevice(device, o.threads);
      } catch (err) {
        throw new InputError((err as Error).message, { cause: err });
      }
      const t = o.threads;
      const threads = t ? `${t} thread${t === 1 ? '' : 's'}` : 'default threads';
      resolved = {
        name: 'onnxruntime',
        // onnxRuntimeEngine registers its factory, so objective clip (clip-loop.ts) runs its graphs with these settings
        factory: onnxRuntimeEngine({ ort, device, threads: o.threads }),
        description: `onnxruntime ${ort.env.versions?.common ?? ''} ${device}, ${threads}`.replace('  ', ' '),
      };
    }
  }
  // Outside the bins (a script of the user's, `node` on the built file), say what glibc's defaults cost.
  const malloc =
    resolved.name === 'onnxruntime' && device === 'cpu' && mallocTunablesMissing()
      ? ` (glibc's malloc at its defaults: CPU steps 6-23% longer in the train-step bench; start Node with GLIBC_TUNABLES=${MALLOC_TUNABLES}, as the vitreg bins do)`
      : '';
  opts.log?.(`engine: ${resolved.description}${malloc}`);
  return resolved;
}
