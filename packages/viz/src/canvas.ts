/**
 * A tiny RGB raster: filled rectangles, lines, pasted images and text in a built-in 5x7 bitmap font
 * (digits, upper-case letters, common punctuation; lower case is drawn as upper case). Enough for
 * axes, ticks, labels and titles without a font library. Each canvas also carries `info`, what a figure
 * shows (colour bars, legend, series, axis ranges, the smallest text), so tests read figures as data.
 */

export type Rgb = readonly [number, number, number];

export const WHITE: Rgb = [255, 255, 255];
export const BLACK: Rgb = [0, 0, 0];
export const GREY: Rgb = [160, 160, 160];
export const RED: Rgb = [220, 40, 40];

/** Glyph rows, 7 per character, each a 5-bit row (bit 4 = leftmost pixel), as 14 hex digits. */
const GLYPHS: Record<string, string> = {
  '0': '0e11131519110e',
  '1': '040c040404040e',
  '2': '0e11010204081f',
  '3': '1f02040201110e',
  '4': '02060a121f0202',
  '5': '1f101e0101110e',
  '6': '0608101e11110e',
  '7': '1f010204080808',
  '8': '0e11110e11110e',
  '9': '0e11110f01020c',
  A: '0e11111f111111',
  B: '1e11111e11111e',
  C: '0e11101010110e',
  D: '1c12111111121c',
  E: '1f10101e10101f',
  F: '1f10101e101010',
  G: '0e11101711110f',
  H: '1111111f111111',
  I: '0e04040404040e',
  J: '0702020202120c',
  K: '11121418141211',
  L: '1010101010101f',
  M: '111b1515111111',
  N: '11111915131111',
  O: '0e11111111110e',
  P: '1e11111e101010',
  Q: '0e11111115120d',
  R: '1e11111e141211',
  S: '0f10100e01011e',
  T: '1f040404040404',
  U: '1111111111110e',
  V: '11111111110a04',
  W: '1111111515150a',
  X: '11110a040a1111',
  Y: '11110a04040404',
  Z: '1f01020408101f',
  '.': '00000000000c0c',
  ',': '000000000c0408',
  '-': '0000001f000000',
  '+': '0004041f040400',
  ':': '000c0c000c0c00',
  '%': '18190204081303',
  '/': '00010204081000',
  '(': '02040808080402',
  ')': '08040202020408',
  '=': '00001f001f0000',
  _: '0000000000001f',
  '>': '08040201020408',
  '<': '02040810080402',
  '#': '0a0a1f0a1f0a0a',
  '?': '0e110102040004',
  ' ': '00000000000000',
};

const GLYPH_W = 5;
const GLYPH_H = 7;

/** The text scale of figure labels: the 5x7 font at 2x (10x14 px), readable when a report shrinks a figure. */
export const LABEL_SCALE = 2;

/** What a figure shows, recorded while it is drawn (tests check figures through this, not pixels). */
export interface FigureInfo {
  /** Every colour bar: the quantity it maps (with its units), its value range and colour map. */
  colorBars?: { label: string; min: number; max: number; cmap: string }[];
  /** The series drawn (at least one point each), in order. */
  series?: string[];
  /** The legend's entries and its box [x, y, width, height] in canvas pixels. */
  legend?: { labels: string[]; box: [number, number, number, number] };
  /** The plot rectangle [x, y, width, height]: every data point is drawn inside it. */
  plotBox?: [number, number, number, number];
  /** The y axis: the range shown (data units), the labelled ticks, log or linear. */
  yAxis?: { min: number; max: number; ticks: number[]; log: boolean };
  /** Named panels [x, y, width, height] and the scale of their pixels to the input's. */
  panels?: Record<string, { box: [number, number, number, number]; scale: number }>;
  /** The smallest text scale drawn (1: the bare 5x7 font). */
  textScale?: number;
}

/** `into` with `from`'s info added: lists concatenated, panels shifted by (dx, dy), the smaller text scale. */
export function mergeInfo(into: FigureInfo, from: FigureInfo, dx = 0, dy = 0): void {
  if (from.colorBars) into.colorBars = [...(into.colorBars ?? []), ...from.colorBars];
  if (from.series) into.series = [...(into.series ?? []), ...from.series];
  const shift = (b: [number, number, number, number]): [number, number, number, number] => [b[0] + dx, b[1] + dy, b[2], b[3]];
  if (from.legend) into.legend = { labels: from.legend.labels, box: shift(from.legend.box) };
  if (from.plotBox) into.plotBox = shift(from.plotBox);
  if (from.yAxis) into.yAxis = from.yAxis;
  for (const [k, p] of Object.entries(from.panels ?? {})) (into.panels ??= {})[k] = { box: shift(p.box), scale: p.scale };
  if (from.textScale !== undefined) into.textScale = Math.min(into.textScale ?? Infinity, from.textScale);
}

function glyph(ch: string): string {
  return GLYPHS[ch] ?? GLYPHS[ch.toUpperCase()] ?? GLYPHS['?'];
}

export class Canvas {
  readonly data: Uint8Array;
  /** What the figure on this canvas shows (see FigureInfo). */
  readonly info: FigureInfo = {};

