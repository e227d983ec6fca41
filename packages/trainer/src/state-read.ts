/**
 * Reading a checkpoint folder (checkpoint.ts's files) into arrays the caller gives, one per name of the
 * training state (issue 16): an engine's own buffers (`StepEngine.stateTargets`: the ONNX Runtime
 * engine's flat buffers) or new arrays (state.ts's loadTrainingState, for engines that import a state).
 * Nothing is written before the whole checkpoint is checked: state.json and the run's config, then each
 * file's header against the targets (every tensor present, a float dtype, its shape or number of values;
 * every problem in one error, each naming the file and the tensor; a truncated file is refused by its
 * header's offsets). Then each tensor's bytes are read straight into its target (F32: positioned reads
 * into the target's bytes), the backbones' linear and patch-embedding weights through one reused buffer
 * that converts the file's PyTorch layout into the model's, so a resume holds the state once.
 *   model.safetensors / teacher.safetensors  -> student.backbone.* / teacher.backbone.*
 *   heads.safetensors                        -> student.<head>.*, teacher.<head>.*, center.*
 *   optimizer.safetensors                    -> optimizer.*, and the step count (__metadata__.adamw_step)
 * A backbone file that is not exactly the DINOv2 names and PyTorch shapes vitreg writes (another naming,
 * a prefix, another pos_embed layout) is read as before (readWeights, then copied).
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  firstDifference,
  float32TargetProblems,
  numel,
  readFloat32Into,
  SafetensorsReader,
  type Float32Target,
  type HostTensor,
} from '@vitreg/core';
import {
  hasOwnModelLayout,
  parameterShapes,
  readWeights,
  toModelLayout,
  torchShapes,
  weightsFromStateDict,
  type ViTConfig,
} from '@vitreg/registers';
import { adamwStep, readTrainState } from './checkpoint.js';
import { completeSavedConfig, type TrainConfig } from './config.js';

/** The dtypes a backbone file may hold (readWeights' rule); heads and moments take any (toFloat32). */
const BACKBONE_DTYPES: readonly HostTensor['dtype'][] = ['F32', 'F16', 'BF16', 'F64'];

/** From the file's layout (`src`) into the model's (`dst`). */
type Convert = (src: Float32Array, dst: Float32Array) => void;

/** One tensor to read from an open file into a target, through `convert` when the layouts differ. */
interface Read extends Float32Target {
  reader: SafetensorsReader;
  convert?: Convert;
}

/** What reading a checkpoint into targets found besides the values. */
export interface ReadTrainingState {
  /** The optimiser's step count. */
  optimizerStep: number;
  /** The step and the sampler's cursor to continue from (state.json). */
  step: number;
  cursor: number;
}

const shapeText = (s: readonly number[]): string => `[${s.join(',')}]`;

/** The conversion of backbone tensor `name` (PyTorch shape `shape`) into the model's layout, or undefined when they agree. */
function modelLayoutConversion(name: string, shape: readonly number[]): Convert | undefined {
  return hasOwnModelLayout(name) ? (src, dst) => void toModelLayout(name, { shape, data: src }, dst) : undefined;
}

/** The checks and reads of one checkpoint, gathered before anything is written. */
class Plan {
  readonly problems: string[] = [];
  readonly reads: Read[] = [];
  /** Backbones read the old way: values to copy into targets. */
  readonly copies: [Float32Array, Float32Array][] = [];
  /** pos_embed's class slot, added to cls_token once both are read (fitPosEmbed's fold). */
  readonly folds: [Float32Array, Float32Array][] = [];
  readonly readers: SafetensorsReader[] = [];

  async open(path: string): Promise<SafetensorsReader | undefined> {
    try {
      await stat(path);
    } catch {
      this.problems.push(`${path} is missing`);
      return undefined;
    }
    try {
      const reader = await SafetensorsReader.open(path);
      this.readers.push(reader);
      return reader;
    } catch (err) {
      this.problems.push((err as Error).message);
      return undefined;
    }
  }

  /** `targets` by model name, from the backbone file `path`. */
  async backbone(path: string, vit: ViTConfig, targets: Record<string, Float32Array>, prefix: string): Promise<void> {
    const torch = torchShapes(vit);
    const model = parameterShapes(vit);
    for (const [name, into] of Object.entries(targets)) {
      if (!model[name]) this.problems.push(`training state: "${prefix}${name}" is not a parameter of this run's backbone`);
      else if (into.length !== numel(model[name]))
        this.problems.push(`training state: "${prefix}${name}" has ${into.length} values, expected ${numel(model[name])}`);
    }
    const reader = await this.open(path);
    if (!reader) return;
    const names = reader.names();
    const naming = reader.metadata.vitreg_naming;
    // A model without a class position is written with a zero class slot in pos_embed (the DINOv2 names'
    // layout); fitPosEmbed folds the slot into cls_token on reading, and so does the read below.
    const [, n, d] = torch.pos_embed ?? [];
    const slotted =
      !vit.pos_embed_cls && reader.has('pos_embed') && shapeText(reader.info('pos_embed').shape) === shapeText([1, n! + 1, d!]);
    const fileShape = (name: string) => (name === 'pos_embed' && slotted ? [1, n! + 1, d!] : torch[name]!);
    const exact =
      (naming === undefined || naming === 'dinov2') &&
      names.length === Object.keys(torch).length &&
      names.every((name) => torch[name] !== undefined && shapeText(reader.info(name).shape) === shapeText(fileShape(name)));
    if (exact) {
      const list: Read[] = [];
      for (const [name, into] of Object.entries(targets)) {
        if (!torch[name]) continue;
        let convert = modelLayoutConversion(name, torch[name]);
        if (name === 'pos_embed' && slotted) {
          const slot = new Float32Array(d!);
          convert = (src, dst) => {
            slot.set(src.subarray(0, d));
            dst.set(src.subarray(d));
          };
          if (targets.cls_token) this.folds.push([slot, targets.cls_token]);
        }
        list.push({ reader, name, into, shape: fileShape(name), dtypes: BACKBONE_DTYPES, convert });
      }
      this.check(reader, list);
      return;
    }
    // Not the files vitreg writes: read as before (any naming, pos_embed fitted; every problem named).
    try {
      const weights = weightsFromStateDict((await readWeights(path)).stateDict, vit);
      for (const [name, into] of Object.entries(targets)) {
        const v = weights[name];
        if (v && v.length === into.length) this.copies.push([v, into]);
        else if (v) this.problems.push(`${path}: tensor "${name}" has ${v.length} values, expected ${into.length}`);
      }
    } catch (err) {
      const msg = (err as Error).message;
      this.problems.push(msg.startsWith(path) ? msg : `${path}: ${msg}`);
    }
  }

