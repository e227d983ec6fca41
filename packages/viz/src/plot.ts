/**
 * Two plot kinds, rasterised with ./canvas.ts: line plots (per-layer norm curves) and histograms with
 * log-scale counts (norm distributions with the outlier threshold marked).
 */
import { BLACK, Canvas, GREY, RED, textHeight, textWidth, type Rgb } from './canvas.js';
import { formatNumber } from './heatmap.js';

/** Distinct line colours (matplotlib's tab10 order). */
export const SERIES_COLORS: Rgb[] = [
  [31, 119, 180],
  [255, 127, 14],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
  [140, 86, 75],
];

/** About `count` "nice" tick values (1, 2, 5 x 10^k steps) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

/**
 * Ticks of a log10 axis spanning [lo, hi] (in decades): 1-2-5 steps; powers of ten when that gives
 * more than 8; every 1..9 x 10^k when it gives fewer than 3.
 */
export function logTicks(lo: number, hi: number): number[] {
  const ticks = (mults: number[]) => {
    const out: number[] = [];
    for (let k = Math.floor(lo); k <= Math.ceil(hi); k++) for (const m of mults) out.push(Number((m * 10 ** k).toPrecision(6)));
    return out.filter((t) => Math.log10(t) >= lo && Math.log10(t) <= hi);
  };
  const t = ticks([1, 2, 5]);
  if (t.length > 8) return ticks([1]);
  return t.length < 3 ? ticks([1, 2, 3, 4, 5, 6, 7, 8, 9]) : t;
}

interface Frame {
  canvas: Canvas;
  x0: number;
  y0: number;
  w: number;
  h: number;
}

/** Canvas with title, axis labels and a plot frame; returns the inner plot rectangle. */
function frame(width: number, height: number, title: string, xLabel: string, yLabel: string): Frame {
  const canvas = new Canvas(width, height);
  const left = 52;
  const titleH = title ? textHeight(2) + 10 : 4;
  const top = titleH + (yLabel ? textHeight() + 10 : 6);
  const bottom = 38;
  const right = 14;
  if (title) canvas.text((width - textWidth(title, 2)) / 2, 6, title, BLACK, 2);
  if (xLabel) canvas.text(left + (width - left - right - textWidth(xLabel)) / 2, height - textHeight() - 4, xLabel);
  if (yLabel) canvas.text(4, titleH, yLabel);
  const f = { canvas, x0: left, y0: top, w: width - left - right, h: height - top - bottom };
  canvas.strokeRect(f.x0 - 1, f.y0 - 1, f.w + 2, f.h + 2, BLACK);
  return f;
}

function xTick(f: Frame, px: number, label: string): void {
  f.canvas.line(px, f.y0 + f.h, px, f.y0 + f.h + 4, BLACK);
  f.canvas.text(px - textWidth(label) / 2, f.y0 + f.h + 7, label);
}

function yTick(f: Frame, py: number, label: string): void {
  f.canvas.line(f.x0 - 5, py, f.x0 - 1, py, BLACK);
  f.canvas.line(f.x0, py, f.x0 + f.w - 1, py, [230, 230, 230]);
  f.canvas.text(f.x0 - 8 - textWidth(label), py - textHeight() / 2, label);
}

export interface Series {
  label: string;
  values: ArrayLike<number | null>;
  color?: Rgb;
}

export interface LinePlotOptions {
  series: Series[];
  width?: number;
  height?: number;
  title?: string;
  xLabel?: string;
  yLabel?: string;
  /** Logarithmic y axis (values <= 0 are skipped). */
  logY?: boolean;
  /** Horizontal reference line (e.g. a threshold). */
  hline?: { value: number; label: string };
}

