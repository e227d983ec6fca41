/**
 * Small rasterisers on 8-bit RGB buffers (HWC): LOST's result drawn on its image, and a line chart for
 * sweeps (axes, ticks with 3x5 pixel digits, one coloured polyline with markers per series). PNG
 * encoding is core's `encodePng`.
 */
import type { Box } from '@vitreg/core';
import type { LostResult } from './lost.js';

export type Rgb = [number, number, number];

/** An RGB image being drawn on. */
export interface Canvas {
  data: Uint8Array;
  width: number;
  height: number;
}

export function canvas(width: number, height: number, fill: Rgb = [255, 255, 255]): Canvas {
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) data.set(fill, i * 3);
  return { data, width, height };
}

/** Blend `color` into pixel (x, y) with opacity `alpha` (1 = replace); outside pixels are ignored. */
export function plot(c: Canvas, x: number, y: number, color: Rgb, alpha = 1): void {
  x = Math.round(x);
  y = Math.round(y);
  if (x < 0 || y < 0 || x >= c.width || y >= c.height) return;
  const i = (y * c.width + x) * 3;
  for (let k = 0; k < 3; k++) c.data[i + k] = Math.round(c.data[i + k] * (1 - alpha) + color[k] * alpha);
}

export function fillRect(c: Canvas, x0: number, y0: number, x1: number, y1: number, color: Rgb, alpha = 1): void {
  for (let y = Math.max(0, Math.floor(y0)); y < Math.min(c.height, Math.ceil(y1)); y++) {
    for (let x = Math.max(0, Math.floor(x0)); x < Math.min(c.width, Math.ceil(x1)); x++) plot(c, x, y, color, alpha);
  }
}

/** Outline of the box [x0, y0, x1, y1) with the given line width, drawn inside the box. */
export function strokeRect(c: Canvas, b: Box, color: Rgb, lineWidth = 2): void {
  const [x0, y0, x1, y1] = b;
  fillRect(c, x0, y0, x1, y0 + lineWidth, color);
  fillRect(c, x0, y1 - lineWidth, x1, y1, color);
  fillRect(c, x0, y0, x0 + lineWidth, y1, color);
  fillRect(c, x1 - lineWidth, y0, x1, y1, color);
}

/** A straight line (Bresenham) of the given thickness. */
export function line(c: Canvas, x0: number, y0: number, x1: number, y1: number, color: Rgb, thickness = 1): void {
  const steps = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
  const r = (thickness - 1) / 2;
  for (let s = 0; s <= steps; s++) {
    const x = x0 + ((x1 - x0) * s) / steps,
      y = y0 + ((y1 - y0) * s) / steps;
    fillRect(c, x - r, y - r, x + r + 1, y + r + 1, color);
  }
}

/**
 * LOST drawn on the input image (width x height RGB): the seed's component tinted green, the mask
 * outside it tinted blue, the seed patch filled yellow, the box outlined red, ground-truth boxes
 * outlined white.
 */
export function drawDiscovery(
  rgb: Uint8Array,
  width: number,
  height: number,
  r: LostResult,
  grid: [number, number],
  patchSize: number,
  truths: Box[] = [],
): Canvas {
  const c: Canvas = { data: Uint8Array.from(rgb), width, height };
  const cols = grid[1];
  for (let p = 0; p < grid[0] * grid[1]; p++) {
    if (!r.mask[p]) continue;
    const x = (p % cols) * patchSize,
      y = Math.floor(p / cols) * patchSize;
    fillRect(c, x, y, x + patchSize, y + patchSize, r.component[p] ? [0, 200, 0] : [0, 90, 255], 0.35);
  }
  const sx = r.seed[1] * patchSize,
    sy = r.seed[0] * patchSize;
  fillRect(c, sx, sy, sx + patchSize, sy + patchSize, [255, 220, 0], 0.7);
  for (const t of truths) strokeRect(c, t, [255, 255, 255], 1);
  strokeRect(c, r.box, [230, 0, 0], 2);
  return c;
}

/** 3x5 glyphs of the characters tick labels need. */
const GLYPHS: Record<string, string> = {
  '0': '111101101101111',
  '1': '010110010010111',
  '2': '111001111100111',
  '3': '111001111001111',
  '4': '101101111001001',
  '5': '111100111001111',
  '6': '111100111101111',
  '7': '111001001001001',
  '8': '111101111101111',
  '9': '111101111001111',
  '.': '000000000000010',
  '-': '000000111000000',
  e: '000111101110011',
  '+': '000010111010000',
};

