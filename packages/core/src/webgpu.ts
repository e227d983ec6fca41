/**
 * TensorFlow.js's WebGPU backend (`@tensorflow/tfjs-backend-webgpu`) in Node, on Dawn, Chrome's WebGPU
 * implementation, as the `webgpu` npm package ships it prebuilt (Linux: through Vulkan). Both packages
 * are optional dependencies of @vitreg/core; `initBackend('webgpu')` calls `setupWebGpu`.
 *
 * - Adapter choice: `gpu` (the `--gpu N` flag), else VITREG_GPU, else 0, indexes the adapters Dawn lists
 *   (Vulkan's order; on Linux Dawn sorts discrete GPUs first). Dawn's Node binding picks an adapter
 *   only by (a substring of) its name, so adapter N is reachable when no adapter before it carries its
 *   name; among identical GPUs only the first is, and asking for another is an error saying so.
 * - Software adapters (SwiftShader, lavapipe/llvmpipe: Dawn marks them as fallback adapters) are
 *   recognised so that `auto` can pass them over: they are slower than the wasm backend.
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
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';

/** One adapter as Dawn lists it. */
export interface AdapterEntry {
  /** Dawn's backend: 'vulkan' on Linux, 'metal', 'd3d12', ... */
  backend: string;
  /** The driver's device name, e.g. 'NVIDIA H100 80GB HBM3', 'SwiftShader Device (Subzero)'. */
  name: string;
}

/** The limits of a WebGPU device that bound what a model can run. */
export interface WebGpuLimits {
  /** Bytes one tensor may have (one storage buffer binding). */
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
}

/** The adapter `setupWebGpu` chose. */
export interface WebGpuAdapterInfo {
  /** Its index among `adapters`. */
  index: number;
  /** Every adapter Dawn lists, in its order. */
  adapters: AdapterEntry[];
  /** Dawn's backend for it ('vulkan' on Linux). */
  backend: string;
  /** The driver's device name (adapters[index].name). */
  name: string;
  /** WebGPU's GPUAdapterInfo fields. */
  vendor: string;
  architecture: string;
  description: string;
  /** A CPU implementation (SwiftShader, lavapipe): correct, but slower than the wasm backend. */
  software: boolean;
  /** The adapter's limits. */
  limits: WebGpuLimits;
  /** The limits the device was asked for: the adapter's maxima, or WebGPU's defaults. */
  deviceLimits: 'adapter' | 'default';
}

/** What setupWebGpu needs to know. */
export interface WebGpuOptions {
  /** Adapter index (default: VITREG_GPU, else 0). */
  gpu?: number;
  /**
   * Device limits to ask for: 'adapter' (default) asks for the adapter's own maxima, as tfjs does;
   * 'default' keeps WebGPU's defaults (128 MiB per binding), to test the limit errors.
   */
  limits?: 'adapter' | 'default';
  /**
   * Refuse, with one line, when no Vulkan driver manifest is found, before Dawn looks (and prints its
   * own warnings). `auto` sets it; a backend asked for by name lets Dawn search, in case a driver sits
   * where findVulkanDrivers does not look.
   */
  requireDriverFiles?: boolean;
}

/** Minimal shapes of the WebGPU objects used here (no dependency on @webgpu/types). */
interface GpuLike {
  requestAdapter(options?: { powerPreference?: string }): Promise<AdapterLike | null>;
}
interface AdapterLike {
  features: Set<string>;
  limits: Record<string, number>;
  info?: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
  isFallbackAdapter?: boolean;
  requestDevice(descriptor?: { requiredFeatures?: string[]; requiredLimits?: Record<string, number> }): Promise<DeviceLike>;
}
interface DeviceLike {
  limits: Record<string, number>;
  lost?: Promise<{ message?: string }>;
}
interface DawnModule {
  create(flags: string[]): GpuLike;
  globals: Record<string, unknown>;
}

/** The npm install line of the two optional packages. */
export const WEBGPU_INSTALL = 'npm i webgpu @tensorflow/tfjs-backend-webgpu@4.22.0';

