/**
 * ONNX Runtime sessions of the training engine: onnxruntime-node loaded lazily (@vitreg/registers'
 * `loadOnnxRuntime`), one session per graph shape (built once, cached by key: a run needs a handful, the
 * iBOT row buckets of feeds.ts keep it so), execution providers by name as the forward encoder selects them
 * (`cpu`, `cuda` = ONNX Runtime's CUDA 12 provider, `webgpu`), intra-op threads, and the runs themselves:
 * inputs as tensors over the caller's arrays (views of the flat parameter buffers: no copy on the CPU),
 * gradient outputs written by ONNX Runtime into preallocated tensors over the flat gradient buffer.
 *
 * On `webgpu` a run may also take device tensors as inputs (another run's outputs) and leave outputs on
 * the device (`deviceOutputs`: ONNX Runtime's `preferredOutputLocation: 'gpu-buffer'`): the engine keeps its
 * state there between runs (engine-device.ts).
 *
 * What onnxruntime-node 1.30 does not allow: keeping tensors on a CUDA device between runs (its IO binding
 * and `preferredOutputLocation` take WebGPU buffers only), so on `cuda` every run copies its inputs to the
 * device and its outputs back; `transfers` counts those bytes. It also returns every host output,
 * preallocated or not, as a fresh copy in host memory (the binding copies after the run): the engine ignores those.
 */
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { firstErrorLine, loadOnnxRuntime, onnxSessionError, type OnnxDevice } from '@vitreg/registers';
import { TRAINING_SESSION_OPTIONS, type BuiltGraph } from './graphs.js';

export type Ort = typeof import('onnxruntime-node');

/** Where the sessions run. */
export interface SessionSettings {
  /** Execution provider (default cpu). */
  device?: OnnxDevice;
  /** Intra-op threads (default: ONNX Runtime's, one per physical core). */
  threads?: number;
  /** onnxruntime-node itself, already loaded (default: loaded on first use). */
  ort?: Ort;
  /**
   * ONNX Runtime session options spread over the engine's own (TRAINING_SESSION_OPTIONS, the device, the
   * threads), for measurements: e.g. `{ enableCpuMemArena: true }` (`npm run bench -- train-step --ort-options`).
   */
  sessionOptions?: InferenceSession.SessionOptions;
}

/**
 * An input value: float32 (views of the flat buffers, images, targets), int64 (iBOT row indices), or a
 * tensor another run left on the WebGPU device.
 */
export type Feed = Float32Array | BigInt64Array | Tensor;

/** A tensor a run left on the device (not a host array). */
export const onDevice = (v: Feed): v is Tensor => !ArrayBuffer.isView(v);

interface Entry {
  session: InferenceSession;
  graph: BuiltGraph;
}

/** The training engine's sessions (see the module comment). */
export class GraphSessions {
  readonly device: OnnxDevice;
  readonly threads: number | undefined;
  private readonly extra: InferenceSession.SessionOptions;
  private ortModule: Promise<Ort>;
  private readonly entries = new Map<string, Promise<Entry>>();
  /** Host bytes handed to and taken from ONNX Runtime by the runs so far (device copies on cuda / webgpu). */
  readonly transfers = { runs: 0, bytesIn: 0, bytesOut: 0 };

  constructor(settings: SessionSettings = {}) {
    this.device = settings.device ?? 'cpu';
    this.threads = settings.threads;
    this.extra = settings.sessionOptions ?? {};
    this.ortModule = settings.ort ? Promise.resolve(settings.ort) : loadOnnxRuntime();
    // A failure surfaces at the first use; no unhandled rejection before it.
    this.ortModule.catch(() => {});
  }

  /** onnxruntime-node (throws one line when it does not load). */
  ort(): Promise<Ort> {
    return this.ortModule;
  }

  /** Sessions built so far. */
  get count(): number {
    return this.entries.size;
  }

  /** The graphs' session options (graphs.ts: no CPU arena, no memory pattern), the device and threads, then `sessionOptions`. */
  private options(): InferenceSession.SessionOptions {
    return {
      ...TRAINING_SESSION_OPTIONS,
      executionProviders: [this.device],
      interOpNumThreads: 1,
      ...(this.threads ? { intraOpNumThreads: this.threads } : {}),
      logSeverityLevel: 3,
      ...this.extra,
    };
  }

