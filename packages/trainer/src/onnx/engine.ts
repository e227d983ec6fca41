/**
 * The ONNX Runtime step engine (engine.ts's StepEngine on onnxruntime-node): vitreg's own forward +
 * backward graphs (graphs.ts) run by ONNX Runtime on the CPU, CUDA 12 or WebGPU, with the parameters,
 * gradients and optimiser state in flat Float32Array buffers on the host.
 *
 * What lives where:
 * - engine-params.ts: the flat layout (student and teacher buffers, the gradient buffer of the trained
 *   tensors), the optimiser multipliers (param-groups.ts) and the initial weights (the tfjs engine's draws);
 * - engine-sessions.ts: onnxruntime-node, one session per graph shape, runs with the parameters bound as
 *   views and the gradients written by ONNX Runtime straight into the flat gradient buffer;
 * - engine-dino.ts: the DINO targets on the host with the tfjs step's code (centring, Sinkhorn-Knopp);
 * - engine-optim.ts: clipping, AdamW / LAMB and the EMA teacher as float32 loops over the flat buffers;
 * - engine-device.ts: on WebGPU, the same state kept on the device between runs, updated there by graphs;
 * - engine-state.ts: the host buffers and the named state (the tfjs engine's names and layouts);
 * - engine-eval.ts: the evaluation hooks (encode, classify, teacherProbs) through the forward graphs;
 * - this file: the step (micro-batches, the DINO teacher -> targets -> student sequence, then applyStep).
 */
import { weightsChecksum } from '../state.js';
import type { PreparedBatch, DinoBatch, SupervisedBatch } from '../batch.js';
import type {
  AppliedStep,
  ComputedStep,
  EngineContext,
  EngineFactory,
  EngineState,
  ParameterInfo,
  StateLayout,
  StateTargets,
  StepEngine,
  StepSettings,
} from '../engine.js';
import type { Center } from '../losses.js';
import { checkTrainingFits } from '../memory-check.js';
import type { GradientSync } from '../sync.js';
import { applyOnDevice, applyOnHost, optimizerSpec, reportedNorms } from './engine-apply.js';
import { dinoTargets } from './engine-dino.js';
import type { DeviceState, OptimizerGraphSpec } from './engine-device.js';
import { classifyFeatures, encodeImages, teacherProbabilities, type EvalGraphs } from './engine-eval.js';
import type { FlatOptimizer } from './engine-optim.js';
import { ParamLayout } from './engine-params.js';
import { GraphSessions, type Feed, type SessionSettings } from './engine-sessions.js';
import { deviceState, hostBuffers, hostState, importState, stateLayout, stateTargets, type HostBuffers } from './engine-state.js';
import { dinoDropPath, maskRowBucket, padMaskRows, padRows, supervisedDropPath } from './feeds.js';
import { registerOnnxFactory } from './clip-settings.js';
import { dinoStudentStepGraph, supervisedStepGraph, teacherGraph, type BuiltGraph, type GraphBuildOptions } from './graphs.js';

/** How an ONNX Runtime engine runs (see engine-sessions.ts). */
export interface OnnxRuntimeEngineOptions extends SessionSettings {
  /** Arithmetic of the graphs: float32 only for now (anything else is refused). */
  precision?: 'fp32';
  /**
   * WebGPU: keep the parameters, the EMA teacher and the optimiser state on the device between runs and
   * update them there (engine-device.ts), and at world size 1 the gradients too (default true on webgpu;
   * false: host buffers copied in and out each run, as on the other devices, to measure what that costs).
   */
  keepOnDevice?: boolean;
}

const f = Math.fround;

