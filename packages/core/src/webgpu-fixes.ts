/**
 * What tfjs' WebGPU backend needs to run right in Node on Dawn, applied to the backend `setupWebGpu`
 * creates:
 *
 * - Device limits: every tensor lives in one storage buffer binding; a tensor over the device's
 *   `maxStorageBufferBindingSize` (or `maxBufferSize`) is an error naming the op that makes it, its shape
 *   and the limit, thrown before anything is sent to the GPU (Dawn would otherwise only print a
 *   validation error and return garbage).
 * - Synchronous reads (`dataSync`, `arraySync`), which the trainer, probes and LOST use: tfjs' WebGPU
 *   backend does them through an OffscreenCanvas, which Node lacks. Here they copy the tensor into a
 *   staging buffer, start mapAsync, and drive Dawn's event processing (the callback Dawn's Node binding
 *   hands to setImmediate, captured while the device is created) until the buffer is mapped: the same
 *   bytes as `data()`, without returning to the event loop.
 * - Kernels: tfjs' AddN binds every input as a storage buffer, so more inputs than the device's
 *   `maxStorageBuffersPerShaderStage` - 1 (8 by default; the trainer sums one square norm per parameter)
 *   make an invalid pipeline and garbage. AddN is replaced on webgpu by the same kernel run on chunks,
 *   each chunk's sum the first input of the next: the same left-to-right sum.
 * - GPU errors: Dawn reports a validation or out-of-memory error asynchronously and the computation
 *   goes on with garbage; here the first such error is kept and thrown, with Dawn's message, by the
 *   next read of a tensor (`data()`, `dataSync()`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { DeviceLike, WebGpuAdapterInfo, WebGpuLimits } from './webgpu-dawn.js';

/** The part of tfjs' WebGPUBackend the limit guard wraps. */
interface GuardedBackend {
  runWebGPUProgram(
    program: { outputShape: number[]; constructor: { name: string } },
    inputs: unknown[],
    outputDtype: string,
    ...rest: unknown[]
  ): unknown;
  uploadToGPU(dataId: object): void;
  tensorMap: { get(dataId: object): { shape: number[]; dtype: string; resource?: unknown } | undefined };
}

/** Bytes per element of a tfjs dtype on the GPU (bool and int32 are 4 bytes there). */
const BYTES: Record<string, number> = { float32: 4, int32: 4, bool: 4, complex64: 8 };

/**
 * The error for a tensor of `shape` over the device's binding limit, or null when it fits. `what`
 * names the tensor (the op that makes it, or 'an uploaded tensor').
 */
export function bindingLimitError(
  what: string,
  shape: number[],
  dtype: string,
  limits: Pick<WebGpuLimits, 'maxStorageBufferBindingSize' | 'maxBufferSize'>,
  adapter = '',
): string | null {
  const bytes = shape.reduce((a, b) => a * b, 1) * (BYTES[dtype] ?? 4);
  const limit = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  if (bytes <= limit) return null;
  const name = limit === limits.maxStorageBufferBindingSize ? 'maxStorageBufferBindingSize' : 'maxBufferSize';
  return (
    `webgpu: ${what} [${shape.join(', ')}] ${dtype} is ${bytes} bytes, over the device's ${name} of ${limit} bytes` +
    `${adapter ? ` (${adapter})` : ''}: use a smaller batch or image size, or another backend`
  );
}

/** Wraps a WebGPUBackend so that a tensor over the device's limits throws bindingLimitError's message. */
export function guardLimits(backend: unknown, device: DeviceLike, info: WebGpuAdapterInfo): void {
  const b = backend as GuardedBackend;
  const limits = { maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize!, maxBufferSize: device.limits.maxBufferSize! };
  const run = b.runWebGPUProgram.bind(b);
  b.runWebGPUProgram = (program, inputs, outputDtype, ...rest) => {
    const op = program.constructor.name.replace(/Program$/, '');
    const error = bindingLimitError(`the output of ${op}`, program.outputShape, outputDtype, limits, info.name);
    if (error) throw new Error(error);
    return run(program, inputs, outputDtype, ...rest);
  };
  const upload = b.uploadToGPU.bind(b);
  b.uploadToGPU = (dataId) => {
    const t = b.tensorMap.get(dataId);
    if (t && t.resource == null) {
      const error = bindingLimitError('an uploaded tensor', t.shape, t.dtype, limits, info.name);
      if (error) throw new Error(error);
    }
    upload(dataId);
  };
}

/**
 * Runs `start` (an async Dawn call) with setImmediate wrapped so that the last function Dawn's Node
 * binding schedules through it is kept: the binding's "process events" callback for this instance
 * (src/dawn/node/binding/AsyncRunner.cpp). Calling it later runs wgpuInstanceProcessEvents at once.
 */
export async function capturePump<T>(start: () => Promise<T>): Promise<{ result: T; pump: (() => void) | null }> {
  const real = globalThis.setImmediate;
  let pump: (() => void) | null = null;
  const wrapper = ((fn: unknown, ...args: unknown[]) => {
    if (typeof fn === 'function' && /\[native code\]/.test(Function.prototype.toString.call(fn))) pump = fn as () => void;
    return (real as (...a: unknown[]) => NodeJS.Immediate)(fn, ...args);
  }) as typeof setImmediate;
  globalThis.setImmediate = Object.assign(wrapper, real);
  try {
    const result = await start();
    return { result, pump };
  } finally {
    globalThis.setImmediate = real;
  }
}

