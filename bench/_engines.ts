/**
 * The step engines a training bench can run (`--engine tfjs|onnxruntime|auto`), and a wrapper that times
 * an engine's own work (computeStep + applyStep, wall and CPU seconds) apart from the loop's host work.
 * A `_` file: not a bench case.
 */
import { initBackend, type BackendName } from '@vitreg/core';
import { onnxRuntimeEngine, tfjsEngine, type EngineFactory, type OnnxRuntimeEngineOptions, type StepEngine } from '@vitreg/trainer';

export interface EngineRequest {
  /** ONNX Runtime intra-op threads. */
  threads?: number;
  /** ONNX Runtime execution provider: cpu (default), cuda, webgpu. */
  device?: string;
  /** fp32, or the engine's mixed precision (bf16 / fp16) where it offers one. */
  precision?: string;
  /** tfjs backend (default wasm). */
  backend?: BackendName;
  /** ONNX Runtime session options over the engine's own (SessionSettings.sessionOptions). */
  sessionOptions?: Record<string, unknown>;
  /** WebGPU: the state on the device between runs (OnnxRuntimeEngineOptions.keepOnDevice; default the engine's). */
  keepOnDevice?: boolean;
}

export type LoadedEngine = { factory: EngineFactory; describe: Record<string, unknown> } | { skipped: string };

/** Null when onnxruntime-node loads here (its native library), else why not. */
async function ortLoads(): Promise<string | null> {
  try {
    await import('onnxruntime-node');
    return null;
  } catch (err) {
    return `onnxruntime-node does not load: ${(err as Error).message.split('\n')[0]}`;
  }
}

export async function loadEngine(name: string, r: EngineRequest): Promise<LoadedEngine> {
  if (name === 'auto') {
    const why = await ortLoads();
    if (!why) return loadEngine('onnxruntime', r);
    const tf = await loadEngine('tfjs', r);
    return 'factory' in tf ? { ...tf, describe: { ...tf.describe, auto: `tfjs: ${why}` } } : tf;
  }
  if (name === 'tfjs') {
    if (r.precision && r.precision !== 'fp32') return { skipped: `the tfjs engine trains in float32 only (asked ${r.precision})` };
    const info = await initBackend(r.backend ?? 'wasm', { log: () => {} });
    return { factory: tfjsEngine, describe: { backend: info.name } };
  }
  if (name === 'onnxruntime') {
    const why = await ortLoads();
    if (why) return { skipped: why };
    const opts = {
      threads: r.threads,
      device: r.device ?? 'cpu',
      precision: r.precision ?? 'fp32',
      ...(r.sessionOptions ? { sessionOptions: r.sessionOptions } : {}),
      ...(r.keepOnDevice !== undefined ? { keepOnDevice: r.keepOnDevice } : {}),
    } as OnnxRuntimeEngineOptions;
    try {
      const keep = r.device === 'webgpu' ? { keep_on_device: r.keepOnDevice ?? true } : {};
      return { factory: onnxRuntimeEngine(opts), describe: { device: r.device ?? 'cpu', ...keep } };
    } catch (err) {
      return { skipped: `onnxRuntimeEngine(${JSON.stringify(opts)}): ${(err as Error).message}` };
    }
  }
  throw new Error(`--engine: expected tfjs, onnxruntime or auto, got "${name}"`);
}

export interface EngineTimes {
  /** Wall seconds in computeStep + applyStep since the caller last reset it. */
  seconds: number;
  /** CPU seconds of this process (every thread) in the same calls. */
  cpuSeconds: number;
  /** Of cpuSeconds, those in the kernel (page faults of fresh allocations, thread wake-ups). */
  sysSeconds?: number;
  /** Of seconds, those in applyStep (clipping, the optimiser, the EMA teacher). */
  applySeconds?: number;
}

/** `factory` with computeStep and applyStep timed into `times` (added up; the caller resets it). */
export function timedEngine(factory: EngineFactory, times: EngineTimes): EngineFactory {
  return (ctx) => {
    const engine = factory(ctx);
    return new Proxy(engine, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target) as unknown;
        if (typeof value !== 'function') return value;
        const fn = value as (...a: unknown[]) => unknown;
        if (prop !== 'computeStep' && prop !== 'applyStep') return fn.bind(target);
        return async (...args: unknown[]) => {
          const c0 = process.cpuUsage();
          const t0 = performance.now();
          try {
            return await fn.apply(target, args);
          } finally {
            const c = process.cpuUsage(c0);
            const s = (performance.now() - t0) / 1000;
            times.seconds += s;
            if (prop === 'applyStep' && times.applySeconds !== undefined) times.applySeconds += s;
            times.cpuSeconds += (c.user + c.system) / 1e6;
            if (times.sysSeconds !== undefined) times.sysSeconds += c.system / 1e6;
          }
        };
      },
    }) as StepEngine;
  };
}
