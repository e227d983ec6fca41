/**
 * The training loop. One step:
 *   sampler(cursor, rank, world size) -> items -> augmentations -> forward / backward (supervised
 *   cross-entropy or BCE, or DINO + iBOT + KoLeo against the EMA teacher, its targets centred by an EMA
 *   centre or by Sinkhorn-Knopp over every rank) -> GradientSync.allReduce (the gradients and the
 *   teacher's batch means, every step whatever the world size) -> commitStep (every rank got here) ->
 *   clip (per student module for DINO, as DINOv2) -> AdamW or LAMB -> EMA teacher and centres ->
 *   metrics -> eval and checkpoint.
 * Nothing changes the state before the commit, so a step dropped because a cluster's membership
 * changed leaves every rank at the last committed step; they re-sync from rank 0 and go on.
 *
 * Randomness never depends on which rank handles an image: each image's augmentation and drop path
 * are drawn from (seed, epoch, image index), batch-level draws (mixup, iBOT masks) from (seed, step,
 * rank). With the sampler's global cursor, W ranks x B images give the weights of one rank x W*B
 * images (up to float rounding; not with DINOv2's batch-subset drop path, KoLeo or the iBOT masks, which
 * depend on the batch a rank holds; Sinkhorn-Knopp's sums span every rank, so it matches), a resumed
 * run equals an uninterrupted one bit for bit, and the checkpoint holds no generator state: only the
 * step and the cursor. The learning rate follows the global batch (optim.scaling_rule) at every step.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { BatchPrefetcher, DistributedSampler, ensureGradients, firstDifference, RASampler, type CursorSampler, Progress, Rng, writeFileAtomic, writeJsonAtomic, type Dataset, type DatasetItem, type SampleRef } from '@vitreg/core';
import { VisionTransformer, matMul2d, modelFromStateDict, type ViTConfig } from '@vitreg/registers';
import { evalTransform, mixupCutmix, multiCrop, smoothOneHot, supervisedAugment } from './augment.js';
import { listCheckpoints, loadCheckpoint, pruneCheckpoints, saveCheckpoint, type HostTensors, type TrainState } from './checkpoint.js';
import { assertDataSource, modelConfig, scaledLr, type TrainConfig } from './config.js';
import { openData, type TrainData } from './data.js';
import { ClassifierHead, DinoHead } from './heads.js';
import { knnClassify } from './knn.js';
import { reduceSumOf, sinkhornKnopp } from './centering.js';
import { binaryCrossEntropyLoss, Center, dinoGlobalLocalLoss, ibotMaskedLoss, koleoLoss, softTargetCrossEntropy, teacherSoftmaxCenter } from './losses.js';
import { collateMasks, MaskingGenerator } from './masking.js';
import { AdamW, clipByGlobalNorm, clipPerModule, Lamb } from './optim.js';
import { paramGroups, type ParamSpec } from './param-groups.js';
import { cosineSchedule, type Schedule } from './schedules.js';
import { isMembershipChanged, LocalGradientSync, type GradientSync } from './sync.js';
import { weightsChecksum } from './threads.js';

export interface TrainOptions {
  /** Run folder: config.json, metrics.jsonl, checkpoints/, eval.json. */
  outDir: string;
  /** Continue from the newest checkpoint in outDir (a fresh start when there is none). */
  resume?: boolean;
  sync?: GradientSync;
  /** Stop after this step with a checkpoint, as an interrupted run would (for tests and preemption). */
  stopAfter?: number;
  /** Draw a progress bar / progress lines on stderr (default true; rank 0 only). */
  progress?: boolean;
  /** Also return a SHA-256 of the final student weights (`TrainResult.checksum`), to compare ranks or runs. */
  checksum?: boolean;
  /**
   * With several ranks, every rank appends one line per step to `<outDir>/ranks/<rankName>.jsonl`
   * (its own loss, timings, rank, world size, membership); default `rank-<rank>`.
   */
  rankName?: string;
  /** Also log the (epoch, index) of every image a rank trained on in its per-rank file. */
  logSamples?: boolean;
  /** Where a rank's notes go (membership changes); default stderr on rank 0. */
  log?: (line: string) => void;
}

export interface EvalResult {
  step: number;
  num_classes: number;
  /** Supervised: accuracy of the classifier on the val split. */
  val_accuracy?: number;
  /** Self-supervised: k-NN accuracy of the teacher's CLS on the val split. */
  knn_accuracy?: number;
  /** Self-supervised: teacher collapse indicators on the val split (nats). */
  teacher_entropy?: number;
  teacher_batch_entropy?: number;
}

export interface TrainResult {
  outDir: string;
  /** Last step run (equals config.train.steps unless stopped early). */
  step: number;
  /** Final evaluation (absent when stopped early). */
  eval?: EvalResult;
  checkpoint: string;
  /** With `checksum: true`: SHA-256 (hex) of this rank's student backbone and heads. */
  checksum?: string;
}

/** Rng streams derived from train.seed: per image (augment, dropPath) or per step and rank (mix, masks). */
const STREAMS = { init: 1, augment: 2, mix: 3, masks: 4, dropPath: 5 } as const;

type Heads = { cls?: ClassifierHead; dino?: DinoHead; ibot?: DinoHead };

/** The teacher's side of a DINO step: centred, sharpened probabilities and the batch means for the centres. */
interface TeacherTargets {
  [key: string]: tf.Tensor | undefined;
  dinoProbs: tf.Tensor2D;
  dinoMean: tf.Tensor;
  ibotProbs?: tf.Tensor2D;
  ibotMean?: tf.Tensor;
}

function headParams(heads: Heads): Record<string, tf.Variable> {
  const out: Record<string, tf.Variable> = {};
  for (const [name, head] of Object.entries(heads) as [string, ClassifierHead | DinoHead | undefined][]) {
    if (!head) continue;
    const prefix = name === 'cls' ? 'head' : `${name}_head`;
    for (const [k, v] of Object.entries(head.params)) out[`${prefix}.${k}`] = v;
  }
  return out;
}

