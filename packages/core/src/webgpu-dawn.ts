/**
 * Dawn, as the `webgpu` npm package ships it: loading the package (and installing its globals), the
 * adapters it lists, which Dawn flags reach adapter N, and what an adapter is (its info and limits,
 * software or not, one line for the log).
 *
 * - Dawn's Node binding picks an adapter only by (a substring of) its name, so adapter N is reachable
 *   when no adapter before it carries its name; among identical GPUs only the first is, and asking for
 *   another is an error saying so.
 * - Software adapters (SwiftShader, lavapipe/llvmpipe: Dawn marks them as fallback adapters) are
 *   recognised so that `auto` can pass them over: they are slower than the wasm backend.
 */

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

/** Minimal shapes of the WebGPU objects used here (no dependency on @webgpu/types). */
export interface GpuLike {
  requestAdapter(options?: { powerPreference?: string }): Promise<AdapterLike | null>;
}
export interface AdapterLike {
  features: Set<string>;
  limits: Record<string, number>;
  info?: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
  isFallbackAdapter?: boolean;
  requestDevice(descriptor?: { requiredFeatures?: string[]; requiredLimits?: Record<string, number> }): Promise<DeviceLike>;
}
export interface DeviceLike {
  limits: Record<string, number>;
  lost?: Promise<{ message?: string }>;
}
export interface DawnModule {
  create(flags: string[]): GpuLike;
  globals: Record<string, unknown>;
}

/** The npm install line of the two optional packages. */
export const WEBGPU_INSTALL = 'npm i webgpu @tensorflow/tfjs-backend-webgpu@4.22.0';

/** Power preference used both to list adapters and to request one (Dawn sorts by it). */
export const POWER = 'high-performance';

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
    throw new Error(
      `${what}: Dawn lists ${adapters.length} WebGPU adapter${adapters.length === 1 ? '' : 's'}${adapters.length ? ` (${listing})` : ''}`,
    );
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
export function isSoftwareAdapter(
  info: { isFallbackAdapter?: boolean; vendor?: string; architecture?: string; device?: string; description?: string },
  name = '',
): boolean {
  if (info.isFallbackAdapter === true) return true;
  const text = [info.vendor, info.architecture, info.device, info.description, name].join(' ');
  return /swiftshader|llvmpipe|lavapipe|softpipe/i.test(text);
}

let dawn: DawnModule | null = null;

/** Loads the `webgpu` package once and installs its globals (GPUBufferUsage, ...) and navigator.gpu. */
export async function loadDawn(): Promise<DawnModule> {
  if (dawn) return dawn;
  const specifier: string = 'webgpu'; // a variable: optional, no type declarations needed
  let mod: DawnModule;
  try {
    mod = (await import(specifier)) as DawnModule;
  } catch (err) {
    const code = (err as { code?: unknown })?.code;
    const message = err instanceof Error ? err.message : String(err);
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && message.includes("'webgpu'")) {
      throw new Error(`the webgpu package (Dawn) is not installed: ${WEBGPU_INSTALL}`, { cause: err });
    }
    throw new Error(
      `the webgpu package (Dawn) failed to load (${message.split('\n')[0]}); it ships Dawn for linux-x64/arm64, macOS and Windows: reinstall it: ${WEBGPU_INSTALL}`,
      { cause: err },
    );
  }
  Object.assign(globalThis, mod.globals);
  dawn = mod;
  return mod;
}

/** The adapters Dawn lists (see parseAdapterList); [] when it finds none. */
export async function listAdapters(mod: DawnModule): Promise<AdapterEntry[]> {
  try {
    const adapter = await mod.create(['adapter=\u0001vitreg-list-adapters']).requestAdapter({ powerPreference: POWER });
    // No adapter at all resolves null; a match for the sentinel name cannot happen.
    if (adapter === null) return [];
  } catch (err) {
    return parseAdapterList(err instanceof Error ? err.message : String(err));
  }
  return [];
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
