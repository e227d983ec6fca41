/**
 * The seam between the training loop and whatever computes a step. The loop (loop.ts) prepares each
 * rank's batch on the host (batch.ts), then asks a `StepEngine` for the loss and the gradients, averages
 * them over the ranks itself (`GradientSync.allReduce` on flat host buffers), commits the step
 * (`GradientSync.commitStep`) and only then asks the engine to apply it. It never sees a tensor: the
 * same loop drives the tfjs engine (tfjs-engine.ts: tf.Variables and tf.variableGrads) and an engine
 * that runs its own forward + backward graphs (ONNX Runtime on CPU, CUDA or WebGPU) with parameters,
 * gradients and optimiser state in flat Float32Array buffers.
 *
 * An engine owns: the student (backbone + heads), for DINO the EMA teacher and the centres, the
 * optimiser (AdamW or LAMB, as `optim.optimizer` says) and its moments. Its contract, call by call, is
 * in the comments below and in the README's "Step engines" section. The loop owns: the sampler and its
 * cursor, the step count, the schedules (StepSettings), metrics, checkpoints (through `exportState` /
 * `importState` or `stateTargets`, and state.ts), evaluation (through the `encode` / `classify` / `teacherProbs` hooks
 * and evaluate.ts) and every collective except those inside a step (Sinkhorn-Knopp's sums).
 */
import type { ViTConfig } from '@vitreg/registers';
import type { PreparedBatch } from './batch.js';
import type { TrainConfig } from './config.js';
import type { GradientSync } from './sync.js';

/** The values of the run's schedules at one step, computed by the loop; the same on every rank. */
export interface StepSettings {
  /** The step being computed, 0-based (the number of steps applied before it). */
  step: number;
  /** Learning rate of every parameter, times its `lrMult` (layer-wise decay, patch embedding). */
  lr: number;
  /** Weight decay, times each parameter's `wdMult` (0 for the exempt ones). */
  wd: number;
  /** Learning rate of the DINO head's `last_layer.*` parameters (0 while frozen, else `lr`). */
  lastLayerLr: number;
  /** EMA teacher momentum m (t <- m t + (1 - m) s), DINO only. */
  momentum: number;
  /** Teacher temperature of the DINO / iBOT targets, DINO only. */
  teacherTemp: number;
}

/** One trainable parameter, in the engine's fixed order of `ComputedStep.gradients`. */
export interface ParameterInfo {
  /** `backbone.<model name>`, `head.<name>`, `dino_head.<name>` or `ibot_head.<name>` (see the README). */
  name: string;
  /** Shape in @vitreg/registers' model layout. */
  shape: number[];
  /** Number of values (the product of `shape`). */
  size: number;
}

/** What a step changes after the commit besides the optimiser: DINO's EMA teacher and centres. */
export interface StepUpdate {
  /** EMA teacher momentum to apply after the optimiser (t <- m t + (1 - m) s); null: no teacher (supervised). */
  teacherMomentum: number | null;
  /**
   * Names of the centres (`dino`, `ibot`) that fold in a batch mean: centre `centres[i]` takes
   * `means[i]` of the ComputedStep, after the all-reduce (c <- 0.9 c + 0.1 mean over the ranks that had
   * rows, `Center.updateFromRanks`).
   * Empty with Sinkhorn-Knopp centering and in supervised runs.
   */
  centres: string[];
}

