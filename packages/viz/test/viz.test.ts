import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { analyzeTokens, type TokenData } from '@vitreg/registers';
import {
  applyColormap,
  attentionFigure,
  Canvas,
  canvasToPng,
  colormap,
  fitPca,
  histogramPlot,
  imageFromNormalized,
  layerFigure,
  linePlot,
  niceTicks,
  normFigure,
  normHistogram,
  pcaColors,
  pcaFigure,
  projectPca,
  registerFigure,
  renderReport,
  reportNumbers,
  savePng,
  textWidth,
  upsampleMap,
} from '../src/index.js';
import { escapeHtml } from '../src/report.js';

/** Decode a PNG and check its size and that it is not one flat colour. */
async function checkPng(png: Buffer, width: number, height: number, what: string): Promise<void> {
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  assert.equal(info.width, width, `${what} width`);
  assert.equal(info.height, height, `${what} height`);
  const colours = new Set<number>();
  for (let i = 0; i < data.length; i += info.channels) colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  assert.ok(colours.size > 2, `${what}: only ${colours.size} colours`);
}

test('colormaps hit matplotlib anchors and interpolate monotonically in lightness', () => {
  const v = colormap('viridis');
  assert.deepEqual([...v.subarray(0, 3)], [68, 1, 84]); // #440154
  assert.deepEqual([...v.subarray(255 * 3)], [253, 231, 37]); // #fde725
  assert.deepEqual([...v.subarray(128 * 3, 129 * 3)], [33, 145, 140]); // #21918c
  const inf = colormap('inferno');
  assert.deepEqual([...inf.subarray(0, 3)], [0, 0, 4]);
  assert.deepEqual([...inf.subarray(255 * 3)], [252, 255, 164]);
  const c = applyColormap([0, 5, 10, -3, 99], 'viridis', 0, 10);
  assert.deepEqual([...c.subarray(0, 3)], [68, 1, 84]);
  assert.deepEqual([...c.subarray(9, 12)], [68, 1, 84]); // clamped below
  assert.deepEqual([...c.subarray(12, 15)], [253, 231, 37]); // clamped above
  assert.throws(() => colormap('jet' as 'viridis'), /unknown colormap "jet"/);
});

test('upsampleMap: nearest repeats patches, bilinear interpolates between centres', () => {
  const m = [0, 1, 2, 3]; // 2x2
  const near = upsampleMap(m, 2, 2, 4, 4, 'nearest');
  assert.deepEqual([...near], [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]);
  const bil = upsampleMap(m, 2, 2, 4, 4, 'bilinear');
  // Pixel-centre alignment (align_corners=False): outer pixels clamp, inner ones are 1/4 and 3/4 mixes.
  assert.deepEqual([...bil.subarray(0, 4)], [0, 0.25, 0.75, 1]);
  assert.equal(bil[5], 0.25 * 0.75 + 0.75 * 0.25 * 2 + 0.0625 * 3);
  assert.throws(() => upsampleMap([1, 2, 3], 2, 2, 4, 4), /3 values do not fill a 2x2 grid/);
});

