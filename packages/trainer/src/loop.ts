/**
 * The training loop (DINOv2's train/train.py; the loss assembly is in steps/, as its ssl_meta_arch.py).
 * One step, whatever engine computes it (engine.ts):
 *   sampler(cursor, rank, world size) -> items -> host batch (batch.ts: augmentations, multi-crop,
 *   mixup / cutmix, iBOT masks) -> engine.computeStep (forward / backward: loss parts and gradients as
 *   flat host buffers, the teacher's batch means; Sinkhorn-Knopp's sums run there over every rank) ->
 *   GradientSync.allReduce (gradients and means, every step whatever the world size) -> commitStep
 *   (every rank got here) -> engine.applyStep (clipping, AdamW or LAMB, EMA teacher and centres) ->
 *   metrics -> eval (evaluate.ts) and checkpoint (state.ts).
 * Nothing changes the state before the commit, so a step dropped because a cluster's membership
 * changed leaves every rank at the last committed step; they re-sync from rank 0 and go on.
 *
 * With the sampler's global cursor and per-image randomness (batch.ts), W ranks x B images give the
 * weights of one rank x W*B images (up to float rounding; not with DINOv2's batch-subset drop path,
 * KoLeo or the iBOT masks, which depend on the batch a rank holds; Sinkhorn-Knopp's sums span every
 * rank, so it matches), a resumed run equals an uninterrupted one bit for bit, and the checkpoint holds
 * no generator state: only the step and the cursor. The learning rate follows the global batch
 * (optim.scaling_rule) at every step.
 */
import { appendFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  BatchPrefetcher,
  DistributedSampler,
  Progress,
  RASampler,
  writeFileAtomic,
  writeJsonAtomic,
  type CursorSampler,
} from '@vitreg/core';
import type { ViTConfig } from '@vitreg/registers';
import { BatchPreparer } from './batch.js';
import { listCheckpoints, pruneCheckpoints, resumePoint, type TrainState } from './checkpoint.js';
import { assertDataSource, modelConfig, scaledLr, type TrainConfig } from './config.js';
import { openData, type TrainData } from './data.js';
import type { EngineFactory, StepEngine, StepSettings } from './engine.js';
import { evaluate, type EvalResult } from './evaluate.js';
import { cosineSchedule, type Schedule } from './schedules.js';
import { checkState, restoreTrainingState, saveTrainingState } from './state.js';
import { signalName, STOP_KEY, stopCode } from './stop.js';
import { isMembershipChanged, LocalGradientSync, type GradientSync } from './sync.js';
import { tfjsEngine } from './tfjs-engine.js';
import { restoreMetricsLine, truncateMetrics } from './metrics-file.js';
import { trainClipObjective } from './clip-loop.js';
import type { TrainOptions, TrainResult } from './train-options.js';

export type { TrainOptions, TrainResult } from './train-options.js';

/** What a state broadcast carries besides the tensors. */
interface StateMeta {
  step: number;
  cursor: number;
  adamw_step: number;
}

/** One rank of a run: its data, sampler, schedules and step engine, and the step between them. */
export class Trainer {
  readonly vit: ViTConfig;
  readonly data: TrainData;
  readonly engine: StepEngine;
  readonly sampler: CursorSampler;
  readonly sync: GradientSync;
  readonly batches: BatchPreparer;
  /** Steps applied. */
  step = 0;
  /** Global position of the sampler: images the whole job consumed (the next step starts here). */
  cursor = 0;
  /** After a step: the stop request its committed reports carried (a signal's number, -1, or 0: none). */
  stopRequested = 0;
  /** The learning-rate schedule of each world size met (the rate follows the global batch). */
  private readonly lrSchedules = new Map<number, Schedule>();
  private readonly wd: Schedule;
  private readonly momentum: Schedule;
  private readonly teacherTemp: Schedule;
  /** Decodes the next step's images while this one computes. */
  private readonly loader: BatchPrefetcher;

