/**
 * Sweeps: one probe or LOST run per checkpoint (e.g. models with 0, 1, 2, 4, 8, 16 registers), gathered
 * into one table (CSV + JSON) and one line chart (PNG): the shape of the paper's Tables 2-3 and Fig. 8.
 */
import { join } from 'node:path';
import { encodePng, ensureDir, writeFileAtomic, writeJsonAtomic } from '@vitreg/core';
import { lineChart, SERIES_COLORS } from './draw.js';
import type { DenseProbeReport } from './dense-run.js';
import type { AnyProbeTask, ProbeReport } from './run.js';

/**
 * The table columns of one task's report in a sweep: class `accuracy`, `knn_top1`; position `top1`,
 * `mean_distance`; pixels `mse`, `l2`; segmentation `miou`, `pixel_accuracy`; depth `rmse`, `delta1`,
 * `abs_rel`. A run over several tasks puts them side by side, e.g. the paper's Table 2 (ImageNet linear
 * top-1, ADE20k mIoU, NYUd RMSE): tasks class, segmentation and depth.
 */
export function sweepColumns(task: AnyProbeTask, report: ProbeReport | DenseProbeReport): Record<string, number> {
  const r = report as Partial<ProbeReport> & Partial<DenseProbeReport>;
  const cols: Record<string, number | undefined> =
    task === 'class'
      ? { accuracy: r.accuracy, knn_top1: r.knn?.top1 }
      : task === 'position'
        ? { top1: r.top1, mean_distance: r.meanDistance }
        : task === 'pixels'
          ? { mse: r.mse, l2: r.l2 }
          : task === 'segmentation'
            ? { miou: r.segmentation?.miou, pixel_accuracy: r.segmentation?.accuracy }
            : { rmse: r.depth?.rmse, delta1: r.depth?.delta1, abs_rel: r.depth?.absRel };
  return Object.fromEntries(Object.entries(cols).filter((e): e is [string, number] => typeof e[1] === 'number'));
}

/** The columns a sweep's chart plots for each task. */
export const SWEEP_PLOT_METRICS: Record<AnyProbeTask, string[]> = {
  class: ['accuracy', 'knn_top1'],
  position: ['top1'],
  pixels: ['l2'],
  segmentation: ['miou'],
  depth: ['rmse'],
};

/** One row of a sweep table: the checkpoint, its x value (e.g. registers) and its metrics. */
export type SweepRow = Record<string, string | number | boolean | null>;

/** RFC 4180 CSV of `rows`; the columns are the union of the rows' keys in first-seen order. */
export function toCsv(rows: SweepRow[]): string {
  const cols: string[] = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
  const cell = (v: SweepRow[string] | undefined): string => {
    if (v === null || v === undefined) return '';
    const s = String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [cols.map(cell).join(','), ...rows.map((r) => cols.map((c) => cell(r[c])).join(','))].join('\n') + '\n';
}

export interface SweepFiles {
  csv: string;
  json: string;
  png: string;
}

/**
 * Write `<dir>/<name>.csv`, `.json` ({ x, metrics, colors, rows }) and `.png` (one line per metric
 * against column `x`; series colours in order of `metrics`, listed in the JSON).
 */
export async function writeSweep(
  dir: string,
  rows: SweepRow[],
  opts: { x: string; metrics: string[]; name?: string },
): Promise<SweepFiles> {
  if (rows.length === 0) throw new Error('sweep: no rows to write');
  for (const [i, r] of rows.entries()) {
    if (typeof r[opts.x] !== 'number') throw new Error(`sweep: row ${i} has no numeric '${opts.x}' column`);
  }
  await ensureDir(dir);
  const name = opts.name ?? 'sweep';
  const files = { csv: join(dir, `${name}.csv`), json: join(dir, `${name}.json`), png: join(dir, `${name}.png`) };
  await writeFileAtomic(files.csv, toCsv(rows));
  const colors = Object.fromEntries(opts.metrics.map((m, i) => [m, SERIES_COLORS[i % SERIES_COLORS.length]]));
  await writeJsonAtomic(files.json, { x: opts.x, metrics: opts.metrics, colors, rows });
  const series = opts.metrics.map((m) => ({
    name: m,
    points: rows.map((r): [number, number] => [r[opts.x] as number, typeof r[m] === 'number' ? (r[m] as number) : NaN]),
  }));
  const chart = lineChart(series);
  await writeFileAtomic(files.png, await encodePng(chart.data, chart.width, chart.height));
  return files;
}