/** What to install when Dawn finds no adapter (Linux; other systems: their GPU driver). */
export const VULKAN_HINT =
  "install the Vulkan loader and the GPU's Vulkan driver (Debian/Ubuntu: apt-get install libvulkan1; NVIDIA's driver ships its Vulkan ICD, " +
  "AMD/Intel: mesa-vulkan-drivers); for a software adapter: Debian's chromium with LD_LIBRARY_PATH=/usr/lib/chromium " +
  'VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json';

/** Power preference used both to list adapters and to request one (Dawn sorts by it). */
const POWER = 'high-performance';

/**
 * The adapters in a Dawn rejection message ("Available adapters:\n * backend: 'vulkan', name: '...'"),
 * in order; Dawn's Node binding lists them this way when no adapter matches the `adapter=` flag.
 */
export function parseAdapterList(message: string): AdapterEntry[] {
  const out: AdapterEntry[] = [];
  for (const m of message.matchAll(/^ \* backend: '([^']*)', name: '(.*)'$/gm)) out.push({ backend: m[1]!, name: m[2]! });
  return out;
}

/**
 * The Dawn flags that make requestAdapter return adapter `index` of `adapters`: none for the first,
 * `adapter=<name>` for another whose name no earlier adapter contains (Dawn takes the first adapter
 * whose name contains the flag's value). Throws, naming the adapters, when `index` is out of range or
 * Dawn cannot tell adapter `index` from an earlier one.
 */
export function adapterFlags(adapters: AdapterEntry[], index: number, what = `--gpu ${index}`): string[] {
  if (!Number.isInteger(index) || index < 0) throw new Error(`${what}: expected an adapter index >= 0`);
  const listing = adapters.map((a, i) => `${i}: ${a.name} (${a.backend})`).join('; ');
  if (index >= adapters.length) {
    throw new Error(`${what}: Dawn lists ${adapters.length} WebGPU adapter${adapters.length === 1 ? '' : 's'}${adapters.length ? ` (${listing})` : ''}`);
  }
  if (index === 0) return [];
  const name = adapters[index]!.name;
  const earlier = adapters.findIndex((a, i) => i < index && a.name.includes(name));
  if (earlier >= 0) {
    throw new Error(
      `${what}: adapter ${index} ('${name}') has the name of adapter ${earlier}, and Dawn's Node binding picks adapters by name only ` +
        `(adapters: ${listing}). Give each process its own GPU instead (Kubernetes: one GPU per pod; Slurm: --gpus-per-task=1 ` +
        'with ConstrainDevices=yes; docker --gpus device=N) and use --gpu 0',
    );
  }
  return [`adapter=${name}`];
}

/** Whether an adapter is a CPU implementation: Dawn's fallback flag, or a known software driver's name. */
export function isSoftwareAdapter(info: { isFallbackAdapter?: boolean; vendor?: string; architecture?: string; device?: string; description?: string }, name = ''): boolean {
  if (info.isFallbackAdapter === true) return true;
  const text = [info.vendor, info.architecture, info.device, info.description, name].join(' ');
  return /swiftshader|llvmpipe|lavapipe|softpipe/i.test(text);
}

/**
 * Where the Vulkan loader (libvulkan.so.1) is, or null: LD_LIBRARY_PATH, the ld.so.conf folders and the
 * usual library folders (Linux only; elsewhere Dawn does not use Vulkan and this returns '').
 * Checked first so that a machine without Vulkan gets one clear line instead of Dawn's warning.
 */
export function findVulkanLoader(env: NodeJS.ProcessEnv = process.env): string | null {
  if (process.platform !== 'linux') return '';
  const dirs = (env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean);
  try {
    const confs = ['/etc/ld.so.conf', ...readdirSync('/etc/ld.so.conf.d').filter((f) => f.endsWith('.conf')).map((f) => join('/etc/ld.so.conf.d', f))];
    for (const conf of confs) {
      for (const line of readFileSync(conf, 'utf8').split('\n')) if (line.startsWith('/')) dirs.push(line.trim());
    }
  } catch {
    // no ld.so.conf.d: the usual folders below
  }
  dirs.push('/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib/aarch64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/lib64', '/usr/lib64', '/lib', '/usr/lib', '/usr/local/lib');
  for (const dir of dirs) {
    const path = join(dir, 'libvulkan.so.1');
    if (existsSync(path)) return path;
  }
  return null;
}