/** The part of tfjs' WebGPUBackend a synchronous read uses. */
interface SyncReadBackend {
  readSync(dataId: object): unknown;
  tensorMap: { get(dataId: object): { values?: unknown; dtype: string; resource?: unknown } | undefined };
  bufferManager: { acquireBuffer(size: number, usage: number): BufferLike; releaseBuffer(buffer: BufferLike): void };
  commandEncoder: { copyBufferToBuffer(src: BufferLike, srcOffset: number, dst: BufferLike, dstOffset: number, size: number): void };
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
}
interface BufferLike {
  size: number;
  mapState: string;
  mapAsync(mode: number): Promise<void>;
  getMappedRange(): ArrayBuffer;
  unmap(): void;
}

/** Replaces the backend's readSync by a staging-buffer copy mapped while driving Dawn's events (see the module comment). */
export function syncReads(backend: unknown, pump: (() => void) | null, check: () => void): void {
  const b = backend as SyncReadBackend & { read(dataId: object): Promise<unknown> };
  const original = b.readSync.bind(b);
  const read = b.read.bind(b);
  b.read = async (dataId) => {
    const values = await read(dataId);
    check();
    return values;
  };
  const g = globalThis as unknown as { GPUBufferUsage: { COPY_DST: number; MAP_READ: number }; GPUMapMode: { READ: number } };
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  b.readSync = (dataId) => {
    const t = b.tensorMap.get(dataId);
    if (!t || t.values != null || t.dtype === 'string' || t.dtype === 'complex64' || !t.resource) return original(dataId);
    if (!pump)
      throw new Error(
        "webgpu: synchronous reads (dataSync) need Dawn's event callback, which this webgpu package did not expose: use data()",
      );
    const source = t.resource as BufferLike;
    const staging = b.bufferManager.acquireBuffer(source.size, g.GPUBufferUsage.COPY_DST | g.GPUBufferUsage.MAP_READ);
    b.ensureCommandEncoderReady();
    b.endComputePassEncoder();
    b.commandEncoder.copyBufferToBuffer(source, 0, staging, 0, source.size);
    b.submitQueue();
    let failure: unknown = null;
    staging.mapAsync(g.GPUMapMode.READ).catch((err: unknown) => {
      failure = err;
    });
    let wait = 0.02;
    while (staging.mapState !== 'mapped') {
      pump();
      if (staging.mapState === 'mapped') break;
      if (staging.mapState === 'unmapped' || failure)
        throw new Error(`webgpu: reading a tensor back failed (${String(failure ?? 'mapping rejected')})`);
      Atomics.wait(sleeper, 0, 0, wait);
      wait = Math.min(wait * 2, 1);
    }
    const bytes = staging.getMappedRange().slice(0);
    staging.unmap();
    b.bufferManager.releaseBuffer(staging);
    check();
    const values = tf.util.convertBackendValuesAndArrayBuffer(bytes, t.dtype as tf.DataType);
    t.values = values;
    return values;
  };
}

/**
 * Keeps the device's first uncaptured GPU error; the returned check throws it (once) with Dawn's
 * message. Without this, Dawn prints the error and tfjs reads back whatever the failed pass left.
 */
export function watchErrors(device: DeviceLike): () => void {
  let pending: string | null = null;
  const d = device as DeviceLike & {
    addEventListener?: (type: string, fn: (ev: { error?: { message?: string } }) => void) => void;
    onuncapturederror?: ((ev: { error?: { message?: string } }) => void) | null;
  };
  const handler = (ev: { error?: { message?: string } }) => {
    pending ??= (ev.error?.message ?? String(ev.error ?? ev)).trim();
  };
  if (typeof d.addEventListener === 'function') d.addEventListener('uncapturederror', handler);
  else d.onuncapturederror = handler;
  return () => {
    if (pending === null) return;
    const message = pending;
    pending = null;
    throw new Error(`webgpu: the GPU reported an error, so results are invalid: ${message.split('\n').slice(0, 4).join(' ')}`);
  };
}

let addNChunked = false;

/**
 * Replaces tfjs' webgpu AddN by the same kernel on at most maxStorageBuffersPerShaderStage - 1 inputs
 * at a time (see the module comment).
 */
export function chunkAddN(): void {
  if (addNChunked) return;
  const config = tf.getKernel('AddN', 'webgpu');
  if (!config) return;
  const original = config.kernelFunc;
  tf.unregisterKernel('AddN', 'webgpu');
  tf.registerKernel({
    kernelName: 'AddN',
    backendName: 'webgpu',
    kernelFunc: ((args: {
      inputs: tf.TensorInfo[] | Record<string, tf.TensorInfo>;
      backend: { device: DeviceLike; disposeData(id: object): void };
    }) => {
      const inputs = Object.values(args.inputs) as tf.TensorInfo[];
      const max = Math.max(2, (args.backend.device.limits.maxStorageBuffersPerShaderStage ?? 8) - 1);
      if (inputs.length <= max) return original(args as never);
      let partial = original({ ...args, inputs: inputs.slice(0, max) } as never) as tf.TensorInfo;
      for (let i = max; i < inputs.length; i += max - 1) {
        const next = original({ ...args, inputs: [partial, ...inputs.slice(i, i + max - 1)] } as never) as tf.TensorInfo;
        args.backend.disposeData(partial.dataId);
        partial = next;
      }
      return partial;
    }) as unknown as tf.KernelFunc,
  });
  addNChunked = true;
}
