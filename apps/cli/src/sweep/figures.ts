/**
 * The figures of a collected sweep, drawn with @vitreg/viz's canvas: per measurement, the metric against
 * the register count (Fig. 8's shape: one line per model, the seeds' mean with +-1 standard deviation
 * error bars, a title, axis labels with units and a legend); the patch-norm histograms of the cells side
 * by side (one panel per model and register count, the outlier threshold marked); and report.html with
 * both, the table, and the missing cells named. Written to <out>/figures/ and <out>/report.html.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ensureDir, writeFileAtomic, writeJsonAtomic } from '@vitreg/core';
import { axisRange, Canvas, formatDistinct, histogramPlot, hstack, LABEL_SCALE, savePng, textWidth, titled, vstack } from '@vitreg/viz';
import type { Collected, SeriesData } from './collect.js';
import type { Cell } from './cells.js';
import type { SweepSpec } from './spec.js';

type Rgb = readonly [number, number, number];
const COLORS: Rgb[] = [
  [31, 119, 180],
  [255, 127, 14],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
  [140, 86, 75],
];
const BLACK: Rgb = [0, 0, 0];
const S = LABEL_SCALE;
const TH = 7 * S;

/** The unit of a measurement, for its axis label. */
export function unitOf(metric: string): string {
  if (/(accuracy|top1|corloc|miou|delta1|fraction)$/.test(metric)) return 'fraction, 0-1';
  if (/rmse$/.test(metric)) return 'm';
  if (/abs_rel$/.test(metric)) return 'relative';
  if (/norm|threshold$/.test(metric)) return 'L2 norm';
  if (/loss$/.test(metric)) return 'nats';
  if (/distance$/.test(metric)) return 'patches';
  if (/(mse|l2)$/.test(metric)) return 'normalised pixels';
  if (/steps$/.test(metric)) return 'steps';
  return 'value';
}

/** An axis path as a label: "model.num_register_tokens" -> "REGISTERS (TOKENS)". */
export function axisLabel(path: string): string {
  if (path === 'model.num_register_tokens') return 'REGISTERS (TOKENS)';
  return path.replace(/_/g, ' ').toUpperCase();
}

const clean = (s: string) => s.replace(/_/g, ' ');

/**
 * One metric against x: series drawn as lines through the means, +-std error bars with caps, x at evenly
 * spaced positions of the distinct x values (0, 1, 2, 4, 8, 16 as in the paper), a legend below.
 */
