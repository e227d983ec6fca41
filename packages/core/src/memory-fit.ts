/**
 * Does a model fit before it is allocated? What a backend can hold (wasm's 4 GiB heap, a WebGPU device's
 * largest buffer, the host's free memory under its cgroup limit) against what a model needs (weights, and
 * for training gradients, optimiser state and saved activations), refused with the numbers and the ways
 * out instead of a crash in the middle ("memory access out of bounds" on wasm). Host-side only: the
 * model's own estimate comes from its package (@vitreg/registers' `vitMemoryNeed`).
 */
import { readFileSync } from 'node:fs';
import { freemem } from 'node:os';
import { InputError } from './errors.js';

/** What a model needs, in bytes. */
export interface MemoryNeed {
  weights: number;
  gradients: number;
  optimizer: number;
  /** Activations at the batch size (the peak of a forward; for training, those kept for the backward). */
  activations: number;
  /** The largest single tensor (a WebGPU buffer must hold it). */
  largestTensor: number;
}

/** What a backend can hold, in bytes; undefined where it cannot be known (a native GPU's memory). */
export interface MemoryBudget {
  backend: string;
  /** Everything at once. */
  total?: number;
  /** Where `total` comes from, for the error. */
  totalSource?: string;
  /** One tensor. */
  maxTensor?: number;
  maxTensorSource?: string;
}

/** tfjs-backend-wasm's heap: 32-bit addresses, Emscripten's maximum of 65535 pages. */
export const WASM_HEAP_BYTES = 4294901760;

/** The sum of a need's parts. */
export function totalNeed(n: MemoryNeed): number {
  return n.weights + n.gradients + n.optimizer + n.activations;
}

/** `1.23 GiB` / `456 MiB` / `789 KiB` / `12 B`. */
export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(0)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(0)} KiB`;
  return `${n} B`;
}

function readNumber(file: string): number | undefined {
  try {
    const text = readFileSync(file, 'utf8').trim();
    if (text === 'max') return undefined;
    const v = Number(text);
    return Number.isFinite(v) && v > 0 && v < 2 ** 62 ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Memory the host can still give this process: the OS's free figure (`os.freemem()`, MemAvailable on
 * Linux), or less under a cgroup limit (v2 `memory.max - memory.current`, v1 `limit_in_bytes -
 * usage_in_bytes`). `cgroupRoot` is for tests.
 */
export function hostMemory(cgroupRoot = '/sys/fs/cgroup'): { available: number; source: string } {
  let available = freemem();
  let source = `the host's free memory (${formatBytes(available)})`;
  const limits: [string, string][] = [
    [`${cgroupRoot}/memory.max`, `${cgroupRoot}/memory.current`],
    [`${cgroupRoot}/memory/memory.limit_in_bytes`, `${cgroupRoot}/memory/memory.usage_in_bytes`],
  ];
  for (const [maxFile, curFile] of limits) {
    const max = readNumber(maxFile);
    if (max === undefined) continue;
    const left = Math.max(0, max - (readNumber(curFile) ?? 0));
    if (left < available) {
      available = left;
      source = `the cgroup memory limit (${formatBytes(max)}, ${formatBytes(left)} left)`;
    }
    break;
  }
  return { available, source };
}

/**
 * What `backend` (a name of `initBackend`) can hold. wasm: its 4 GiB heap (and the host's free memory,
 * where less); webgpu: the device's `maxBufferSize` / `maxStorageBufferBindingSize` per tensor (its total
 * memory is not exposed); tensorflow and cpu: the host's free memory; tensorflow-gpu: unknown (TensorFlow
 * allocates the GPU itself).
 */
export function backendBudget(
  backend: string,
  opts: {
    webgpuLimits?: { maxBufferSize?: number; maxStorageBufferBindingSize?: number };
    host?: { available: number; source: string };
  } = {},
): MemoryBudget {
  const host = () => opts.host ?? hostMemory();
  switch (backend) {
    case 'wasm': {
      const h = host();
      return h.available < WASM_HEAP_BYTES
        ? { backend, total: h.available, totalSource: h.source }
        : { backend, total: WASM_HEAP_BYTES, totalSource: "the wasm backend's 4 GiB heap (32-bit addresses)" };
    }
    case 'webgpu': {
      const l = opts.webgpuLimits ?? {};
      const sizes = [l.maxBufferSize, l.maxStorageBufferBindingSize].filter((v): v is number => typeof v === 'number' && v > 0);
      if (sizes.length === 0) return { backend };
      const maxTensor = Math.min(...sizes);
      const which = maxTensor === l.maxStorageBufferBindingSize ? 'maxStorageBufferBindingSize' : 'maxBufferSize';
      return { backend, maxTensor, maxTensorSource: `the WebGPU device's ${which}` };
    }
    case 'tensorflow':
    case 'cpu': {
      const h = host();
      return { backend, total: h.available, totalSource: h.source };
    }
    default:
      return { backend };
  }
}

/** The ways out named when a model does not fit. */
export const MEMORY_WAYS_OUT = [
  'the ONNX Runtime engine (--engine onnxruntime; native memory, no 4 GiB heap)',
  'tfjs-node (npm i @tensorflow/tfjs-node, then --backend tensorflow)',
  'fp16 weights (half the weight memory where the engine keeps them in fp16: vitreg export --dtype fp16 for ONNX Runtime)',
  'a smaller batch or image size',
];

/**
 * Throws an InputError naming `what`, every part of the need, the backend's figure and its source, and
 * the ways out, when the need exceeds the budget (in total or in one tensor). Returns the total need.
 */
export function checkMemoryFit(what: string, need: MemoryNeed, budget: MemoryBudget, waysOut: readonly string[] = MEMORY_WAYS_OUT): number {
  const total = totalNeed(need);
  const parts = [
    `weights ${formatBytes(need.weights)}`,
    need.gradients > 0 ? `gradients ${formatBytes(need.gradients)}` : '',
    need.optimizer > 0 ? `optimiser state ${formatBytes(need.optimizer)}` : '',
    `activations ${formatBytes(need.activations)}`,
  ]
    .filter(Boolean)
    .join(' + ');
  const ways = `ways out: ${waysOut.join('; ')}`;
  if (budget.total !== undefined && total > budget.total)
    throw new InputError(
      `${what} needs about ${formatBytes(total)} (${parts}) on the ${budget.backend} backend, more than ${budget.totalSource} of ${formatBytes(budget.total)}; ${ways}`,
    );
  if (budget.maxTensor !== undefined && need.largestTensor > budget.maxTensor)
    throw new InputError(
      `${what} makes a tensor of ${formatBytes(need.largestTensor)} on the ${budget.backend} backend, more than ${budget.maxTensorSource} of ${formatBytes(budget.maxTensor)}; ${ways}`,
    );
  return total;
}
