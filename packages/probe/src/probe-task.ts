/**
 * One probe task of one model into a results file, resumable (what `vitreg probe` runs per checkpoint
 * and task): a results file that records the same settings is reused as it is; otherwise the probe runs
 * (runProbe for class / position / pixels, runDenseProbe for segmentation / depth, with progress lines)
 * and its report is written with the settings, so the next run with the same settings skips it.
 *
 * Files, all beside the results file: the results JSON (`{ weights, config, settings, ...report }`;
 * dense tasks add `head`), for dense tasks `head-<task>.safetensors` (DINOv2's head names) and, while the
 * features are extracted, the resumable feature cache `cache-<task>/` (removed when the task is done).
 */
import { rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { DENSE_TASKS, InputError, Progress, readFinishedResult, writeJsonAtomic, writeSafetensors, type DenseTask } from '@vitreg/core';
import type { DepthHeadMode } from './dense.js';
import { runDenseProbe, type DensePart, type DenseProbeReport } from './dense-run.js';
import type { TokenChoice } from './extract.js';
import { runProbe, type AnyProbeTask, type DataPart, type ProbeModel, type ProbeReport } from './run.js';

/** Whether a task is one of the dense probes (segmentation, depth). */
export const isDenseTask = (t: AnyProbeTask): t is DenseTask => (DENSE_TASKS as readonly string[]).includes(t);

export interface ProbeTaskOptions {
  task: AnyProbeTask;
  /** The results file (JSON); a dense task's head and feature cache go beside it. */
  file: string;
  /** The checkpoint's path as given: in the results file and the progress labels. */
  weights: string;
  /**
   * What identifies the run besides the probe's own options (the weights, the data, ...); the task adds
   * its options (token tasks: token, threshold, register, steps; dense: layers, steps, headBatchSize,
   * trainLabelSize, lr, depthHead for depth) and the whole is recorded in the results file.
   */
  settings: Record<string, unknown>;
  /** Square input side (default 224), images per forward pass (default 8), seed (default 0). */
  size?: number;
  batchSize?: number;
  seed?: number;
  /** Softmax-regression steps (default 300) or dense head steps (default 1000). */
  steps?: number;
  /** Token tasks: the token read (default cls), the outlier rule (default 'auto'), the register (default 0). */
  token?: TokenChoice;
  threshold?: 'auto' | number;
  register?: number;
  /** Dense tasks: runDenseProbe's options. */
  layers?: 1 | 4;
  depthHead?: DepthHeadMode;
  headBatchSize?: number;
  trainLabelSize?: number;
  lr?: number;
  /** Progress lines on stderr (default true). */
  progress?: boolean;
}

export interface ProbeTaskResult {
  report: ProbeReport | DenseProbeReport;
  /** True when the results file already held this run's result (nothing ran). */
  reused: boolean;
  /** The settings recorded in the results file. */
  settings: Record<string, unknown>;
}

/** A progress callback `(done) => ...` ticking `progress` by the difference; nothing without one. */
function ticker(progress: Progress | undefined): (done: number) => void {
  let seen = 0;
  return (done) => {
    progress?.tick(done - seen);
    seen = done;
  };
}

/**
 * Runs one task (see the module comment), or reuses its result. Errors of the probe itself (bad input,
 * a model that cannot take the images) are InputErrors; a results file of the same name made with other
 * settings is core's SettingsMismatchError (naming every setting that differs). The model is not disposed.
 */
export async function runProbeTask(
  model: ProbeModel,
  train: DataPart | DensePart,
  test: DataPart | DensePart,
  o: ProbeTaskOptions,
): Promise<ProbeTaskResult> {
  const size = o.size ?? 224;
  const batchSize = o.batchSize ?? 8;
  const seed = o.seed ?? 0;
  const show = o.progress !== false;
  const count = (p: DataPart | DensePart) => p.indices?.length ?? p.dataset.length;
  if (!isDenseTask(o.task)) {
    const token = o.token ?? 'cls';
    const threshold = o.threshold ?? 'auto';
    const register = o.register ?? 0;
    const steps = o.steps ?? 300;
    const settings = { ...o.settings, token, threshold, register, steps };
    const prev = await readFinishedResult<ProbeReport>(o.file, settings);
    if (prev) return { report: prev, reused: true, settings };
    const label = `probe ${o.task}/${token} ${basename(o.weights)}`;
    const progress = show ? new Progress({ total: count(train) + count(test), label, unit: 'img' }) : undefined;
    let report: ProbeReport;
    try {
      report = await runProbe(model, train as DataPart, test as DataPart, {
        token,
        threshold,
        register,
        size,
        batchSize,
        seed,
        task: o.task,
        steps,
        onProgress: ticker(progress),
      });
    } catch (err) {
      throw new InputError((err as Error).message, { cause: err });
    }
    progress?.done();
    await writeJsonAtomic(o.file, { weights: o.weights, config: model.config, settings, ...report });
    return { report, reused: false, settings };
  }

  const task = o.task;
  const steps = o.steps ?? 1000;
  const layers = o.layers ?? 1;
  const headBatchSize = o.headBatchSize ?? 4;
  const trainLabelSize = o.trainLabelSize ?? size;
  const depthHead = o.depthHead ?? 'bins';
  const settings = {
    ...o.settings,
    layers,
    steps,
    headBatchSize,
    trainLabelSize,
    lr: o.lr ?? null,
    ...(task === 'depth' ? { depthHead } : {}),
  };
  const prev = await readFinishedResult<DenseProbeReport>(o.file, settings);
  if (prev) return { report: prev, reused: true, settings };
  const dir = dirname(o.file);
  const cacheDir = join(dir, `cache-${task}`);
  const phase = (total: number, label: string, unit: string) => (show ? new Progress({ total, label, unit }) : undefined);
  const phases = {
    extract: phase(count(train) + count(test), `probe ${task} features ${basename(o.weights)}`, 'img'),
    train: phase(steps, `probe ${task} head`, 'step'),
    evaluate: phase(count(test), `probe ${task} evaluation`, 'img'),
  };
  const tickers = { extract: ticker(phases.extract), train: ticker(phases.train), evaluate: ticker(phases.evaluate) };
  let result;
  try {
    result = await runDenseProbe(model, train as DensePart, test as DensePart, {
      task,
      size,
      layers,
      batchSize,
      headBatchSize,
      steps,
      depthHead,
      trainLabelSize,
      seed,
      cacheDir,
      cacheKey: settings,
      ...(o.lr !== undefined ? { lr: o.lr } : {}),
      onProgress: (p, done) => tickers[p](done),
    });
  } catch (err) {
    // A new InputError, also for the feature cache's SettingsMismatchError: only the results file's is one.
    throw new InputError((err as Error).message, { cause: err });
  }
  for (const p of Object.values(phases)) p?.done();
  const headFile = join(dir, `head-${task}.safetensors`);
  await writeSafetensors(headFile, result.tensors, { task, format: 'pt', source: 'vitreg probe (DINOv2 linear head names)' });
  await writeJsonAtomic(o.file, { weights: o.weights, config: model.config, settings, head: basename(headFile), ...result.report });
  await rm(cacheDir, { recursive: true, force: true });
  return { report: result.report, reused: false, settings };
}