/**
 * The Vulkan driver manifests (ICD .json files) the Vulkan loader would read, as its Linux search goes:
 * VK_DRIVER_FILES / VK_ICD_FILENAMES (files or folders) replace the search, VK_ADD_DRIVER_FILES adds to
 * it; else the icd.d folders under the XDG config and data folders and /etc. Linux only (elsewhere '[]'
 * is not meaningful and the check is skipped by returning null). Checked before Dawn creates an
 * instance so that a machine without a driver gets one clear line instead of Dawn's warnings.
 */
export function findVulkanDrivers(env: NodeJS.ProcessEnv = process.env): string[] | null {
  if (process.platform !== 'linux') return null;
  const list = (v: string | undefined) => (v ?? '').split(':').filter(Boolean);
  const jsonIn = (path: string): string[] => {
    try {
      if (path.endsWith('.json')) return existsSync(path) ? [path] : [];
      return readdirSync(path).filter((f) => f.endsWith('.json')).map((f) => join(path, f));
    } catch {
      return [];
    }
  };
  const given = list(env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES);
  const added = list(env.VK_ADD_DRIVER_FILES).flatMap(jsonIn);
  if (given.length) return [...given.flatMap(jsonIn), ...added];
  const home = env.HOME ?? '';
  const dirs = [
    env.XDG_CONFIG_HOME || join(home, '.config'),
    ...(list(env.XDG_CONFIG_DIRS).length ? list(env.XDG_CONFIG_DIRS) : ['/etc/xdg']),
    '/etc',
    env.XDG_DATA_HOME || join(home, '.local/share'),
    ...(list(env.XDG_DATA_DIRS).length ? list(env.XDG_DATA_DIRS) : ['/usr/local/share', '/usr/share']),
  ];
  return [...dirs.flatMap((d) => jsonIn(join(d, 'vulkan', 'icd.d'))), ...added];
}

let dawn: DawnModule | null = null;
let chosen: { info: WebGpuAdapterInfo; key: string } | null = null;

/** Loads the `webgpu` package once and installs its globals (GPUBufferUsage, ...) and navigator.gpu. */
async function loadDawn(): Promise<DawnModule> {
  if (dawn) return dawn;
  const specifier: string = 'webgpu'; // a variable: optional, no type declarations needed
  let mod: DawnModule;
  try {
    mod = (await import(specifier)) as DawnModule;
  } catch (err) {
    const code = (err as { code?: unknown })?.code;
    const message = err instanceof Error ? err.message : String(err);
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && message.includes("'webgpu'")) {
      throw new Error(`the webgpu package (Dawn) is not installed: ${WEBGPU_INSTALL}`);
    }
    throw new Error(`the webgpu package (Dawn) failed to load (${message.split('\n')[0]}); it ships Dawn for linux-x64/arm64, macOS and Windows: reinstall it: ${WEBGPU_INSTALL}`);
  }
  Object.assign(globalThis, mod.globals);
  dawn = mod;
  return mod;
}

/** The adapters Dawn lists (see parseAdapterList); [] when it finds none. */
async function listAdapters(mod: DawnModule): Promise<AdapterEntry[]> {
  try {
    const adapter = await mod.create(['adapter=\u0001vitreg-list-adapters']).requestAdapter({ powerPreference: POWER });
    // No adapter at all resolves null; a match for the sentinel name cannot happen.
    if (adapter === null) return [];
  } catch (err) {
    return parseAdapterList(err instanceof Error ? err.message : String(err));
  }
  return [];
}

function gpuIndex(opts: WebGpuOptions): { index: number; what: string } {
  if (opts.gpu !== undefined) return { index: opts.gpu, what: `--gpu ${opts.gpu}` };
  const env = process.env.VITREG_GPU;
  if (env !== undefined && env !== '') {
    if (!/^\d+$/.test(env.trim())) throw new Error(`VITREG_GPU='${env}': expected an adapter index >= 0`);
    return { index: Number(env), what: `VITREG_GPU=${env.trim()}` };
  }
  return { index: 0, what: 'adapter 0' };
}

