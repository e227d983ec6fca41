/**
 * The standard figures of a token analysis (see `analyzeTokens` in @vitreg/registers), each a Canvas:
 * norm map, CLS attention, register attention, PCA map, norm histogram and per-layer norm curves.
 * `imageFromNormalized` turns a model input back into displayable pixels.
 */
import { IMAGENET_MEAN, IMAGENET_STD } from '@vitreg/core';
import type { TokenAnalysis } from '@vitreg/registers';
import { BLACK, Canvas, RED } from './canvas.js';
import { blend, colorBar, heatmap, hstack, range, titled, upsampleMap, vstack, type Interpolation } from './heatmap.js';
import { histogramPlot, linePlot } from './plot.js';

/** Undo the ImageNet normalisation of an HWC float image: RGB bytes on a canvas. */
export function imageFromNormalized(data: ArrayLike<number>, height: number, width: number): Canvas {
  if (data.length !== height * width * 3) throw new Error(`imageFromNormalized: ${data.length} values are not ${height}x${width}x3`);
  const c = new Canvas(width, height);
  for (let i = 0; i < height * width; i++) {
    for (let k = 0; k < 3; k++) {
      const v = (data[i * 3 + k] * IMAGENET_STD[k] + IMAGENET_MEAN[k]) * 255;
      c.data[i * 3 + k] = Math.max(0, Math.min(255, Math.round(v)));
    }
  }
  return c;
}

/** Greyed copy of an image (so coloured overlays read well). */
function grey(img: Canvas): Canvas {
  const c = new Canvas(img.width, img.height);
  for (let i = 0; i < img.width * img.height; i++) {
    const g = Math.round(0.299 * img.data[i * 3] + 0.587 * img.data[i * 3 + 1] + 0.114 * img.data[i * 3 + 2]);
    c.data[i * 3] = c.data[i * 3 + 1] = c.data[i * 3 + 2] = g;
  }
  return c;
}

export interface FigureOptions {
  interpolation?: Interpolation;
  /** Overlay opacity of heatmaps on the image. Default 0.6. */
  alpha?: number;
}

/** Panels are shown at least this many pixels on their longer side (small inputs upscaled by whole pixels). */
export const MIN_PANEL = 224;

/** The whole-number factor that brings an image's longer side to MIN_PANEL or more (1 for large images). */
function panelScale(image: Canvas): number {
  return Math.max(1, Math.ceil(MIN_PANEL / Math.max(image.width, image.height)));
}

/** `image` upscaled by `k` (nearest: every input pixel a k x k square). */
function upscaled(image: Canvas, k: number): Canvas {
  return k === 1 ? image : image.resized(image.width * k, image.height * k);
}

/**
 * Norm figure: the input with outlier patches outlined in red, the patch-norm heatmap overlaid on the
 * image, and the plain heatmap with a colour bar of the norms. Small inputs are upscaled (MIN_PANEL).
 */
export function normFigure(image: Canvas, a: TokenAnalysis, opts: FigureOptions = {}): Canvas {
  const [rows, cols] = a.grid;
  const norms = a.source === 'prenorm' ? a.norms.patches.prenorm : a.norms.patches.postnorm;
  const [lo, hi] = range(norms);
  const k = panelScale(image);
  const big = upscaled(image, k);
  const heat = heatmap(norms, a.grid, big.width, big.height, { cmap: 'inferno', min: lo, max: hi, interpolation: opts.interpolation });
  const marked = new Canvas(big.width, big.height);
  marked.draw(big, 0, 0);
  const ph = big.height / rows;
  const pw = big.width / cols;
  for (const [r, c] of a.outliers.positions)
    marked.strokeRect(Math.round(c * pw), Math.round(r * ph), Math.round(pw), Math.round(ph), RED, Math.max(2, k));
  marked.info.panels = { input: { box: [0, 0, big.width, big.height], scale: k } };
  const n = a.outliers.indices.length;
  return hstack([
    titled(marked, `INPUT, ${n} OUTLIER${n === 1 ? '' : 'S'}`),
    titled(blend(grey(big), heat, opts.alpha ?? 0.6), `${a.source.toUpperCase()} NORM`),
    titled(hstack([heat, colorBar(lo, hi, big.height, 'inferno', `${a.source.toUpperCase()} L2 NORM`)], 4), 'PATCH NORM'),
  ]);
}

/**
 * A grid of labelled maps over a (resized) image: `cells[group]` is one group of maps on one colour scale
 * (the group's own minimum and maximum, so its maps compare), with a colour bar of `unit`, laid out
 * `columns` maps to a row.
 */