export class OnnxRuntimeEngine implements StepEngine {
  readonly name = 'onnxruntime';
  readonly layout: ParamLayout;
  readonly parameters: ParameterInfo[];
  /** Every student tensor, laid out as `layout.segments`. */
  readonly student: Float32Array;
  /** The EMA teacher (DINO), laid out as the student; null in supervised runs. */
  readonly teacher: Float32Array | null;
  /**
   * d loss / d p of the trained tensors (`layout.trained`); `ComputedStep.gradients` are views of it. It is
   * the head of one buffer whose tail holds the teacher's batch means (`ComputedStep.means`), so that a
   * step's all-reduce list is one contiguous view (sync.ts `contiguousView`) a sync reduces as it is. Not a
   * SharedArrayBuffer: onnxruntime-node refuses tensors over one ("Invalid argument").
   */
  readonly grads: Float32Array;
  /** The batch means of the DINO / iBOT centres, after `grads` in the same buffer. */
  private readonly meanViews: { dino?: Float32Array; ibot?: Float32Array };
  /** A micro-batch's gradients before they are added to `grads` (allocated with the first second micro-batch). */
  private scratch: Float32Array | null = null;
  readonly optimizer: FlatOptimizer;
  readonly centers: { dino?: Center; ibot?: Center };
  readonly sessions: GraphSessions;
  private readonly studentFeeds: Record<string, Float32Array>;
  private readonly teacherFeeds: Record<string, Float32Array>;
  /** The host buffers as the named state (engine-state.ts) reads them. */
  private readonly host: HostBuffers;
  private readonly gradViews: Float32Array[];
  /** How the graphs are built for the device: on WebGPU plain MatMul and Add (ONNX Runtime 1.30's provider has no FusedMatMul or Sum kernel). */
  private readonly build: GraphBuildOptions;
  /** WebGPU with `keepOnDevice`: the state on the device (the host buffers are then a copy brought up to date by `flush`). */
  readonly device: DeviceState | null = null;
  /** applyStep's clipping and optimiser (the host loops and the device graph both follow it). */
  private readonly spec: OptimizerGraphSpec;

  constructor(
    readonly ctx: EngineContext,
    opts: OnnxRuntimeEngineOptions = {},
  ) {
    const c = ctx.config;
    // Refuse a run the host cannot hold before allocating anything (the CPU device; a GPU's memory is unknown here).
    checkTrainingFits(ctx, 'onnxruntime', opts.device ?? 'cpu');
    this.layout = new ParamLayout(ctx);
    const L = this.layout;
    const h = hostBuffers(ctx, L);
    this.host = h;
    ({ student: this.student, teacher: this.teacher, grads: this.grads, meanViews: this.meanViews } = h);
    ({ studentFeeds: this.studentFeeds, teacherFeeds: this.teacherFeeds, gradViews: this.gradViews } = h);
    ({ parameters: this.parameters, centers: this.centers, optimizer: this.optimizer } = h);
    this.spec = optimizerSpec(c, this.optimizer);
    this.sessions = new GraphSessions(opts);
    const webgpu = this.sessions.device === 'webgpu';
    this.build = { plainMatMul: webgpu, plainSum: webgpu };
    if (opts.keepOnDevice && !webgpu) {
      throw new Error(
        `onnxruntime engine: keepOnDevice needs --device webgpu (onnxruntime-node keeps no tensor on ${this.sessions.device})`,
      );
    }
    if (webgpu && opts.keepOnDevice !== false) {
      this.device = deviceState(this.sessions, h, this.spec);
    }
  }

  /** The student's (or teacher's) tensors to feed a graph: the device's when it holds them. */
  private async params(model: 'student' | 'teacher'): Promise<Record<string, Feed>> {
    if (!this.device) return model === 'student' ? this.studentFeeds : this.teacherFeeds;
    await this.device.upload();
    return model === 'student' ? this.device.student : this.device.teacher;
  }

  /** The gradients stay on the device: WebGPU state on the device, one replica outside a cluster, one micro-batch. */
  private keepGradients(sync: GradientSync, microBatches: number): boolean {
    return this.device !== null && sync.worldSize === 1 && sync.membership === undefined && microBatches === 1;
  }

  /** Brings the host buffers up to date when the device holds newer state (before exportState, checksum). */
  async flush(): Promise<void> {
    await this.device?.download();
  }

  /** Refuses a host read of a state the device has changed since the last flush. */
  private hostCurrent(what: string): void {
    if (this.device?.hostStale)
      throw new Error(`onnxruntime engine: ${what}: the state is newer on the WebGPU device; await engine.flush() first`);
  }

  /** For logs: the device and threads. */
  get description(): string {
    const t = this.sessions.threads;
    const where = this.device ? ', state on the device' : '';
    return `onnxruntime ${this.sessions.device}, ${t ? `${t} thread${t === 1 ? '' : 's'}` : 'default threads'}${where}`;
  }

  initTeacher(): void {
    this.hostCurrent('initTeacher');
    this.teacher?.set(this.student);
    this.device?.hostChanged();
  }

  private trainedNames(): string[] {
    return this.layout.trained.map((p) => p.name);
  }

