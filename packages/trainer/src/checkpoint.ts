/**
 * Checkpoints: `<run>/checkpoints/step-N/` with
 *   model.safetensors      the student backbone (saveWeights: DINOv2 names, config in __metadata__,
 *                          so `vitreg features --weights` and loadWeights read it as is); given as a
 *                          model or as host arrays (HostBackbone: no backend memory), the same bytes
 *   teacher.safetensors    the EMA teacher backbone (self-supervised runs)
 *   heads.safetensors      heads of student (`student.<head>.<param>`) and teacher, DINO/iBOT centres
 *   optimizer.safetensors  AdamW moments (`<param>.exp_avg`, `<param>.exp_avg_sq`), step in __metadata__
 *   state.json             step, epoch, cursor (the sampler's global position), config, world size
 *                          (for the record: a run may resume with another world size)
 * A checkpoint is written into a temporary folder next to its final place, every file fsynced, then
 * renamed: a crash leaves either the complete checkpoint or none.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { firstDifference, hostTensor, InputError, SafetensorsReader, syncDir, writeJsonAtomic, writeSafetensors } from '@vitreg/core';
import { readWeights, saveWeights, type HostBackbone, type StateDict, type VisionTransformer } from '@vitreg/registers';
import type { AdamWState } from './optim.js';
import { completeSavedConfig, type TrainConfig } from './config.js';

export interface TrainState {
  step: number;
  /** The data epoch the next step starts in. */
  epoch: number;
  /** Global sampler position: images the whole job consumed (see DistributedSampler). */
  cursor: number;
  config: TrainConfig;
  /** World size when saved (a run may resume with another). */
  world_size: number;
}

/** Named host tensors (heads, centres). */
export type HostTensors = Record<string, { shape: number[]; data: Float32Array }>;

export interface CheckpointContents {
  /** A model, or its weights in host arrays (model names and layouts); the file is the same. */
  student: VisionTransformer | HostBackbone;
  teacher?: VisionTransformer | HostBackbone;
  heads: HostTensors;
  optimizer: AdamWState;
  state: TrainState;
}

export interface LoadedCheckpoint {
  dir: string;
  /** Backbone state dicts (DINOv2 names, PyTorch layouts), ready for modelFromStateDict. */
  student: StateDict;
  teacher?: StateDict;
  heads: HostTensors;
  optimizer: AdamWState;
  state: TrainState;
}

const STEP_DIR = /^step-(\d+)$/;

/** F32 safetensors tensors viewing the arrays' bytes (written before saveCheckpoint returns: no copy). */
function encode(tensors: HostTensors): Record<string, ReturnType<typeof hostTensor>> {
  const out: Record<string, ReturnType<typeof hostTensor>> = {};
  for (const [k, v] of Object.entries(tensors)) out[k] = hostTensor(v.data, v.shape);
  return out;
}

/** Every tensor of a safetensors file as float32 (F32 tensors viewed in their fresh read buffers), plus its metadata. */
async function readFloat32s(path: string): Promise<{ tensors: HostTensors; metadata: Record<string, string> }> {
  const reader = await SafetensorsReader.open(path);
  try {
    const tensors: HostTensors = {};
    for (const name of reader.names()) tensors[name] = { shape: reader.info(name).shape, data: await reader.readFloat32(name) };
    return { tensors, metadata: { ...reader.metadata } };
  } finally {
    await reader.close();
  }
}