export function mapGrid(
  image: Canvas,
  grid: [number, number],
  cells: { label: string; map: Float32Array }[][],
  opts: FigureOptions & { cellSize?: number; columns?: number; unit?: string } = {},
): Canvas {
  const size = opts.cellSize ?? 160;
  const columns = opts.columns ?? 4;
  const scale = size / Math.max(image.width, image.height);
  const w = Math.max(1, Math.round(image.width * scale));
  const h = Math.max(1, Math.round(image.height * scale));
  const base = grey(image.resized(w, h));
  return vstack(
    cells.map((group) => {
      let lo = Infinity;
      let hi = -Infinity;
      for (const c of group) {
        const [a, b] = range(c.map);
        lo = Math.min(lo, a);
        hi = Math.max(hi, b);
      }
      const maps = group.map((cell) =>
        titled(
          blend(
            base,
            heatmap(cell.map, grid, w, h, { cmap: 'viridis', min: lo, max: hi, interpolation: opts.interpolation }),
            opts.alpha ?? 0.7,
          ),
          cell.label,
        ),
      );
      const lines: Canvas[] = [];
      for (let i = 0; i < maps.length; i += columns) lines.push(hstack(maps.slice(i, i + columns), 4));
      const body = vstack(lines, 4);
      return hstack([body, colorBar(lo, hi, Math.min(body.height, h + 40), 'viridis', opts.unit ?? 'VALUE')], 6);
    }),
    12,
  );
}

/** CLS attention of the last block to the patches: mean over heads, then each head, on one colour scale. */
export function attentionFigure(image: Canvas, a: TokenAnalysis, opts: FigureOptions = {}): Canvas {
  if (!a.cls) throw new Error('attentionFigure: the analysis has no attention (forward with attention: "last")');
  return mapGrid(image, a.grid, [[{ label: 'CLS MEAN', map: a.cls.map }, ...a.cls.heads.map((m, h) => ({ label: `HEAD ${h}`, map: m }))]], {
    unit: 'CLS ATTENTION WEIGHT',
    ...opts,
  });
}

/** Register attention to the patches: one group per register, mean over heads then each head. */
export function registerFigure(image: Canvas, a: TokenAnalysis, opts: FigureOptions = {}): Canvas {
  if (!a.cls) throw new Error('registerFigure: the analysis has no attention (forward with attention: "last")');
  if (a.registers.length === 0) throw new Error('registerFigure: the model has no register tokens');
  return mapGrid(
    image,
    a.grid,
    a.registers.map((r) => [{ label: `REG ${r.index} MEAN`, map: r.map }, ...r.heads.map((m, h) => ({ label: `HEAD ${h}`, map: m }))]),
    { unit: 'REGISTER ATTENTION WEIGHT', ...opts },
  );
}

/** The input next to its PCA colour map (per-patch colours from `pcaColors`, upsampled by nearest). */
export function pcaFigure(image: Canvas, grid: [number, number], colors: Uint8Array): Canvas {
  const [rows, cols] = grid;
  if (colors.length !== rows * cols * 3) throw new Error(`pcaFigure: ${colors.length} bytes are not ${rows}x${cols} RGB colours`);
  const big = upscaled(image, panelScale(image));
  const map = new Canvas(big.width, big.height, BLACK);
  const idx = upsampleMap(
    Float32Array.from({ length: rows * cols }, (_, i) => i),
    rows,
    cols,
    big.height,
    big.width,
    'nearest',
  );
  for (let i = 0; i < idx.length; i++) for (let k = 0; k < 3; k++) map.data[i * 3 + k] = colors[idx[i] * 3 + k];
  return hstack([titled(big, 'INPUT'), titled(map, 'PCA: RGB = PC 1-3')]);
}

/** Histogram of patch norms, log-scale counts, threshold as a red line. */
export function normHistogram(a: TokenAnalysis, title = 'PATCH NORMS'): Canvas {
  const norms = a.source === 'prenorm' ? a.norms.patches.prenorm : a.norms.patches.postnorm;
  return histogramPlot({ values: norms, threshold: a.outliers.threshold, title, xLabel: `${a.source.toUpperCase()} L2 NORM` });
}

/**
 * Per-layer patch norms: mean of normal tokens, mean of the final outliers (when there are outliers), and
 * the maximum, on a log axis that holds every value.
 */
export function layerFigure(a: TokenAnalysis, title = 'NORMS PER LAYER'): Canvas {
  if (!a.layers) throw new Error('layerFigure: the analysis has no per-layer norms (forward with layers: true)');
  const series = [
    { label: 'NORMAL MEAN', values: a.layers.map((l) => l.normalMean) },
    { label: 'OUTLIER MEAN', values: a.layers.map((l) => l.outlierMean) },
    { label: 'MAX', values: a.layers.map((l) => l.max) },
  ];
  return linePlot({ series, title, xLabel: 'BLOCK', yLabel: 'L2 NORM', logY: true });
}