/** Mean entropy of the rows of p [N, K] and entropy of their mean (nats). */
function entropies(p: tf.Tensor2D): { rows: number; batch: number } {
  const [rows, batch] = tf.tidy(() => {
    const h = (q: tf.Tensor) => tf.neg(tf.sum(tf.mul(q, tf.log(tf.add(q, 1e-12))), -1));
    return [tf.mean(h(p)), h(tf.mean(p, 0))];
  });
  const out = { rows: rows!.dataSync()[0]!, batch: batch!.dataSync()[0]! };
  rows!.dispose();
  batch!.dispose();
  return out;
}

async function loadItems(ds: Dataset, indices: number[]): Promise<DatasetItem[]> {
  return Promise.all(indices.map((i) => ds.get(i)));
}

function stack(images: Float32Array[], size: number): tf.Tensor4D {
  const per = size * size * 3;
  const data = new Float32Array(images.length * per);
  images.forEach((img, i) => data.set(img, i * per));
  return tf.tensor4d(data, [images.length, size, size, 3]);
}

export class Trainer {
  readonly vit: ViTConfig;
  readonly data: TrainData;
  readonly student: VisionTransformer;
  readonly teacher?: VisionTransformer;
  readonly heads: Heads = {};
  readonly teacherHeads: Heads = {};
  readonly centers: { dino?: Center; ibot?: Center } = {};
  readonly optimizer: AdamW | Lamb;
  readonly sampler: CursorSampler;
  readonly sync: GradientSync;
  /** Steps applied. */
  step = 0;
  /** Global position of the sampler: images the whole job consumed (the next step starts here). */
  cursor = 0;
  private readonly root: Rng;
  private readonly params: ParamSpec[];
  /** The learning-rate schedule of each world size met (the rate follows the global batch). */
  private readonly lrSchedules = new Map<number, Schedule>();
  private readonly wd: Schedule;
  private readonly momentum: Schedule;
  private readonly teacherTemp: Schedule;
  private readonly maskGen?: MaskingGenerator;
  /** Decodes the next step's images while this one computes. */
  private readonly loader: BatchPrefetcher;

  constructor(readonly config: TrainConfig, opts: { sync?: GradientSync } = {}) {
    const c = config;
    this.sync = opts.sync ?? new LocalGradientSync();
    this.vit = modelConfig(c);
    assertDataSource(c);
    this.data = openData(c);
    this.loader = new BatchPrefetcher(this.data.train, { concurrency: Math.max(256, c.train.batch_size) });
    if (c.objective === 'supervised' && this.data.numClasses < 2) {
      throw new Error(`data: supervised training needs at least 2 classes, found ${this.data.numClasses}`);
    }
    this.root = new Rng(c.train.seed);
    const init = this.root.fork(STREAMS.init);
    this.student = new VisionTransformer(this.vit, { seed: init.uint32() });
    const D = this.vit.embed_dim;
    if (c.objective === 'supervised') {
      this.heads.cls = new ClassifierHead(D, this.data.numClasses, init.fork(1));
    } else {
      const d = c.dino;
      const dinoCfg = { inDim: D, outDim: d.head_n_prototypes, hiddenDim: d.head_hidden_dim, bottleneckDim: d.head_bottleneck_dim, nlayers: d.head_nlayers };
      this.heads.dino = new DinoHead(dinoCfg, init.fork(1));
      this.teacherHeads.dino = new DinoHead(dinoCfg, init.fork(1));
      this.centers.dino = new Center(d.head_n_prototypes, d.center_momentum);
      if (c.ibot.loss_weight > 0) {
        const b = c.ibot;
        const ibotCfg = b.separate_head
          ? { inDim: D, outDim: b.head_n_prototypes, hiddenDim: b.head_hidden_dim, bottleneckDim: b.head_bottleneck_dim, nlayers: b.head_nlayers }
          : dinoCfg;
        if (b.separate_head) {
          this.heads.ibot = new DinoHead(ibotCfg, init.fork(2));
          this.teacherHeads.ibot = new DinoHead(ibotCfg, init.fork(2));
        }
        this.centers.ibot = new Center(ibotCfg.outDim, d.center_momentum);
        const grid = c.crops.global_crops_size / this.vit.patch_size;
        this.maskGen = new MaskingGenerator(grid, grid, { maxNumPatches: 0.5 * grid * grid });
      }
      this.teacher = new VisionTransformer(this.vit, { seed: 0, trainable: false });
    }
    // Parameters the objective never uses get no optimiser state (the mask token outside iBOT).
    const backbone = { ...this.student.params };
    if (!this.maskGen) delete backbone.mask_token;
    const groupOpts = { layerDecay: c.optim.layerwise_decay, patchEmbedLrMult: c.optim.patch_embed_lr_mult, weightDecayRule: c.optim.weight_decay_rule };
    this.params = [...paramGroups('backbone', backbone, this.vit.depth, groupOpts)];
    for (const [name, head] of Object.entries(this.heads) as [string, ClassifierHead | DinoHead][]) {
      this.params.push(...paramGroups(name === 'cls' ? 'head' : `${name}_head`, head.params, 0, groupOpts));
    }
    const betas = { beta1: c.optim.beta1, beta2: c.optim.beta2, eps: c.optim.eps };
    this.optimizer = c.optim.optimizer === 'lamb' ? new Lamb(this.params, betas) : new AdamW(this.params, betas);

    const T = c.train.steps;
    this.wd = cosineSchedule({ base: c.optim.weight_decay, final: c.optim.weight_decay_end, totalSteps: T });
    this.momentum = cosineSchedule({ base: c.dino.momentum_teacher, final: c.dino.final_momentum_teacher, totalSteps: T });
    const w = c.dino.warmup_teacher_temp_steps;
    const temp = cosineSchedule({ base: c.dino.teacher_temp, final: c.dino.teacher_temp, totalSteps: w, warmupSteps: w, startWarmupValue: c.dino.warmup_teacher_temp });
    this.teacherTemp = (s) => (s < w ? temp(s) : c.dino.teacher_temp);

    // Repeated augmentation (DeiT's RASampler): every image 3 times an epoch, each copy its own augmentation.
    this.sampler = c.train.repeated_aug
      ? new RASampler({ length: this.data.train.length, seed: c.train.seed, repeats: 3 })
      : new DistributedSampler({ length: this.data.train.length, seed: c.train.seed });
  }