/** Writes `<runDir>/checkpoints/step-<state.step>/` atomically and returns its path. */
export async function saveCheckpoint(runDir: string, c: CheckpointContents): Promise<string> {
  const root = join(runDir, 'checkpoints');
  await mkdir(root, { recursive: true });
  const final = join(root, `step-${c.state.step}`);
  const tmp = join(root, `.step-${c.state.step}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  await mkdir(tmp);
  try {
    const meta = { step: String(c.state.step) };
    await saveWeights(c.student, join(tmp, 'model.safetensors'), { dtype: 'F32', metadata: meta });
    if (c.teacher) await saveWeights(c.teacher, join(tmp, 'teacher.safetensors'), { dtype: 'F32', metadata: meta });
    await writeSafetensors(join(tmp, 'heads.safetensors'), encode(c.heads), meta);
    await writeSafetensors(join(tmp, 'optimizer.safetensors'), encode(c.optimizer.moments), {
      ...meta,
      optimizer: 'AdamW',
      adamw_step: String(c.optimizer.step),
    });
    await writeJsonAtomic(join(tmp, 'state.json'), c.state);
    await syncDir(tmp);
    // A checkpoint of the same step (a run resumed before it) is replaced.
    if (await exists(final)) await rm(final, { recursive: true, force: true });
    await rename(tmp, final);
    await syncDir(root);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw new Error(`checkpoint ${final}: cannot write: ${(err as Error).message}`, { cause: err });
  }
  return final;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Complete checkpoints of a run (folders `step-N` holding state.json), by increasing step. */
export async function listCheckpoints(runDir: string): Promise<{ step: number; dir: string }[]> {
  const root = join(runDir, 'checkpoints');
  let names: string[];
  try {
    names = await readdir(root);
  } catch (err) {
    // No checkpoints yet is a fresh run; a folder that exists but cannot be read is an error, not a
    // silent fresh start over a run that has checkpoints.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`${root}: cannot list the checkpoints (${why})`, { cause: err });
  }
  const out: { step: number; dir: string }[] = [];
  for (const name of names) {
    const m = STEP_DIR.exec(name);
    if (m && (await exists(join(root, name, 'state.json')))) out.push({ step: Number(m[1]), dir: join(root, name) });
  }
  return out.sort((a, b) => a.step - b.step);
}

/** A run folder holds checkpoints of a run with another config: the first differing field, both values. */
export class RunMismatchError extends InputError {
  constructor(
    readonly runDir: string,
    readonly checkpoint: string,
    readonly field: string,
    readonly there: string,
    readonly here: string,
  ) {
    super(
      `${runDir} holds the checkpoints of another run (${checkpoint}): field "${field}" is ${there} there and ${here} in this run's config`,
    );
    this.name = 'RunMismatchError';
  }
}

/**
 * Where a run of `config` in `runDir` continues: its newest checkpoint, or null when there is none.
 * A newest checkpoint of another config is a RunMismatchError naming the first differing field.
 */
export async function resumePoint(runDir: string, config: TrainConfig): Promise<{ step: number; dir: string } | null> {
  const all = await listCheckpoints(runDir);
  const newest = all[all.length - 1];
  if (!newest) return null;
  const statePath = join(newest.dir, 'state.json');
  let state: TrainState;
  try {
    state = JSON.parse(await readFile(statePath, 'utf8')) as TrainState;
  } catch (err) {
    throw new Error(`${statePath}: cannot read the training state (${(err as Error).message})`, { cause: err });
  }
  const diff = firstDifference(config, completeSavedConfig(state.config));
  if (diff) throw new RunMismatchError(runDir, newest.dir, diff.path || '(root)', diff.job, diff.here);
  return newest;
}

/** Deletes all but the newest `keep` checkpoints. */
export async function pruneCheckpoints(runDir: string, keep: number): Promise<void> {
  const all = await listCheckpoints(runDir);
  for (const c of all.slice(0, Math.max(0, all.length - keep))) await rm(c.dir, { recursive: true, force: true });
}

/** The state.json of checkpoint folder `dir`, its fields checked; errors name the file and the field. */
export async function readTrainState(dir: string): Promise<TrainState> {
  const statePath = join(dir, 'state.json');
  let state: TrainState;
  try {
    state = JSON.parse(await readFile(statePath, 'utf8')) as TrainState;
  } catch (err) {
    throw new Error(`${statePath}: cannot read the training state (${(err as Error).message})`, { cause: err });
  }
  for (const key of ['step', 'epoch', 'cursor', 'config', 'world_size'] as const) {
    if (state[key] === undefined) throw new Error(`${statePath}: missing field "${key}"`);
  }
  for (const key of ['step', 'cursor'] as const) {
    if (!Number.isSafeInteger(state[key]) || state[key] < 0)
      throw new Error(`${statePath}: field "${key}" must be a non-negative integer, got ${JSON.stringify(state[key])}`);
  }
  return state;
}

/** The optimiser's step count in optimizer.safetensors' `__metadata__.adamw_step`; errors name the file. */
export function adamwStep(path: string, metadata: Record<string, string>): number {
  const step = Number(metadata.adamw_step);
  if (!Number.isInteger(step)) throw new Error(`${path}: __metadata__.adamw_step missing or not an integer`);
  return step;
}

/** Reads a checkpoint folder written by saveCheckpoint; errors name the file. */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  const state = await readTrainState(dir);
  const student = (await readWeights(join(dir, 'model.safetensors'))).stateDict;
  const teacherPath = join(dir, 'teacher.safetensors');
  const teacher = (await exists(teacherPath)) ? (await readWeights(teacherPath)).stateDict : undefined;
  const heads = (await readFloat32s(join(dir, 'heads.safetensors'))).tensors;
  const opt = await readFloat32s(join(dir, 'optimizer.safetensors'));
  const moments: AdamWState['moments'] = opt.tensors;
  const adamStep = adamwStep(join(dir, 'optimizer.safetensors'), opt.metadata);
  return { dir, student, teacher, heads, optimizer: { step: adamStep, moments }, state };
}
