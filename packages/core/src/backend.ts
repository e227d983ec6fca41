/**
 * TensorFlow.js backend selection.
 *
 * `auto` tries, in order: tensorflow-gpu (@tensorflow/tfjs-node-gpu, CUDA), tensorflow
 * (@tensorflow/tfjs-node, native CPU), wasm (@tensorflow/tfjs-backend-wasm, SIMD) and cpu
 * (@tensorflow/tfjs-backend-cpu, pure JS, slow). The native packages are optional: each is loaded with a
 * dynamic import, and one that is missing or fails to load is skipped with the reason logged. A backend
 * asked for by name that cannot be used is an error that says how to install it.
 *
 * The environment variable VITREG_BACKEND, when set, replaces `auto`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients } from './gradients.js';
import { log as defaultLog } from './log.js';

export type BackendName = 'auto' | 'tensorflow-gpu' | 'tensorflow' | 'wasm' | 'cpu';

/** Every accepted backend name, `auto` first, then the order `auto` tries. */
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'];

/** What initBackend chose. */
export interface BackendInfo {
  name: Exclude<BackendName, 'auto'>;
  /** The name tfjs registered it under (`tf.getBackend()`): tfjs-node and tfjs-node-gpu both use 'tensorflow'. */
  tfBackend: string;
  /** Backends tried before it and why each was passed over (empty unless `auto` chose). */
  skipped: Record<string, string>;
}

export interface InitBackendOptions {
  /** Where the one-line report goes. Default: `log` (stderr, `[vitreg]` prefix). */
  log?: (line: string) => void;
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
 * it uses VITREG_BACKEND when set, else the first of tensorflow-gpu, tensorflow, wasm, cpu that works.
 * Calling again with the active name is a no-op; another name switches.
 */
export function initBackend(name: BackendName = 'auto', opts: InitBackendOptions = {}): Promise<BackendInfo> {
  const run = pending.then(async () => {
    await ensureGradients();
    return select(name, opts.log ?? defaultLog);
  });
  pending = run.catch(() => undefined);
  return run;
}

async function select(requested: BackendName, log: (line: string) => void): Promise<BackendInfo> {
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
  if (current && current.name === name && tf.getBackend() === current.tfBackend) return current;

  if (name !== 'auto') {
    const candidate = CANDIDATES.find((c) => c.name === name)!;
    const failure = await activate(candidate);
    if (failure) throw new Error(`backend '${name}'${source} is not available: ${failure}`);
    current = { name: candidate.name, tfBackend: candidate.tfBackend, skipped: {} };
    log(`backend: ${name}${source}`);
    return current;
  }

  const skipped: Record<string, string> = {};
  for (const candidate of CANDIDATES) {
    const failure = await activate(candidate);
    if (failure) {
      skipped[candidate.name] = failure;
      continue;
    }
    current = { name: candidate.name, tfBackend: candidate.tfBackend, skipped };
    const reasons = Object.entries(skipped).map(([n, why]) => `; ${n}: skipped (${why})`).join('');
    log(`backend: ${candidate.name} (auto${reasons})`);
    return current;
  }
  const reasons = Object.entries(skipped).map(([n, why]) => `${n}: ${why}`).join('; ');
  throw new Error(`no TensorFlow.js backend could be loaded: ${reasons}`);
}

/** Import the candidate's package and make it the active tfjs backend; returns why not, or null. */
async function activate(c: Candidate): Promise<string | null> {
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
