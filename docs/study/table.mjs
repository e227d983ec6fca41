#!/usr/bin/env node
/**
 * The study's table (issue 24) from run.mjs's OUT/results.jsonl, as markdown: per cell and register
 * count the CPU minutes of training, accuracy, the patch-norm max / median per block (over the probe
 * images), how much of that ratio grew inside the network (best block over block 0), the outlier share
 * (analyze's automatic rule on the last block's output), the input-embedding neighbour similarity of
 * outlier and other patches (the paper's low-information test), LOST CorLoc, and (rows written by the
 * second round's run.mjs) the automatic outlier share of every block over the probe images pooled.
 *
 *   node docs/study/table.mjs /tmp/study/results.jsonl
 */
import { readFileSync } from 'node:fs';

const rows = readFileSync(process.argv[2], 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l));
const f = (x, d = 2) => (x === null || x === undefined ? '-' : Number(x).toFixed(d));
console.log(
  '| cell | reg | CPU min | acc | max/median norm per block | growth | outlier share | nbr-cos outliers / others | CorLoc | pooled outlier share per block |\n|---|---|---|---|---|---|---|---|---|---|',
);
for (const r of rows) {
  const ratios = r.layers.map((l) => f(l.ratio, 1)).join(' ');
  const growth = r.maxLayerRatio / r.layers[0].ratio;
  const acc = r.valAccuracy ?? r.knnAccuracy;
  const corloc = typeof r.corloc === 'number' ? r.corloc : (r.corloc?.corloc ?? null);
  console.log(
    `| ${r.cell} | ${r.registers} | ${f(r.cpuSeconds / 60, 1)} | ${f(acc)} | ${ratios} | ${f(growth)} | ${(100 * r.outlierShare).toFixed(1)}% | ${f(r.neighbourCosOutliers)} / ${f(r.neighbourCosNormal)} | ${f(corloc)} | ${r.blockShares ? r.blockShares.map((x) => `${(100 * x).toFixed(1)}%`).join(' ') : '-'} |`,
  );
}