  /**
   * The learning rate at `step` for the current world size: a cosine from scaledLr(config, world size)
   * to optim.min_lr after a linear warm-up from optim.warmup_lr (cut to the run when longer).
   */
  lrAt(step: number): number {
    const W = this.sync.worldSize;
    let schedule = this.lrSchedules.get(W);
    if (!schedule) {
      const o = this.config.optim;
      const T = this.config.train.steps;
      schedule = cosineSchedule({ base: scaledLr(this.config, W), final: o.min_lr, totalSteps: T, warmupSteps: Math.min(o.warmup_steps, T), startWarmupValue: o.warmup_lr });
      this.lrSchedules.set(W, schedule);
    }
    return schedule(step);
  }

  /** The generator of one image's draws of `stream` (augmentation, drop path): the same on any rank. */
  private imageRng(stream: number, ref: SampleRef): Rng {
    const base = this.root.fork(stream).fork(ref.epoch).fork(ref.index);
    return ref.repeat === undefined ? base : base.fork(ref.repeat);
  }

  /** The generator of this rank's batch-level draws of `stream` (mixup, masks) at `step`. */
  private stepRng(stream: number, step: number): Rng {
    return this.root.fork(stream).fork(step).fork(this.sync.rank);
  }

  /** Student backbone + heads as named variables (`backbone.*`, `head.*`, `dino_head.*`, `ibot_head.*`). */
  studentVariables(): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {};
    for (const [k, v] of Object.entries(this.student.params)) out[`backbone.${k}`] = v;
    return { ...out, ...headParams(this.heads) };
  }

  private teacherVariables(): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {};
    if (this.teacher) for (const [k, v] of Object.entries(this.teacher.params)) out[`backbone.${k}`] = v;
    return { ...out, ...headParams(this.teacherHeads) };
  }

  /** A fresh run's teacher starts as the student (rank 0 does this before the first syncState). */
  initTeacher(): void {
    const vars = this.studentVariables();
    for (const [k, v] of Object.entries(this.teacherVariables())) v.assign(vars[k]!);
  }

  /** Everything a rank needs to continue the run: weights, optimiser moments, centres, step, cursor. */
  private exportState(): { state: Record<string, Float32Array>; meta: { step: number; cursor: number; adamw_step: number } } {
    const state: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(this.studentVariables())) state[`student.${k}`] = v.dataSync() as Float32Array;
    for (const [k, v] of Object.entries(this.teacherVariables())) state[`teacher.${k}`] = v.dataSync() as Float32Array;
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) state[`center.${k}`] = ctr.value;
    const opt = this.optimizer.getState();
    for (const [k, m] of Object.entries(opt.moments)) state[`optimizer.${k}`] = m.data;
    return { state, meta: { step: this.step, cursor: this.cursor, adamw_step: opt.step } };
  }

  private importState(state: Record<string, Float32Array>, meta: { step: number; cursor: number; adamw_step: number }): void {
    const take = (name: string, size: number): Float32Array => {
      const v = state[name];
      if (!v || v.length !== size) throw new Error(`state from rank 0: missing or mis-sized tensor "${name}" (expected ${size} values, got ${v?.length ?? 'none'})`);
      return v;
    };
    const setVars = (prefix: string, vars: Record<string, tf.Variable>) => {
      for (const [k, v] of Object.entries(vars)) v.assign(tf.tensor(take(`${prefix}.${k}`, v.size), v.shape, 'float32'));
    };
    setVars('student', this.studentVariables());
    setVars('teacher', this.teacherVariables());
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) ctr.value = Float32Array.from(take(`center.${k}`, ctr.dim));
    const own = this.optimizer.getState();
    const moments: typeof own.moments = {};
    for (const [k, m] of Object.entries(own.moments)) moments[k] = { shape: m.shape, data: Float32Array.from(take(`optimizer.${k}`, m.data.length)) };
    this.optimizer.setState({ step: meta.adamw_step, moments });
    this.step = meta.step;
    this.cursor = meta.cursor;
  }

  /** Every rank takes rank 0's state (at the start, and after a cluster's membership changed). */
  async syncState(): Promise<void> {
    if (this.sync.worldSize === 1) return;
    const own = this.sync.rank === 0 ? this.exportState() : { state: {}, meta: undefined };
    const got = await this.sync.broadcast(own.state, own.meta);
    if (this.sync.rank !== 0) this.importState(got.state, got.meta as { step: number; cursor: number; adamw_step: number });
  }

  // ---------------------------------------------------------------------------------------------
  // One step

  /**
   * Runs step `this.step` and returns its metrics (on rank 0 the global ones: loss means over the
   * ranks, images/s of the whole job, the slowest rank). Throws MembershipChanged, with nothing
   * changed, when a cluster's membership changed during the step.
   */
  async trainStep(stepLog?: (line: Record<string, unknown>) => Promise<void>): Promise<Record<string, number>> {
    await ensureGradients();
    const c = this.config;
    const t0 = performance.now();
    const step = this.step;
    const { rank, worldSize } = this.sync;
    const B = c.train.batch_size;
    const epoch = this.sampler.epochOf(this.cursor);
    const refs = this.sampler.batch(this.cursor, rank, worldSize, B);
    // The next step's images decode (sharp, on libuv's threads) while this step computes.
    if (step + 1 < c.train.steps) this.loader.prefetch(this.sampler.batch(this.cursor + worldSize * B, rank, worldSize, B).map((r) => r.index));
    const items = await this.loader.take(refs.map((r) => r.index));
    const augment = refs.map((r) => this.imageRng(STREAMS.augment, r));
    const dropPath = refs.map((r) => this.imageRng(STREAMS.dropPath, r));
    const lr = this.lrAt(step);
    const wd = this.wd(step);
    const lastLayerLr = step < c.optim.freeze_last_layer_steps ? 0 : lr;
    const varList = this.params.map((p) => p.variable);
    const parts: Record<string, tf.Scalar> = {};
    const extra: Record<string, number> = {};
    // Loss functions of the micro-batches; their gradients are summed (each loss is pre-weighted).
    let lossFns: (() => tf.Scalar)[];
    // Per-rank statistics averaged with the gradients (the teacher's batch means), and what uses them.
    let means: tf.Tensor[] = [];
    let after: (reducedMeans: tf.Tensor[]) => void = () => undefined;
    const inputs: tf.Tensor[] = [];

    if (c.objective === 'supervised') {
      const S = c.crops.global_crops_size;
      const s = c.supervised;
      const imgs = items.map((it, i) => supervisedAugment(it.image, it.width, it.height, augment[i]!, {
        size: S, scale: c.crops.global_crops_scale, hflip: s.hflip, threeAugment: s.three_augment, colorJitter: s.color_jitter,
        crop: s.simple_random_crop ? 'src' : 'rrc',
      }));
      const labels = items.map((it) => it.label);
      const C = this.data.numClasses;
      const x = stack(imgs, S);
      let images = x;
      let targets: Float32Array;
      if (s.mixup_alpha > 0 || s.cutmix_alpha > 0) {
        const mixed = mixupCutmix(x.dataSync() as Float32Array, [imgs.length, S, S, 3], labels, C, this.stepRng(STREAMS.mix, step), {
          mixupAlpha: s.mixup_alpha, cutmixAlpha: s.cutmix_alpha, prob: s.mix_prob, labelSmoothing: s.label_smoothing,
        });
        images = tf.tensor4d(mixed.images, x.shape);
        targets = mixed.targets;
        extra.mix_lambda = mixed.lambda;
      } else targets = smoothOneHot(labels, C, s.label_smoothing);
      const y = tf.tensor2d(targets, [labels.length, C]);
      inputs.push(x, images, y);
      const mb = c.train.micro_batch_size > 0 ? Math.min(c.train.micro_batch_size, B) : B;
      lossFns = [];
      for (let start = 0; start < B; start += mb) {
        const n = Math.min(mb, B - start);
        lossFns.push(() => {
          const xi = n === B ? images : tf.slice(images, [start, 0, 0, 0], [n, -1, -1, -1]);
          const yi = n === B ? y : (tf.slice(y, [start, 0], [n, -1]) as tf.Tensor2D);
          const out = this.student.forward(xi, { training: true, rng: dropPath.slice(start, start + n) });
          const logits = this.heads.cls!.forward(out.cls);
          // Label smoothing is already in the targets (smoothOneHot / mixupCutmix).
          const perBatch = s.bce_loss ? binaryCrossEntropyLoss(logits, yi) : softTargetCrossEntropy(logits, yi);
          const loss = tf.mul(perBatch, n / B) as tf.Scalar;
          const part = s.bce_loss ? 'loss_bce' : 'loss_ce';
          const prev = parts[part];
          parts[part] = tf.keep(prev ? tf.add(prev, loss) : tf.clone(loss)) as tf.Scalar;
          prev?.dispose();
          return loss;
        });
      }
    } else {
      const prepared = await this.prepareDino(items, augment, dropPath, step, parts, extra, inputs);
      lossFns = [prepared.lossFn];
      means = prepared.means;
      after = prepared.after;
    }

    let value: tf.Scalar | null = null;
    let sums: (tf.Tensor | null)[] = this.params.map(() => null);
    try {
      for (const fn of lossFns) {
        const r = tf.variableGrads(fn, varList);
        const next = this.params.map((p, i) => {
          const g = r.grads[p.variable.name];
          const prev = sums[i]!;
          return g && prev ? tf.add(prev, g) : (g ?? prev);
        });
        const total: tf.Scalar = value ? (tf.add(value, r.value) as tf.Scalar) : r.value;
        tf.dispose([...sums, ...Object.values(r.grads), value, r.value].filter((t): t is tf.Tensor => !!t && !next.includes(t) && t !== total));
        sums = next;
        value = total;
      }
      // A parameter that no pass reached (e.g. the mask token in a step without masks) gets zeros.
      const gradList = sums.map((g, i) => g ?? tf.zerosLike(this.params[i]!.variable));
      sums = gradList;
      const loss = value!.dataSync()[0]!;
      const own: Record<string, number> = { loss };
      for (const [k, t] of Object.entries(parts)) own[k] = t.dataSync()[0]!;
      const computeSeconds = (performance.now() - t0) / 1000;
      const t1 = performance.now();
      const local = [...gradList, ...means];
      const buffers = local.map((t) => Float32Array.from(t.dataSync()));
      await this.sync.allReduce(buffers);
      const reducedAll = buffers.map((b, i) => tf.tensor(b, local[i]!.shape, 'float32'));
      const allreduceSeconds = (performance.now() - t1) / 1000;
      const reduced = reducedAll.slice(0, gradList.length);
      const reducedMeans = reducedAll.slice(gradList.length);
      try {
        own.compute_s = computeSeconds;
        own.allreduce_s = allreduceSeconds;
        await stepLog?.({ step: step + 1, epoch, ...own, samples: refs.map((r) => (r.repeat === undefined ? [r.epoch, r.index] : [r.epoch, r.index, r.repeat])) });
        // Every rank got here: from now on the step changes the state.
        const reports = await this.sync.commitStep(step + 1, own);
        if (!Number.isFinite(loss)) throw new Error(`step ${step + 1}: the loss is ${loss} (diverged); lower optim.lr or raise optim.warmup_steps`);
        const { grads: clipped, norms } = this.clip(reduced);
        const lambNorm = this.optimizer.apply(clipped, { lr, wd, lastLayerLr });
        tf.dispose(clipped.filter((t) => !reduced.includes(t)));
        after(reducedMeans);
        this.cursor += worldSize * B;
        this.step = step + 1;
        const metrics: Record<string, number> = { step: step + 1, epoch };
        // Loss and its parts: the mean over the ranks (the global loss).
        for (const k of Object.keys(own)) {
          if (k !== 'compute_s' && k !== 'allreduce_s') metrics[k] = reports.reduce((a, r) => a + (r[k] ?? NaN), 0) / reports.length;
        }
        const seconds = (performance.now() - t0) / 1000;
        const mem = tf.memory();
        Object.assign(metrics, extra, norms, typeof lambNorm === 'number' && !('grad_norm' in norms) ? { grad_norm: lambNorm } : {}, {
          lr, wd,
          images_per_s: (B * worldSize) / seconds,
          step_seconds: seconds,
          allreduce_s: allreduceSeconds,
        });
        if (worldSize > 1 || this.sync.membership !== undefined) {
          // The straggler: the rank whose forward / backward took longest, and by how much over the fastest.
          const times = reports.map((r) => r.compute_s ?? 0);
          const slowest = times.indexOf(Math.max(...times));
          Object.assign(metrics, {
            world_size: worldSize,
            straggler_rank: slowest,
            straggler_s: times[slowest]! - Math.min(...times),
          });
          // A cluster's membership epoch: which ranks took part in this step.
          if (this.sync.membership !== undefined) metrics.membership = this.sync.membership;
        }
        Object.assign(metrics, { rss_mb: process.memoryUsage().rss / 2 ** 20, tf_tensors: mem.numTensors, tf_mb: mem.numBytes / 2 ** 20 });
        return metrics;
      } finally {
        tf.dispose([...reducedAll.filter((t) => !gradList.includes(t) && !means.includes(t))]);
      }
    } finally {
      tf.dispose([...sums.filter((t): t is tf.Tensor => !!t), ...means, ...Object.values(parts), ...inputs]);
      value?.dispose();
    }
  }

  /**
   * Gradient clipping to optim.clip_grad: each student module (`backbone`, `dino_head`, `ibot_head`) by
   * its own norm in a self-supervised run, as DINOv2's loop calls clip_grad_norm_ per module; all
   * parameters by their global norm in a supervised run, as DeiT / timm. Returns the norms before
   * clipping: `grad_norm` (all parameters) and `grad_norm_<module>` per module.
   */
  private clip(grads: tf.Tensor[]): { grads: tf.Tensor[]; norms: Record<string, number> } {
    const max = this.config.optim.clip_grad;
    if (this.config.objective !== 'dino') {
      if (!(max > 0) && this.config.optim.optimizer === 'lamb') return { grads, norms: {} };
      const { grads: out, norm } = clipByGlobalNorm(grads, max);
      return { grads: out, norms: { grad_norm: norm } };
    }
    const r = clipPerModule(this.params.map((p) => p.name), grads, max);
    const norms: Record<string, number> = {};
    let total = 0;
    for (const [m, n] of Object.entries(r.norms)) {
      norms[`grad_norm_${m}`] = n;
      total += n * n;
    }
    norms.grad_norm = Math.sqrt(total);
    return { grads: r.grads, norms };
  }

  /**
   * Crops, masks and the loss function of a DINO step; `means` (the teacher's batch means, averaged
   * over the ranks with the gradients) and `after` (EMA teacher and centres, once the step commits).
   * With Sinkhorn-Knopp centering the teacher's targets need sums over every rank: collectives of
   * this step, before the loss (a membership change there drops the step like any other).
   */
  private async prepareDino(items: DatasetItem[], augment: Rng[], dropPath: Rng[], step: number, parts: Record<string, tf.Scalar>, extra: Record<string, number>, inputs: tf.Tensor[]) {
    const c = this.config;
    const B = items.length;
    const cr = c.crops;
    const crops = items.map((it, i) => multiCrop(it.image, it.width, it.height, augment[i]!, {
      globalSize: cr.global_crops_size, localSize: cr.local_crops_size, localCrops: cr.local_crops_number,
      globalScale: cr.global_crops_scale, localScale: cr.local_crops_scale,
    }));
    // DINOv2's collate order: crop k of every image, then crop k + 1.
    const globals = stack([...crops.map((x) => x.global[0]!), ...crops.map((x) => x.global[1]!)], cr.global_crops_size);
    const nLocal = cr.local_crops_number;
    const locals = nLocal > 0
      ? stack(Array.from({ length: nLocal }, (_, k) => crops.map((x) => x.local[k]!)).flat(), cr.local_crops_size)
      : null;
    inputs.push(globals);
    if (locals) inputs.push(locals);
    const doDino = c.dino.loss_weight > 0;
    const grid = cr.global_crops_size / this.vit.patch_size;
    const P = grid * grid;
    const masks = this.maskGen
      ? collateMasks(2 * B, this.maskGen, c.ibot.mask_ratio_min_max, c.ibot.mask_sample_probability, this.stepRng(STREAMS.masks, step))
      : null;
    const M = masks ? masks.indices.length : 0;
    const doIbot = M > 0;
    let maskTensor: tf.Tensor2D | undefined;
    let select: tf.Tensor2D | undefined;
    let selectIdx: tf.Tensor1D | undefined;
    let maskWeights: tf.Tensor1D | undefined;
    if (masks && doIbot) {
      maskTensor = tf.tensor2d(masks.masks, [2 * B, P]);
      // One-hot rows picking the masked patches: a matMul whose gradient needs no gather kernel.
      const sel = new Float32Array(M * 2 * B * P);
      masks.indices.forEach((idx, r) => { sel[r * 2 * B * P + idx] = 1; });
      select = tf.tensor2d(sel, [M, 2 * B * P]);
      selectIdx = tf.tensor1d(masks.indices, 'int32');
      maskWeights = tf.tensor1d(masks.weights);
      inputs.push(maskTensor, select, selectIdx, maskWeights);
    }
    extra.masked_patches = M;
    const temp = this.teacherTemp(step);
    extra.teacher_temp = temp;
    const sharedIbot = !c.ibot.separate_head;

    // Teacher: no gradient, eval mode (no drop path), unmasked global crops.
    const sinkhorn = c.train.centering === 'sinkhorn_knopp';
    const raw = tf.tidy((): TeacherTargets => {
      const out = this.teacher!.forward(globals);
      const D = this.vit.embed_dim;
      const cls = out.cls;
      const swapped = tf.concat([tf.slice(cls, [B, 0], [B, D]), tf.slice(cls, [0, 0], [B, D])]) as tf.Tensor2D;
      const patches = doIbot ? (tf.gather(tf.reshape(out.patches, [2 * B * P, D]), selectIdx!) as tf.Tensor2D) : undefined;
      let dinoOut: tf.Tensor2D;
      let ibotOut: tf.Tensor2D | undefined;
      if (patches && sharedIbot) {
        const both = this.teacherHeads.dino!.forward(tf.concat([swapped, patches]) as tf.Tensor2D);
        dinoOut = tf.slice(both, [0, 0], [2 * B, -1]);
        ibotOut = tf.slice(both, [2 * B, 0], [M, -1]);
      } else {
        dinoOut = this.teacherHeads.dino!.forward(swapped);
        if (patches) ibotOut = this.teacherHeads.ibot!.forward(patches);
      }
      // Sinkhorn-Knopp: the raw outputs here, the targets below (they need every rank's sums).
      if (sinkhorn) return { dinoProbs: dinoOut, ibotProbs: ibotOut ?? (this.maskGen ? tf.zeros([0, this.centers.ibot!.dim]) as tf.Tensor2D : undefined), dinoMean: tf.mean(dinoOut, 0), ibotMean: ibotOut ? tf.mean(ibotOut, 0) : undefined };
      const dinoProbs = teacherSoftmaxCenter(dinoOut, this.centers.dino!.tensor(), temp) as tf.Tensor2D;
      const ibotProbs = ibotOut ? (teacherSoftmaxCenter(ibotOut, this.centers.ibot!.tensor(), temp) as tf.Tensor2D) : undefined;
      return {
        dinoProbs, ibotProbs,
        dinoMean: tf.mean(dinoOut, 0),
        ibotMean: ibotOut ? tf.mean(ibotOut, 0) : undefined,
      };
    });
    let teacher = raw;
    if (sinkhorn) {
      // Every rank runs the same collectives: the iBOT outputs are included even where this rank masked nothing.
      const logits = [raw.dinoProbs, ...(raw.ibotProbs ? [raw.ibotProbs] : [])];
      let targets: tf.Tensor2D[];
      try {
        targets = await sinkhornKnopp(logits.map((l) => ({ logits: l, temperature: temp })), reduceSumOf(this.sync));
      } finally {
        tf.dispose([...logits, raw.dinoMean, ...(raw.ibotMean ? [raw.ibotMean] : [])]);
      }
      // No centre to update: the means stay out of the reduction.
      teacher = { dinoProbs: targets[0]!, ibotProbs: doIbot ? targets[1] : undefined, dinoMean: tf.zeros([0]) };
      if (!doIbot && targets[1]) targets[1].dispose();
    }
    const ent = entropies(teacher.dinoProbs);
    extra.teacher_entropy = ent.rows;
    extra.teacher_batch_entropy = ent.batch;
    inputs.push(teacher.dinoProbs);
    if (teacher.ibotProbs) inputs.push(teacher.ibotProbs);

    const lossFn = (): tf.Scalar => {
      // Each crop's drop path from its image's generator: global crops 0 and 1, then the local crops.
      const crop = (k: number) => dropPath.map((r) => r.fork(k));
      const g = this.student.forward(globals, { training: true, rng: [...crop(0), ...crop(1)], masks: maskTensor });
      const l = locals ? this.student.forward(locals, { training: true, rng: Array.from({ length: nLocal }, (_, k) => crop(2 + k)).flat() }) : null;
      const D = this.vit.embed_dim;
      // One pass of the DINO head over [local CLS, global CLS, masked patches (shared head)].
      const headIn: tf.Tensor2D[] = [];
      if (l) headIn.push(l.cls);
      headIn.push(g.cls);
      const maskedPatches = doIbot ? matMul2d(select!, tf.reshape(g.patches, [2 * B * P, D]) as tf.Tensor2D) : null;
      if (maskedPatches && sharedIbot) headIn.push(maskedPatches);
      const headOut = this.heads.dino!.forward(tf.concat(headIn) as tf.Tensor2D);
      const nL = l ? l.cls.shape[0] : 0;
      const localOut = nL > 0 ? tf.split(tf.slice(headOut, [0, 0], [nL, -1]), nLocal) as tf.Tensor2D[] : [];
      const globalOut = tf.slice(headOut, [nL, 0], [2 * B, -1]) as tf.Tensor2D;
      let total: tf.Scalar = tf.scalar(0);
      const keep = (name: string, t: tf.Scalar) => { parts[name] = tf.keep(tf.clone(t)); };
      if (doDino) {
        const { global, local } = dinoGlobalLocalLoss(globalOut, teacher.dinoProbs, localOut, c.dino.student_temp);
        keep('loss_dino_global', global);
        keep('loss_dino_local', local);
        total = tf.add(total, tf.mul(tf.add(global, local), c.dino.loss_weight));
        if (c.dino.koleo_loss_weight > 0) {
          const [c1, c2] = tf.split(g.cls, 2) as [tf.Tensor2D, tf.Tensor2D];
          const koleo = tf.add(koleoLoss(c1), koleoLoss(c2)) as tf.Scalar;
          keep('loss_koleo', koleo);
          total = tf.add(total, tf.mul(koleo, c.dino.koleo_loss_weight));
        }
      }
      if (doIbot) {
        const studentMasked = sharedIbot ? (tf.slice(headOut, [nL + 2 * B, 0], [M, -1]) as tf.Tensor2D) : this.heads.ibot!.forward(maskedPatches!);
        const ibot = ibotMaskedLoss(studentMasked, teacher.ibotProbs!, maskWeights!, 2 * B, c.dino.student_temp);
        keep('loss_ibot', ibot);
        total = tf.add(total, tf.mul(ibot, c.ibot.loss_weight));
      }
      return total;
    };

    const after = (reduced: tf.Tensor[]) => {
      // EMA teacher: t <- m t + (1 - m) s, backbone and heads.
      const m = this.momentum(step);
      extra.momentum = m;
      const s = this.studentVariables();
      const t = this.teacherVariables();
      tf.tidy(() => {
        for (const [k, tv] of Object.entries(t)) tv.assign(tf.add(tf.mul(tv, m), tf.mul(s[k]!, 1 - m)));
      });
      if (sinkhorn) return;
      this.centers.dino!.update(reduced[0]!.dataSync() as Float32Array);
      if (teacher.ibotMean) this.centers.ibot!.update(reduced[1]!.dataSync() as Float32Array);
    };
    if (sinkhorn) teacher.dinoMean.dispose();
    const means = sinkhorn ? [] : [teacher.dinoMean, ...(teacher.ibotMean ? [teacher.ibotMean] : [])];
    return { lossFn, means, after };
  }

  // ---------------------------------------------------------------------------------------------
  // Evaluation

  /** CLS features [n, D] of a dataset's items through `model`, eval transform at the training size. */
  private async features(model: VisionTransformer, ds: Dataset, count: number, onBatch?: (cls: tf.Tensor2D, labels: number[]) => void): Promise<{ features: Float32Array; labels: number[] }> {
    const S = this.config.crops.global_crops_size;
    const n = Math.min(count, ds.length);
    const D = this.vit.embed_dim;
    const features = new Float32Array(n * D);
    const labels: number[] = [];
    const bs = 64;
    for (let start = 0; start < n; start += bs) {
      const idx = Array.from({ length: Math.min(bs, n - start) }, (_, i) => start + i);
      const items = await loadItems(ds, idx);
      const x = stack(items.map((it) => evalTransform(it.image, it.width, it.height, { cropRatio: this.config.crops.eval_crop_ratio, crop: S })), S);
      const cls = tf.tidy(() => model.forward(x).cls);
      features.set(cls.dataSync(), start * D);
      const ys = items.map((it) => it.label);
      labels.push(...ys);
      onBatch?.(cls, ys);
      tf.dispose([x, cls]);
    }
    return { features, labels };
  }

  /** Val accuracy (supervised) or k-NN accuracy of the teacher's CLS (self-supervised). */
  async evaluate(): Promise<EvalResult> {
    const c = this.config;
    const res: EvalResult = { step: this.step, num_classes: this.data.numClasses };
    if (c.objective === 'supervised') {
      let correct = 0;
      let total = 0;
      await this.features(this.student, this.data.val, this.data.val.length, (cls, labels) => {
        const pred = tf.tidy(() => tf.argMax(this.heads.cls!.forward(cls), 1));
        const p = pred.dataSync();
        pred.dispose();
        labels.forEach((y, i) => { if (p[i] === y) correct++; total++; });
      });
      res.val_accuracy = correct / total;
      return res;
    }
    const model = this.teacher!;
    const bank = await this.features(model, this.data.train, c.train.knn_train_size);
    const probs: tf.Tensor2D[] = [];
    const val = await this.features(model, this.data.val, this.data.val.length, (cls) => {
      probs.push(tf.tidy(() => teacherSoftmaxCenter(this.teacherHeads.dino!.forward(cls), this.centers.dino!.tensor(), c.dino.teacher_temp) as tf.Tensor2D));
    });
    const dim = this.vit.embed_dim;
    const rows = (f: { features: Float32Array; labels: ArrayLike<number> }) => ({ x: f.features, y: Int32Array.from(f.labels), n: f.labels.length, dim });
    res.knn_accuracy = knnClassify(rows(bank), rows(val), { numClasses: this.data.numClasses, k: c.train.knn_k, temperature: c.train.knn_temperature }).top1;
    const all = tf.concat(probs) as tf.Tensor2D;
    const ent = entropies(all);
    tf.dispose([all, ...probs]);
    res.teacher_entropy = ent.rows;
    res.teacher_batch_entropy = ent.batch;
    return res;
  }

  // ---------------------------------------------------------------------------------------------
  // State

  private hostHeads(): HostTensors {
    const out: HostTensors = {};
    const add = (prefix: string, vars: Record<string, tf.Variable>) => {
      for (const [k, v] of Object.entries(vars)) out[`${prefix}.${k}`] = { shape: [...v.shape], data: v.dataSync() as Float32Array };
    };
    add('student', headParams(this.heads));
    add('teacher', headParams(this.teacherHeads));
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) out[`center.${k}`] = { shape: [ctr.dim], data: ctr.value };
    return out;
  }

  /** The state.json of a checkpoint. */
  trainState(): TrainState {
    return { step: this.step, epoch: this.sampler.epochOf(this.cursor), cursor: this.cursor, config: this.config, world_size: this.sync.worldSize };
  }

  /** Writes a checkpoint (rank 0 does). */
  async save(outDir: string): Promise<string> {
    return saveCheckpoint(outDir, {
      student: this.student, teacher: this.teacher, heads: this.hostHeads(), optimizer: this.optimizer.getState(), state: this.trainState(),
    });
  }

  /** SHA-256 of the student backbone and heads (see TrainResult.checksum). */
  checksum(): string {
    const host: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(this.studentVariables())) host[k] = v.dataSync() as Float32Array;
    return weightsChecksum(host);
  }

  /** Restores everything saved by `save` from a checkpoint folder. */
  async restore(dir: string): Promise<void> {
    const ck = await loadCheckpoint(dir);
    const diff = firstDifference(ck.state.config, this.config);
    if (diff) throw new Error(`${dir}/state.json: field "${diff.path || '(root)'}" of the checkpoint's config differs from this run's config; resume with the run's config.json`);
    const copy = (sd: typeof ck.student, into: VisionTransformer) => {
      const m = modelFromStateDict(sd, this.vit);
      for (const [k, v] of Object.entries(into.params)) v.assign(m.params[k]!);
      m.dispose();
    };
    copy(ck.student, this.student);
    if (this.teacher) {
      if (!ck.teacher) throw new Error(`${dir}: teacher.safetensors is missing`);
      copy(ck.teacher, this.teacher);
    }
    const setHeads = (prefix: string, vars: Record<string, tf.Variable>) => {
      for (const [k, v] of Object.entries(vars)) {
        const t = ck.heads[`${prefix}.${k}`];
        if (!t || t.data.length !== v.size) throw new Error(`${dir}/heads.safetensors: missing or mis-sized tensor "${prefix}.${k}"`);
        v.assign(tf.tensor(t.data, v.shape, 'float32'));
      }
    };
    setHeads('student', headParams(this.heads));
    setHeads('teacher', headParams(this.teacherHeads));
    for (const [k, ctr] of Object.entries(this.centers)) {
      const t = ck.heads[`center.${k}`];
      if (!ctr) continue;
      if (!t || t.data.length !== ctr.dim) throw new Error(`${dir}/heads.safetensors: missing or mis-sized tensor "center.${k}"`);
      ctr.value = Float32Array.from(t.data);
    }
    this.optimizer.setState(ck.optimizer);
    this.step = ck.state.step;
    this.cursor = ck.state.cursor;
  }

  dispose(): void {
    this.student.dispose();
    this.teacher?.dispose();
    for (const h of [...Object.values(this.heads), ...Object.values(this.teacherHeads)]) h?.dispose();
    this.optimizer.dispose();
  }
}