  constructor(
    readonly config: TrainConfig,
    opts: { sync?: GradientSync; engine?: EngineFactory } = {},
  ) {
    const c = config;
    if (c.objective === 'clip') throw new Error('Trainer: objective clip has its own loop (train() runs it: clip-loop.ts)');
    this.sync = opts.sync ?? new LocalGradientSync();
    this.vit = modelConfig(c);
    assertDataSource(c);
    this.data = openData(c);
    this.loader = new BatchPrefetcher(this.data.train, { concurrency: Math.max(256, c.train.batch_size) });
    if (c.objective === 'supervised' && this.data.numClasses < 2) {
      throw new Error(`data: supervised training needs at least 2 classes, found ${this.data.numClasses}`);
    }
    this.batches = new BatchPreparer(c, this.data.numClasses);
    this.engine = (opts.engine ?? tfjsEngine)({ config: c, vit: this.vit, numClasses: this.data.numClasses });

    const T = c.train.steps;
    this.wd = cosineSchedule({ base: c.optim.weight_decay, final: c.optim.weight_decay_end, totalSteps: T });
    this.momentum = cosineSchedule({ base: c.dino.momentum_teacher, final: c.dino.final_momentum_teacher, totalSteps: T });
    const w = c.dino.warmup_teacher_temp_steps;
    const temp = cosineSchedule({
      base: c.dino.teacher_temp,
      final: c.dino.teacher_temp,
      totalSteps: w,
      warmupSteps: w,
      startWarmupValue: c.dino.warmup_teacher_temp,
    });
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
      schedule = cosineSchedule({
        base: scaledLr(this.config, W),
        final: o.min_lr,
        totalSteps: T,
        warmupSteps: Math.min(o.warmup_steps, T),
        startWarmupValue: o.warmup_lr,
      });
      this.lrSchedules.set(W, schedule);
    }
    return schedule(step);
  }

  /** Every schedule's value at `step` (the same on every rank). */
  settingsAt(step: number): StepSettings {
    const lr = this.lrAt(step);
    return {
      step,
      lr,
      wd: this.wd(step),
      lastLayerLr: step < this.config.optim.freeze_last_layer_steps ? 0 : lr,
      momentum: this.momentum(step),
      teacherTemp: this.teacherTemp(step),
    };
  }

  /** A fresh run's teacher starts as the student (rank 0 does this before the first syncState). */
  initTeacher(): void {
    this.engine.initTeacher();
  }

  /** Every rank takes rank 0's state (at the start, and after a cluster's membership changed). */
  async syncState(): Promise<void> {
    if (this.sync.worldSize === 1) return;
    let own: { state: Record<string, Float32Array>; meta?: StateMeta } = { state: {} };
    if (this.sync.rank === 0) {
      await this.engine.flush?.();
      const s = this.engine.exportState();
      own = { state: s.tensors, meta: { step: this.step, cursor: this.cursor, adamw_step: s.optimizerStep } };
    }
    const got = await this.sync.broadcast(own.state, own.meta);
    if (this.sync.rank === 0) return;
    const meta = got.meta as StateMeta;
    checkState(this.engine.stateLayout(), got.state, 'state from rank 0');
    this.engine.importState({ tensors: got.state, optimizerStep: meta.adamw_step });
    this.step = meta.step;
    this.cursor = meta.cursor;
  }

  /**
   * Runs step `this.step` and returns its metrics (on rank 0 the global ones: loss means over the
   * ranks, images/s of the whole job, the slowest rank). Throws MembershipChanged, with nothing
   * changed, when a cluster's membership changed during the step.
   */
  async trainStep(stepLog?: (line: Record<string, unknown>) => Promise<void>, stop = 0): Promise<Record<string, number>> {
    const c = this.config;
    const t0 = performance.now();
    const step = this.step;
    const { rank, worldSize } = this.sync;
    const B = c.train.batch_size;
    const epoch = this.sampler.epochOf(this.cursor);
    const refs = this.sampler.batch(this.cursor, rank, worldSize, B);
    // The next step's images decode (sharp, on libuv's threads) while this step computes.
    if (step + 1 < c.train.steps) {
      this.loader.prefetch(this.sampler.batch(this.cursor + worldSize * B, rank, worldSize, B).map((r) => r.index));
    }
    const items = await this.loader.take(refs.map((r) => r.index));
    const batch = this.batches.prepare(items, refs, step, rank);
    const settings = this.settingsAt(step);
    const computed = await this.engine.computeStep(batch, settings, this.sync);
    const own: Record<string, number> = { loss: computed.loss, ...computed.parts };
    const computeSeconds = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    await this.sync.allReduce([...computed.gradients, ...computed.means]);
    const allreduceSeconds = (performance.now() - t1) / 1000;
    own.compute_s = computeSeconds;
    own.allreduce_s = allreduceSeconds;
    const samples = refs.map((r) => (r.repeat === undefined ? [r.epoch, r.index] : [r.epoch, r.index, r.repeat]));
    await stepLog?.({ step: step + 1, epoch, ...own, samples });
    // A stop this rank was asked for travels with its report, so that every rank stops after the same step.
    const report = stop === 0 ? own : { ...own, [STOP_KEY]: stop };
    // Every rank got here: from now on the step changes the state.
    const reports = await this.sync.commitStep(step + 1, report);
    this.stopRequested = reports.find((r) => r[STOP_KEY])?.[STOP_KEY] ?? 0;
    if (!Number.isFinite(computed.loss)) {
      throw new Error(`step ${step + 1}: the loss is ${computed.loss} (diverged); lower optim.lr or raise optim.warmup_steps`);
    }
    const applied = await this.engine.applyStep(computed, settings);
    this.cursor += worldSize * B;
    this.step = step + 1;
    const metrics: Record<string, number> = { step: step + 1, epoch };
    // Loss and its parts: the mean over the ranks (the global loss).
    for (const k of Object.keys(own)) {
      if (k !== 'compute_s' && k !== 'allreduce_s') metrics[k] = reports.reduce((a, r) => a + (r[k] ?? NaN), 0) / reports.length;
    }
    const seconds = (performance.now() - t0) / 1000;
    const momentum = computed.update.teacherMomentum;
    Object.assign(metrics, batch.metrics, computed.metrics, momentum === null ? {} : { momentum }, applied.norms, {
      lr: settings.lr,
      wd: settings.wd,
      images_per_s: (B * worldSize) / seconds,
      step_seconds: seconds,
      allreduce_s: allreduceSeconds,
    });
    if (worldSize > 1 || this.sync.membership !== undefined) {
      // The straggler: the rank whose forward / backward took longest, and by how much over the fastest.
      const times = reports.map((r) => r.compute_s ?? 0);
      const slowest = times.indexOf(Math.max(...times));
      Object.assign(metrics, { world_size: worldSize, straggler_rank: slowest, straggler_s: times[slowest]! - Math.min(...times) });
      // A cluster's membership epoch: which ranks took part in this step.
      if (this.sync.membership !== undefined) metrics.membership = this.sync.membership;
    }
    const mem = this.engine.memory();
    Object.assign(metrics, { rss_mb: process.memoryUsage().rss / 2 ** 20, tf_tensors: mem.tensors, tf_mb: mem.bytes / 2 ** 20 });
    return metrics;
  }

  /** Val accuracy (supervised) or k-NN accuracy of the teacher's CLS (self-supervised); see evaluate.ts. */
  async evaluate(): Promise<EvalResult> {
    return evaluate(this.engine, this.config, this.data, this.vit.embed_dim, this.step);
  }

  /** The state.json of a checkpoint. */
  trainState(): TrainState {
    const epoch = this.sampler.epochOf(this.cursor);
    return { step: this.step, epoch, cursor: this.cursor, config: this.config, world_size: this.sync.worldSize };
  }

  /** Writes a checkpoint (rank 0 does). */
  async save(outDir: string): Promise<string> {
    await this.engine.flush?.();
    return saveTrainingState(outDir, this.vit, this.engine.stateLayout(), this.engine.exportState(), this.trainState());
  }

  /** SHA-256 of the student backbone and heads (see TrainResult.checksum). */
  async checksum(): Promise<string> {
    await this.engine.flush?.();
    return this.engine.checksum();
  }

  /** Restores everything saved by `save` from a checkpoint folder. */
  async restore(dir: string): Promise<void> {
    const loaded = await restoreTrainingState(dir, this.config, this.vit, this.engine);
    this.step = loaded.step;
    this.cursor = loaded.cursor;
  }

  dispose(): void {
    this.engine.dispose();
  }
}

