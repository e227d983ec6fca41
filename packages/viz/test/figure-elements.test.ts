/**
 * Figures people read (issue 23), checked on the figures' data (Canvas.info), not pixels: a colour bar
 * with its quantity and units beside every map, labels at the readable scale, legends that list exactly
 * the series drawn and sit clear of the plot, y axes that hold every value, small inputs shown large.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { analyzeTokens, type TokenData } from '@vitreg/registers';
import { LABEL_SCALE } from '../src/canvas.js';
import {
  attentionFigure,
  imageFromNormalized,
  layerFigure,
  MIN_PANEL,
  normFigure,
  normHistogram,
  pcaFigure,
  registerFigure,
} from '../src/figures.js';
import { formatDistinct } from '../src/heatmap.js';
import { axisRange, linePlot } from '../src/plot.js';
import { pcaColors } from '../src/pca.js';
import { renderReport } from '../src/report.js';

/** 8x8 patches, 4 registers, 6 heads; `outliers` planted patch norms; per-layer norms growing. */
function analysis(outliers: boolean) {
  const grid: [number, number] = [8, 8];
  const r = 4;
  const n = 1 + r + 64;
  const heads = 6;
  const norms = Float32Array.from({ length: n }, (_, i) => 40 + ((i * 7) % 11));
  if (outliers) [norms[1 + r + 9], norms[1 + r + 30]] = [480, 510];
  const attn = new Float32Array(heads * n * n);
  for (let h = 0; h < heads; h++)
    for (let q = 0; q < n; q++) {
      let sum = 0;
      for (let k = 0; k < n; k++) sum += attn[(h * n + q) * n + k] = 1 + ((q * 3 + k * (h + 2)) % 7);
      for (let k = 0; k < n; k++) attn[(h * n + q) * n + k] /= sum;
    }
  const data: TokenData = {
    grid,
    numRegisters: r,
    dim: 4,
    prenormNorms: norms.map((x) => x * 2),
    postnormNorms: norms,
    layerNorms: [0, 1, 2, 3, 4, 5].map((l) => norms.map((x, i) => (l < 3 ? 10 + l * 5 + (i % 5) : x))),
    embeddings: Float32Array.from({ length: 64 * 4 }, (_, i) => Math.sin(i)),
    attention: { heads, data: attn },
  };
  return analyzeTokens(data);
}

const image = imageFromNormalized(
  Float32Array.from({ length: 64 * 64 * 3 }, (_, i) => Math.sin(i / 50)),
  64,
  64,
);

test('every map has a colour bar naming its quantity, and every figure labels at the readable scale', () => {
  const a = analysis(true);
  const norms = normFigure(image, a);
  assert.deepEqual(
    norms.info.colorBars!.map((b) => [b.label, b.min, b.max]),
    [['POSTNORM L2 NORM', 40, 510]],
  );
  const attention = attentionFigure(image, a);
  assert.deepEqual(
    attention.info.colorBars!.map((b) => b.label),
    ['CLS ATTENTION WEIGHT'],
  );
  const heads = a.cls!.heads.flatMap((m) => [...m]);
  assert.equal(attention.info.colorBars![0]!.max, Math.max(...a.cls!.map, ...heads), 'one scale for the mean and every head');
  const registers = registerFigure(image, a);
  assert.deepEqual(
    registers.info.colorBars!.map((b) => b.label),
    ['REGISTER ATTENTION WEIGHT', 'REGISTER ATTENTION WEIGHT', 'REGISTER ATTENTION WEIGHT', 'REGISTER ATTENTION WEIGHT'],
    'one bar per register',
  );
  const figures = {
    norms,
    attention,
    registers,
    pca: pcaFigure(image, a.grid, pcaColors([a.norms.patches.postnorm], 1).colors[0]!),
    histogram: normHistogram(a),
    layers: layerFigure(a),
  };
  for (const [name, f] of Object.entries(figures)) assert.equal(f.info.textScale, LABEL_SCALE, `${name}: smallest text`);
  // A 64 px input is shown at MIN_PANEL or more (whole-pixel upscaling), not at 64 px.
  const panel = norms.info.panels!.input!;
  assert.equal(panel.scale, Math.ceil(MIN_PANEL / 64));
  assert.ok(panel.box[2] >= MIN_PANEL && norms.height >= MIN_PANEL, `${norms.width}x${norms.height}`);
});