export function metricPlot(
  metric: string,
  series: SeriesData[],
  xPath: string,
  opts: { width?: number; height?: number; missing?: number } = {},
): Canvas {
  const width = opts.width ?? 560;
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  const lows = series.flatMap((s) => s.points.map((p) => p.mean - p.std));
  const highs = series.flatMap((s) => s.points.map((p) => p.mean + p.std));
  // A fraction's axis stays within [0, 1] (error bars are clipped at the frame).
  const frac = unitOf(metric).startsWith('fraction');
  const lo = lows.length ? Math.min(...lows) : 0;
  const hi = highs.length ? Math.max(...highs) : 1;
  const axis = axisRange(frac ? Math.max(0, lo) : lo, frac ? Math.min(1, hi) : hi, false);
  const tickLabels = formatDistinct(axis.ticks);
  const rowH = TH + 8;
  const legendH = series.length * rowH + 4;
  const height = (opts.height ?? 340) + legendH;
  const c = new Canvas(width, height);
  const title = `${clean(metric).toUpperCase()} VS ${axisLabel(xPath)}${opts.missing ? ` (${opts.missing} CELLS MISSING)` : ''}`;
  c.text(Math.max(4, (width - textWidth(title, S)) / 2), 6, title, BLACK, S);
  const yLabel = `${clean(metric).toUpperCase()} (${unitOf(metric).toUpperCase()})`;
  c.text(4, 6 + TH + 8, yLabel, BLACK, S);
  const x0 = Math.max(48, ...tickLabels.map((l) => textWidth(l, S) + 14));
  const y0 = 6 + 2 * TH + 26;
  const w = width - x0 - 20;
  const h = height - y0 - legendH - 2 * TH - 26;
  c.strokeRect(x0 - 1, y0 - 1, w + 2, h + 2, BLACK);
  c.info.plotBox = [x0, y0, w, h];
  const px = (x: number) => x0 + (xs.length > 1 ? (xs.indexOf(x) / (xs.length - 1)) * (w - 40) + 20 : w / 2);
  const py = (v: number) => y0 + h - 1 - ((v - axis.lo) / (axis.hi - axis.lo || 1)) * (h - 1);
  axis.ticks.forEach((t, k) => {
    const y = py(t);
    c.line(x0 - 6, y, x0 - 1, y, BLACK);
    c.line(x0, y, x0 + w - 1, y, [230, 230, 230]);
    c.text(x0 - 9 - textWidth(tickLabels[k]!, S), y - TH / 2, tickLabels[k]!, BLACK, S);
  });
  for (const x of xs) {
    c.line(px(x), y0 + h, px(x), y0 + h + 5, BLACK);
    c.text(px(x) - textWidth(String(x), S) / 2, y0 + h + 9, String(x), BLACK, S);
  }
  const xl = axisLabel(xPath);
  c.text(x0 + (w - textWidth(xl, S)) / 2, y0 + h + TH + 16, xl, BLACK, S);
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length]!;
    let prev: [number, number] | null = null;
    for (const p of s.points) {
      const at: [number, number] = [px(p.x), py(p.mean)];
      if (prev) c.line(prev[0], prev[1], at[0], at[1], color, 2);
      if (p.n > 1) {
        const clip = (y: number) => Math.min(y0 + h - 1, Math.max(y0, y));
        const [bLo, bHi] = [clip(py(p.mean - p.std)), clip(py(p.mean + p.std))];
        c.line(at[0], bLo, at[0], bHi, color, 1);
        c.line(at[0] - 4, bLo, at[0] + 4, bLo, color, 1);
        c.line(at[0] - 4, bHi, at[0] + 4, bHi, color, 1);
      }
      c.fillRect(at[0] - 3, at[1] - 3, 7, 7, color);
      prev = at;
    }
  });
  const ly0 = height - legendH;
  const repeats = series.some((s) => s.points.some((p) => p.n > 1));
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length]!;
    const y = ly0 + k * rowH;
    c.fillRect(8, y + TH / 2 - 1, 20, 4, color);
    c.text(34, y, `${clean(s.label).toUpperCase()}${repeats ? ' (MEAN +- STD OVER SEEDS)' : ''}`, color, S);
  });
  c.info.series = series.map((s) => s.label);
  c.info.legend = { labels: series.map((s) => s.label), box: [8, ly0, width - 16, legendH] };
  c.info.yAxis = { min: axis.lo, max: axis.hi, ticks: axis.ticks, log: false };
  return c;
}

/** A grey panel saying a cell is missing (not done), in the histogram grid. */
function missingPanel(title: string, width: number, height: number): Canvas {
  const c = new Canvas(width, height, [245, 245, 245]);
  c.text(8, 8, title, BLACK, S);
  const t = 'MISSING (NOT DONE)';
  c.text((width - textWidth(t, S)) / 2, height / 2, t, [200, 40, 40], S);
  return c;
}

export interface FigureFiles {
  plots: Record<string, string>;
  histograms: string | null;
  data: string;
  html: string;
}

