/**
 * Two plot kinds, rasterised with ./canvas.ts: line plots (per-layer norm curves) and histograms with
 * log-scale counts (norm distributions with the outlier threshold marked).
 */
import { BLACK, Canvas, GREY, LABEL_SCALE, RED, textHeight, textWidth, type Rgb } from './canvas.js';
import { formatDistinct, formatNumber } from './heatmap.js';

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

const S = LABEL_SCALE;

/**
 * Canvas with title, axis labels and a plot frame; returns the inner plot rectangle. `yLabels` are the
 * y tick labels (the left margin fits the widest); `below` pixels under the x label stay free (a legend).
 */
function frame(width: number, height: number, title: string, xLabel: string, yLabel: string, yLabels: string[], below = 0): Frame {
  const canvas = new Canvas(width, height);
  const left = Math.max(40, ...yLabels.map((l) => textWidth(l, S) + 14));
  const right = 16;
  const titleH = title ? textHeight(S + 1) + 12 : 6;
  const top = titleH + (yLabel ? textHeight(S) + 10 : 6);
  const bottom = textHeight(S) * 2 + 22 + below;
  if (title) canvas.text((width - textWidth(title, S + 1)) / 2, 6, title, BLACK, S + 1);
  if (xLabel) canvas.text(left + (width - left - right - textWidth(xLabel, S)) / 2, height - below - textHeight(S) - 4, xLabel, BLACK, S);
  if (yLabel) canvas.text(4, titleH, yLabel, BLACK, S);
  const f = { canvas, x0: left, y0: top, w: width - left - right, h: height - top - bottom };
  canvas.strokeRect(f.x0 - 1, f.y0 - 1, f.w + 2, f.h + 2, BLACK);
  canvas.info.plotBox = [f.x0, f.y0, f.w, f.h];
  return f;
}

function xTick(f: Frame, px: number, label: string): void {
  f.canvas.line(px, f.y0 + f.h, px, f.y0 + f.h + 5, BLACK);
  f.canvas.text(px - textWidth(label, S) / 2, f.y0 + f.h + 9, label, BLACK, S);
}

function yTick(f: Frame, py: number, label: string): void {
  f.canvas.line(f.x0 - 6, py, f.x0 - 1, py, BLACK);
  f.canvas.line(f.x0, py, f.x0 + f.w - 1, py, [230, 230, 230]);
  f.canvas.text(f.x0 - 9 - textWidth(label, S), py - textHeight(S) / 2, label, BLACK, S);
}

/**
 * An axis over [lo, hi] (log10 units when `log`) widened to ticks at or beyond both ends, so every value
 * lies between two labelled ticks: the range and the ticks (in data units).
 */
