/**
 * Probe tasks over one or several checkpoints (what `vitreg probe` runs after parsing its flags): for each
 * checkpoint, zero-shot classification first when asked (its whole CLIP model, `runZeroShotTask`), then the
 * model the caller opens, through every other task (`runProbeTask`), each task's result reused when its
 * results file records the same settings. One checkpoint writes into `outDir`; several each into
 * `outDir/<checkpoint name>` (core's `checkpointNames`) and a sweep: `sweep.{csv,json,png}` in `outDir`,
 * one row per checkpoint (`checkpoint`, `registers`, every task's `sweepColumns`), plotted against the
 * number of registers (the paper's Table 2). One task writes `results.json`, several `results-<task>.json`.
 */
import { join, resolve } from 'node:path';
import { checkpointNames, ensureDir } from '@vitreg/core';
import type { DensePart, DenseProbeReport } from './dense-run.js';
import { runProbeTask, type ProbeTaskOptions } from './probe-task.js';
import type { AnyProbeTask, DataPart, ProbeModel, ProbeReport } from './run.js';
import { SWEEP_PLOT_METRICS, sweepColumns, writeSweep } from './sweep.js';
import { runZeroShotTask, type ZeroShotTaskOptions, type ZeroShotTaskReport } from './zeroshot-run.js';

/** A task of a probe sweep: a probe task, or zero-shot classification with a whole CLIP checkpoint. */
export type SweepTask = AnyProbeTask | 'zeroshot';

/** One finished (or reused) task of one checkpoint, as `runProbeSweep` reports it. */
export type ProbeSweepResult =
  | { weights: string; index: number; task: AnyProbeTask; file: string; reused: boolean; report: ProbeReport | DenseProbeReport }
  | { weights: string; index: number; task: 'zeroshot'; file: string; reused: boolean; report: ZeroShotTaskReport };

export interface ProbeSweepOptions {
  /** The checkpoints, as given (rows in this order; `checkpoint` in the sweep). */
  weights: readonly string[];
  /** The output folder. */
  outDir: string;
  /** The tasks, run in this order (zero-shot first whatever its place). */
  tasks: readonly SweepTask[];
  /** Every task's training and test parts (zero-shot reads the test part, a `DataPart`). */
  parts: ReadonlyMap<SweepTask, { train: DataPart | DensePart; test: DataPart | DensePart }>;
  /** Every task's data source as given: recorded in the default settings and zero-shot's report. */
  data: ReadonlyMap<SweepTask, string>;
  /**
   * The model of checkpoint `index` for the probe tasks (not called when zero-shot is the only task),
   * disposed by `dispose` after its tasks; its config's `num_register_tokens` is the row's `registers`.
   */
  openModel(weights: string, index: number): Promise<{ model: ProbeModel; dispose(): Promise<void> | void }>;
  /**
   * What identifies one checkpoint's task besides the task's own options (runProbeTask's and
   * runZeroShotTask's `settings`); default `{ weights: resolve(weights), task, data }`.
   */
  settings?(weights: string, task: SweepTask): Record<string, unknown>;
  /** The probe tasks' options (runProbeTask's, shared by every task; `steps` defaults per task). */
  probe?: Omit<ProbeTaskOptions, 'task' | 'file' | 'weights' | 'settings'>;
  /** Zero-shot's options when `tasks` holds it (`size` and `batchSize` are the probe options'). */
  zeroShot?: Pick<ZeroShotTaskOptions, 'tokenizer' | 'classes' | 'templates' | 'quickGelu'>;
  /** Called after each task of each checkpoint (say, to print its result). */
  onResult?(result: ProbeSweepResult): void;
}

/**
 * Runs every task of every checkpoint (see the module comment) and returns the sweep's rows (also for one
 * checkpoint, where no sweep files are written). Errors are runProbeTask's and runZeroShotTask's (a results
 * file of other settings is core's SettingsMismatchError) and `openModel`'s.
 */
export async function runProbeSweep(o: ProbeSweepOptions): Promise<{ rows: Record<string, string | number>[] }> {
  const { weights, outDir, tasks } = o;
  const probeTasks = tasks.filter((t): t is AnyProbeTask => t !== 'zeroshot');
  const zeroShot = tasks.includes('zeroshot');
  if (zeroShot && !o.zeroShot) throw new Error('runProbeSweep: task zeroshot needs the zeroShot options (tokenizer)');
  // The default settings hold what changes a result besides the task's own options (which it adds).
  const settingsOf =
    o.settings ??
    ((w: string, task: SweepTask) => ({
      weights: resolve(w),
      task,
      data: o.data.get(task),
      size: o.probe?.size ?? 224,
      seed: o.probe?.seed ?? 0,
    }));
  const dirs = checkpointNames([...weights]);
  const outOf = (i: number) => (weights.length > 1 ? join(outDir, dirs[i]!) : outDir);
  const fileOf = (out: string, task: SweepTask) => join(out, tasks.length === 1 ? 'results.json' : `results-${task}.json`);
  const rows: Record<string, string | number>[] = [];
  // Zero-shot first, with each checkpoint's whole CLIP model; its columns join the checkpoint's row.
  const zeroShotRows: Record<string, string | number>[] = [];
  for (const [i, w] of zeroShot ? weights.entries() : []) {
    const out = outOf(i);
    await ensureDir(out);
    const file = fileOf(out, 'zeroshot');
    const { report, reused } = await runZeroShotTask(w, o.parts.get('zeroshot')!.test as DataPart, {
      ...o.zeroShot!,
      file,
      settings: settingsOf(w, 'zeroshot'),
      data: o.data.get('zeroshot')!,
      size: o.probe?.size ?? 224,
      batchSize: o.probe?.batchSize ?? 8,
    });
    o.onResult?.({ weights: w, index: i, task: 'zeroshot', file, reused, report });
    zeroShotRows.push({ checkpoint: w, registers: report.registers, zeroshot_top1: report.top1, zeroshot_top5: report.top5 });
  }
  for (const [i, w] of probeTasks.length > 0 ? weights.entries() : []) {
    const { model, dispose } = await o.openModel(w, i);
    try {
      const out = outOf(i);
      await ensureDir(out);
      const row: Record<string, string | number> = { checkpoint: w, registers: model.config.num_register_tokens, ...zeroShotRows[i] };
      for (const task of probeTasks) {
        const file = fileOf(out, task);
        const { train, test } = o.parts.get(task)!;
        const { report, reused } = await runProbeTask(model, train, test, {
          ...o.probe,
          task,
          file,
          weights: w,
          settings: settingsOf(w, task),
        });
        o.onResult?.({ weights: w, index: i, task, file, reused, report });
        Object.assign(row, sweepColumns(task, report));
      }
      rows.push(row);
    } finally {
      await dispose();
    }
  }
  if (probeTasks.length === 0) rows.push(...zeroShotRows);
  const plotted = [...(zeroShot ? ['zeroshot_top1'] : []), ...probeTasks.flatMap((t) => SWEEP_PLOT_METRICS[t])];
  if (weights.length > 1) await writeSweep(outDir, rows, { x: 'registers', metrics: plotted });
  return { rows };
}