  /** Preallocated gradient outputs of a graph into `buf` (the gradient buffer or the scratch one). */
  private gradOutputs(gradients: readonly string[], buf: Float32Array): Record<string, Float32Array> {
    const L = this.layout;
    const into: Record<string, Float32Array> = {};
    for (const p of L.trained) if (gradients.includes(p.name)) into[`grad.${p.name}`] = L.gradView(buf, p);
    return into;
  }

  /** Zeros the gradients of the trained tensors a graph did not reach. */
  private zeroUnreached(gradients: readonly string[]): void {
    this.layout.trained.forEach((p, i) => {
      if (!gradients.includes(p.name)) this.gradViews[i]!.fill(0);
    });
  }

  async computeStep(batch: PreparedBatch, settings: StepSettings, sync: GradientSync): Promise<ComputedStep> {
    return batch.objective === 'supervised' ? this.supervisedStep(batch, sync) : this.dinoStep(batch, settings, sync);
  }

  /** steps/supervised.ts on the graphs: micro-batches of `train.micro_batch_size`, each loss weighted by its share. */
  private async supervisedStep(batch: SupervisedBatch, sync: GradientSync): Promise<ComputedStep> {
    const c = this.ctx.config;
    const vit = this.ctx.vit;
    const B = batch.size;
    const S = batch.imageSize;
    const C = batch.numClasses;
    const mb = c.train.micro_batch_size > 0 ? Math.min(c.train.micro_batch_size, B) : B;
    const part = c.supervised.bce_loss ? 'loss_bce' : 'loss_ce';
    const px = S * S * 3;
    const keep = this.keepGradients(sync, Math.ceil(B / mb));
    const student = await this.params('student');
    let loss = 0;
    for (let start = 0; start < B; start += mb) {
      const n = Math.min(mb, B - start);
      const key = `supervised:${n}x${S}${keep ? ':grads-on-device' : ''}`;
      const build = () =>
        supervisedStepGraph(vit, {
          ...this.build,
          batch: n,
          size: S,
          numClasses: C,
          bce: c.supervised.bce_loss,
          trained: this.trainedNames(),
        });
      const { graph } = await this.sessions.get(key, build, keep ? gradientOutputs : undefined);
      const first = start === 0;
      if (!first) this.scratch ??= new Float32Array(this.grads.length);
      const target = first ? this.grads : this.scratch!;
      const feeds: Record<string, Feed> = {
        ...student,
        images: batch.images.subarray(start * px, (start + n) * px),
        targets: batch.targets.subarray(start * C, (start + n) * C),
        loss_scale: Float32Array.of(n / B),
      };
      const drop = supervisedDropPath(vit, batch.dropPath.slice(start, start + n));
      if (drop) feeds.drop_path = drop;
      if (keep) {
        const run = await this.sessions.run(key, build, feeds, {}, gradientOutputs);
        this.keptGradients(graph.gradients, run.device);
        loss = f(loss + run.outputs.loss![0]!);
        continue;
      }
      const { outputs } = await this.sessions.run(key, build, feeds, this.gradOutputs(graph.gradients, target));
      if (first) this.zeroUnreached(graph.gradients);
      else this.addGradients(graph.gradients);
      loss = f(loss + outputs.loss![0]!);
    }
    return {
      loss,
      parts: { [part]: loss },
      gradients: keep ? [] : this.gradViews,
      means: [],
      metrics: {},
      update: { teacherMomentum: null, centres: [] },
    };
  }

  /** Keeps a step's device gradients (host zeros for the trained tensors the graph did not reach). */
  private keptGradients(reached: readonly string[], device: Record<string, Feed>): void {
    const grads: Record<string, Feed> = {};
    for (const p of this.layout.trained) grads[p.name] = reached.includes(p.name) ? device[`grad.${p.name}`]! : new Float32Array(p.size);
    this.device!.setGradients(grads);
  }

  /** grads += scratch over the tensors a micro-batch reached (float32, in micro-batch order as tf.add). */
  private addGradients(gradients: readonly string[]): void {
    const g = this.grads;
    const s = this.scratch!;
    for (const p of this.layout.trained) {
      if (!gradients.includes(p.name)) continue;
      const end = p.gradOffset + p.size;
      for (let i = p.gradOffset; i < end; i++) g[i] = g[i]! + s[i]!;
    }
  }

