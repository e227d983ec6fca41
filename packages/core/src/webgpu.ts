/**
 * TensorFlow.js's WebGPU backend (`@tensorflow/tfjs-backend-webgpu`) in Node, on Dawn, Chrome's WebGPU
 * implementation, as the `webgpu` npm package ships it prebuilt (Linux: through Vulkan). Both packages
 * are optional dependencies of @vitreg/core; `initBackend('webgpu')` calls `setupWebGpu`.
 *
 * Adapter choice: `gpu` (the `--gpu N` flag), else VITREG_GPU, else 0, indexes the adapters Dawn lists
 * (Vulkan's order; on Linux Dawn sorts discrete GPUs first); webgpu-dawn.ts says which ones Dawn can reach.
 *
 * This file chooses the adapter and registers the backend (and exports the public names of its parts):
 * Vulkan discovery (webgpu-vulkan.ts), Dawn and its adapters (webgpu-dawn.ts), and what tfjs' backend
 * needs to run right on Dawn in Node: device limits, synchronous reads, AddN, GPU errors (webgpu-fixes.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { adapterFlags, isSoftwareAdapter, listAdapters, loadDawn, POWER, WEBGPU_INSTALL } from './webgpu-dawn.js';
import type { AdapterLike, DeviceLike, GpuLike, WebGpuAdapterInfo } from './webgpu-dawn.js';
import { capturePump, chunkAddN, guardLimits, syncReads, watchErrors } from './webgpu-fixes.js';
import { findVulkanDrivers, findVulkanLoader, VULKAN_HINT } from './webgpu-vulkan.js';

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

let chosen: { info: WebGpuAdapterInfo; key: string } | null = null;

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
  const { WebGPUBackend } = (await importBackendPackage()) as {
    WebGPUBackend: new (device: DeviceLike, info?: unknown) => tf.KernelBackend;
  };
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
