/**
 * `vitreg sweep collect`: every cell's results.json into one table, <out>/results.jsonl and results.csv
 * (one row per cell: index, cell, status, each axis, every measurement, the weights' sha256), and the
 * figures (figures.ts). A sweep with cells not done is refused unless `partial`: then those cells are
 * rows with status "missing" and empty measurements, and the figures and page say which are missing.
 *
 * The figure data (figures.json) is the table grouped for the paper's Fig. 8: x = the register axis
 * (model.num_register_tokens, else the first numeric axis), one series per value of the other axes
 * except seeds (e.g. per model), seeds pooled into mean, sample standard deviation (error bars) and n.
 */
import { basename, join } from 'node:path';
import { InputError, writeFileAtomic } from '@vitreg/core';
import { toCsv } from '@vitreg/probe';
import { cellStatus, markerPath, readJson, type Cell } from './cells.js';
import type { CellResult } from './run-cell.js';
import type { SweepSpec } from './spec.js';

export type Row = Record<string, string | number | boolean | null>;

export interface Point {
  x: number;
  mean: number;
  /** Sample standard deviation over the seeds (0 with one). */
  std: number;
  n: number;
  /** The cells pooled into this point. */
  cells: string[];
}

export interface SeriesData {
  /** The values of the grouping axes, e.g. "model.arch=vit_small" ("all" when there are none). */
  label: string;
  points: Point[];
}

export interface FigureData {
  x: string;
  /** Axes pooled as repeats (paths ending in "seed"). */
  repeats: string[];
  /** Axes that split the series. */
  groups: string[];
  metrics: Record<string, SeriesData[]>;
  missing: string[];
}

export interface Collected {
  rows: Row[];
  columns: string[];
  measurements: string[];
  missing: { name: string; state: string }[];
  figure: FigureData;
}

/** The table of a sweep; throws (InputError) when cells are not done, unless `partial`. */
export function collectRows(spec: SweepSpec, cells: Cell[], opts: { partial?: boolean } = {}): Collected {
  const axes = spec.axes.map(([k]) => k);
  const rows: Row[] = [];
  const missing: { name: string; state: string }[] = [];
  const measurements: string[] = [];
  for (const c of cells) {
    const s = cellStatus(c, spec.retries);
    const r = s.state === 'done' ? readJson<CellResult>(markerPath(c, 'results')) : null;
    const row: Row = { index: c.index, cell: c.name, status: r ? 'done' : 'missing' };
    for (const a of axes) row[a] = c.axes[a] as string | number | boolean;
    if (r) {
      for (const [k, v] of Object.entries(r.measurements)) {
        if (!measurements.includes(k)) measurements.push(k);
        row[k] = v;
      }
      row.weights_sha256 = r.weights_sha256;
    } else missing.push({ name: c.name, state: s.state });
    rows.push(row);
  }
  if (missing.length && !opts.partial) {
    const list = missing.map((m) => `${m.name} (${m.state})`).join(', ');
    throw new InputError(
      `${spec.file}: ${missing.length} of ${cells.length} cells are not done: ${list}; run them (vitreg sweep run / the scheduler), or collect with --partial to show them as missing`,
    );
  }
  const columns = ['index', 'cell', 'status', ...axes, ...measurements, 'weights_sha256'];
  return { rows, columns, measurements, missing, figure: figureData(spec, rows, measurements) };
}

/** The base config's name: the preset, or the config file's name. */
const baseName = (spec: SweepSpec) => ('preset' in spec.base ? spec.base.preset : basename(spec.base.file, '.json'));

const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const std = (v: number[]) => (v.length < 2 ? 0 : Math.sqrt(v.reduce((a, b) => a + (b - mean(v)) ** 2, 0) / (v.length - 1)));

/** The rows grouped for the figures (see the file's header). */
export function figureData(spec: SweepSpec, rows: Row[], measurements: string[]): FigureData {
  const axes = spec.axes.map(([k]) => k);
  const numeric = (a: string) => spec.axes.find(([k]) => k === a)![1].every((v) => typeof v === 'number');
  const x = axes.find((a) => a === 'model.num_register_tokens') ?? axes.find((a) => numeric(a) && !/seed$/.test(a)) ?? axes[0]!;
  const repeats = axes.filter((a) => a !== x && /(^|\.)seed$/.test(a));
  const groups = axes.filter((a) => a !== x && !repeats.includes(a));
  const metrics: Record<string, SeriesData[]> = {};
  for (const m of measurements) {
    const series = new Map<string, Map<number, { values: number[]; cells: string[] }>>();
    for (const r of rows) {
      const label = groups.length ? groups.map((g) => `${g}=${r[g]}`).join(', ') : baseName(spec);
      if (!series.has(label)) series.set(label, new Map());
      const v = r[m];
      const xv = numeric(x) ? Number(r[x]) : spec.axes.find(([k]) => k === x)![1].indexOf(r[x]);
      if (typeof v !== 'number' || !Number.isFinite(v)) continue;
      const pts = series.get(label)!;
      if (!pts.has(xv)) pts.set(xv, { values: [], cells: [] });
      pts.get(xv)!.values.push(v);
      pts.get(xv)!.cells.push(String(r.cell));
    }
    metrics[m] = [...series].map(([label, pts]) => ({
      label,
      points: [...pts]
        .sort((a, b) => a[0] - b[0])
        .map(([xv, p]) => ({ x: xv, mean: mean(p.values), std: std(p.values), n: p.values.length, cells: p.cells })),
    }));
  }
  return { x, repeats, groups, metrics, missing: rows.filter((r) => r.status !== 'done').map((r) => String(r.cell)) };
}

/** Writes results.jsonl and results.csv into the sweep's out folder; returns their paths. */
export async function writeTable(spec: SweepSpec, c: Collected): Promise<{ jsonl: string; csv: string }> {
  const jsonl = join(spec.out, 'results.jsonl');
  const csv = join(spec.out, 'results.csv');
  await writeFileAtomic(jsonl, c.rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  await writeFileAtomic(csv, toCsv(c.rows, c.columns));
  return { jsonl, csv };
}