/** Text in the 3x5 font, `scale` pixels per font pixel, top-left at (x, y). Unknown characters are skipped. */
export function text(c: Canvas, s: string, x: number, y: number, color: Rgb, scale = 2): void {
  for (const ch of s) {
    const g = GLYPHS[ch];
    if (g) {
      for (let k = 0; k < 15; k++) {
        if (g[k] === '1')
          fillRect(
            c,
            x + (k % 3) * scale,
            y + Math.floor(k / 3) * scale,
            x + ((k % 3) + 1) * scale,
            y + (Math.floor(k / 3) + 1) * scale,
            color,
          );
      }
    }
    x += 4 * scale;
  }
}

/** Width in pixels of `text` at `scale`. */
export function textWidth(s: string, scale = 2): number {
  return s.length * 4 * scale - scale;
}

export interface Series {
  name: string;
  /** Points (x, y); non-finite y values are skipped. */
  points: [number, number][];
}

/** Distinct colours of successive series. */
export const SERIES_COLORS: Rgb[] = [
  [31, 119, 180],
  [255, 127, 14],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
  [140, 86, 75],
];

/** Compact tick label: up to 3 significant digits. */
function tickLabel(v: number): string {
  if (v === 0) return '0';
  const s = Number(v.toPrecision(3)).toString();
  return s.length <= 6 ? s : v.toExponential(1);
}

/** "Nice" ticks covering [lo, hi]: steps of 1, 2 or 5 times a power of ten. */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/**
 * A line chart of `series` on a white canvas: axes with numeric ticks, series i in SERIES_COLORS[i],
 * square markers on the points. The y range is [0, 1] when every value lies in it (accuracies), else
 * the data range with 5% margins.
 */
export function lineChart(series: Series[], opts: { width?: number; height?: number } = {}): Canvas {
  const width = opts.width ?? 640,
    height = opts.height ?? 400;
  const c = canvas(width, height);
  const pts = series.flatMap((s) => s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1])));
  if (pts.length === 0) throw new Error('lineChart: no finite points to plot');
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (y0 >= 0 && y1 <= 1) [y0, y1] = [0, 1];
  else {
    const m = (y1 - y0) * 0.05 || Math.abs(y0) * 0.05 || 1;
    [y0, y1] = [y0 - m, y1 + m];
  }
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  const left = 60,
    right = 20,
    top = 20,
    bottom = 40;
  const px = (x: number) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const py = (y: number) => height - bottom - ((y - y0) / (y1 - y0)) * (height - top - bottom);
  const axis: Rgb = [60, 60, 60];
  line(c, left, top, left, height - bottom, axis);
  line(c, left, height - bottom, width - right, height - bottom, axis);
  for (const t of niceTicks(y0, y1)) {
    const y = Math.round(py(t));
    line(c, left - 5, y, left, y, axis);
    line(c, left + 1, y, width - right, y, [230, 230, 230]);
    const s = tickLabel(t);
    text(c, s, left - 8 - textWidth(s), y - 5, axis);
  }
  const xs = [...new Set(pts.map((p) => p[0]))].sort((a, b) => a - b);
  for (const t of xs.length <= 12 ? xs : niceTicks(x0, x1)) {
    const x = Math.round(px(t));
    line(c, x, height - bottom, x, height - bottom + 5, axis);
    const s = tickLabel(t);
    text(c, s, x - Math.floor(textWidth(s) / 2), height - bottom + 10, axis);
  }
  series.forEach((s, i) => {
    const color = SERIES_COLORS[i % SERIES_COLORS.length];
    const p = s.points.filter((q) => Number.isFinite(q[0]) && Number.isFinite(q[1])).sort((a, b) => a[0] - b[0]);
    for (let k = 1; k < p.length; k++) line(c, px(p[k - 1][0]), py(p[k - 1][1]), px(p[k][0]), py(p[k][1]), color, 2);
    for (const q of p) fillRect(c, px(q[0]) - 3, py(q[1]) - 3, px(q[0]) + 4, py(q[1]) + 4, color);
  });
  return c;
}
