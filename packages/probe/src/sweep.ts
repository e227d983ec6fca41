/**
 * Sweeps: one probe or LOST run per checkpoint (e.g. models with 0, 1, 2, 4, 8, 16 registers), gathered
 * into one table (CSV + JSON) and one line chart (PNG): the shape of the paper's Tables 2-3 and Fig. 8.
 * The chart has a title, axis labels with units (sweepUnit) and a legend naming each series' colour,
 * drawn in a small 3x5 capital-letter font beside ./draw.ts's digits.
 */
import { join } from 'node:path';
import { encodePng, ensureDir, writeFileAtomic, writeJsonAtomic } from '@vitreg/core';
import { canvas, fillRect, lineChart, SERIES_COLORS, text, type Canvas, type Rgb } from './draw.js';
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

/**
 * RFC 4180 CSV of `rows` (a header line, then one line per row, each ending in \n; a value holding a
 * comma, quote or line break quoted; null and absent values empty). `columns`: the columns in order
 * (default: the union of the rows' keys in first-seen order).
 */
export function toCsv(rows: SweepRow[], columns?: string[]): string {
  const cols: string[] = columns ? [...columns] : [];
  if (!columns) for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
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

/** The unit of a sweep column, for axis labels and the legend. */
export function sweepUnit(metric: string): string {
  if (/(accuracy|top1|corloc|miou|delta1)$/.test(metric)) return 'fraction 0-1';
  if (metric === 'rmse') return 'm';
  if (metric === 'abs_rel') return 'relative';
  if (metric === 'mean_distance') return 'patches';
  if (metric === 'mse' || metric === 'l2') return 'normalised pixels';
  if (metric === 'registers') return 'tokens';
  return 'value';
}

/** Capital letters and punctuation, 3x5 like ./draw.ts's digits (row by row, 1 = ink). */
const LETTERS: Record<string, string> = {
  A: '010101111101101',
  B: '110101110101110',
  C: '011100100100011',
  D: '110101101101110',
  E: '111100110100111',
  F: '111100110100100',
  G: '011100101101011',
  H: '101101111101101',
  I: '111010010010111',
  J: '001001001101010',
  K: '101101110101101',
  L: '100100100100111',
  M: '101111111101101',
  N: '110101101101101',
  O: '010101101101010',
  P: '110101110100100',
  Q: '010101101110011',
  R: '110101110101101',
  S: '011100010001110',
  T: '111010010010010',
  U: '101101101101111',
  V: '101101101101010',
  W: '101101111111101',
  X: '101101010101101',
  Y: '101101010010010',
  Z: '111001010100111',
  '(': '010100100100010',
  ')': '010001001001010',
  ',': '000000000010100',
  _: '000000000000111',
  '/': '001001010100100',
  ':': '000010000010000',
  '%': '101001010100101',
  '=': '000111000111000',
};

/** `s` in capitals at (x, y), `scale` pixels per font pixel (digits and . - + from ./draw.ts). */
export function label(c: Canvas, s: string, x: number, y: number, color: Rgb, scale = 2): void {
  for (const ch of s.toUpperCase()) {
    const g = LETTERS[ch];
    if (g) {
      for (let k = 0; k < 15; k++)
        if (g[k] === '1')
          fillRect(
            c,
            x + (k % 3) * scale,
            y + Math.floor(k / 3) * scale,
            x + ((k % 3) + 1) * scale,
            y + (Math.floor(k / 3) + 1) * scale,
            color,
          );
    } else text(c, ch, x, y, color, scale);
    x += 4 * scale;
  }
}

const labelWidth = (s: string, scale = 2) => s.length * 4 * scale - scale;

/** What the chart says: its title, axis labels and one legend entry per metric. */
export interface SweepChartText {
  title: string;
  xLabel: string;
  yLabel: string;
  legend: string[];
}

/** The chart's words for metrics against column `x`: units in the axis labels, or per entry when they differ. */
export function sweepChartText(x: string, metrics: string[], title?: string): SweepChartText {
  const units = [...new Set(metrics.map(sweepUnit))];
  return {
    title: title ?? `${metrics.join(', ')} vs ${x}`,
    xLabel: `${x} (${sweepUnit(x)})`,
    yLabel: units.length === 1 ? `${metrics.join(', ')} (${units[0]})` : 'value (units in the legend)',
    legend: metrics.map((m) => (units.length === 1 ? m : `${m} (${sweepUnit(m)})`)),
  };
}

/** lineChart with a title above, the y label over the axis, the x label below and a legend under it. */
export function sweepChart(series: { name: string; points: [number, number][] }[], words: SweepChartText, width = 640): Canvas {
  const chart = lineChart(series, { width, height: 400 });
  const s = 2;
  const rowH = 5 * s + 8;
  const titleH = 5 * 3 + 12;
  const yLabelH = 5 * s + 8;
  const xLabelH = 5 * s + 10;
  // Legend entries flow left to right in rows that fit the width.
  const rows: { text: string; color: Rgb }[][] = [[]];
  let used = 8;
  words.legend.forEach((t, i) => {
    const w = 28 + labelWidth(t, s) + 18;
    if (used + w > width - 8 && rows[rows.length - 1]!.length) {
      rows.push([]);
      used = 8;
    }
    rows[rows.length - 1]!.push({ text: t, color: SERIES_COLORS[i % SERIES_COLORS.length]! });
    used += w;
  });
  const top = titleH + yLabelH;
  const c = canvas(width, top + chart.height + xLabelH + rows.length * rowH + 6);
  for (let y = 0; y < chart.height; y++) c.data.set(chart.data.subarray(y * width * 3, (y + 1) * width * 3), (top + y) * width * 3);
  const black: Rgb = [0, 0, 0];
  label(c, words.title, Math.max(4, (width - labelWidth(words.title, 3)) / 2), 6, black, 3);
  label(c, words.yLabel, 6, titleH, black, s);
  label(c, words.xLabel, 60 + (width - 80 - labelWidth(words.xLabel, s)) / 2, top + chart.height - 8, black, s);
  rows.forEach((row, r) => {
    let lx = 8;
    const ly = top + chart.height + xLabelH + r * rowH;
    for (const e of row) {
      fillRect(c, lx, ly + 3, lx + 20, ly + 7, e.color);
      label(c, e.text, lx + 28, ly, e.color, s);
      lx += 28 + labelWidth(e.text, s) + 18;
    }
  });
  return c;
}

/**
 * Write `<dir>/<name>.csv`, `.json` ({ x, metrics, colors, title, xLabel, yLabel, legend, rows }) and
 * `.png` (one line per metric against column `x`, series colours in order of `metrics`; a title, axis
 * labels with units and a legend). `title` defaults to "<metrics> vs <x>".
 */
export async function writeSweep(
  dir: string,
  rows: SweepRow[],
  opts: { x: string; metrics: string[]; name?: string; title?: string },
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
  const words = sweepChartText(opts.x, opts.metrics, opts.title);
  await writeJsonAtomic(files.json, { x: opts.x, metrics: opts.metrics, colors, ...words, rows });
  const series = opts.metrics.map((m) => ({
    name: m,
    points: rows.map((r): [number, number] => [r[opts.x] as number, typeof r[m] === 'number' ? (r[m] as number) : NaN]),
  }));
  const chart = sweepChart(series, words);
  await writeFileAtomic(files.png, await encodePng(chart.data, chart.width, chart.height));
  return files;
}
