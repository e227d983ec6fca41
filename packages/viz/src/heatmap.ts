/**
 * Per-patch maps (norms, attention) drawn over images: upsampling a [rows, cols] grid to pixels,
 * colouring, blending onto the input image, and a labelled colour bar.
 *
 * Upsampling: 'nearest' (the default for token maps: each patch token is one flat square, so single
 * high-norm tokens stay visible as such) or 'bilinear' (pixel-centre aligned, like
 * `F.interpolate(..., mode='bilinear', align_corners=False)`; smoother, for presentation).
 */
import { BLACK, Canvas, LABEL_SCALE, textHeight, textWidth, WHITE } from './canvas.js';
import { applyColormap, colormap, type ColormapName } from './colormap.js';

export type Interpolation = 'nearest' | 'bilinear';

/** Resize a row-major [rows, cols] map to [height, width]. */
export function upsampleMap(
  map: ArrayLike<number>,
  rows: number,
  cols: number,
  height: number,
  width: number,
  mode: Interpolation = 'nearest',
): Float32Array {
  if (map.length !== rows * cols) throw new Error(`upsampleMap: ${map.length} values do not fill a ${rows}x${cols} grid`);
  const out = new Float32Array(height * width);
  for (let y = 0; y < height; y++) {
    const fy = ((y + 0.5) * rows) / height - 0.5;
    for (let x = 0; x < width; x++) {
      const fx = ((x + 0.5) * cols) / width - 0.5;
      if (mode === 'nearest') {
        const r = Math.min(rows - 1, Math.max(0, Math.round(fy)));
        const c = Math.min(cols - 1, Math.max(0, Math.round(fx)));
        out[y * width + x] = map[r * cols + c];
        continue;
      }
      const y0 = Math.max(0, Math.min(rows - 1, Math.floor(fy)));
      const x0 = Math.max(0, Math.min(cols - 1, Math.floor(fx)));
      const y1 = Math.min(rows - 1, y0 + 1);
      const x1 = Math.min(cols - 1, x0 + 1);
      const wy = Math.max(0, Math.min(1, fy - y0));
      const wx = Math.max(0, Math.min(1, fx - x0));
      const top = map[y0 * cols + x0] * (1 - wx) + map[y0 * cols + x1] * wx;
      const bottom = map[y1 * cols + x0] * (1 - wx) + map[y1 * cols + x1] * wx;
      out[y * width + x] = top * (1 - wy) + bottom * wy;
    }
  }
  return out;
}

export interface HeatmapOptions {
  cmap?: ColormapName;
  /** Value range of the colours; defaults to the map's min and max. */
  min?: number;
  max?: number;
  interpolation?: Interpolation;
}

/** Minimum and maximum of finite values. */
export function range(values: ArrayLike<number>): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < values.length; i++) {
    if (values[i] < lo) lo = values[i];
    if (values[i] > hi) hi = values[i];
  }
  return [lo, hi];
}

/** A coloured heatmap of a [rows, cols] map at width x height pixels. */
export function heatmap(map: ArrayLike<number>, grid: [number, number], width: number, height: number, opts: HeatmapOptions = {}): Canvas {
  const [lo, hi] = range(map);
  const up = upsampleMap(map, grid[0], grid[1], height, width, opts.interpolation ?? 'nearest');
  return Canvas.fromRgb(applyColormap(up, opts.cmap ?? 'viridis', opts.min ?? lo, opts.max ?? hi), width, height);
}

/** `base` blended with `top`: out = (1 - alpha) * base + alpha * top. Same sizes. */
export function blend(base: Canvas, top: Canvas, alpha: number): Canvas {
  if (base.width !== top.width || base.height !== top.height) {
    throw new Error(`blend: sizes differ (${base.width}x${base.height} vs ${top.width}x${top.height})`);
  }
  const out = new Canvas(base.width, base.height);
  for (let i = 0; i < out.data.length; i++) out.data[i] = Math.round((1 - alpha) * base.data[i] + alpha * top.data[i]);
  return out;
}

/** Format a number in at most ~6 characters for tick labels. */
export function formatNumber(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1).replace('e+', 'E').replace('e', 'E');
  if (a >= 100) return String(Math.round(v));
  return String(Number(v.toPrecision(3)));
}