function round(metrics: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(metrics)) out[k] = Number.isInteger(v) ? v : Number(v.toPrecision(6));
  return out;
}

/**
 * Trains `config` into `opts.outDir` (see the module comment); writes config.json, metrics.jsonl,
 * checkpoints/step-N/ and eval.json.
 */
export async function train(config: TrainConfig, opts: TrainOptions): Promise<TrainResult> {
  const c = config;
  // Objective clip: its own loop (clip-loop.ts) on the tfjs or the ONNX Runtime engine, with the same options.
  if (c.objective === 'clip') return trainClipObjective(c, opts);
  const out = opts.outDir;
  await mkdir(out, { recursive: true });
  const trainer = new Trainer(c, { sync: opts.sync, engine: opts.engine });
  const sync = trainer.sync;
  const metricsPath = join(out, 'metrics.jsonl');
  const isRank0 = () => sync.rank === 0;
  const log =
    opts.log ??
    ((line: string) => {
      if (isRank0()) process.stderr.write(line + '\n');
    });
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
    let restored = '';
    if (startRank0) {
      let from: { step: number; dir: string } | null = null;
      if (opts.resume === 'auto') from = await resumePoint(out, c);
      else if (opts.resume) from = (await listCheckpoints(out)).pop() ?? null;
      if (from) {
        await trainer.restore(from.dir);
        await truncateMetrics(metricsPath, trainer.step);
        restored = from.dir;
        log(`resuming from step ${trainer.step} of ${c.train.steps} (checkpoint ${from.dir})`);
      } else {
        if (opts.resume === true) log(`no checkpoint to resume from in ${join(out, 'checkpoints')}: starting fresh`);
        trainer.initTeacher();
        await writeFileAtomic(metricsPath, '');
      }
      await writeJsonAtomic(join(out, 'config.json'), c);
    }
    await resync();
    const first = trainer.step;
    const last = Math.min(c.train.steps, opts.stopAfter ?? c.train.steps);
    // The bar counts absolute steps: a run resumed at 465 of 1200 shows 465/1200.
    const progress =
      opts.progress === false || !startRank0 ? null : new Progress({ total: last, start: trainer.step, label: 'train', unit: 'step' });
    // Several ranks: each appends its own line per step (written before the commit, so a step a rank
    // died in is there too: the committed steps are rank 0's metrics.jsonl lines).
    let rankPath: string | null = null;
    if (opts.rankName !== undefined || sync.worldSize > 1) {
      rankPath = join(out, 'ranks', `${opts.rankName ?? `rank-${sync.rank}`}.jsonl`);
      await mkdir(join(out, 'ranks'), { recursive: true });
    }
    const stepLog =
      rankPath === null
        ? undefined
        : async (line: Record<string, unknown>) => {
            const { samples, ...rest } = line;
            const entry = {
              ...round(rest as Record<string, number>),
              rank: sync.rank,
              world_size: sync.worldSize,
              membership: sync.membership,
              ...(opts.logSamples ? { samples } : {}),
            };
            await appendFile(rankPath!, JSON.stringify(entry) + '\n');
          };
    let checkpoint = restored;
    let saved = false;
    const saveNow = async () => {
      saved = true;
      if (!isRank0()) return;
      checkpoint = await trainer.save(out);
      await pruneCheckpoints(out, c.train.keep_checkpoints);
      await sync.checkpointWritten?.(trainer.step, checkpoint);
    };
    // A stop request: a signal's number, -1 without one, 0 for none. One rank alone may stop between
    // steps; ranks of a job stop after the step whose committed reports carried a request.
    let interrupted = 0;
    const logsStep = (step: number) => step % c.train.log_every === 0 || step === last;
    // This rank's metrics of the last step it committed: should rank 0 die between a commit and the
    // step's metrics line, the new rank 0 writes that line (restoreMetricsLine).
    let committed: Record<string, number> | null = null;
    while (trainer.step < last) {
      if (sync.worldSize === 1 && stopCode(opts.stop) !== 0) {
        interrupted = stopCode(opts.stop);
        break;
      }
      let metrics: Record<string, number>;
      try {
        metrics = await trainer.trainStep(stepLog, stopCode(opts.stop));
      } catch (err) {
        if (!isMembershipChanged(err)) throw err;
        log(`step ${trainer.step + 1} dropped: ${err.message}; re-syncing from rank 0`);
        await resync();
        if (isRank0() && committed?.step === trainer.step && logsStep(trainer.step)) {
          if (await restoreMetricsLine(metricsPath, round(committed)))
            log(`step ${trainer.step}: its metrics line written by the new rank 0`);
        }
        log(`continuing at step ${trainer.step + 1} as rank ${sync.rank} of ${sync.worldSize}`);
        continue;
      }
      const step = trainer.step;
      committed = metrics;
      if (isRank0() && logsStep(step)) {
        await appendFile(metricsPath, JSON.stringify(round(metrics)) + '\n');
      }
      progress?.tick(1, `loss ${metrics.loss!.toFixed(4)}`);
      if (trainer.stopRequested !== 0 || (sync.worldSize === 1 && stopCode(opts.stop) !== 0)) {
        interrupted = trainer.stopRequested || stopCode(opts.stop);
        await saveNow();
        break;
      }
      // Evaluation reads no Rng and no sync: only rank 0 spends the time.
      if (isRank0() && c.train.eval_every > 0 && step % c.train.eval_every === 0 && step < c.train.steps) {
        const ev = await trainer.evaluate();
        await appendFile(metricsPath, JSON.stringify({ step, eval: round(ev as unknown as Record<string, number>) }) + '\n');
      }
      const periodic = c.train.checkpoint_every > 0 && step % c.train.checkpoint_every === 0;
      if (periodic || step === last) await saveNow();
    }
    if (interrupted !== 0) progress?.stop();
    else progress?.done();
    // Stopped before a step of this session: the state is the restored checkpoint (or nothing yet).
    if (!saved && !(interrupted !== 0 && trainer.step === first)) await saveNow();
    const result: TrainResult = { outDir: out, step: trainer.step, checkpoint };
    if (interrupted !== 0) {
      const signal = interrupted > 0 ? signalName(interrupted) : undefined;
      result.interrupted = { step: trainer.step, ...(signal ? { signal } : {}) };
    }
    if (opts.checksum) {
      result.checksum = await trainer.checksum();
      const line = { final: true, step: trainer.step, rank: sync.rank, checksum: result.checksum };
      if (rankPath) await appendFile(rankPath, JSON.stringify(line) + '\n');
    }
    if (interrupted !== 0 || last < c.train.steps || !isRank0()) return result;
    result.eval = await trainer.evaluate();
    await writeJsonAtomic(join(out, 'eval.json'), result.eval);
    return result;
  } finally {
    trainer.dispose();
  }
}
