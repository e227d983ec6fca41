import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeImage } from '@vitreg/core';
import { drawDiscovery, lineChart, writeSweep } from '../src/index.js';
import { niceTicks, SERIES_COLORS } from '../src/draw.js';
import { sweepChartText, toCsv } from '../src/sweep.js';
import { type LostResult } from '../src/lost.js';

test('toCsv quotes what needs quoting and unions the columns', () => {
  assert.equal(toCsv([{ a: 1, b: 'x,y' }, { a: 2, c: 'say "hi"' }, { a: null }]), 'a,b,c\n1,"x,y",\n2,,"say ""hi"""\n,,\n');
});

test('niceTicks covers the range with 1-2-5 steps', () => {
  assert.deepEqual(niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0, 16), [0, 5, 10, 15]);
});

test('writeSweep writes CSV, JSON and a PNG chart with every series drawn', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-sweep-'));
  try {
    const rows = [0, 1, 2, 4].map((r) => ({ checkpoint: `reg${r}.safetensors`, registers: r, corloc: 0.3 + r * 0.05, top1: 0.5 }));
    const files = await writeSweep(dir, rows, { x: 'registers', metrics: ['corloc', 'top1'] });
    assert.equal((await readFile(files.csv, 'utf8')).split('\n')[0], 'checkpoint,registers,corloc,top1');
    const json = JSON.parse(await readFile(files.json, 'utf8'));
    assert.equal(json.rows.length, 4);
    assert.deepEqual(json.colors.top1, SERIES_COLORS[1]);
    const png = await decodeImage(files.png);
    assert.equal(png.width, 640);
    const count = (rgb: number[]) => {
      let n = 0;
      for (let i = 0; i < png.data.length; i += 3)
        if (png.data[i] === rgb[0] && png.data[i + 1] === rgb[1] && png.data[i + 2] === rgb[2]) n++;
      return n;
    };
    assert.ok(count(SERIES_COLORS[0]) > 100 && count(SERIES_COLORS[1]) > 100);
    // A title, axis labels with units and a legend: in the JSON, and drawn (ink above the plot, legend
    // swatches in each series' colour below it).
    assert.equal(json.title, 'corloc, top1 vs registers');
    assert.equal(json.xLabel, 'registers (tokens)');
    assert.equal(json.yLabel, 'corloc, top1 (fraction 0-1)');
    assert.deepEqual(json.legend, ['corloc', 'top1']);
    const inkIn = (y0: number, y1: number, rgb: number[]) => {
      let n = 0;
      for (let y = y0; y < y1; y++)
        for (let x = 0; x < png.width; x++) {
          const i = (y * png.width + x) * 3;
          if (png.data[i] === rgb[0] && png.data[i + 1] === rgb[1] && png.data[i + 2] === rgb[2]) n++;
        }
      return n;
    };
    assert.ok(inkIn(0, 24, [0, 0, 0]) > 200, 'a title');
    assert.ok(inkIn(27, 45, [0, 0, 0]) > 100, 'a y axis label');
    const below = png.height - 30;
    assert.ok(
      inkIn(below, png.height, SERIES_COLORS[0]) > 80 && inkIn(below, png.height, SERIES_COLORS[1]) > 80,
      'a legend entry per series',
    );
    await assert.rejects(writeSweep(dir, [{ registers: 'x' }], { x: 'registers', metrics: [] }), /numeric 'registers'/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  assert.throws(() => lineChart([{ name: 'a', points: [[0, NaN]] }]), /no finite points/);
});

test('sweep chart words: units in the axis labels, or per legend entry when the metrics differ', () => {
  assert.deepEqual(sweepChartText('registers', ['accuracy', 'miou', 'rmse'], 'Table 2'), {
    title: 'Table 2',
    xLabel: 'registers (tokens)',
    yLabel: 'value (units in the legend)',
    legend: ['accuracy (fraction 0-1)', 'miou (fraction 0-1)', 'rmse (m)'],
  });
});

test('drawDiscovery outlines the box in red and marks the seed', () => {
  const rgb = new Uint8Array(16 * 16 * 3).fill(100);
  const mask = new Uint8Array(4).fill(0);
  mask[0] = 1;
  const r = { box: [0, 0, 8, 8], seed: [0, 0], seedIndex: 0, mask, component: mask } as unknown as LostResult;
  const c = drawDiscovery(rgb, 16, 16, r, [2, 2], 8);
  const px = (x: number, y: number) => Array.from(c.data.subarray((y * 16 + x) * 3, (y * 16 + x) * 3 + 3));
  assert.deepEqual(px(0, 4), [230, 0, 0]); // box edge
  assert.notDeepEqual(px(4, 4), [100, 100, 100]); // seed inside
  assert.deepEqual(px(12, 12), [100, 100, 100]); // untouched
  assert.deepEqual(Array.from(rgb.subarray(0, 3)), [100, 100, 100]); // input not modified
});