/** One rank's step, computed and not applied yet. */
export interface ComputedStep {
  /** This rank's loss: the weighted sum of its parts (summed over micro-batches). */
  loss: number;
  /**
   * The loss parts, as the metrics name them: `loss_ce` or `loss_bce` (supervised); `loss_dino_global`,
   * `loss_dino_local`, `loss_koleo`, `loss_ibot` (DINO, each before its weight; absent when off).
   */
  parts: Record<string, number>;
  /**
   * d loss / d parameter of this rank's batch: one buffer per entry of `StepEngine.parameters`, in that
   * order and of its size (zeros for a parameter the step did not reach). The loop all-reduces them in
   * place (the mean over the ranks) and hands them back to `applyStep`; the engine must not keep using
   * them in between. They are valid until the engine's next `computeStep`, which may write into the same
   * buffers (the ONNX Runtime engine hands out views of one flat gradient buffer, no copy): a caller that
   * keeps a step's gradients across that call copies them first. The loop never does: it applies or
   * drops a step before computing the next. Empty when the engine kept them on its device (the ONNX
   * Runtime engine on WebGPU at world size 1 outside a cluster: there is nothing to average); `applyStep`
   * then takes them from there.
   */
  gradients: Float32Array[];
  /**
   * Per-rank statistics averaged over the ranks with the gradients (in the same all-reduce), in
   * `update.centres` order: DINO's teacher batch means for the centres as losses.ts's `rankMean`s (the
   * mean, then 1; zeros and 0 for a rank without rows: the iBOT centre where it masked no patch, so that
   * every rank all-reduces the same lengths). Empty when there are none.
   */
  means: Float32Array[];
  /**
   * Metrics known before the commit, in this order in metrics.jsonl: DINO `teacher_temp`,
   * `teacher_entropy`, `teacher_batch_entropy` (mean row entropy of the teacher's targets and entropy of
   * their mean, nats). Supervised: none.
   */
  metrics: Record<string, number>;
  /** What `applyStep` does after the optimiser. */
  update: StepUpdate;
}

/** What applying a step reports. */
export interface AppliedStep {
  /**
   * Gradient norms before clipping: `grad_norm` (all parameters), and in DINO runs `grad_norm_<module>`
   * per student module (`backbone`, `dino_head`, `ibot_head`) first. LAMB with `optim.clip_grad` 0: the
   * norm LAMB computed.
   */
  norms: Record<string, number>;
}

/**
 * Names and shapes of everything an engine's state holds, in its order of export (see `exportState`).
 * Shapes of `student.backbone.*` / `teacher.backbone.*` are @vitreg/registers' model layout
 * (`parameterShapes(vit)`).
 */
export type StateLayout = Record<string, number[]>;

/** An engine's whole state as named host values (see `StepEngine.exportState`). */
export interface EngineState {
  /** Values by name, each as long as its `StateLayout` shape says. */
  tensors: Record<string, Float32Array>;
  /** The optimiser's step count (its bias-correction exponent). */
  optimizerStep: number;
}

/**
 * Where a checkpoint load writes an engine's state in place (`StepEngine.stateTargets`): one array per
 * name of `stateLayout()`, of its size, that the engine reads its state from once `commit` is called.
 */
export interface StateTargets {
  /** Arrays by state name: views of the engine's own buffers (or arrays it takes over in `commit`). */
  tensors: Record<string, Float32Array>;
  /** Every array holds the loaded values: take them, with the optimiser's step count. */
  commit(optimizerStep: number): void;
}

/** What an engine is built from. */
export interface EngineContext {
  config: TrainConfig;
  /** The backbone's config (`modelConfig(config)`). */
  vit: ViTConfig;
  /** Classes of the data (the supervised head's outputs). */
  numClasses: number;
}

/** Builds an engine for a run (`TrainOptions.engine`; the default is `tfjsEngine`). */
export type EngineFactory = (ctx: EngineContext) => StepEngine;

/**
 * Computes and applies the steps of one rank. Every rank holds its own engine; the loop keeps them in
 * step: the same StepSettings, the same all-reduced gradients, the same state from rank 0.
 */
export interface StepEngine {
  /** For logs: `tfjs`, `onnxruntime`, ... */
  readonly name: string;
  /**
   * The trainable parameters, in the fixed order of `ComputedStep.gradients`. Not trained (no gradient,
   * no optimiser state): the teacher, the centres, and the backbone's `mask_token` outside iBOT.
   */
  readonly parameters: readonly ParameterInfo[];

  /** A fresh run's teacher (backbone and heads) starts as a copy of the student (DINO; no-op otherwise). */
  initTeacher(): void;

