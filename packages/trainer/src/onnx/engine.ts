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
 * - this file: the step (micro-batches, the DINO teacher -> targets -> student sequence), the evaluation
 *   hooks through the forward graphs, and the named state (the tfjs engine's names and layouts).
 */
import { weightsChecksum } from '../state.js';
import type { PreparedBatch, DinoBatch, SupervisedBatch } from '../batch.js';
import type { TrainConfig } from '../config.js';
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
import { Center } from '../losses.js';
import { checkTrainingFits } from '../memory-check.js';
import type { GradientSync } from '../sync.js';
import { centredProbs, dinoTargets } from './engine-dino.js';
import { clipGroups, DeviceState, optimizerFeeds, type OptimizerGraphSpec } from './engine-device.js';
import { clipGradients, clipPerModule, emaUpdate, FlatOptimizer, learningRate } from './engine-optim.js';
import { initialStudent, ParamLayout } from './engine-params.js';
import { GraphSessions, type Feed, type SessionSettings } from './engine-sessions.js';
import { dinoDropPath, maskRowBucket, padMaskRows, padRows, supervisedDropPath } from './feeds.js';
import { registerOnnxFactory } from './clip-settings.js';
import {
  classifierGraph,
  dinoHeadGraph,
  dinoStudentStepGraph,
  encodeGraph,
  supervisedStepGraph,
  teacherGraph,
  type BuiltGraph,
  type GraphBuildOptions,
} from './graphs.js';

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
  private readonly meanViews: { dino?: Float32Array; ibot?: Float32Array } = {};
  /** A micro-batch's gradients before they are added to `grads` (allocated with the first second micro-batch). */
  private scratch: Float32Array | null = null;
  readonly optimizer: FlatOptimizer;
  readonly centers: { dino?: Center; ibot?: Center } = {};
  readonly sessions: GraphSessions;
  private readonly studentFeeds: Record<string, Float32Array> = {};
  private readonly teacherFeeds: Record<string, Float32Array> = {};
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
    this.student = new Float32Array(L.total);
    initialStudent(L, c, this.student);
    this.teacher = c.objective === 'dino' ? new Float32Array(L.total) : null;
    const dinoK = L.heads.dino?.outDim ?? 0;
    const ibotK = L.heads.ibotMode !== 'none' ? (L.heads.ibot ?? L.heads.dino!).outDim : 0;
    // The means are rankMeans: each centre's values and a share.
    const store = new Float32Array(L.gradTotal + (dinoK ? dinoK + 1 : 0) + (ibotK ? ibotK + 1 : 0));
    this.grads = store.subarray(0, L.gradTotal);
    if (dinoK) this.meanViews.dino = store.subarray(L.gradTotal, L.gradTotal + dinoK + 1);
    if (ibotK) this.meanViews.ibot = store.subarray(L.gradTotal + dinoK + 1);
    for (const s of L.segments) {
      this.studentFeeds[s.name] = L.view(this.student, s.name);
      if (this.teacher) this.teacherFeeds[s.name] = L.view(this.teacher, s.name);
    }
    this.gradViews = L.trained.map((p) => L.gradView(this.grads, p));
    this.parameters = L.trained.map((p) => ({ name: p.name, shape: [...p.shape], size: p.size }));
    if (L.heads.dino) this.centers.dino = new Center(L.heads.dino.outDim, c.dino.center_momentum);
    if (L.heads.ibotMode !== 'none') {
      this.centers.ibot = new Center((L.heads.ibot ?? L.heads.dino!).outDim, c.dino.center_momentum);
    }
    const o = c.optim;
    this.optimizer = new FlatOptimizer(o.optimizer === 'lamb' ? 'lamb' : 'adamw', L.trained, L.gradTotal, {
      beta1: o.beta1,
      beta2: o.beta2,
      eps: o.eps,
    });
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
      const moments = (buf: Float32Array) => Object.fromEntries(L.trained.map((p) => [p.name, L.gradView(buf, p)]));
      this.device = new DeviceState(
        this.sessions,
        L,
        {
          student: this.studentFeeds,
          teacher: this.teacher ? this.teacherFeeds : null,
          m: moments(this.optimizer.m),
          v: moments(this.optimizer.v),
        },
        this.spec,
      );
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
    const { groups, lamb } = this.device ? await this.applyOnDevice(step, settings, momentum) : this.applyOnHost(step, settings, momentum);
    if (momentum !== null) {
      u.centres.forEach((name, i) => {
        const ctr = this.centers[name as 'dino' | 'ibot'];
        if (!ctr) throw new Error(`DINO update: no centre "${name}"`);
        ctr.updateFromRanks(step.means[i]!);
      });
    }
    // As the tfjs engine reports them: each module's norm and their total, or the global norm; LAMB's own
    // norm where no clipping stage ran.
    const norms: Record<string, number> = {};
    if (this.spec.clip === 'module') {
      let total = 0;
      for (const [m, n] of groups) {
        norms[`grad_norm_${m}`] = n;
        total += n * n;
      }
      norms.grad_norm = Math.sqrt(total);
    } else if (this.spec.clip === 'global') norms.grad_norm = groups[0]![1];
    else if (lamb !== undefined) norms.grad_norm = lamb;
    return { norms };
  }

  /**
   * The host loops (engine-optim.ts): the tfjs engine's clipping (see TfjsEngine.clip: per student module in
   * DINO runs, else by the global norm), the optimiser, the EMA teacher. Returns the clip groups' norms and LAMB's.
   */
  private applyOnHost(step: ComputedStep, settings: StepSettings, momentum: number | null): { groups: [string, number][]; lamb?: number } {
    // The loop hands back the views it was given; anything else is copied in.
    step.gradients.forEach((g, i) => {
      const own = this.gradViews[i]!;
      if (g.buffer !== own.buffer || g.byteOffset !== own.byteOffset) own.set(g);
    });
    const trained = this.layout.trained;
    const max = this.spec.maxNorm;
    const groups: [string, number][] =
      this.spec.clip === 'none'
        ? []
        : this.spec.clip === 'global'
          ? [['all', clipGradients(this.grads, trained, max)]]
          : Object.entries(clipPerModule(this.grads, trained, max));
    const lamb = this.optimizer.apply(this.student, this.grads, { lr: settings.lr, wd: settings.wd, lastLayerLr: settings.lastLayerLr });
    if (momentum !== null) emaUpdate(this.teacher!, this.student, momentum);
    return { groups, lamb };
  }

  /** The same on the device (engine-device.ts's optimiser and EMA graphs), with its gradients or the step's host ones. */
  private async applyOnDevice(
    step: ComputedStep,
    settings: StepSettings,
    momentum: number | null,
  ): Promise<{ groups: [string, number][]; lamb?: number }> {
    const L = this.layout;
    const dev = this.device!;
    let grads: Record<string, Feed>;
    if (step.gradients.length > 0) grads = Object.fromEntries(step.gradients.map((g, i) => [L.trained[i]!.name, g]));
    else if (dev.grads) grads = dev.grads;
    else throw new Error('onnxruntime engine: no gradients on the device for this step (computeStep first)');
    const hp = optimizerFeeds(
      L.trained,
      this.spec,
      this.optimizer.step + 1,
      (p) => learningRate(p, settings),
      (p) => settings.wd * p.wdMult,
    );
    const values = await dev.update(grads, hp, momentum);
    this.optimizer.step += 1;
    const groups = clipGroups(L.trained, this.spec.clip).map(([name], i): [string, number] => [name, values[i]!]);
    return { groups, lamb: this.spec.kind === 'lamb' ? values[groups.length] : undefined };
  }

  async encode(model: 'student' | 'teacher', images: Float32Array, count: number, size: number): Promise<Float32Array> {
    if (model === 'teacher' && !this.teacher) throw new Error('onnxruntime engine: a supervised run has no teacher');
    const key = `encode:${count}x${size}`;
    const build = () => encodeGraph(this.ctx.vit, { ...this.build, batch: count, size });
    return (await this.sessions.run(key, build, { ...(await this.params(model)), images })).outputs.cls!;
  }

  async classify(features: Float32Array, count: number): Promise<Int32Array> {
    const C = this.layout.heads.classes!;
    const build = () => classifierGraph(this.ctx.vit.embed_dim, C, count, this.build);
    const logits = (await this.sessions.run(`classify:${count}`, build, { ...(await this.params('student')), features })).outputs.logits!;
    const out = new Int32Array(count);
    for (let r = 0; r < count; r++) {
      let best = 0;
      for (let k = 1; k < C; k++) if (logits[r * C + k]! > logits[r * C + best]!) best = k;
      out[r] = best;
    }
    return out;
  }

  async teacherProbs(features: Float32Array, count: number): Promise<Float32Array> {
    const build = () => dinoHeadGraph(this.layout.heads.dino!, count, 'dino_head', this.build);
    const logits = (await this.sessions.run(`teacher_head:${count}`, build, { ...(await this.params('teacher')), features })).outputs
      .logits!;
    return centredProbs(logits, count, this.centers.dino!, this.ctx.config.dino.teacher_temp);
  }

  stateLayout(): StateLayout {
    const out: StateLayout = {};
    for (const s of this.layout.segments) out[`student.${s.name}`] = [...s.shape];
    if (this.teacher) for (const s of this.layout.segments) out[`teacher.${s.name}`] = [...s.shape];
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) out[`center.${k}`] = [ctr.dim];
    for (const p of this.layout.trained) {
      out[`optimizer.${p.name}.exp_avg`] = [...p.shape];
      out[`optimizer.${p.name}.exp_avg_sq`] = [...p.shape];
    }
    return out;
  }

  exportState(): EngineState {
    this.hostCurrent('exportState');
    return this.hostState();
  }

  /** The state as views of the host buffers (current or not: see `flush`). */
  private hostState(): EngineState {
    const L = this.layout;
    const tensors: Record<string, Float32Array> = {};
    for (const s of L.segments) tensors[`student.${s.name}`] = this.studentFeeds[s.name]!;
    if (this.teacher) for (const s of L.segments) tensors[`teacher.${s.name}`] = this.teacherFeeds[s.name]!;
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) tensors[`center.${k}`] = ctr.value;
    for (const p of L.trained) {
      tensors[`optimizer.${p.name}.exp_avg`] = L.gradView(this.optimizer.m, p);
      tensors[`optimizer.${p.name}.exp_avg_sq`] = L.gradView(this.optimizer.v, p);
    }
    return { tensors, optimizerStep: this.optimizer.step };
  }

  importState(state: EngineState): void {
    const take = (name: string, size: number): Float32Array => {
      const v = state.tensors[name];
      if (!v || v.length !== size) {
        throw new Error(
          `onnxruntime engine state: missing or mis-sized tensor "${name}" (expected ${size} values, got ${v?.length ?? 'none'})`,
        );
      }
      return v;
    };
    if (!Number.isInteger(state.optimizerStep) || state.optimizerStep < 0) {
      throw new Error(`optimizer state: step must be a non-negative integer, got ${state.optimizerStep}`);
    }
    // Every tensor is checked before anything is replaced.
    const L = this.layout;
    const writes: [Float32Array, Float32Array][] = [];
    for (const s of L.segments) writes.push([this.studentFeeds[s.name]!, take(`student.${s.name}`, s.size)]);
    if (this.teacher) for (const s of L.segments) writes.push([this.teacherFeeds[s.name]!, take(`teacher.${s.name}`, s.size)]);
    for (const p of L.trained) {
      writes.push([L.gradView(this.optimizer.m, p), take(`optimizer.${p.name}.exp_avg`, p.size)]);
      writes.push([L.gradView(this.optimizer.v, p), take(`optimizer.${p.name}.exp_avg_sq`, p.size)]);
    }
    const centres = Object.entries(this.centers).map(([k, ctr]) => [ctr!, take(`center.${k}`, ctr!.dim)] as const);
    for (const [dst, src] of writes) if (dst !== src) dst.set(src);
    for (const [ctr, v] of centres) ctr.value = Float32Array.from(v);
    this.optimizer.step = state.optimizerStep;
    this.device?.hostChanged();
  }

  /** The engine's own views (exportState's) for a checkpoint load to fill in place; the centres in new arrays taken at commit. */
  stateTargets(): StateTargets {
    // The loader overwrites every value (or none): a device newer than the host does not matter here.
    const { tensors } = this.hostState();
    const centres = Object.entries(this.centers).map(([k, ctr]) => [ctr!, (tensors[`center.${k}`] = new Float32Array(ctr!.dim))] as const);
    return {
      tensors,
      commit: (optimizerStep) => {
        if (!Number.isInteger(optimizerStep) || optimizerStep < 0) {
          throw new Error(`optimizer state: step must be a non-negative integer, got ${optimizerStep}`);
        }
        for (const [ctr, v] of centres) ctr.value = v;
        this.optimizer.step = optimizerStep;
        this.device?.hostChanged();
      },
    };
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

/** The clipping and optimiser of `applyStep` (the tfjs engine's: per module in DINO runs, none before LAMB without clip_grad, else global). */
function optimizerSpec(c: TrainConfig, o: FlatOptimizer): OptimizerGraphSpec {
  const clip = c.objective === 'dino' ? 'module' : !(c.optim.clip_grad > 0) && o.kind === 'lamb' ? 'none' : 'global';
  return {
    kind: o.kind,
    clip,
    maxNorm: c.optim.clip_grad,
    beta1: o.beta1,
    beta2: o.beta2,
    eps: o.eps,
    maxGradNorm: o.maxGradNorm,
    gradAveraging: o.gradAveraging,
    trustClip: o.trustClip,
    alwaysAdapt: o.alwaysAdapt,
    biasCorrection: o.biasCorrection,
  };
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