  constructor(
    readonly width: number,
    readonly height: number,
    background: Rgb = WHITE,
  ) {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
      throw new Error(`Canvas: size must be positive integers, got ${width}x${height}`);
    }
    this.data = new Uint8Array(width * height * 3);
    this.fillRect(0, 0, width, height, background);
  }

  /** A canvas holding a copy of RGB HWC bytes. */
  static fromRgb(rgb: Uint8Array, width: number, height: number): Canvas {
    if (rgb.length !== width * height * 3) throw new Error(`Canvas.fromRgb: ${rgb.length} bytes is not ${width}x${height}x3`);
    const c = new Canvas(width, height);
    c.data.set(rgb);
    return c;
  }

  setPixel(x: number, y: number, c: Rgb): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const i = (y * this.width + x) * 3;
    this.data[i] = c[0];
    this.data[i + 1] = c[1];
    this.data[i + 2] = c[2];
  }

  fillRect(x: number, y: number, w: number, h: number, c: Rgb): void {
    const x0 = Math.max(0, Math.round(x));
    const y0 = Math.max(0, Math.round(y));
    const x1 = Math.min(this.width, Math.round(x + w));
    const y1 = Math.min(this.height, Math.round(y + h));
    for (let yy = y0; yy < y1; yy++) {
      for (let xx = x0; xx < x1; xx++) {
        const i = (yy * this.width + xx) * 3;
        this.data[i] = c[0];
        this.data[i + 1] = c[1];
        this.data[i + 2] = c[2];
      }
    }
  }

  /** Outline of a rectangle, `t` pixels thick, drawn inside it. */
  strokeRect(x: number, y: number, w: number, h: number, c: Rgb, t = 1): void {
    this.fillRect(x, y, w, t, c);
    this.fillRect(x, y + h - t, w, t, c);
    this.fillRect(x, y, t, h, c);
    this.fillRect(x + w - t, y, t, h, c);
  }

  /** A straight line (DDA), `width` pixels wide; `dash` > 0 draws dashes of that length. */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, width = 1, dash = 0): void {
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    const off = Math.floor((width - 1) / 2);
    for (let s = 0; s <= steps; s++) {
      if (dash > 0 && Math.floor(s / dash) % 2 === 1) continue;
      const x = Math.round(x0 + ((x1 - x0) * s) / steps) - off;
      const y = Math.round(y0 + ((y1 - y0) * s) / steps) - off;
      this.fillRect(x, y, width, width, c);
    }
  }

  /** Paste another canvas with its top-left corner at (x, y), clipped to this canvas; its info comes along. */
  draw(src: Canvas, x: number, y: number): void {
    mergeInfo(this.info, src.info, x, y);
    for (let yy = 0; yy < src.height; yy++) {
      const ty = y + yy;
      if (ty < 0 || ty >= this.height) continue;
      for (let xx = 0; xx < src.width; xx++) {
        const tx = x + xx;
        if (tx < 0 || tx >= this.width) continue;
        const s = (yy * src.width + xx) * 3;
        const d = (ty * this.width + tx) * 3;
        this.data[d] = src.data[s];
        this.data[d + 1] = src.data[s + 1];
        this.data[d + 2] = src.data[s + 2];
      }
    }
  }

  /** This canvas resized to w x h by nearest neighbour (pixels only, not info). */
  resized(w: number, h: number): Canvas {
    const out = new Canvas(w, h);
    for (let y = 0; y < h; y++) {
      const sy = Math.min(this.height - 1, Math.floor(((y + 0.5) * this.height) / h));
      for (let x = 0; x < w; x++) {
        const sx = Math.min(this.width - 1, Math.floor(((x + 0.5) * this.width) / w));
        const s = (sy * this.width + sx) * 3;
        const d = (y * w + x) * 3;
        out.data[d] = this.data[s];
        out.data[d + 1] = this.data[s + 1];
        out.data[d + 2] = this.data[s + 2];
      }
    }
    return out;
  }

  /** Draw text with its top-left corner at (x, y); each font pixel becomes scale x scale pixels. */
  text(x: number, y: number, s: string, c: Rgb = BLACK, scale = 1): void {
    if (s.trim()) this.info.textScale = Math.min(this.info.textScale ?? Infinity, scale);
    let cx = Math.round(x);
    for (const ch of s) {
      const g = glyph(ch);
      for (let row = 0; row < GLYPH_H; row++) {
        const bits = parseInt(g.slice(row * 2, row * 2 + 2), 16);
        for (let col = 0; col < GLYPH_W; col++) {
          if (bits & (1 << (GLYPH_W - 1 - col))) this.fillRect(cx + col * scale, Math.round(y) + row * scale, scale, scale, c);
        }
      }
      cx += (GLYPH_W + 1) * scale;
    }
  }
}

/** Width in pixels of `s` drawn at `scale`. */
export function textWidth(s: string, scale = 1): number {
  return s.length === 0 ? 0 : (s.length * (GLYPH_W + 1) - 1) * scale;
}

/** Height in pixels of one text line at `scale`. */
export function textHeight(scale = 1): number {
  return GLYPH_H * scale;
}