  /** steps/dino.ts on the graphs: the teacher graph, the targets on the host, then the student graph. */
  private async dinoStep(batch: DinoBatch, settings: StepSettings, sync: GradientSync): Promise<ComputedStep> {
    const c = this.ctx.config;
    const vit = this.ctx.vit;
    const heads = this.layout.heads;
    const dinoHead = heads.dino!;
    const B = batch.size;
    const S = batch.globalSize;
    const masks = batch.masks;
    const M = masks ? masks.indices.length : 0;
    const rows = heads.ibotMode === 'none' ? 0 : maskRowBucket(M);
    const Ki = (heads.ibot ?? dinoHead).outDim;
    const headCfg = { dino: dinoHead, ibot: heads.ibot };
    const padded = masks && rows > 0 ? padMaskRows(masks, rows) : null;

    // The teacher: raw head outputs of the unmasked global crops (eval mode).
    const tKey = `teacher:${B}x${S}:${rows}`;
    const tBuild = () => teacherGraph(vit, headCfg, { ...this.build, batch: B, size: S, maskRows: rows, ibot: heads.ibotMode });
    const tFeeds: Record<string, Feed> = { ...(await this.params('teacher')), globals: batch.globals };
    if (padded) tFeeds.mask_index = padded.index;
    const teacherOut = (await this.sessions.run(tKey, tBuild, tFeeds)).outputs;
    const temp = settings.teacherTemp;
    const targets = await dinoTargets(
      {
        dino: teacherOut.dino_logits!,
        ibot: padded ? teacherOut.ibot_logits!.subarray(0, M * Ki) : null,
        rows: 2 * B,
        K: dinoHead.outDim,
        Ki,
      },
      this.centers,
      temp,
      c,
      sync,
    );

    // The student: DINO + KoLeo + iBOT and the gradients, into the flat gradient buffer.
    const keep = this.keepGradients(sync, 1);
    const sKey = `dino:${B}x${S}+${batch.localCrops}x${batch.localSize}:${rows}${keep ? ':grads-on-device' : ''}`;
    const sBuild = () =>
      dinoStudentStepGraph(vit, headCfg, {
        ...this.build,
        batch: B,
        globalSize: S,
        localSize: batch.localSize,
        nLocal: batch.locals ? batch.localCrops : 0,
        maskRows: rows,
        ibot: heads.ibotMode,
        dinoWeight: c.dino.loss_weight,
        koleoWeight: c.dino.koleo_loss_weight,
        ibotWeight: c.ibot.loss_weight,
        studentTemp: c.dino.student_temp,
        trained: this.trainedNames(),
      });
    const { graph } = await this.sessions.get(sKey, sBuild, keep ? gradientOutputs : undefined);
    const feeds: Record<string, Feed> = { ...(await this.params('student')), globals: batch.globals, dino_targets: targets.dino };
    if (batch.locals) feeds.locals = batch.locals;
    const drop = dinoDropPath(vit, batch);
    if (drop) {
      feeds.drop_path_global = drop.global;
      if (drop.local) feeds.drop_path_local = drop.local;
    }
    if (padded && masks) {
      feeds.masks = masks.masks;
      feeds.mask_index = padded.index;
      feeds.mask_weight = padded.weight;
      feeds.ibot_targets = padRows(targets.ibot!, rows, Ki);
    }
    const { outputs, device } = await this.sessions.run(
      sKey,
      sBuild,
      feeds,
      keep ? {} : this.gradOutputs(graph.gradients, this.grads),
      keep ? gradientOutputs : undefined,
    );
    if (keep) this.keptGradients(graph.gradients, device);
    else this.zeroUnreached(graph.gradients);
    const parts: Record<string, number> = {};
    for (const o of graph.outputs) if (o.name.startsWith('loss_')) parts[o.name] = outputs[o.name]![0]!;
    // No masked patch on this rank (the graph has no iBOT term): its iBOT loss is 0, reported as every rank reports it.
    if (heads.ibotMode !== 'none') parts.loss_ibot ??= 0;
    return {
      loss: outputs.loss![0]!,
      parts,
      gradients: keep ? [] : this.gradViews,
      means: targets.means.map((m, i) => {
        const view = this.meanViews[targets.centres[i] as 'dino' | 'ibot']!;
        view.set(m);
        return view;
      }),
      metrics: { teacher_temp: temp, teacher_entropy: targets.entropy.rows, teacher_batch_entropy: targets.entropy.batch },
      update: { teacherMomentum: settings.momentum, centres: targets.centres },
    };
  }

