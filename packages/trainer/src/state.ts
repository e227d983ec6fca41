/**
 * The training state as named host tensors (a StepEngine's `exportState`, see engine.ts) and its two
 * destinations: a checkpoint folder (checkpoint.ts's files, unchanged whichever engine wrote the state)
 * and the other ranks (the state a `GradientSync.broadcast` carries), plus the weights checksum.
 *   model.safetensors / teacher.safetensors  <-> student.backbone.* / teacher.backbone.* (model layout
 *                                                 here, DINOv2 names and PyTorch layouts in the file)
 * Everything is converted on host arrays (HostBackbone, weightsFromStateDict): no tfjs tensor is made, so
 * an engine that keeps a large model in host buffers (ONNX Runtime: dinov2-l14-reg4) saves and resumes
 * without a backend's memory (the wasm heap's 4 GiB); the files are those a tfjs model writes.
 *   heads.safetensors                        <-> student.<head>.*, teacher.<head>.*, center.*
 *   optimizer.safetensors                    <-> optimizer.<parameter>.exp_avg(_sq), the optimiser's step
 */
import { createHash } from 'node:crypto';
import { firstDifference } from '@vitreg/core';
import { parameterShapes, weightsFromStateDict, type HostBackbone, type StateDict, type ViTConfig } from '@vitreg/registers';
import { loadCheckpoint, saveCheckpoint, type HostTensors, type TrainState } from './checkpoint.js';
import { completeSavedConfig, type TrainConfig } from './config.js';
import type { EngineState, StateLayout } from './engine.js';

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

/** The number of values of a shape. */
function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Throws, naming `source` and the tensor, unless every name of `layout` is in `tensors` with its size. */
export function checkState(layout: StateLayout, tensors: Record<string, Float32Array>, source: string): void {
  for (const [name, shape] of Object.entries(layout)) {
    const v = tensors[name];
    const size = sizeOf(shape);
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

/** A backbone state dict (DINOv2 names, PyTorch layouts) as `<prefix>.backbone.*` values in model layout, on the host. */
function backboneValues(sd: StateDict, vit: ViTConfig, prefix: string, out: Record<string, Float32Array>): void {
  for (const [k, v] of Object.entries(weightsFromStateDict(sd, vit))) out[`${prefix}.backbone.${k}`] = v;
}

/**
 * Reads the checkpoint folder `dir` of a run of `config` into a state laid out as `layout` (the names
 * the engine that resumes needs), with the step and cursor to continue from. Errors name the file
 * and the tensor; a checkpoint of another config is refused with the first differing field named.
 */
export async function loadTrainingState(
  dir: string,
  config: TrainConfig,
  vit: ViTConfig,
  layout: StateLayout,
): Promise<{ state: EngineState; step: number; cursor: number }> {
  const ck = await loadCheckpoint(dir);
  const diff = firstDifference(completeSavedConfig(ck.state.config), config);
  if (diff) {
    const field = diff.path || '(root)';
    const why = `field "${field}" of the checkpoint's config differs from this run's config; resume with the run's config.json`;
    throw new Error(`${dir}/state.json: ${why}`);
  }
  const tensors: Record<string, Float32Array> = {};
  backboneValues(ck.student, vit, 'student', tensors);
  if (Object.keys(layout).some((n) => n.startsWith('teacher.backbone.'))) {
    if (!ck.teacher) throw new Error(`${dir}: teacher.safetensors is missing`);
    backboneValues(ck.teacher, vit, 'teacher', tensors);
  }
  for (const [name, shape] of Object.entries(layout)) {
    if (BACKBONES.some((b) => name.startsWith(`${b}.backbone.`))) continue;
    const size = sizeOf(shape);
    if (name.startsWith('optimizer.')) {
      const key = name.slice('optimizer.'.length);
      const t = ck.optimizer.moments[key];
      if (!t) throw new Error(`optimizer state: missing tensor "${key}"`);
      if (t.data.length !== size) throw new Error(`optimizer state: "${key}" has ${t.data.length} values, expected ${size}`);
      tensors[name] = t.data;
      continue;
    }
    const t = ck.heads[name];
    if (!t || t.data.length !== size) throw new Error(`${dir}/heads.safetensors: missing or mis-sized tensor "${name}"`);
    tensors[name] = t.data;
  }
  checkState(layout, tensors, dir);
  return { state: { tensors, optimizerStep: ck.optimizer.step }, step: ck.state.step, cursor: ck.state.cursor };
}