export function axisRange(lo: number, hi: number, log: boolean): { lo: number; hi: number; ticks: number[] } {
  if (hi - lo < 1e-9) [lo, hi] = log ? [lo - 0.15, hi + 0.15] : [lo - 0.5, hi + 0.5];
  if (!log) {
    const inner = niceTicks(lo, hi, 5);
    const step = inner.length > 1 ? inner[1]! - inner[0]! : (hi - lo) / 4;
    const a = Number((Math.floor(lo / step + 1e-9) * step).toPrecision(12));
    const b = Number((Math.ceil(hi / step - 1e-9) * step).toPrecision(12));
    // Every step from a to b, so both ends are labelled ticks (niceTicks over the wider range could pick a coarser step).
    const ticks = Array.from({ length: Math.round((b - a) / step) + 1 }, (_, i) => Number((a + i * step).toPrecision(12)));
    return { lo: a, hi: b, ticks };
  }
  const decades = hi - lo;
  // Under 0.6 of a decade a log axis is nearly linear: linear nice ticks in data units, the range out to
  // the ones around the data (60..101 gets 60, 70, ..., 110, not a top tick at 200 that leaves the upper
  // half of the plot empty).
  if (decades < 0.6) {
    const linear = axisRange(10 ** lo, 10 ** hi, false);
    if (linear.lo > 0) return { lo: Math.log10(linear.lo), hi: Math.log10(linear.hi), ticks: linear.ticks };
  }
  // 1-2-5 steps (powers of ten alone over many decades), the range out to the ticks around it.
  const mults = decades > 3 ? [1] : decades < 0.6 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : [1, 2, 5];
  const all: number[] = [];
  for (let k = Math.floor(lo) - 1; k <= Math.ceil(hi) + 1; k++) for (const m of mults) all.push(Number((m * 10 ** k).toPrecision(6)));
  const below = all.filter((t) => Math.log10(t) <= lo + 1e-9).pop()!;
  const above = all.find((t) => Math.log10(t) >= hi - 1e-9)!;
  const ticks = all.filter((t) => t >= below && t <= above);
  return { lo: Math.log10(below), hi: Math.log10(above), ticks };
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

/**
 * Line plot of series over x = 0, 1, 2, ... (null values leave gaps). The legend, under the plot where no
 * line runs, lists the series drawn (a series without a value to draw is left out of both); the y axis
 * runs from a labelled tick at or below the smallest value to one at or above the largest.
 */
export function linePlot(o: LinePlotOptions): Canvas {
  const tr = (v: number) => (o.logY ? Math.log10(v) : v);
  const ok = (v: number | null): v is number => v !== null && Number.isFinite(v) && (!o.logY || v > 0);
  const drawn = o.series
    .map((s, k) => ({ ...s, color: s.color ?? SERIES_COLORS[k % SERIES_COLORS.length]! }))
    .filter((s) => Array.from({ length: s.values.length }, (_, i) => s.values[i]!).some(ok));
  const all: number[] = [];
  for (const s of drawn) for (let i = 0; i < s.values.length; i++) if (ok(s.values[i]!)) all.push(tr(s.values[i] as number));
  if (o.hline && ok(o.hline.value)) all.push(tr(o.hline.value));
  const n = Math.max(1, ...o.series.map((s) => s.values.length));
  const axis = axisRange(all.length ? Math.min(...all) : 0, all.length ? Math.max(...all) : 1, !!o.logY);
  const { lo, hi } = axis;
  const tickLabels = formatDistinct(axis.ticks);
  // The legend's entries (a swatch and a label each) in rows that fit the width, under the x label.
  const width = o.width ?? 480;
  const rowH = textHeight(S) + 8;
  const entryW = (s: Series) => 26 + textWidth(s.label, S) + 18;
  const rows: (typeof drawn)[] = [];
  let used = Infinity;
  for (const s of drawn) {
    if (used + entryW(s) > width - 16) {
      rows.push([]);
      used = 8;
    }
    rows[rows.length - 1]!.push(s);
    used += entryW(s);
  }
  const legendH = rows.length * rowH;
  const f = frame(width, o.height ?? 320, o.title ?? '', o.xLabel ?? '', o.yLabel ?? '', tickLabels, legendH + (legendH ? 4 : 0));
  const px = (i: number) => f.x0 + (n > 1 ? (i / (n - 1)) * (f.w - 1) : f.w / 2);
  const py = (v: number) => f.y0 + f.h - 1 - ((tr(v) - lo) / (hi - lo)) * (f.h - 1);
  axis.ticks.forEach((t, k) => yTick(f, py(t), tickLabels[k]!));
  for (const t of niceTicks(0, Math.max(1, n - 1), Math.min(10, Math.max(1, n - 1)))) if (Number.isInteger(t)) xTick(f, px(t), String(t));
  if (o.hline && ok(o.hline.value)) {
    const y = py(o.hline.value);
    f.canvas.line(f.x0, y, f.x0 + f.w - 1, y, RED, 1, 4);
    f.canvas.text(f.x0 + f.w - textWidth(o.hline.label, S) - 3, y - textHeight(S) - 2, o.hline.label, RED, S);
  }
  for (const s of drawn) {
    let prev: [number, number] | null = null;
    for (let i = 0; i < s.values.length; i++) {
      const v = s.values[i]!;
      if (!ok(v)) {
        prev = null;
        continue;
      }
      const p: [number, number] = [px(i), py(v)];
      if (prev) f.canvas.line(prev[0], prev[1], p[0], p[1], s.color, 2);
      f.canvas.fillRect(p[0] - 2, p[1] - 2, 5, 5, s.color);
      prev = p;
    }
  }
  if (drawn.length) {
    const ly0 = f.canvas.height - legendH - 2;
    let maxX = 0;
    rows.forEach((row, r) => {
      let lx = 8;
      for (const s of row) {
        const ly = ly0 + r * rowH;
        f.canvas.fillRect(lx, ly + textHeight(S) / 2 - 1, 20, 4, s.color);
        f.canvas.text(lx + 26, ly, s.label, s.color, S);
        lx += entryW(s);
      }
      maxX = Math.max(maxX, lx);
    });
    f.canvas.info.legend = { labels: drawn.map((s) => s.label), box: [8, ly0, maxX - 8, legendH] };
  }
  f.canvas.info.series = drawn.map((s) => s.label);
  const ends = [axis.ticks[0]!, axis.ticks[axis.ticks.length - 1]!];
  f.canvas.info.yAxis = { min: o.logY ? ends[0]! : lo, max: o.logY ? ends[1]! : hi, ticks: axis.ticks, log: !!o.logY };
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
  const yTicks = Array.from({ length: maxLog + 1 }, (_, k) => 10 ** k);
  const f = frame(o.width ?? 480, o.height ?? 320, o.title ?? '', o.xLabel ?? '', 'COUNT (LOG)', yTicks.map(formatNumber));
  const floor = Math.log10(0.5);
  const ceil = maxLog + 0.05 * (maxLog - floor);
  const py = (c: number) => f.y0 + f.h - ((Math.log10(c) - floor) / (ceil - floor)) * f.h;
  for (const t of yTicks) yTick(f, py(t), formatNumber(t));
  const bw = f.w / bins;
  counts.forEach((c, i) => {
    if (c > 0) {
      const y = py(c);
      f.canvas.fillRect(f.x0 + i * bw, y, Math.max(1, bw - 1), f.y0 + f.h - y, [31, 119, 180]);
    }
  });
  const px = (v: number) => f.x0 + ((v - lo) / (hi - lo)) * (f.w - 1);
  const xt = o.logX ? niceTicks(lo, hi, 5).map((t) => 10 ** t) : niceTicks(lo, hi, 5);
  const shown = xt.filter((t) => tr(t) >= lo && tr(t) <= hi);
  const xLabels = formatDistinct(shown);
  shown.forEach((t, k) => xTick(f, px(tr(t)), xLabels[k]!));
  if (o.threshold != null) {
    const x = px(tr(o.threshold));
    f.canvas.line(x, f.y0, x, f.y0 + f.h - 1, RED, 2, 5);
    const label = `T=${formatNumber(o.threshold)}`;
    f.canvas.text(Math.min(x + 4, f.x0 + f.w - textWidth(label, S) - 2), f.y0 + 4, label, RED, S);
  }
  f.canvas.line(f.x0, f.y0 + f.h, f.x0 + f.w, f.y0 + f.h, GREY);
  f.canvas.info.yAxis = { min: 0.5, max: 10 ** ceil, ticks: yTicks, log: true };
  return f.canvas;
}
