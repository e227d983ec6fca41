/**
 * The `clip` objective's run (text-supervised, open_clip's recipe), which `train()` (loop.ts) dispatches to:
 * a ClipModel of the config (image tower `model` + `clip.proj_dim`, text tower `clip.text_*`), the caption
 * data (the synthetic shapes with generated captions, a CSV / TSV table with open_clip's column keys, or
 * WebDataset tar shards streamed per rank as open_clip's pipeline reads them: data-webdataset.ts WebDatasetStream),
 * the step of clip-train.ts (RandomResizedCrop(crops.global_crops_scale) + CLIP's mean / std, `clipStep`
 * across the ranks of the GradientSync, the gradients averaged, AdamW with open_clip's decay rule, warm-up +
 * cosine learning rate, then logit_scale clamped to [0, log 100]), and the same run options as the generic
 * loop: outDir (config.json, metrics.jsonl, eval.json), checkpoints (`checkpoints/step-N/`: model.safetensors
 * is the whole two-tower model in open_clip's names (saveClip), optimizer.safetensors, state.json), resume
 * (exact: the batch of a step depends only on the seed and the step), stop signals, progress, checksum.
 * Each step's pairs are global positions of a seeded shuffle per epoch, and each image's crop is drawn from
 * its global position, so W ranks x B pairs give the weights of 1 rank x W B (up to float rounding). WebDataset
 * shards: each rank its own stream (whole shards, as open_clip), batch k a function of (seed, rank, W, B, k), so
 * resume stays exact but W ranks do not read the pairs 1 rank reads.
 * Evaluation: zero-shot top-1 on the validation split (synthetic data: the shape names with the caption
 * grammar's 16 prompts per class); a caption table has no labels, so no evaluation.
 * Its parts before training (tokenizer, ClipConfig, caption data, engine settings) are clip-setup.ts's. Not
 * elastic: a change of the job's workers ends the run with a message saying to --resume it.
 * Engines: the step is a `ClipStepEngine`'s (clip-engine.ts), which clip-setup.ts's `clipStepEngine` picks for
 * the run's engine factory: tfjs (clip-engine.ts TfjsClipEngine: steps/clip.ts on the ClipModel) or ONNX Runtime
 * (onnx/clip-engine.ts OnnxClipEngine: both towers' graphs, flat weight / gradient / AdamW buffers); the loop
 * never knows which. The ClipModel stays the record for checkpoints and evaluation (the engine's pull / push).
 */