/** The adapter setupWebGpu chose, or null before it ran. */
export function webGpuAdapter(): WebGpuAdapterInfo | null {
  return chosen?.info ?? null;
}

/** One line about an adapter for the backend log: name, vendor/architecture, driver, the limits. */
export function describeAdapter(a: WebGpuAdapterInfo): string {
  const mib = (n: number) => (n >= 2 ** 30 ? `${+(n / 2 ** 30).toFixed(2)} GiB` : `${+(n / 2 ** 20).toFixed(1)} MiB`);
  const what = [a.vendor, a.architecture].filter(Boolean).join(' ');
  return (
    `adapter ${a.index} of ${a.adapters.length}: ${a.name} (${[what, a.description, a.backend].filter(Boolean).join(', ')})` +
    `${a.software ? ', software' : ''}; maxStorageBufferBindingSize ${mib(a.limits.maxStorageBufferBindingSize)}, ` +
    `maxBufferSize ${mib(a.limits.maxBufferSize)}, workgroup storage ${a.limits.maxComputeWorkgroupStorageSize} B, ` +
    `${a.limits.maxComputeInvocationsPerWorkgroup} invocations`
  );
}

/**
 * Loads Dawn, picks the adapter (see the module comment) and registers tfjs' 'webgpu' backend on it,
 * replacing the factory the package registers on import (which always takes Dawn's first adapter).
 * Does not activate the backend: `tf.setBackend('webgpu')` does. Throws one line saying what to
 * install or which adapters exist.
 */
export async function setupWebGpu(opts: WebGpuOptions = {}): Promise<WebGpuAdapterInfo> {
  const { index, what } = gpuIndex(opts);
  const key = `${index}/${opts.limits ?? 'adapter'}`;
  if (chosen && chosen.key === key && tf.findBackendFactory('webgpu')) return chosen.info;
  const mod = await loadDawn(); // loading dawn.node needs no Vulkan yet: creating an instance does
  if (findVulkanLoader() === null) throw new Error(`no Vulkan loader (libvulkan.so.1) for Dawn: ${VULKAN_HINT}`);
  if (opts.requireDriverFiles && findVulkanDrivers()?.length === 0) {
    throw new Error(`no Vulkan driver (no ICD .json in VK_ICD_FILENAMES or the vulkan/icd.d folders) for Dawn: ${VULKAN_HINT}`);
  }
  const adapters = await listAdapters(mod);
  if (adapters.length === 0) throw new Error(`Dawn found no WebGPU adapter: ${VULKAN_HINT}`);
  const flags = adapterFlags(adapters, index, what);
  const gpu = mod.create(flags);
  const adapter = await gpu.requestAdapter({ powerPreference: POWER });
  if (!adapter) throw new Error(`Dawn returned no adapter for ${what} (adapters: ${adapters.map((a) => a.name).join('; ')})`);
  const raw = adapter.info ?? {};
  const entry = adapters[index]!;
  const info: WebGpuAdapterInfo = {
    index,
    adapters,
    backend: entry.backend,
    name: entry.name,
    vendor: raw.vendor ?? '',
    architecture: raw.architecture ?? '',
    description: raw.description ?? '',
    software: isSoftwareAdapter({ ...raw, isFallbackAdapter: raw.isFallbackAdapter ?? adapter.isFallbackAdapter }, entry.name),
    limits: {
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize!,
      maxBufferSize: adapter.limits.maxBufferSize!,
      maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize!,
      maxComputeInvocationsPerWorkgroup: adapter.limits.maxComputeInvocationsPerWorkgroup!,
    },
    deviceLimits: opts.limits ?? 'adapter',
  };
  // tfjs' backend registers itself on import only when navigator.gpu exists; its own factory is
  // replaced below, so navigator.gpu only has to be present (set to the same Dawn instance).
  setNavigatorGpu(gpu);
  const { WebGPUBackend } = (await importBackendPackage()) as { WebGPUBackend: new (device: DeviceLike, info?: unknown) => tf.KernelBackend };
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  chunkAddN();
  tf.registerBackend(
    'webgpu',
    async () => {
      const { result: device, pump } = await capturePump(() => adapter.requestDevice(deviceDescriptor(adapter, opts.limits ?? 'adapter')));
      const backend = new WebGPUBackend(device, raw);
      guardLimits(backend, device, info);
      const check = watchErrors(device);
      syncReads(backend, pump, check);
      return backend;
    },
    3,
  );
  chosen = { info, key };
  return info;
}