/** Draws every figure of `c` and the HTML page; returns their paths. */
export async function writeFigures(spec: SweepSpec, cells: Cell[], c: Collected): Promise<FigureFiles> {
  const dir = join(spec.out, 'figures');
  await ensureDir(dir);
  const fig = c.figure;
  const plots: Record<string, string> = {};
  for (const [metric, series] of Object.entries(fig.metrics)) {
    if (!series.some((s) => s.points.length) || metric === 'train.steps') continue;
    const file = join(dir, `${metric.replace(/[^A-Za-z0-9.]+/g, '_')}.png`);
    await savePng(file, metricPlot(metric, series, fig.x, { missing: fig.missing.length }));
    plots[metric] = file;
  }
  // Histograms: one panel per model and x value, from the first seed's cell.
  let histograms: string | null = null;
  if (spec.evaluate.outliers) {
    const firstSeed = new Map<string, Cell>();
    for (const cell of cells) {
      const key = spec.axes
        .map(([k]) => k)
        .filter((k) => !fig.repeats.includes(k))
        .map((k) => `${k}=${JSON.stringify(cell.axes[k])}`)
        .join(',');
      if (!firstSeed.has(key)) firstSeed.set(key, cell);
    }
    const panels: Canvas[] = [];
    for (const cell of firstSeed.values()) {
      const title = Object.entries(cell.axes)
        .filter(([k]) => !fig.repeats.includes(k))
        .map(([k, v]) => `${k === 'model.num_register_tokens' ? 'REG' : (k.split('.').pop() ?? k).replace(/_/g, ' ').toUpperCase()} ${v}`)
        .join(', ');
      const normsFile = join(cell.dir, 'eval', 'outliers', 'norms.json');
      const done = !fig.missing.includes(cell.name);
      if (!done || !existsSync(normsFile)) {
        panels.push(missingPanel(title, 360, 260));
        continue;
      }
      const n = JSON.parse(readFileSync(normsFile, 'utf8')) as { values: number[]; threshold: number | null };
      panels.push(
        titled(
          histogramPlot({
            values: n.values,
            width: 360,
            height: 240,
            title: '',
            xLabel: 'PATCH NORM (L2)',
            threshold: n.threshold,
            bins: 30,
          }),
          title,
        ),
      );
    }
    const rows: Canvas[] = [];
    for (let i = 0; i < panels.length; i += 4) rows.push(hstack(panels.slice(i, i + 4), 12));
    const line1 = `PATCH NORM HISTOGRAMS PER CELL (${fig.repeats.length ? 'FIRST SEED' : 'ONE CELL EACH'})`;
    const line2 = 'BARS: PATCH COUNT PER NORM BIN (LOG SCALE), RED DASHES: OUTLIER THRESHOLD T';
    const head = new Canvas(Math.max(...rows.map((r) => r.width), textWidth(line1, S + 1) + 12, textWidth(line2, S) + 12), TH * 2 + 20);
    head.text(6, 4, line1, BLACK, S + 1);
    head.text(6, TH + 14, line2, [90, 90, 90], S);
    histograms = join(dir, 'norm-histograms.png');
    await savePng(histograms, vstack([head, ...rows], 10));
  }
  const data = join(dir, 'figures.json');
  await writeJsonAtomic(data, { ...fig, files: { plots, histograms } });
  const html = join(spec.out, 'report.html');
  await writeFileAtomic(html, renderHtml(spec, c, plots, histograms));
  return { plots, histograms, data, html };
}

const esc = (s: string) => s.replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch]!);

function renderHtml(spec: SweepSpec, c: Collected, plots: Record<string, string>, histograms: string | null): string {
  const rel = (f: string) => esc(relative(spec.out, f));
  const fmt = (v: unknown) =>
    typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : v === null || v === undefined ? '' : esc(String(v));
  const shown = c.columns.filter((k) => k !== 'weights_sha256');
  const head = `<tr>${shown.map((k) => `<th>${esc(k)}</th>`).join('')}</tr>`;
  const body = c.rows
    .map((r) => `<tr${r.status !== 'done' ? ' class="missing"' : ''}>${shown.map((k) => `<td>${fmt(r[k])}</td>`).join('')}</tr>`)
    .join('\n');
  const missing = c.missing.length
    ? `<p class="warn">Incomplete sweep: ${c.missing.length} of ${c.rows.length} cells missing (${c.missing.map((m) => `${esc(m.name)}: ${m.state}`).join(', ')}). Collected with --partial.</p>`
    : `<p>All ${c.rows.length} cells done.</p>`;
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>vitreg sweep ${esc(spec.name)}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
tr.missing td{background:#fee;color:#a00}.warn{color:#a00;font-weight:bold}img{max-width:100%;margin:6px 0}</style></head>
<body><h1>Sweep ${esc(spec.name)}</h1>
<p>Sweep file: ${esc(spec.file)}; axes: ${spec.axes.map(([k, v]) => `${esc(k)} = ${esc(JSON.stringify(v))}`).join('; ')}; ${c.rows.length} cells.</p>
${missing}
<h2>Measurements against ${esc(c.figure.x)}</h2>
${Object.entries(plots)
  .map(
    ([m, f]) =>
      `<figure><img src="${rel(f)}" alt="${esc(m)}"><figcaption>${esc(m)}: mean over ${esc(c.figure.repeats.join(', ') || 'one cell')}, error bars +-1 sample standard deviation</figcaption></figure>`,
  )
  .join('\n')}
${histograms ? `<h2>Patch norm histograms</h2>\n<img src="${rel(histograms)}" alt="norm histograms">` : ''}
<h2>Table</h2>
<p>Also in results.csv and results.jsonl.</p>
<table>${head}
${body}</table>
</body></html>
`;
}