test('layer plot: the legend lists exactly the series drawn, clear of the plot, and the y axis holds every value', () => {
  for (const outliers of [false, true]) {
    const a = analysis(outliers);
    const f = layerFigure(a);
    const drawn = outliers ? ['NORMAL MEAN', 'OUTLIER MEAN', 'MAX'] : ['NORMAL MEAN', 'MAX'];
    assert.deepEqual(f.info.series, drawn, 'a series without values is not drawn');
    assert.deepEqual(f.info.legend!.labels, drawn, 'the legend lists the drawn series only');
    const [px, py, pw, ph] = f.info.plotBox!;
    const [lx, ly, lw, lh] = f.info.legend!.box;
    const overlaps = lx < px + pw && px < lx + lw && ly < py + ph && py < ly + lh;
    assert.ok(!overlaps, `legend ${f.info.legend!.box} clear of the plot ${f.info.plotBox}`);
    assert.ok(lx + lw <= f.width, 'legend inside the figure');
    const values = a.layers!.flatMap((l) => [l.normalMean, l.outlierMean, l.max]).filter((v): v is number => v !== null && v > 0);
    const { min, max, ticks } = f.info.yAxis!;
    assert.ok(
      min <= Math.min(...values) && max >= Math.max(...values),
      `axis [${min}, ${max}] holds [${Math.min(...values)}, ${Math.max(...values)}]`,
    );
    assert.ok(ticks[0]! <= Math.min(...values) && ticks[ticks.length - 1]! >= Math.max(...values), `ticks ${ticks} label both ends`);
  }
  // A plain series list: a series of nulls is dropped, a linear axis runs to the ticks around the data.
  const p = linePlot({
    series: [
      { label: 'A', values: [3, 7, 12.5] },
      { label: 'EMPTY', values: [null, null, null] },
    ],
  });
  assert.deepEqual(p.info.legend!.labels, ['A']);
  assert.deepEqual([p.info.yAxis!.min, p.info.yAxis!.max], [2, 14]);
  assert.deepEqual(axisRange(Math.log10(11), Math.log10(480), true).ticks, [10, 20, 50, 100, 200, 500]);
  // Both ends of a linear axis are labelled ticks, at one step.
  assert.deepEqual(axisRange(9.71, 10.7, false), { lo: 9.6, hi: 10.8, ticks: [9.6, 9.8, 10, 10.2, 10.4, 10.6, 10.8] });
  // Under 0.6 of a decade a log axis takes linear steps: norms from 60 to 101 (the layers plot of a model with
  // outliers, seen in a rendered report) run to 110, not to a tick at 200 over an empty upper half.
  const narrow = axisRange(Math.log10(60), Math.log10(101), true);
  assert.deepEqual(narrow.ticks, [60, 70, 80, 90, 100, 110]);
  assert.ok(Math.abs(10 ** narrow.hi - 110) < 1e-9 && Math.abs(10 ** narrow.lo - 60) < 1e-9);
  const layers = linePlot({
    series: [
      { label: 'MAX', values: [94, 101] },
      { label: 'MEAN', values: [60, 66] },
    ],
    logY: true,
  });
  assert.deepEqual(layers.info.yAxis!.ticks, [60, 70, 80, 90, 100, 110]);
});

test('report: image names stay on one line and the summary table scrolls instead of squeezing them', () => {
  const html = renderReport({
    title: 't',
    models: [{ label: 'A', weights: 'a' }],
    images: [{ name: 'shape-0-circle', source: 's', input: 'x/input.png', results: [{ figures: {}, numbers: { outliers: 0 } }] }],
  });
  assert.match(html, /td:first-child \{ white-space: nowrap; \}/);
  assert.match(html, /<div class="wide"><table>/);
  // Figures shrink smoothly (labels stay legible); only the small input thumbnail keeps its pixels sharp.
  assert.match(html, /\} img \{ max-width: 100%; \}/);
  assert.equal(html.match(/image-rendering: pixelated/g)?.length, 1);
  assert.match(html, /figure\.input img \{ min-width: 192px; image-rendering: pixelated; \}/);
});

test('labels of close values stay apart (a colour bar over 7.992..8.004, ticks of a narrow axis)', () => {
  assert.deepEqual(formatDistinct([8.004, 7.998, 7.992]), ['8.004', '7.998', '7.992']);
  assert.deepEqual(formatDistinct([10, 20, 50]), ['10', '20', '50']);
  assert.deepEqual(formatDistinct([0.001, 0.0015]), ['0.001', '0.0015']);
});
