/**
 * TensorFlow.js backend selection.
 *
 * `auto` tries, in order: tensorflow-gpu (@tensorflow/tfjs-node-gpu, CUDA), webgpu
 * (@tensorflow/tfjs-backend-webgpu on Dawn from the `webgpu` package, Vulkan; a hardware adapter only),
 * tensorflow (@tensorflow/tfjs-node, native CPU), wasm (@tensorflow/tfjs-backend-wasm, SIMD) and cpu
 * (@tensorflow/tfjs-backend-cpu, pure JS, slow). The native and GPU packages are optional: each is
 * loaded with a dynamic import, and one that is missing or fails to load is skipped with the reason
 * logged (`verbose: false`: only the choice, `backend: wasm (auto)`). A backend asked for by name that
 * cannot be used is an error that says how to install it.
 *
 * The environment variable VITREG_BACKEND, when set, replaces `auto`; VITREG_GPU picks the WebGPU
 * adapter when the `gpu` option is not given.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients } from './gradients.js';
import { log as defaultLog } from './log.js';
import { setupWebGpu } from './webgpu.js';
import { describeAdapter } from './webgpu-dawn.js';
import { type WebGpuAdapterInfo } from './webgpu-dawn.js';

export type BackendName = 'auto' | 'tensorflow-gpu' | 'webgpu' | 'tensorflow' | 'wasm' | 'cpu';

/** Every accepted backend name, `auto` first, then the order `auto` tries. */
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'];

/** What initBackend chose. */
export interface BackendInfo {
  name: Exclude<BackendName, 'auto'>;
  /** The name tfjs registered it under (`tf.getBackend()`): tfjs-node and tfjs-node-gpu both use 'tensorflow'. */
  tfBackend: string;
  /** Backends tried before it and why each was passed over (empty unless `auto` chose). */
  skipped: Record<string, string>;
  /** webgpu only: the adapter, its driver and limits. */
  adapter?: WebGpuAdapterInfo;
}

export interface InitBackendOptions {
  /** Where the one-line report goes. Default: `log` (stderr, `[vitreg]` prefix). */
  log?: (line: string) => void;
  /**
   * `auto`: also say why each backend before the chosen one was skipped (default true; the vitreg
   * command passes false unless --verbose, for the short `backend: wasm (auto)`).
   */
  verbose?: boolean;
  /** webgpu: the adapter index (`--gpu N`); default VITREG_GPU, else 0. */
  gpu?: number;
  /** webgpu: WebGPU's default device limits instead of the adapter's maxima (tests of the limit errors). */
  webgpuLimits?: 'adapter' | 'default';
}

interface Candidate {
  name: Exclude<BackendName, 'auto'>;
  pkg: string;
  tfBackend: string;
  install: string;
}

const CANDIDATES: readonly Candidate[] = [
  {
    name: 'tensorflow-gpu',
    pkg: '@tensorflow/tfjs-node-gpu',
    tfBackend: 'tensorflow',
    install: 'npm i @tensorflow/tfjs-node-gpu (Linux x64 with CUDA 11.2 and cuDNN 8.1)',
  },
  {
    name: 'webgpu',
    pkg: '@tensorflow/tfjs-backend-webgpu',
    tfBackend: 'webgpu',
    install: 'npm i webgpu @tensorflow/tfjs-backend-webgpu@4.22.0 (Dawn; Linux needs libvulkan1 and a Vulkan driver)',
  },
  { name: 'tensorflow', pkg: '@tensorflow/tfjs-node', tfBackend: 'tensorflow', install: 'npm i @tensorflow/tfjs-node' },
  { name: 'wasm', pkg: '@tensorflow/tfjs-backend-wasm', tfBackend: 'wasm', install: 'npm i @tensorflow/tfjs-backend-wasm' },
  { name: 'cpu', pkg: '@tensorflow/tfjs-backend-cpu', tfBackend: 'cpu', install: 'npm i @tensorflow/tfjs-backend-cpu' },
];

let current: BackendInfo | null = null;
/** Serialises concurrent initBackend calls. */
let pending: Promise<unknown> = Promise.resolve();

/** The backend chosen by the last initBackend call, or null before the first. */
export function getBackendName(): Exclude<BackendName, 'auto'> | null {
  return current?.name ?? null;
}

/**
 * Load and activate a backend. `auto` (the default) keeps the backend an earlier call chose; otherwise
 * it uses VITREG_BACKEND when set, else the first of tensorflow-gpu, webgpu (hardware adapters only),
 * tensorflow, wasm, cpu that works. Calling again with the active name is a no-op; another name switches.
 */
export function initBackend(name: BackendName = 'auto', opts: InitBackendOptions = {}): Promise<BackendInfo> {
  const run = pending.then(async () => {
    await ensureGradients();
    return select(name, opts.log ?? defaultLog, opts);
  });
  pending = run.catch(() => undefined);
  return run;
}