  /**
   * The session of graph `key`, built by `build` the first time. `deviceOutputs` (webgpu): outputs that stay
   * on the device (a key names one set: the caller puts the choice in it).
   */
  get(key: string, build: () => BuiltGraph, deviceOutputs?: (graph: BuiltGraph) => string[]): Promise<Entry> {
    let entry = this.entries.get(key);
    if (!entry) {
      entry = (async () => {
        const ort = await this.ortModule;
        const graph = build();
        const options = this.options();
        const kept = deviceOutputs?.(graph) ?? [];
        if (kept.length > 0) {
          if (this.device !== 'webgpu')
            throw new Error(`onnxruntime engine: outputs stay on the device on webgpu only, not ${this.device}`);
          const on = new Set(kept);
          options.preferredOutputLocation = Object.fromEntries(graph.outputs.map((o) => [o.name, on.has(o.name) ? 'gpu-buffer' : 'cpu']));
        }
        try {
          return { session: await ort.InferenceSession.create(graph.bytes, options), graph };
        } catch (err) {
          throw onnxSessionError(err, this.device, `onnxruntime engine: the ${key} graph`);
        }
      })();
      this.entries.set(key, entry);
      entry.catch(() => this.entries.delete(key));
    }
    return entry;
  }

  /**
   * Runs graph `key` on `feeds` (every graph input by name). `into` gives preallocated outputs (gradient
   * views): ONNX Runtime writes them there. Returns the other host outputs (losses, logits) by name, and in
   * `device` the outputs the session keeps on the device (`get`'s `deviceOutputs`; the caller disposes them).
   */
  async run(
    key: string,
    build: () => BuiltGraph,
    feeds: Record<string, Feed>,
    into: Record<string, Float32Array> = {},
    deviceOutputs?: (graph: BuiltGraph) => string[],
  ) {
    const { session, graph } = await this.get(key, build, deviceOutputs);
    const ort = await this.ortModule;
    const inputs: Record<string, Tensor> = {};
    let bytesIn = 0;
    for (const i of graph.inputs) {
      const v = feeds[i.name];
      if (!v) throw new Error(`onnxruntime engine: no value for input "${i.name}" of the ${key} graph`);
      const n = i.shape.reduce((a, b) => a * b, 1);
      const got = onDevice(v) ? v.size : v.length;
      if (got !== n) throw new Error(`onnxruntime engine: input "${i.name}" of the ${key} graph has ${got} values, expected ${n}`);
      if (onDevice(v)) {
        inputs[i.name] = v;
        continue;
      }
      inputs[i.name] =
        i.dtype === 'int64' ? new ort.Tensor('int64', v as BigInt64Array, i.shape) : new ort.Tensor('float32', v as Float32Array, i.shape);
      bytesIn += v.byteLength;
    }
    // Every output is fetched (preallocated or null): onnxruntime-node names a subset's results by position.
    const kept = new Set(deviceOutputs?.(graph) ?? []);
    const fetches: Record<string, Tensor | null> = {};
    let bytesOut = 0;
    for (const o of graph.outputs) {
      const buf = into[o.name];
      fetches[o.name] = buf ? new ort.Tensor('float32', buf, o.shape) : null;
      if (!kept.has(o.name)) bytesOut += o.shape.reduce((a, b) => a * b, 1) * 4;
    }
    let res: InferenceSession.ReturnType;
    try {
      res = await session.run(inputs, fetches);
    } catch (err) {
      throw new Error(`onnxruntime engine: the ${key} graph failed: ${firstErrorLine(err)}`, { cause: err });
    }
    this.transfers.runs += 1;
    this.transfers.bytesIn += bytesIn;
    this.transfers.bytesOut += bytesOut;
    const out: Record<string, Float32Array> = {};
    const device: Record<string, Tensor> = {};
    for (const o of graph.outputs) {
      if (kept.has(o.name)) device[o.name] = res[o.name]!;
      else if (!into[o.name]) out[o.name] = res[o.name]!.data as Float32Array;
    }
    return { outputs: out, device, graph };
  }

  /** Releases every session. */
  async release(): Promise<void> {
    const all = [...this.entries.values()];
    this.entries.clear();
    for (const e of all)
      await e.then(
        (x) => x.session.release(),
        () => {},
      );
  }
}