  /** Checks `list` against the reader's header and keeps them to read. */
  check(reader: SafetensorsReader, list: Read[]): void {
    this.problems.push(...float32TargetProblems(reader, list));
    this.reads.push(...list);
  }

  async close(): Promise<void> {
    await Promise.all(this.readers.map((r) => r.close()));
  }
}

/**
 * Reads checkpoint folder `dir` of a run of `config` into `targets` (state name -> an array of its size:
 * `student.backbone.*` in the model's layout, heads, centres, `optimizer.*`) and returns the optimiser's
 * step count, the step and the cursor. Everything is checked before the first value is written: a
 * checkpoint of another config is refused with the first differing field named, a missing, mis-typed or
 * mis-sized tensor (all of them, in one error naming each file and tensor) or a truncated file leaves
 * the targets as they were. An I/O error while reading leaves them partly written (the error names the
 * file and tensor).
 */
export async function readTrainingStateInto(
  dir: string,
  config: TrainConfig,
  vit: ViTConfig,
  targets: Record<string, Float32Array>,
): Promise<ReadTrainingState> {
  const train = await readTrainState(dir);
  const diff = firstDifference(completeSavedConfig(train.config), config);
  if (diff) {
    const field = diff.path || '(root)';
    const why = `field "${field}" of the checkpoint's config differs from this run's config; resume with the run's config.json`;
    throw new Error(`${join(dir, 'state.json')}: ${why}`);
  }
  const backbones = { student: {} as Record<string, Float32Array>, teacher: {} as Record<string, Float32Array> };
  const heads: Read[] = [];
  const moments: Read[] = [];
  for (const [name, into] of Object.entries(targets)) {
    const b = (['student', 'teacher'] as const).find((w) => name.startsWith(`${w}.backbone.`));
    if (b) backbones[b][name.slice(`${b}.backbone.`.length)] = into;
    else if (name.startsWith('optimizer.')) moments.push({ name: name.slice('optimizer.'.length), into } as Read);
    else heads.push({ name, into } as Read);
  }
  const plan = new Plan();
  try {
    await plan.backbone(join(dir, 'model.safetensors'), vit, backbones.student, 'student.backbone.');
    if (Object.keys(backbones.teacher).length > 0)
      await plan.backbone(join(dir, 'teacher.safetensors'), vit, backbones.teacher, 'teacher.backbone.');
    const headsFile = await plan.open(join(dir, 'heads.safetensors'));
    if (headsFile)
      plan.check(
        headsFile,
        heads.map((t) => ({ ...t, reader: headsFile })),
      );
    const optPath = join(dir, 'optimizer.safetensors');
    const optFile = await plan.open(optPath);
    let optimizerStep = NaN;
    if (optFile) {
      plan.check(
        optFile,
        moments.map((t) => ({ ...t, reader: optFile })),
      );
      try {
        optimizerStep = adamwStep(optPath, optFile.metadata);
        if (optimizerStep < 0)
          plan.problems.push(`${optPath}: __metadata__.adamw_step must be a non-negative integer, got ${optimizerStep}`);
      } catch (err) {
        plan.problems.push((err as Error).message);
      }
    }
    const n = plan.problems.length;
    if (n > 0) {
      const shown = plan.problems.slice(0, 20).join('; ') + (n > 20 ? `; ... (${n} problems in all)` : '');
      throw new Error(`checkpoint ${dir} does not fit this run's state (${n} problem${n === 1 ? '' : 's'}; nothing was loaded): ${shown}`);
    }
    await fill(plan);
    return { optimizerStep, step: train.step, cursor: train.cursor };
  } finally {
    await plan.close();
  }
}

/** Reads every planned tensor (each file in its own order), then copies the backbones read the old way. */
async function fill(plan: Plan): Promise<void> {
  const stored = (r: Read) => numel(r.reader.info(r.name).shape);
  const scratch = new Float32Array(plan.reads.reduce((m, r) => (r.convert ? Math.max(m, stored(r)) : m), 0));
  for (const reader of plan.readers) {
    const order = new Map(reader.names().map((n, i) => [n, i]));
    const reads = plan.reads.filter((r) => r.reader === reader).sort((a, b) => order.get(a.name)! - order.get(b.name)!);
    for (const r of reads) {
      if (!r.convert) {
        await readFloat32Into(reader, r.name, r.into);
        continue;
      }
      const src = scratch.subarray(0, stored(r));
      await readFloat32Into(reader, r.name, src);
      r.convert(src, r.into);
    }
  }
  for (const [slot, cls] of plan.folds) for (let i = 0; i < cls.length; i++) cls[i] = cls[i]! + slot[i]!;
  for (const [from, into] of plan.copies) into.set(from);
}