  async applyStep(step: ComputedStep, settings: StepSettings): Promise<AppliedStep> {
    const L = this.layout;
    const kept = step.gradients.length === 0 && this.device !== null;
    if (!kept && step.gradients.length !== L.trained.length) {
      throw new Error(`onnxruntime engine: ${step.gradients.length} gradients for ${L.trained.length} parameters`);
    }
    step.gradients.forEach((g, i) => {
      if (g.length !== L.trained[i]!.size)
        throw new Error(`onnxruntime engine: gradient of "${L.trained[i]!.name}" has ${g.length} values, expected ${L.trained[i]!.size}`);
    });
    const u = step.update;
    const momentum = u.teacherMomentum !== null && this.teacher ? u.teacherMomentum : null;
    const { groups, lamb } = this.device
      ? await applyOnDevice(this.host, this.device, this.spec, step, settings, momentum)
      : applyOnHost(this.host, this.spec, step, settings, momentum);
    if (momentum !== null) {
      u.centres.forEach((name, i) => {
        const ctr = this.centers[name as 'dino' | 'ibot'];
        if (!ctr) throw new Error(`DINO update: no centre "${name}"`);
        ctr.updateFromRanks(step.means[i]!);
      });
    }
    return { norms: reportedNorms(this.spec, groups, lamb) };
  }

  async encode(model: 'student' | 'teacher', images: Float32Array, count: number, size: number): Promise<Float32Array> {
    if (model === 'teacher' && !this.teacher) throw new Error('onnxruntime engine: a supervised run has no teacher');
    return encodeImages(this.evalGraphs(), model, images, count, size);
  }

  async classify(features: Float32Array, count: number): Promise<Int32Array> {
    return classifyFeatures(this.evalGraphs(), features, count);
  }

  async teacherProbs(features: Float32Array, count: number): Promise<Float32Array> {
    return teacherProbabilities(this.evalGraphs(), features, count, this.centers.dino!, this.ctx.config.dino.teacher_temp);
  }

  private evalGraphs(): EvalGraphs {
    return { sessions: this.sessions, vit: this.ctx.vit, heads: this.layout.heads, build: this.build, params: (m) => this.params(m) };
  }

  stateLayout(): StateLayout {
    return stateLayout(this.host);
  }

  exportState(): EngineState {
    this.hostCurrent('exportState');
    return hostState(this.host);
  }

  importState(state: EngineState): void {
    importState(this.host, state, () => this.device?.hostChanged());
  }

  /** The engine's own views (exportState's) for a checkpoint load to fill in place; the centres in new arrays taken at commit. */
  stateTargets(): StateTargets {
    return stateTargets(this.host, () => this.device?.hostChanged());
  }

  checksum(): string {
    this.hostCurrent('checksum');
    return weightsChecksum(this.studentFeeds);
  }

  memory(): { tensors: number; bytes: number } {
    const bufs = [this.student, this.teacher, this.grads, this.scratch, this.optimizer.m, this.optimizer.v].filter((b) => b !== null);
    return { tensors: bufs.length, bytes: bufs.reduce((n, b) => n + b.byteLength, 0) };
  }

  dispose(): void {
    this.device?.dispose();
    void this.sessions.release();
  }
}

/** The gradient outputs of a step graph (kept on the device with `keepGradients`). */
const gradientOutputs = (g: BuiltGraph): string[] => g.gradients.map((n) => `grad.${n}`);

/**
 * An EngineFactory of ONNX Runtime engines (`train(config, { engine: onnxRuntimeEngine({ device, threads }) })`):
 * each rank's engine has its own sessions; onnxruntime-node loads at the first step (or pass `ort`).
 */
export function onnxRuntimeEngine(options: OnnxRuntimeEngineOptions = {}): EngineFactory {
  const precision = options.precision ?? 'fp32';
  if (precision !== 'fp32') throw new Error(`onnxruntime engine: precision "${String(precision)}" is not available (float32 only)`);
  if (options.threads !== undefined && !(Number.isInteger(options.threads) && options.threads >= 1)) {
    throw new Error(`onnxruntime engine: threads must be an integer >= 1, got ${options.threads}`);
  }
  // registered, so the clip objective's own loop (clip-loop.ts) trains on a factory a user made too
  const { precision: _precision, ...settings } = options;
  return registerOnnxFactory((ctx) => new OnnxRuntimeEngine(ctx, options), settings);
}
