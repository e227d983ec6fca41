/**
 * The training state as named host tensors (a StepEngine's `exportState`, see engine.ts) and its two
 * destinations: a checkpoint folder (checkpoint.ts's files, unchanged whichever engine wrote the state;
 * read back by state-read.ts, into the engine's own buffers where it has them) and the other ranks (the
 * state a `GradientSync.broadcast` carries), plus the weights checksum.
 *   model.safetensors / teacher.safetensors  <-> student.backbone.* / teacher.backbone.* (model layout
 *                                                 here, DINOv2 names and PyTorch layouts in the file)
 * Everything is converted on host arrays (HostBackbone, state-read.ts): no tfjs tensor is made, so
 * an engine that keeps a large model in host buffers (ONNX Runtime: dinov2-l14-reg4) saves and resumes
 * without a backend's memory (the wasm heap's 4 GiB); the files are those a tfjs model writes.
 *   heads.safetensors                        <-> student.<head>.*, teacher.<head>.*, center.*
 *   optimizer.safetensors                    <-> optimizer.<parameter>.exp_avg(_sq), the optimiser's step
 */
import { createHash } from 'node:crypto';
import { numel } from '@vitreg/core';
import { parameterShapes, type HostBackbone, type ViTConfig } from '@vitreg/registers';
import { saveCheckpoint, type HostTensors, type TrainState } from './checkpoint.js';
import type { TrainConfig } from './config.js';
import type { EngineState, StateLayout, StepEngine } from './engine.js';
import { readTrainingStateInto } from './state-read.js';

const BACKBONES = ['student', 'teacher'] as const;

/** SHA-256 (hex) of named float tensors, in the given order of names. */
export function weightsChecksum(tensors: Record<string, Float32Array>): string {
  const h = createHash('sha256');
  for (const [k, v] of Object.entries(tensors)) {
    h.update(k);
    h.update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
  return h.digest('hex');
}

/** Throws, naming `source` and the tensor, unless every name of `layout` is in `tensors` with its size. */
export function checkState(layout: StateLayout, tensors: Record<string, Float32Array>, source: string): void {
  for (const [name, shape] of Object.entries(layout)) {
    const v = tensors[name];
    const size = numel(shape);
    if (!v || v.length !== size) {
      throw new Error(`${source}: missing or mis-sized tensor "${name}" (expected ${size} values, got ${v?.length ?? 'none'})`);
    }
  }
}

/** The `<which>.backbone.*` values of `state` as host weights (the state's own arrays, not copies), or undefined when absent. */
function backboneWeights(
  vit: ViTConfig,
  layout: StateLayout,
  state: EngineState,
  which: (typeof BACKBONES)[number],
): HostBackbone | undefined {
  const prefix = `${which}.backbone.`;
  const names = Object.keys(layout).filter((n) => n.startsWith(prefix));
  if (names.length === 0) return undefined;
  const weights: Record<string, Float32Array> = {};
  for (const n of names) weights[n.slice(prefix.length)] = state.tensors[n]!;
  for (const name of Object.keys(parameterShapes(vit))) {
    if (!weights[name]) throw new Error(`training state: "${prefix}${name}" is missing`);
  }
  return { config: vit, weights };
}

/** Writes `state` (laid out as `layout`) as the checkpoint of `train.step` under `runDir`; returns its folder. */
export async function saveTrainingState(
  runDir: string,
  vit: ViTConfig,
  layout: StateLayout,
  state: EngineState,
  train: TrainState,
): Promise<string> {
  checkState(layout, state.tensors, 'training state');
  const heads: HostTensors = {};
  const moments: HostTensors = {};
  for (const [name, shape] of Object.entries(layout)) {
    const data = state.tensors[name]!;
    if (name.startsWith('optimizer.')) moments[name.slice('optimizer.'.length)] = { shape: [...shape], data };
    else if (!BACKBONES.some((b) => name.startsWith(`${b}.backbone.`))) heads[name] = { shape: [...shape], data };
  }
  const student = backboneWeights(vit, layout, state, 'student');
  if (!student) throw new Error('training state: no student.backbone.* tensors');
  const teacher = backboneWeights(vit, layout, state, 'teacher');
  return saveCheckpoint(runDir, { student, teacher, heads, optimizer: { step: state.optimizerStep, moments }, state: train });
}

/**
 * Reads the checkpoint folder `dir` of a run of `config` into a new state laid out as `layout` (the names
 * the engine that resumes needs), with the step and cursor to continue from (state-read.ts: everything
 * checked first; errors name the file and the tensor; a checkpoint of another config is refused with the
 * first differing field named).
 */
export async function loadTrainingState(
  dir: string,
  config: TrainConfig,
  vit: ViTConfig,
  layout: StateLayout,
): Promise<{ state: EngineState; step: number; cursor: number }> {
  const tensors: Record<string, Float32Array> = {};
  for (const [name, shape] of Object.entries(layout)) tensors[name] = new Float32Array(numel(shape));
  const read = await readTrainingStateInto(dir, config, vit, tensors);
  return { state: { tensors, optimizerStep: read.optimizerStep }, step: read.step, cursor: read.cursor };
}

/**
 * Restores `engine`'s whole state from checkpoint folder `dir` (what a resume does, whichever engine):
 * into the engine's own arrays when it offers them (`stateTargets`: the state is held once), else read
 * into new arrays and handed to `importState`. Returns the step and cursor to continue from.
 */
export async function restoreTrainingState(
  dir: string,
  config: TrainConfig,
  vit: ViTConfig,
  engine: StepEngine,
): Promise<{ step: number; cursor: number }> {
  const layout = engine.stateLayout();
  const targets = engine.stateTargets?.();
  if (!targets) {
    const loaded = await loadTrainingState(dir, config, vit, layout);
    engine.importState(loaded.state);
    return { step: loaded.step, cursor: loaded.cursor };
  }
  checkState(layout, targets.tensors, `${engine.name} engine's state`);
  const into: Record<string, Float32Array> = {};
  for (const name of Object.keys(layout)) into[name] = targets.tensors[name]!;
  const read = await readTrainingStateInto(dir, config, vit, into);
  targets.commit(read.optimizerStep);
  return { step: read.step, cursor: read.cursor };
}