/** As tfjs' own factory: timestamp queries when offered, and the adapter's maxima for the limits it uses. */
function deviceDescriptor(adapter: AdapterLike, limits: 'adapter' | 'default') {
  const requiredFeatures = ['timestamp-query', 'bgra8unorm-storage'].filter((f) => adapter.features.has(f));
  if (limits === 'default') return { requiredFeatures };
  const l = adapter.limits;
  return {
    requiredFeatures,
    requiredLimits: {
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize!,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension!,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize!,
      maxBufferSize: l.maxBufferSize!,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX!,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup!,
    },
  };
}

function setNavigatorGpu(gpu: GpuLike): void {
  const g = globalThis as { navigator?: Record<string, unknown> };
  if (g.navigator && typeof g.navigator === 'object') {
    Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true, writable: true });
  } else {
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  }
}

let backendPackage: Promise<unknown> | null = null;

function importBackendPackage(): Promise<unknown> {
  const specifier: string = '@tensorflow/tfjs-backend-webgpu';
  backendPackage ??= import(specifier).catch((err: Error & { code?: string }) => {
    backendPackage = null;
    if ((err.code === 'ERR_MODULE_NOT_FOUND' || err.code === 'MODULE_NOT_FOUND') && err.message.includes(specifier)) {
      throw new Error(`${specifier} is not installed: ${WEBGPU_INSTALL}`);
    }
    throw new Error(`${specifier} failed to load (${err.message.split('\n')[0]}): ${WEBGPU_INSTALL}`);
  });
  return backendPackage;
}

/** The part of tfjs' WebGPUBackend the limit guard wraps. */
interface GuardedBackend {
  runWebGPUProgram(program: { outputShape: number[]; constructor: { name: string } }, inputs: unknown[], outputDtype: string, ...rest: unknown[]): unknown;
  uploadToGPU(dataId: object): void;
  tensorMap: { get(dataId: object): { shape: number[]; dtype: string; resource?: unknown } | undefined };
}

/** Bytes per element of a tfjs dtype on the GPU (bool and int32 are 4 bytes there). */
const BYTES: Record<string, number> = { float32: 4, int32: 4, bool: 4, complex64: 8 };

/**
 * The error for a tensor of `shape` over the device's binding limit, or null when it fits. `what`
 * names the tensor (the op that makes it, or 'an uploaded tensor').
 */
export function bindingLimitError(what: string, shape: number[], dtype: string, limits: Pick<WebGpuLimits, 'maxStorageBufferBindingSize' | 'maxBufferSize'>, adapter = ''): string | null {
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
function guardLimits(backend: unknown, device: DeviceLike, info: WebGpuAdapterInfo): void {
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
async function capturePump<T>(start: () => Promise<T>): Promise<{ result: T; pump: (() => void) | null }> {
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
function syncReads(backend: unknown, pump: (() => void) | null, check: () => void): void {
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
    if (!pump) throw new Error("webgpu: synchronous reads (dataSync) need Dawn's event callback, which this webgpu package did not expose: use data()");
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
      if (staging.mapState === 'unmapped' || failure) throw new Error(`webgpu: reading a tensor back failed (${String(failure ?? 'mapping rejected')})`);
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
function watchErrors(device: DeviceLike): () => void {
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
function chunkAddN(): void {
  if (addNChunked) return;
  const config = tf.getKernel('AddN', 'webgpu');
  if (!config) return;
  const original = config.kernelFunc;
  tf.unregisterKernel('AddN', 'webgpu');
  tf.registerKernel({
    kernelName: 'AddN',
    backendName: 'webgpu',
    kernelFunc: ((args: { inputs: tf.TensorInfo[] | Record<string, tf.TensorInfo>; backend: { device: DeviceLike; disposeData(id: object): void } }) => {
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