import { appendFile, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import * as tf from '@tensorflow/tfjs-core';
import {
  fromFloat32,
  InputError,
  Progress,
  readSafetensors,
  Rng,
  type RgbImage,
  syncDir,
  toFloat32,
  writeFileAtomic,
  writeJsonAtomic,
  writeSafetensors,
} from '@vitreg/core';
import { ClipModel, ClipTokenizer, loadClip, saveClip, wordMerges } from '@vitreg/registers';
import { listCheckpoints, pruneCheckpoints, resumePoint, type TrainState } from './checkpoint.js';
import { scaledLr, type TrainConfig } from './config.js';
import { checkClipTrainingFits } from './memory-check.js';
import { clipParamSpecs, normalized, shuffled, zeroShotTop1 } from './clip-train.js';
import { WebDatasetStream } from './data-webdataset.js';
import type { TrainOptions, TrainResult } from './train-options.js';
import type { ClipStepEngine } from './clip-engine.js';
import type { ParamSpec } from './param-groups.js';
import { cosineSchedule, type Schedule } from './schedules.js';
import { weightsChecksum } from './state.js';
import { signalName, STOP_KEY, stopCode } from './stop.js';
import { isMembershipChanged, LocalGradientSync, type GradientSync } from './sync.js';
import { randomResizedCrop } from './augment-geometry.js';
import {
  CAPTION_WORDS,
  clipEngineSettings,
  clipModelConfig,
  clipStepEngine,
  clipTokenizer,
  openCaptionData,
  syntheticPrompts,
  type CaptionData,
} from './clip-setup.js';

/** One rank of a clip run: model, tokenizer, data, the step engine (and its optimiser), schedules, and the step between them. */
class ClipRun {
  step = 0;
  /** The trained parameters (names and shapes of the optimiser's moments in a broadcast state). */
  private readonly params: ParamSpec[];
  private readonly lr: Schedule;
  private readonly wd: Schedule;
  private perm: { epoch: number; order: number[] } = { epoch: -1, order: [] };
  /** WebDataset shards: this rank's stream (batch k of rank r), instead of positions in a shuffle of `data.train`. */
  private stream: WebDatasetStream | null = null;

  constructor(
    readonly c: TrainConfig,
    readonly model: ClipModel,
    readonly tokenizer: ClipTokenizer,
    readonly data: CaptionData,
    readonly sync: GradientSync,
    /** What computes and applies a step (and holds the optimiser's state): tfjs or ONNX Runtime. */
    readonly engine: ClipStepEngine,
  ) {
    this.params = clipParamSpecs(model).filter((p) => p.variable.trainable);
    const o = c.optim;
    const T = c.train.steps;
    this.lr = cosineSchedule({
      base: scaledLr(c, sync.worldSize),
      final: o.min_lr,
      totalSteps: T,
      warmupSteps: Math.min(o.warmup_steps, T),
      startWarmupValue: o.warmup_lr,
    });
    this.wd = cosineSchedule({ base: o.weight_decay, final: o.weight_decay_end, totalSteps: T });
    if (!data.webdataset && this.perEpoch() < 1)
      throw new InputError(`data: ${data.train.length} pairs are fewer than one global batch of ${sync.worldSize * c.train.batch_size}`);
  }

  /** Opens this rank's WebDataset stream (data.webdataset only). */
  async openStream(): Promise<void> {
    const o = { rank: this.sync.rank, worldSize: this.sync.worldSize, batchSize: this.c.train.batch_size, seed: this.c.train.seed };
    if (this.data.webdataset) this.stream = await WebDatasetStream.open(this.data.webdataset, o);
  }

  /** Steps in an epoch of `data.train` (a stream has no epochs the loop counts: Infinity). */
  private perEpoch(): number {
    if (this.data.webdataset) return Number.POSITIVE_INFINITY;
    return Math.floor(this.data.train.length / (this.sync.worldSize * this.c.train.batch_size));
  }

  /** This rank's loss and gradients of step `this.step` (nothing changed yet). */
  async compute(): Promise<{ loss: number; grads: Float32Array[] }> {
    const c = this.c;
    const B = c.train.batch_size;
    const W = this.sync.worldSize;
    const S = c.crops.global_crops_size;
    const epoch = Math.floor(this.step / this.perEpoch());
    const k = this.step % this.perEpoch();
    const first = (k * W + this.sync.rank) * B;
    let items: { image: RgbImage; caption: string }[];
    if (this.stream) items = await this.stream.batch(this.step);
    else {
      if (this.perm.epoch !== epoch) this.perm = { epoch, order: shuffled(this.data.train.length, new Rng(c.train.seed).fork(epoch + 1)) };
      items = await Promise.all(this.perm.order.slice(first, first + B).map((i) => this.data.train.get(i)));
    }
    const images = new Float32Array(B * S * S * 3);
    const crops = new Rng(c.train.seed).fork(1_000_003);
    items.forEach((it, b) =>
      normalized(
        randomResizedCrop(it.image, crops.fork(this.step * 100_003 + first + b), S, { scale: c.crops.global_crops_scale }),
        images,
        b * S * S * 3,
      ),
    );
    const tokens = this.tokenizer.tokenize(
      items.map((it) => it.caption),
      c.clip.text_context_length,
    );
    const batch = { images, ids: tokens, size: B, imageSize: S };
    return this.engine.compute(batch, c.clip.loss, this.sync);
  }

  /** AdamW on the averaged gradients, then logit_scale's clamp; returns the learning rate. */
  apply(grads: Float32Array[]): { lr: number; wd: number } {
    const lr = this.lr(this.step);
    const wd = this.wd(this.step);
    this.engine.apply(grads, { lr, wd });
    this.step += 1;
    return { lr, wd };
  }

  async evaluate(): Promise<{ step: number; zeroshot_top1?: number; note?: string }> {
    if (!this.data.val) return { step: this.step, note: 'a caption table has no class labels: no zero-shot evaluation' };
    this.engine.pull();
    const top1 = await zeroShotTop1(this.model, this.tokenizer, this.data.val, this.data.classNames, (shape) =>
      syntheticPrompts(shape, this.c.data.synthetic_background),
    );
    return { step: this.step, zeroshot_top1: top1 };
  }

  /** The model's weights and the optimiser's moments as named host arrays (for broadcasts and checksums). */
  hostState(): Record<string, Float32Array> {
    const out: Record<string, Float32Array> = {};
    this.engine.pull();
    this.model.variables().forEach((v, i) => (out[`w${i}`] = v.dataSync() as Float32Array));
    for (const [k, m] of Object.entries(this.engine.getState().moments)) out[`optimizer.${k}`] = m.data;
    return out;
  }

  setHostState(s: Record<string, Float32Array>, adamStep: number): void {
    this.model.variables().forEach((v, i) => v.assign(tf.tensor(s[`w${i}`]!, v.shape)));
    const moments: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const p of this.params)
      for (const suffix of ['exp_avg', 'exp_avg_sq'])
        moments[`${p.name}.${suffix}`] = { shape: [...p.variable.shape], data: s[`optimizer.${p.name}.${suffix}`]! };
    this.engine.setState({ step: adamStep, moments });
    this.engine.push();
  }

  checksum(): string {
    const host: Record<string, Float32Array> = {};
    this.engine.pull();
    this.model.variables().forEach((v, i) => (host[`w${i}`] = v.dataSync() as Float32Array));
    return weightsChecksum(host);
  }

  /** Writes `checkpoints/step-N/` atomically (model.safetensors in open_clip's names, optimizer, state.json). */
  async save(outDir: string): Promise<string> {
    const root = join(outDir, 'checkpoints');
    await mkdir(root, { recursive: true });
    const final = join(root, `step-${this.step}`);
    const tmp = join(root, `.step-${this.step}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    await mkdir(tmp);
    try {
      this.engine.pull();
      await saveClip(this.model, join(tmp, 'model.safetensors'));
      const st = this.engine.getState();
      const enc: Record<string, ReturnType<typeof fromFloat32>> = {};
      for (const [k, v] of Object.entries(st.moments)) enc[k] = fromFloat32(v.data, v.shape, 'F32');
      await writeSafetensors(join(tmp, 'optimizer.safetensors'), enc, {
        optimizer: 'AdamW',
        adamw_step: String(st.step),
        step: String(this.step),
      });
      const state: TrainState = {
        step: this.step,
        epoch: Math.floor(this.step / this.perEpoch()),
        cursor: this.step * this.sync.worldSize * this.c.train.batch_size,
        config: this.c,
        world_size: this.sync.worldSize,
      };
      await writeJsonAtomic(join(tmp, 'state.json'), state);
      await syncDir(tmp);
      if (existsSync(final)) await rm(final, { recursive: true, force: true });
      await rename(tmp, final);
      await syncDir(root);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw new Error(`checkpoint ${final}: cannot write: ${(err as Error).message}`, { cause: err });
    }
    return final;
  }

  /** Restores a checkpoint written by `save`. */
  async restore(dir: string): Promise<void> {
    const state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as TrainState;
    const loaded = await loadClip(join(dir, 'model.safetensors'));
    const mine = this.model.variables();
    const theirs = loaded.variables();
    if (mine.length !== theirs.length)
      throw new Error(`${dir}/model.safetensors: ${theirs.length} tensors, this run's model has ${mine.length}`);
    mine.forEach((v, i) => {
      if (v.shape.join() !== theirs[i]!.shape.join())
        throw new Error(`${dir}/model.safetensors: tensor ${i} has shape [${theirs[i]!.shape}], this run's model [${v.shape}]`);
      v.assign(theirs[i]!);
    });
    loaded.dispose();
    const opt = await readSafetensors(join(dir, 'optimizer.safetensors'));
    const moments: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [k, t] of Object.entries(opt.tensors)) moments[k] = { shape: t.shape, data: toFloat32(t) };
    const adamStep = Number(opt.metadata.adamw_step);
    if (!Number.isInteger(adamStep))
      throw new Error(`${join(dir, 'optimizer.safetensors')}: __metadata__.adamw_step missing or not an integer`);
    this.engine.setState({ step: adamStep, moments });
    this.engine.push();
    this.step = state.step;
  }

  /** The current logit_scale (the log). */
  logitScale(): number {
    return this.engine.logitScale();
  }

  adamStep(): number {
    return this.engine.step;
  }

  async dispose(): Promise<void> {
    await this.stream?.close();
    await this.engine.dispose();
    this.model.dispose();
  }
}