async function select(requested: BackendName, log: (line: string) => void, opts: InitBackendOptions): Promise<BackendInfo> {
  if (!BACKEND_NAMES.includes(requested)) {
    throw new Error(`unknown backend '${requested}': expected one of ${BACKEND_NAMES.join(', ')}`);
  }
  if (requested === 'auto' && current) return current;
  let name = requested;
  let source = '';
  const env = process.env.VITREG_BACKEND;
  if (name === 'auto' && env) {
    if (!BACKEND_NAMES.includes(env as BackendName)) {
      throw new Error(`VITREG_BACKEND='${env}' is not a backend: expected one of ${BACKEND_NAMES.join(', ')}`);
    }
    name = env as BackendName;
    source = ' (from VITREG_BACKEND)';
  }
  if (current && current.name === name && tf.getBackend() === current.tfBackend && sameAdapter(current, opts)) return current;

  if (name !== 'auto') {
    const candidate = CANDIDATES.find((c) => c.name === name)!;
    const { failure, adapter } = await activate(candidate, opts, false);
    if (failure) throw new Error(`backend '${name}'${source} is not available: ${failure}`);
    current = { name: candidate.name, tfBackend: candidate.tfBackend, skipped: {}, ...(adapter ? { adapter } : {}) };
    log(`backend: ${name}${source}${adapter ? `; ${describeAdapter(adapter)}` : ''}`);
    return current;
  }

  const skipped: Record<string, string> = {};
  for (const candidate of CANDIDATES) {
    const { failure, adapter } = await activate(candidate, opts, true);
    if (failure) {
      skipped[candidate.name] = failure;
      continue;
    }
    current = { name: candidate.name, tfBackend: candidate.tfBackend, skipped, ...(adapter ? { adapter } : {}) };
    const reasons =
      opts.verbose === false
        ? ''
        : Object.entries(skipped)
            .map(([n, why]) => `; ${n}: skipped (${why})`)
            .join('');
    log(`backend: ${candidate.name} (auto${reasons})${adapter ? `; ${describeAdapter(adapter)}` : ''}`);
    return current;
  }
  const reasons = Object.entries(skipped)
    .map(([n, why]) => `${n}: ${why}`)
    .join('; ');
  throw new Error(`no TensorFlow.js backend could be loaded: ${reasons}`);
}

/** An active webgpu backend is kept only when the same adapter (and limits) is asked for. */
function sameAdapter(info: BackendInfo, opts: InitBackendOptions): boolean {
  if (info.name !== 'webgpu') return true;
  const env = process.env.VITREG_GPU;
  const wanted = opts.gpu ?? (env !== undefined && env !== '' ? Number(env) : 0);
  return info.adapter?.index === wanted && info.adapter.deviceLimits === (opts.webgpuLimits ?? 'adapter');
}

/**
 * Import the candidate's package and make it the active tfjs backend; returns why not (or null) and,
 * for webgpu, the adapter. `auto` passes a software WebGPU adapter over.
 */
async function activate(
  c: Candidate,
  opts: InitBackendOptions,
  auto: boolean,
): Promise<{ failure: string | null; adapter?: WebGpuAdapterInfo }> {
  if (c.name !== 'webgpu') return { failure: await activatePackage(c) };
  let adapter: WebGpuAdapterInfo;
  try {
    adapter = await setupWebGpu({ gpu: opts.gpu, limits: opts.webgpuLimits, requireDriverFiles: auto });
  } catch (err) {
    return { failure: firstLine(err) };
  }
  if (auto && adapter.software) {
    return {
      failure: `adapter ${adapter.index} is software (${adapter.name}, ${adapter.description}), slower than wasm: --backend webgpu uses it anyway`,
    };
  }
  const failure = await activatePackage(c);
  return failure ? { failure } : { failure: null, adapter };
}

/** Import the candidate's package and make it the active tfjs backend; returns why not, or null. */
async function activatePackage(c: Candidate): Promise<string | null> {
  try {
    const specifier: string = c.pkg; // a variable: the optional packages have no type declarations here
    await import(specifier);
  } catch (err) {
    if (isNotInstalled(err, c.pkg)) return `${c.pkg} is not installed: ${c.install}`;
    return `${c.pkg} failed to load (${firstLine(err)}); reinstall it: ${c.install}`;
  }
  if (!tf.findBackendFactory(c.tfBackend)) {
    return `${c.pkg} loaded but registered no '${c.tfBackend}' backend with @tensorflow/tfjs-core ${tf.version_core}: install the same version of both`;
  }
  try {
    if (await tf.setBackend(c.tfBackend)) {
      await tf.ready();
      return null;
    }
    return `${c.pkg} failed to initialise (see the warning above)`;
  } catch (err) {
    return `${c.pkg} failed to initialise (${firstLine(err)})`;
  }
}

function isNotInstalled(err: unknown, pkg: string): boolean {
  const code = (err as { code?: unknown })?.code;
  const message = err instanceof Error ? err.message : String(err);
  return (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && message.includes(pkg);
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}