/** Line plot of series over x = 0, 1, 2, ... (null values leave gaps), with a legend. */
export function linePlot(o: LinePlotOptions): Canvas {
  const f = frame(o.width ?? 480, o.height ?? 320, o.title ?? '', o.xLabel ?? '', o.yLabel ?? '');
  const tr = (v: number) => (o.logY ? Math.log10(v) : v);
  const ok = (v: number | null): v is number => v !== null && Number.isFinite(v) && (!o.logY || v > 0);
  const all: number[] = [];
  for (const s of o.series) for (let i = 0; i < s.values.length; i++) if (ok(s.values[i])) all.push(tr(s.values[i] as number));
  if (o.hline && ok(o.hline.value)) all.push(tr(o.hline.value));
  const n = Math.max(...o.series.map((s) => s.values.length));
  let lo = all.length ? Math.min(...all) : 0;
  let hi = all.length ? Math.max(...all) : 1;
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
  const pad = (hi - lo) * 0.05;
  lo -= pad;
  hi += pad;
  const px = (i: number) => f.x0 + (n > 1 ? (i / (n - 1)) * (f.w - 1) : f.w / 2);
  const py = (v: number) => f.y0 + f.h - 1 - ((tr(v) - lo) / (hi - lo)) * (f.h - 1);
  for (const t of o.logY ? logTicks(lo, hi) : niceTicks(lo, hi, 5)) {
    if (tr(t) >= lo && tr(t) <= hi) yTick(f, py(t), formatNumber(t));
  }
  for (const t of niceTicks(0, Math.max(1, n - 1), Math.min(10, Math.max(1, n - 1)))) if (Number.isInteger(t)) xTick(f, px(t), String(t));
  if (o.hline && ok(o.hline.value)) {
    const y = py(o.hline.value);
    f.canvas.line(f.x0, y, f.x0 + f.w - 1, y, RED, 1, 4);
    f.canvas.text(f.x0 + f.w - textWidth(o.hline.label) - 3, y - textHeight() - 2, o.hline.label, RED);
  }
  o.series.forEach((s, k) => {
    const color = s.color ?? SERIES_COLORS[k % SERIES_COLORS.length];
    let prev: [number, number] | null = null;
    for (let i = 0; i < s.values.length; i++) {
      const v = s.values[i];
      if (!ok(v)) {
        prev = null;
        continue;
      }
      const p: [number, number] = [px(i), py(v)];
      if (prev) f.canvas.line(prev[0], prev[1], p[0], p[1], color, 2);
      f.canvas.fillRect(p[0] - 2, p[1] - 2, 5, 5, color);
      prev = p;
    }
    const ly = f.y0 + 4 + k * (textHeight() + 4);
    f.canvas.fillRect(f.x0 + 6, ly + 2, 10, 3, color);
    f.canvas.text(f.x0 + 20, ly, s.label, color);
  });
  return f.canvas;
}

export interface HistogramOptions {
  values: ArrayLike<number>;
  bins?: number;
  width?: number;
  height?: number;
  title?: string;
  xLabel?: string;
  /** Vertical line at this value (e.g. the outlier threshold). */
  threshold?: number | null;
  /** Bin on a log10 x axis. */
  logX?: boolean;
}

/** Histogram with logarithmic counts (bars start at 0.5 so single counts show). */
export function histogramPlot(o: HistogramOptions): Canvas {
  const f = frame(o.width ?? 480, o.height ?? 320, o.title ?? '', o.xLabel ?? '', 'COUNT (LOG)');
  const tr = (v: number) => (o.logX ? Math.log10(Math.max(v, 1e-12)) : v);
  const vals = Array.from(o.values, tr);
  if (vals.length === 0) throw new Error('histogramPlot: no values');
  const bins = o.bins ?? 40;
  let lo = Math.min(...vals);
  let hi = Math.max(...vals);
  if (o.threshold != null) {
    lo = Math.min(lo, tr(o.threshold));
    hi = Math.max(hi, tr(o.threshold));
  }
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
  const counts = new Array(bins).fill(0);
  for (const v of vals) counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]++;
  const maxLog = Math.max(1, Math.ceil(Math.log10(Math.max(...counts))));
  const floor = Math.log10(0.5);
  const ceil = maxLog + 0.05 * (maxLog - floor);
  const py = (c: number) => f.y0 + f.h - ((Math.log10(c) - floor) / (ceil - floor)) * f.h;
  for (let k = 0; k <= maxLog; k++) yTick(f, py(10 ** k), formatNumber(10 ** k));
  const bw = f.w / bins;
  counts.forEach((c, i) => {
    if (c > 0) {
      const y = py(c);
      f.canvas.fillRect(f.x0 + i * bw, y, Math.max(1, bw - 1), f.y0 + f.h - y, [31, 119, 180]);
    }
  });
  const px = (v: number) => f.x0 + ((v - lo) / (hi - lo)) * (f.w - 1);
  const xt = o.logX ? niceTicks(lo, hi, 5).map((t) => 10 ** t) : niceTicks(lo, hi, 5);
  for (const t of xt) if (tr(t) >= lo && tr(t) <= hi) xTick(f, px(tr(t)), formatNumber(t));
  if (o.threshold != null) {
    const x = px(tr(o.threshold));
    f.canvas.line(x, f.y0, x, f.y0 + f.h - 1, RED, 2, 5);
    const label = `T=${formatNumber(o.threshold)}`;
    f.canvas.text(Math.min(x + 4, f.x0 + f.w - textWidth(label) - 2), f.y0 + 4, label, RED);
  }
  f.canvas.line(f.x0, f.y0 + f.h, f.x0 + f.w, f.y0 + f.h, GREY);
  return f.canvas;
}