test('canvas: text, lines and rectangles draw where asked', () => {
  const c = new Canvas(40, 12);
  c.text(1, 1, '10');
  const dark = (x: number, y: number) => c.data[(y * 40 + x) * 3] < 128;
  // '1' glyph: row 0 is 00100 -> pixel x=1+2 set; '0' glyph starts at x=7, row 0 = 01110.
  assert.ok(dark(3, 1) && !dark(1, 1));
  assert.ok(dark(8, 1) && dark(10, 1) && !dark(7, 1));
  assert.equal(textWidth('10'), 11);
  c.line(0, 11, 39, 11, [255, 0, 0]);
  assert.deepEqual([...c.data.subarray((11 * 40 + 20) * 3, (11 * 40 + 21) * 3)], [255, 0, 0]);
  assert.throws(() => new Canvas(0, 5), /positive integers/);
  assert.deepEqual(niceTicks(0, 10, 5), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(niceTicks(0.13, 0.61, 4), [0.2, 0.4, 0.6]);
});

test('plots render as non-trivial PNGs', async () => {
  const lp = linePlot({
    series: [
      { label: 'A', values: [1, 10, 100, null, 50] },
      { label: 'B', values: [2, 3, 4, 5, 6] },
    ],
    logY: true,
    title: 'T',
    xLabel: 'BLOCK',
    yLabel: 'NORM',
    hline: { value: 20, label: 'T=20' },
  });
  await checkPng(await canvasToPng(lp), 480, 320, 'line plot');
  const hist = histogramPlot({ values: [1, 2, 2, 3, 3, 3, 100, 120], threshold: 50, width: 300, height: 200 });
  await checkPng(await canvasToPng(hist), 300, 200, 'histogram');
  // The threshold line is red somewhere in the plot.
  let red = 0;
  for (let i = 0; i < hist.data.length; i += 3) if (hist.data[i] > 200 && hist.data[i + 1] < 80) red++;
  assert.ok(red > 20, `threshold line: ${red} red pixels`);
});

test('fitPca recovers planted directions; joint fit gives comparable colours', () => {
  // Rows = a * e0 * 10 + b * e1 * 3 + c * e2 + small noise, dim 6.
  const dim = 6;
  let s = 1;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5;
  const make = (n: number) => {
    const b = new Float32Array(n * dim);
    for (let r = 0; r < n; r++) {
      const [a, bb, c] = [rnd() * 10, rnd() * 3, rnd()];
      b[r * dim + 1] = a + 5;
      b[r * dim + 3] = bb;
      b[r * dim + 4] = c;
      for (let t = 0; t < dim; t++) b[r * dim + t] += rnd() * 1e-3;
    }
    return b;
  };
  const x1 = make(100);
  const x2 = make(80);
  const pca = fitPca([x1, x2], dim, 3);
  const axes = pca.components.map((c) => Array.from(c).findIndex((v) => Math.abs(v) > 0.99));
  assert.deepEqual(axes, [1, 3, 4]);
  assert.ok(pca.variances[0] > pca.variances[1] && pca.variances[1] > pca.variances[2]);
  close(
    pca.mean[1],
    (Array.from({ length: 100 }, (_, r) => x1[r * dim + 1]).reduce((a, b) => a + b) +
      Array.from({ length: 80 }, (_, r) => x2[r * dim + 1]).reduce((a, b) => a + b)) /
      180,
  );
  const proj = projectPca(pca, x1);
  close(proj[0], (x1[1] - pca.mean[1]) * pca.components[0][1], 1e-2);
  const colours = pcaColors([x1, x2], dim);
  assert.equal(colours.colors.length, 2);
  assert.equal(colours.colors[0].length, 300);
  // Joint min-max: the extreme colours occur somewhere across the two images.
  const allR = [...colours.colors[0], ...colours.colors[1]].filter((_, i) => i % 3 === 0);
  assert.equal(Math.min(...allR), 0);
  assert.equal(Math.max(...allR), 255);
  const fg = pcaColors([x1, x2], dim, { foreground: 0.5 });
  const nfg = fg.foreground.reduce((n, m) => n + m.reduce((a, b) => a + b, 0), 0);
  assert.ok(nfg > 0 && nfg <= 90, `foreground size ${nfg}`);
  // Background patches are black.
  const bgIndex = fg.foreground[0].findIndex((v) => v === 0);
  assert.deepEqual([...fg.colors[0].subarray(bgIndex * 3, bgIndex * 3 + 3)], [0, 0, 0]);
  assert.throws(() => pcaColors([x1], dim, { foreground: 1.5 }), /foreground threshold/);
});

function close(a: number, b: number, tol = 1e-6): void {
  assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} vs ${b}`);
}

/** A synthetic analysis: 4x4 patches, 2 registers, 2 heads, two outliers planted. */
function syntheticAnalysis() {
  const grid: [number, number] = [4, 4];
  const r = 2;
  const n = 1 + r + 16;
  const heads = 2;
  const norms = Float32Array.from({ length: n }, (_, i) => 40 + ((i * 7) % 11));
  norms[1 + r + 5] = 500;
  norms[1 + r + 10] = 520;
  const attn = new Float32Array(heads * n * n);
  for (let h = 0; h < heads; h++) {
    for (let q = 0; q < n; q++) {
      let sum = 0;
      for (let k = 0; k < n; k++) sum += attn[(h * n + q) * n + k] = 1 + ((q * 3 + k * (h + 2)) % 7) + (k === 1 + r + 5 ? 20 : 0);
      for (let k = 0; k < n; k++) attn[(h * n + q) * n + k] /= sum;
    }
  }
  const dim = 4;
  const data: TokenData = {
    grid,
    numRegisters: r,
    dim,
    prenormNorms: norms.map((x) => x * 2),
    postnormNorms: norms,
    layerNorms: [0, 1, 2].map((l) => norms.map((x, i) => (l === 0 ? 30 + (i % 5) : x / (3 - l)))),
    embeddings: Float32Array.from({ length: 16 * dim }, (_, i) => Math.sin(i)),
    attention: { heads, data: attn },
  };
  return analyzeTokens(data);
}

test('analysis figures and the report', async () => {
  const a = syntheticAnalysis();
  assert.deepEqual(a.outliers.indices, [5, 10]);
  const h = 56;
  const w = 56;
  const pixels = Float32Array.from({ length: h * w * 3 }, (_, i) => Math.sin(i / 50));
  const img = imageFromNormalized(pixels, h, w);
  const dir = await mkdtemp(join(tmpdir(), 'viz-'));
  try {
    const figs = {
      norms: normFigure(img, a),
      attention: attentionFigure(img, a),
      registers: registerFigure(img, a),
      pca: pcaFigure(img, a.grid, pcaColors([Float32Array.from({ length: 16 * 5 }, (_, i) => Math.cos(i * 1.3))], 5).colors[0]),
      histogram: normHistogram(a),
      layers: layerFigure(a),
    };
    for (const [name, c] of Object.entries(figs)) {
      const path = join(dir, `${name}.png`);
      await savePng(path, c);
      await checkPng(await readFile(path), c.width, c.height, name);
    }
    // The attention grid holds 1 + heads cells; the register grid one row per register.
    assert.ok(figs.attention.width > 3 * 100 && figs.registers.height > figs.attention.height * 1.8);
    // Outlier patches are outlined in red on the input panel (upscaled, below its title: where info.panels says).
    const panel = figs.norms.info.panels!.input!;
    const ph = (h / 4) * panel.scale;
    const x = panel.box[0] + Math.round(1 * ph);
    const y = panel.box[1] + Math.round(1 * ph);
    const off = (y * figs.norms.width + x) * 3;
    assert.deepEqual([...figs.norms.data.subarray(off, off + 3)], [220, 40, 40]);

    const numbers = reportNumbers(a);
    assert.equal(numbers.outliers, 2);
    assert.equal(numbers['first outlier layer'], 1);
    // The mode ratio the rule measured: the geometric means of the two planted groups, computed here.
    const patchNorms = Array.from({ length: 16 }, (_, j) => 40 + (((1 + 2 + j) * 7) % 11));
    const low = patchNorms.filter((_, j) => j !== 5 && j !== 10);
    const geo = (xs: number[]) => Math.exp(xs.reduce((acc, x) => acc + Math.log(x), 0) / xs.length);
    const ratio = numbers['mode ratio (high/low)'] as number;
    assert.ok(Math.abs(ratio / (geo([500, 520]) / geo(low)) - 1) < 1e-3, `mode ratio ${ratio}`);
    assert.match(String(numbers.verdict), /^outliers: /);
    assert.match(String(numbers['outlier rule']), /high\/low mode ratio >= 3/);
    const html = renderReport({
      title: 'Analysis <test>',
      models: [
        { label: 'A', weights: 'a.safetensors' },
        { label: 'B', weights: 'b & c.safetensors' },
      ],
      images: [
        {
          name: 'cat 1',
          source: '/x/cat 1.png',
          input: 'cat 1/input.png',
          results: [
            { figures: { 'norm map': 'cat 1/norms.png' }, numbers },
            { figures: { 'norm map': 'cat 1/b/norms.png' }, numbers },
          ],
        },
      ],
      failed: [{ path: 'bad.png', error: 'unsupported image format' }],
    });
    assert.match(html, /<title>Analysis &lt;test&gt;<\/title>/);
    assert.match(html, /src="cat%201\/norms.png"/);
    assert.match(html, /src="cat%201\/b\/norms.png"/);
    assert.match(html, /b &amp; c.safetensors/);
    assert.match(html, /bad.png: unsupported image format/);
    assert.doesNotMatch(html, /<script/);
    assert.equal(escapeHtml(`<a href="x">'`), '&lt;a href=&quot;x&quot;&gt;&#39;');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
