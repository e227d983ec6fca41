#!/usr/bin/env node
/**
 * What the tokens hold (issue 24): reads the output folders of docs/study/probe-tokens.sh (one `vitreg
 * probe` run per token kind: normal, outlier, cls, register0-3) and prints, per model, the linear
 * probe's accuracy for the image class (the global task) and the top-1 accuracy and mean distance in
 * patches for the grid cell (the position task) of each token kind, as markdown, and with --json the
 * same rows as JSON lines.
 *
 *   node docs/study/probe-table.mjs /work/scratch/h24/probe-suphot [--json]
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [dir, flag] = process.argv.slice(2);
if (!dir) throw new Error('usage: node docs/study/probe-table.mjs PROBE_OUT [--json]');
/** Every results*.json under DIR/TAG (one checkpoint) or DIR/TAG/<checkpoint>/ (several). */
function results(tag) {
  const root = join(dir, tag);
  if (!existsSync(root)) return [];
  const found = [];
  const visit = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) visit(join(d, e.name));
      else if (/^results(-\w+)?\.json$/.test(e.name)) found.push(JSON.parse(readFileSync(join(d, e.name), 'utf8')));
    }
  };
  visit(root);
  return found;
}
const rows = new Map();
const row = (weights) => {
  if (!rows.has(weights)) rows.set(weights, { weights });
  return rows.get(weights);
};
for (const tag of ['normal', 'outlier', 'cls', 'register0', 'register1', 'register2', 'register3']) {
  for (const r of results(tag)) {
    const kind = tag.startsWith('register') ? tag : r.token;
    const m = row(r.weights);
    if (r.task === 'class') m[`class_${kind}`] = +r.accuracy.toFixed(3);
    if (r.task === 'position') {
      m[`position_${kind}`] = +r.top1.toFixed(3);
      m[`distance_${kind}`] = +r.meanDistance.toFixed(2);
    }
    m.chance = r.task === 'class' ? r.chance : m.chance;
    m.test = r.test;
    if (r.grid) m.grid = r.grid;
  }
}
const f = (x) => (x === undefined ? '-' : x.toFixed(2));
console.log(
  '| model | class: CLS | class: normal patch | class: max-norm patch | class: registers 0-3 | position top-1 (distance): normal | position: max-norm |',
);
console.log('|---|---|---|---|---|---|---|');
for (const m of rows.values()) {
  const regs = [0, 1, 2, 3].map((i) => m[`class_register${i}`]).filter((x) => x !== undefined);
  console.log(
    `| ${m.weights.split('/').slice(-5).join('/')} | ${f(m.class_cls)} | ${f(m.class_normal)} | ${f(m.class_outlier)} | ${regs.length ? regs.map(f).join(' ') : '-'} | ${f(m.position_normal)} (${f(m.distance_normal)}) | ${f(m.position_outlier)} (${f(m.distance_outlier)}) |`,
  );
  if (flag === '--json') console.log(JSON.stringify(m));
}
