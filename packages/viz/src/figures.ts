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

/**
 * Norm figure: the input with outlier patches outlined in red, the patch-norm heatmap overlaid on the
 * image, and the plain heatmap with a colour bar.
 */
export function normFigure(image: Canvas, a: TokenAnalysis, opts: FigureOptions = {}): Canvas {
  const [rows, cols] = a.grid;
  const norms = a.source === 'prenorm' ? a.norms.patches.prenorm : a.norms.patches.postnorm;
  const [lo, hi] = range(norms);
  const heat = heatmap(norms, a.grid, image.width, image.height, { cmap: 'inferno', min: lo, max: hi, interpolation: opts.interpolation });
  const marked = new Canvas(image.width, image.height);
  marked.draw(image, 0, 0);
  const ph = image.height / rows;
  const pw = image.width / cols;
  for (const [r, c] of a.outliers.positions)
    marked.strokeRect(Math.round(c * pw), Math.round(r * ph), Math.round(pw), Math.round(ph), RED, 2);
  const n = a.outliers.indices.length;
  return hstack([
    titled(marked, `INPUT, ${n} OUTLIER${n === 1 ? '' : 'S'}`),
    titled(blend(grey(image), heat, opts.alpha ?? 0.6), `${a.source.toUpperCase()} NORM`),
    titled(hstack([heat, colorBar(lo, hi, image.height, 'inferno', 'NORM')], 4), 'PATCH NORM'),
  ]);
}

/** A grid of labelled attention maps over a (shrunk) image: `cells[row][col]`. */
export function mapGrid(
  image: Canvas,
  grid: [number, number],
  cells: { label: string; map: Float32Array }[][],
  opts: FigureOptions & { cellSize?: number } = {},
): Canvas {
  const size = opts.cellSize ?? 160;
  const scale = size / Math.max(image.width, image.height);
  const w = Math.max(1, Math.round(image.width * scale));
  const h = Math.max(1, Math.round(image.height * scale));
  const base = grey(image.resized(w, h));
  return vstack(
    cells.map((row) =>
      hstack(
        row.map((cell) =>
          titled(
            blend(base, heatmap(cell.map, grid, w, h, { cmap: 'viridis', interpolation: opts.interpolation }), opts.alpha ?? 0.7),
            cell.label,
          ),
        ),
        4,
      ),
    ),
    4,
  );
}

/** CLS attention of the last block to the patches: mean over heads, then each head. */
export function attentionFigure(image: Canvas, a: TokenAnalysis, opts: FigureOptions = {}): Canvas {
  if (!a.cls) throw new Error('attentionFigure: the analysis has no attention (forward with attention: "last")');
  return mapGrid(
    image,
    a.grid,
    [[{ label: 'CLS MEAN', map: a.cls.map }, ...a.cls.heads.map((m, h) => ({ label: `HEAD ${h}`, map: m }))]],
    opts,
  );
}

/** Register attention to the patches: one row per register, mean over heads then each head. */
export function registerFigure(image: Canvas, a: TokenAnalysis, opts: FigureOptions = {}): Canvas {
  if (!a.cls) throw new Error('registerFigure: the analysis has no attention (forward with attention: "last")');
  if (a.registers.length === 0) throw new Error('registerFigure: the model has no register tokens');
  return mapGrid(
    image,
    a.grid,
    a.registers.map((r) => [{ label: `REG ${r.index} MEAN`, map: r.map }, ...r.heads.map((m, h) => ({ label: `HEAD ${h}`, map: m }))]),
    opts,
  );
}

/** The input next to its PCA colour map (per-patch colours from `pcaColors`, upsampled by nearest). */
export function pcaFigure(image: Canvas, grid: [number, number], colors: Uint8Array): Canvas {
  const [rows, cols] = grid;
  if (colors.length !== rows * cols * 3) throw new Error(`pcaFigure: ${colors.length} bytes are not ${rows}x${cols} RGB colours`);
  const map = new Canvas(image.width, image.height, BLACK);
  const idx = upsampleMap(
    Float32Array.from({ length: rows * cols }, (_, i) => i),
    rows,
    cols,
    image.height,
    image.width,
    'nearest',
  );
  for (let i = 0; i < idx.length; i++) for (let k = 0; k < 3; k++) map.data[i * 3 + k] = colors[idx[i] * 3 + k];
  return hstack([titled(image, 'INPUT'), titled(map, 'PCA (RGB = PC 1-3)')]);
}

/** Histogram of patch norms, log-scale counts, the outlier threshold marked. */
export function normHistogram(a: TokenAnalysis, title = 'PATCH NORMS'): Canvas {
  const norms = a.source === 'prenorm' ? a.norms.patches.prenorm : a.norms.patches.postnorm;
  return histogramPlot({ values: norms, threshold: a.outliers.threshold, title, xLabel: `${a.source.toUpperCase()} L2 NORM` });
}

/** Per-layer patch norms: mean of normal tokens, mean of the final outliers, and the maximum. */
export function layerFigure(a: TokenAnalysis, title = 'NORMS PER LAYER'): Canvas {
  if (!a.layers) throw new Error('layerFigure: the analysis has no per-layer norms (forward with layers: true)');
  const series = [
    { label: 'NORMAL MEAN', values: a.layers.map((l) => l.normalMean) },
    { label: 'OUTLIER MEAN', values: a.layers.map((l) => l.outlierMean) },
    { label: 'MAX', values: a.layers.map((l) => l.max) },
  ];
  return linePlot({ series, title, xLabel: 'BLOCK', yLabel: 'L2 NORM', logY: true });
}