function round(m: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(m)) out[k] = Number.isInteger(v) ? v : Number(v.toPrecision(6));
  return out;
}

/** `train()` for objective clip (see the module comment); the same options and result as the generic loop. */
export async function trainClipObjective(c: TrainConfig, opts: TrainOptions): Promise<TrainResult> {
  // An engine factory the clip loop cannot run is refused before anything is written.
  const ort = clipEngineSettings(opts.engine);
  const out = opts.outDir;
  await mkdir(out, { recursive: true });
  const sync: GradientSync = opts.sync ?? new LocalGradientSync();
  const isRank0 = sync.rank === 0;
  const log = opts.log ?? ((line: string) => isRank0 && process.stderr.write(line + '\n'));
  const tokenizer = await clipTokenizer(c);
  const clipConfig = clipModelConfig(c, tokenizer.vocabSize);
  // A run the host cannot hold is refused before the data is opened and the model built (memory-check.ts).
  if (ort) checkClipTrainingFits(clipConfig, c.train.batch_size, { worldSize: sync.worldSize, device: ort.device, arch: c.model.arch });
  const data = await openCaptionData(c);
  const model = new ClipModel(clipConfig, { seed: c.train.seed });
  // A refusal while building (too few pairs for a batch, an engine that does not start) leaves nothing behind.
  let run: ClipRun;
  let engine: ClipStepEngine | undefined;
  try {
    engine = clipStepEngine(model, ort, c.optim);
    run = new ClipRun(c, model, tokenizer, data, sync, engine);
  } catch (err) {
    await engine?.dispose();
    model.dispose();
    throw err;
  }
  const metricsPath = join(out, 'metrics.jsonl');
  try {
    await run.openStream();
    let checkpoint = '';
    if (isRank0) {
      let from: { step: number; dir: string } | null = null;
      if (opts.resume === 'auto') from = await resumePoint(out, c);
      else if (opts.resume) from = (await listCheckpoints(out)).pop() ?? null;
      if (from) {
        await run.restore(from.dir);
        const kept = (await readFile(metricsPath, 'utf8').catch(() => ''))
          .split('\n')
          .filter((l) => l.trim() && (JSON.parse(l) as { step: number }).step <= run.step);
        await writeFileAtomic(metricsPath, kept.map((l) => l + '\n').join(''));
        checkpoint = from.dir;
        log(`resuming from step ${run.step} of ${c.train.steps} (checkpoint ${from.dir})`);
      } else {
        if (opts.resume === true) log(`no checkpoint to resume from in ${join(out, 'checkpoints')}: starting fresh`);
        await writeFileAtomic(metricsPath, '');
      }
      await writeJsonAtomic(join(out, 'config.json'), c);
      // The built-in word vocabulary as a merges file, for `vitreg probe --task zeroshot --tokenizer`.
      if (c.clip.tokenizer === '') await writeFileAtomic(join(out, 'tokenizer.txt'), wordMerges(CAPTION_WORDS));
    }
    if (sync.worldSize > 1) {
      const got = await sync.broadcast(isRank0 ? run.hostState() : {}, isRank0 ? { step: run.step, adam: run.adamStep() } : undefined);
      if (!isRank0) {
        const meta = got.meta as { step: number; adam: number };
        run.setHostState(got.state, meta.adam);
        run.step = meta.step;
      }
    }
    const first = run.step;
    const last = Math.min(c.train.steps, opts.stopAfter ?? c.train.steps);
    const progress =
      opts.progress === false || !isRank0 ? null : new Progress({ total: last, start: run.step, label: 'train', unit: 'step' });
    let saved = false;
    const saveNow = async () => {
      saved = true;
      if (!isRank0) return;
      checkpoint = await run.save(out);
      await pruneCheckpoints(out, c.train.keep_checkpoints);
      await sync.checkpointWritten?.(run.step, checkpoint);
    };
    let interrupted = 0;
    while (run.step < last) {
      if (sync.worldSize === 1 && stopCode(opts.stop) !== 0) {
        interrupted = stopCode(opts.stop);
        break;
      }
      const t0 = performance.now();
      const { loss, grads } = await run.compute();
      await sync.allReduce(grads);
      const stop = stopCode(opts.stop);
      const reports = await sync.commitStep(run.step + 1, stop === 0 ? { loss } : { loss, [STOP_KEY]: stop });
      const requested = reports.find((r) => r[STOP_KEY])?.[STOP_KEY] ?? 0;
      if (!Number.isFinite(loss))
        throw new Error(`step ${run.step + 1}: the loss is ${loss} (diverged); lower optim.base_lr or raise optim.warmup_steps`);
      const { lr, wd } = run.apply(grads);
      const step = run.step;
      const seconds = (performance.now() - t0) / 1000;
      const meanLoss = reports.reduce((a, r) => a + (r.loss ?? NaN), 0) / reports.length;
      if (isRank0 && (step % c.train.log_every === 0 || step === last)) {
        const scale = run.logitScale();
        const line = {
          step,
          loss: meanLoss,
          lr,
          wd,
          logit_scale: scale,
          step_seconds: seconds,
          pairs_per_s: (c.train.batch_size * sync.worldSize) / seconds,
        };
        await appendFile(metricsPath, JSON.stringify(round(line)) + '\n');
      }
      progress?.tick(1, `loss ${meanLoss.toFixed(4)}`);
      if (requested !== 0 || (sync.worldSize === 1 && stopCode(opts.stop) !== 0)) {
        interrupted = requested || stopCode(opts.stop);
        await saveNow();
        break;
      }
      if (isRank0 && c.train.eval_every > 0 && step % c.train.eval_every === 0 && step < c.train.steps) {
        await appendFile(metricsPath, JSON.stringify({ step, eval: await run.evaluate() }) + '\n');
      }
      saved = false;
      const periodic = c.train.checkpoint_every > 0 && step % c.train.checkpoint_every === 0;
      if (periodic || step === last) await saveNow();
    }
    if (interrupted !== 0) progress?.stop();
    else progress?.done();
    if (!saved && !(interrupted !== 0 && run.step === first)) await saveNow();
    const result: TrainResult = { outDir: out, step: run.step, checkpoint };
    if (interrupted !== 0) {
      const signal = interrupted > 0 ? signalName(interrupted) : undefined;
      result.interrupted = { step: run.step, ...(signal ? { signal } : {}) };
    }
    if (opts.checksum) result.checksum = run.checksum();
    if (interrupted !== 0 || last < c.train.steps || !isRank0) return result;
    const ev = await run.evaluate();
    result.eval = ev as unknown as TrainResult['eval'];
    await writeJsonAtomic(join(out, 'eval.json'), ev);
    return result;
  } catch (err) {
    // Not elastic (its WebDataset shards are split by world size, as open_clip's): the job ends and resumes.
    if (isMembershipChanged(err)) {
      throw new Error(
        `objective clip: the job's workers changed at step ${run.step + 1} (${err.message}); a clip job does not go on ` +
          'with other workers: every worker stops, and the same command with --resume continues from the last checkpoint',
        { cause: err },
      );
    }
    throw err;
  } finally {
    await run.dispose();
  }
}