  /**
   * Forward and backward of this rank's batch with the weights as they are: loss parts, gradients
   * (flat host buffers), per-rank statistics and the post-commit update. Changes no state. It may run
   * collectives of the step through `sync` (Sinkhorn-Knopp's sums over every rank's teacher outputs:
   * `sync.allReduce` on host buffers, in the same order on every rank); a `MembershipChanged` thrown
   * there must leave the engine unchanged (the loop drops the step and re-syncs).
   *
   * Supervised: the student on `batch.images` in training mode (drop path from `batch.dropPath`),
   * its CLS through the linear head; loss soft-target cross-entropy (or, with `supervised.bce_loss`,
   * BCE on the targets binarised) against `batch.targets`; with `train.micro_batch_size` the batch is
   * split, each part's loss weighted by its share and the gradients summed.
   * DINO: the teacher (eval mode, unmasked globals) gives the targets (centred softmax at
   * `settings.teacherTemp`, or Sinkhorn-Knopp), the student sees the masked globals and the locals;
   * DINO + KoLeo + iBOT losses as DINOv2's SSLMetaArch (see the README's "The loop").
   */
  computeStep(batch: PreparedBatch, settings: StepSettings, sync: GradientSync): Promise<ComputedStep>;

  /**
   * Applies a committed step: `step` is what `computeStep` returned, its `gradients` and `means` now
   * holding the means over the ranks. In order: clipping (`optim.clip_grad`: per student module in a
   * DINO run, else by the global norm; none before LAMB, which clips inside), the optimiser with
   * `settings.lr`, `wd`, `lastLayerLr` and each parameter's multipliers, then `step.update` (EMA
   * teacher, centres). Returns the norms before clipping.
   */
  applyStep(step: ComputedStep, settings: StepSettings): Promise<AppliedStep>;

  /**
   * Evaluation: the CLS tokens [count, embed_dim] of `model` (eval mode, no drop path, no masks) on
   * `count` NHWC images of `size` x `size`. `teacher` exists in DINO runs only.
   */
  encode(model: 'student' | 'teacher', images: Float32Array, count: number, size: number): Promise<Float32Array>;
  /** Evaluation, supervised: the argmax class of the student's linear head on CLS features [count, embed_dim]. */
  classify(features: Float32Array, count: number): Promise<Int32Array>;
  /**
   * Evaluation, DINO: the teacher DINO head's targets on CLS features [count, embed_dim]: softmax of
   * (output - the DINO centre) / `dino.teacher_temp`, [count, prototypes].
   */
  teacherProbs(features: Float32Array, count: number): Promise<Float32Array>;

  /** Names and shapes of the state (see the README's state names), in export order. */
  stateLayout(): StateLayout;
  /**
   * The whole state as named host values, with the same names and layouts whichever engine wrote them
   * (so a checkpoint or a broadcast from one engine loads into another):
   *   student.backbone.<name>  every backbone parameter (mask_token included), model layout
   *   student.head.*  |  student.dino_head.*, student.ibot_head.*   the student's heads
   *   teacher.backbone.<name>, teacher.dino_head.*, teacher.ibot_head.*   DINO's EMA teacher
   *   center.dino, center.ibot   DINO's centres (EMA centering; kept at 0 with Sinkhorn-Knopp)
   *   optimizer.<parameter>.exp_avg, optimizer.<parameter>.exp_avg_sq   per trained parameter
   * plus `optimizerStep`. The returned arrays may be the engine's own: the caller only reads them.
   */
  exportState(): EngineState;
  /** Replaces the state by `state` (every name of `stateLayout()` present with its size; others ignored). */
  importState(state: EngineState): void;
  /**
   * Optional: brings the host copy of the state up to date where the engine keeps it on a device (the ONNX
   * Runtime engine on WebGPU). The loop awaits it before `exportState` and `checksum`, which then read the
   * host; without it they throw on such an engine.
   */
  flush?(): Promise<void>;
  /**
   * Optional: arrays a checkpoint load fills in place (state.ts's `restoreTrainingState`), so the state is
   * held once, not read into new arrays and copied by `importState`. The loader checks the whole
   * checkpoint before it writes the first value; an engine without it (tfjs: its state is tfjs tensors)
   * gets the loaded state through `importState`.
   */
  stateTargets?(): StateTargets;
  /**
   * SHA-256 (hex) of the student's weights: `weightsChecksum` (state.ts) over `student.*` of the state,
   * names without the `student.` prefix, in export order. Equal on ranks that agree.
   */
  checksum(): string;
  /** Live tensors and their bytes (the metrics `tf_tensors` and `tf_mb`); engines without tensors report 0. */
  memory(): { tensors: number; bytes: number };
  /** Frees everything the engine holds. */
  dispose(): void;
}