function round(metrics: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(metrics)) out[k] = Number.isInteger(v) ? v : Number(v.toPrecision(6));
  return out;
}

/** Keeps the metric lines up to `step` (a resumed run rewrites what came after its checkpoint). */
async function truncateMetrics(path: string, step: number): Promise<void> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const kept = text.split('\n').filter((line) => {
    if (!line.trim()) return false;
    try {
      return (JSON.parse(line) as { step?: number }).step! <= step;
    } catch {
      return false;
    }
  });
  await writeFileAtomic(path, kept.map((l) => l + '\n').join(''));
}

/**
 * Trains `config` into `opts.outDir` (see the module comment); writes config.json, metrics.jsonl,
 * checkpoints/step-N/ and eval.json.
 */
export async function train(config: TrainConfig, opts: TrainOptions): Promise<TrainResult> {
  const c = config;
  const out = opts.outDir;
  await mkdir(out, { recursive: true });
  const trainer = new Trainer(c, { sync: opts.sync });
  const sync = trainer.sync;
  const metricsPath = join(out, 'metrics.jsonl');
  const isRank0 = () => sync.rank === 0;
  const log = opts.log ?? ((line: string) => { if (isRank0()) process.stderr.write(line + '\n'); });
  // Rank 0 starts the run (fresh, or from the newest checkpoint on its disk); every rank then takes
  // rank 0's state, and takes it again whenever a cluster's membership changes.
  const resync = async () => {
    for (;;) {
      try {
        return await trainer.syncState();
      } catch (err) {
        if (!isMembershipChanged(err)) throw err;
      }
    }
  };
  try {
    const startRank0 = isRank0();
    if (startRank0) {
      const ckpts = opts.resume ? await listCheckpoints(out) : [];
      if (ckpts.length > 0) {
        await trainer.restore(ckpts[ckpts.length - 1]!.dir);
        await truncateMetrics(metricsPath, trainer.step);
      } else {
        trainer.initTeacher();
        await writeFileAtomic(metricsPath, '');
      }
      await writeJsonAtomic(join(out, 'config.json'), c);
    }
    await resync();
    const last = Math.min(c.train.steps, opts.stopAfter ?? c.train.steps);
    const progress = opts.progress === false || !startRank0 ? null : new Progress({ total: last - trainer.step, label: 'train', unit: 'step' });
    // Several ranks: each appends its own line per step (written before the commit, so a step a rank
    // died in is there too: the committed steps are rank 0's metrics.jsonl lines).
    let rankPath: string | null = null;
    if (opts.rankName !== undefined || sync.worldSize > 1) {
      rankPath = join(out, 'ranks', `${opts.rankName ?? `rank-${sync.rank}`}.jsonl`);
      await mkdir(join(out, 'ranks'), { recursive: true });
    }
    const stepLog = rankPath === null ? undefined : async (line: Record<string, unknown>) => {
      const { samples, ...rest } = line;
      const entry = { ...round(rest as Record<string, number>), rank: sync.rank, world_size: sync.worldSize, membership: sync.membership, ...(opts.logSamples ? { samples } : {}) };
      await appendFile(rankPath!, JSON.stringify(entry) + '\n');
    };
    let checkpoint = '';
    let saved = false;
    const saveNow = async () => {
      saved = true;
      if (!isRank0()) return;
      checkpoint = await trainer.save(out);
      await pruneCheckpoints(out, c.train.keep_checkpoints);
      await sync.checkpointWritten?.(trainer.step, checkpoint);
    };
    while (trainer.step < last) {
      let metrics: Record<string, number>;
      try {
        metrics = await trainer.trainStep(stepLog);
      } catch (err) {
        if (!isMembershipChanged(err)) throw err;
        log(`step ${trainer.step + 1} dropped: ${err.message}; re-syncing from rank 0`);
        await resync();
        log(`continuing at step ${trainer.step + 1} as rank ${sync.rank} of ${sync.worldSize}`);
        continue;
      }
      const step = trainer.step;
      if (isRank0() && (step % c.train.log_every === 0 || step === last)) await appendFile(metricsPath, JSON.stringify(round(metrics)) + '\n');
      progress?.tick(1, `loss ${metrics.loss!.toFixed(4)}`);
      // Evaluation reads no Rng and no sync: only rank 0 spends the time.
      if (isRank0() && c.train.eval_every > 0 && step % c.train.eval_every === 0 && step < c.train.steps) {
        const ev = await trainer.evaluate();
        await appendFile(metricsPath, JSON.stringify({ step, eval: round(ev as unknown as Record<string, number>) }) + '\n');
      }
      const periodic = c.train.checkpoint_every > 0 && step % c.train.checkpoint_every === 0;
      if (periodic || step === last) await saveNow();
    }
    progress?.done();
    if (!saved) await saveNow();
    const result: TrainResult = { outDir: out, step: trainer.step, checkpoint };
    if (opts.checksum) {
      result.checksum = trainer.checksum();
      if (rankPath) await appendFile(rankPath, JSON.stringify({ final: true, step: trainer.step, rank: sync.rank, checksum: result.checksum }) + '\n');
    }
    if (last < c.train.steps || !isRank0()) return result;
    result.eval = await trainer.evaluate();
    await writeJsonAtomic(join(out, 'eval.json'), result.eval);
    return result;
  } finally {
    trainer.dispose();
  }
}