/**
 * Labels for several values, each in as few digits as keep them apart (8 / 7.995 / 7.99 rather than
 * 8 / 7.99 / 7.99); equal values get equal labels.
 */
export function formatDistinct(values: number[]): string[] {
  const distinct = new Set(values).size;
  let labels = values.map(formatNumber);
  for (let p = 4; p <= 8 && new Set(labels).size < distinct; p++) {
    labels = values.map((v) => {
      const a = Math.abs(v);
      if (v === 0) return '0';
      if (a >= 1e5 || a < 1e-3)
        return v
          .toExponential(p - 1)
          .replace('e+', 'E')
          .replace('e', 'E');
      return String(Number(v.toPrecision(p)));
    });
  }
  return labels;
}

/**
 * A vertical colour bar `height` tall for values in [min, max], with labels at the ends and middle and,
 * above it, `label`: the quantity and its units (e.g. "L2 NORM", "ATTENTION WEIGHT"). Recorded in the
 * canvas's info.colorBars.
 */
export function colorBar(min: number, max: number, height: number, cmap: ColormapName = 'viridis', label = ''): Canvas {
  const s = LABEL_SCALE;
  const labels = formatDistinct([max, (min + max) / 2, min]);
  const labelW = Math.max(...labels.map((l) => textWidth(l, s)));
  const barW = 16;
  const pad = 5;
  // The label may be wider than bar + numbers: it is split at spaces into lines that fit the numbers' width.
  const words = label.split(' ').filter(Boolean);
  const width = Math.max(barW + pad * 3 + labelW, Math.max(0, ...words.map((w) => textWidth(w, s))) + pad * 2);
  const lines: string[] = [];
  for (const w of words) {
    const last = lines[lines.length - 1];
    if (last !== undefined && textWidth(`${last} ${w}`, s) <= width - pad * 2) lines[lines.length - 1] = `${last} ${w}`;
    else lines.push(w);
  }
  const lineH = textHeight(s) + 4;
  const top = lines.length > 0 ? lines.length * lineH + 6 : 4;
  const c = new Canvas(width, Math.max(height, top + 3 * textHeight(s) + 12));
  lines.forEach((l, i) => c.text(pad, 2 + i * lineH, l, BLACK, s));
  const lut = colormap(cmap);
  const h = c.height - top - 4;
  for (let y = 0; y < h; y++) {
    const k = Math.round((1 - y / Math.max(1, h - 1)) * 255) * 3;
    c.fillRect(pad, top + y, barW, 1, [lut[k], lut[k + 1], lut[k + 2]]);
  }
  c.strokeRect(pad, top, barW, h, BLACK);
  const x = pad * 2 + barW;
  c.text(x, top, labels[0], BLACK, s);
  c.text(x, top + h / 2 - textHeight(s) / 2, labels[1], BLACK, s);
  c.text(x, top + h - textHeight(s), labels[2], BLACK, s);
  c.info.colorBars = [{ label, min, max, cmap }];
  return c;
}

/** A canvas of `src` with `title` above it on a white strip (the label scale by default). */
export function titled(src: Canvas, title: string, scale = LABEL_SCALE): Canvas {
  const strip = textHeight(scale) + 6;
  const c = new Canvas(Math.max(src.width, textWidth(title, scale) + 6), src.height + strip, WHITE);
  c.text(3, 3, title, BLACK, scale);
  c.draw(src, 0, strip);
  return c;
}

/** Lay canvases out left to right (top-aligned) with `gap` pixels between them. */
export function hstack(items: Canvas[], gap = 8): Canvas {
  const w = items.reduce((s, c) => s + c.width, 0) + gap * (items.length - 1);
  const h = Math.max(...items.map((c) => c.height));
  const out = new Canvas(w, h);
  let x = 0;
  for (const c of items) {
    out.draw(c, x, 0);
    x += c.width + gap;
  }
  return out;
}

/** Lay canvases out top to bottom (left-aligned) with `gap` pixels between them. */
export function vstack(items: Canvas[], gap = 8): Canvas {
  const w = Math.max(...items.map((c) => c.width));
  const h = items.reduce((s, c) => s + c.height, 0) + gap * (items.length - 1);
  const out = new Canvas(w, h);
  let y = 0;
  for (const c of items) {
    out.draw(c, 0, y);
    y += c.height + gap;
  }
  return out;
}
