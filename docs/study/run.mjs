#!/usr/bin/env node
/**
 * The small-scale study's driver (issue 24), until `vitreg sweep` runs it: for each cell of a cells
 * file, trains the recipe without and with registers (`vitreg train --engine onnxruntime`, one run at
 * a time), then `vitreg analyze` (both models side by side, norms of the last block's output) and
 * `vitreg discover` (LOST CorLoc) on the probe images, and appends one row per model to
 * OUT/results.jsonl: CPU seconds of the training (user + system, /usr/bin/time), validation accuracy,
 * per-layer median and max patch norm (over the probe images), outlier share, CorLoc, and per block the
 * automatic rule's outlier share and fitted mode ratio over the probe images pooled (analyze's
 * summary.json `layerOutliers`).
 * A cell whose row exists is skipped, so the same command continues an interrupted study.
 *
 *   node docs/study/run.mjs docs/study/cells.json /tmp/study [cell names...]
 *
 * Cells: [{ "name", "data": "synthetic" | DIR (from fashion-mnist.mjs), "config": {trainer config},
 *           "registers": [0, 4], "size": analysis size }]
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const [cellsFile, outRoot, ...only] = process.argv.slice(2);
if (!cellsFile || !outRoot) throw new Error('usage: node docs/study/run.mjs CELLS.json OUT [cell ...]');
const cells = JSON.parse(readFileSync(cellsFile, 'utf8'));
const results = join(outRoot, 'results.jsonl');
mkdirSync(outRoot, { recursive: true });
const done = new Set(
  existsSync(results)
    ? readFileSync(results, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l).cell)
    : [],
);
const CLI = ['--conditions=vitreg-source', '--import', 'tsx', resolve('apps/cli/src/main.ts')];

/** Runs the CLI under /usr/bin/time; returns { cpu, wall, stdout }. */
function vitreg(args, log) {
  const timeFile = `${log}.time`;
  const r = spawnSync('/usr/bin/time', ['-f', '%U %S %e %M', '-o', timeFile, process.execPath, ...CLI, ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  });
  writeFileSync(log, `$ vitreg ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
  if (r.status !== 0) throw new Error(`vitreg ${args[0]} failed (exit ${r.status}); see ${log}`);
  const [user, sys, wall, rss] = readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ').map(Number);
  return { cpu: user + sys, wall, rssMb: rss / 1024, stdout: r.stdout };
}

const median = (xs) => {
  const s = [...xs].sort((p, q) => p - q);
  return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : NaN;
};

function analysisRows(dir, sub) {
  const per = [];
  for (const name of readdirSync(dir)) {
    const f = join(dir, name, sub, 'stats.json');
    if (existsSync(f)) per.push(JSON.parse(readFileSync(f, 'utf8')));
  }
  const depth = per[0].layers.length;
  const layers = [];
  for (let l = 0; l < depth; l++) {
    const med = median(per.map((s) => s.layers[l].median));
    const max = Math.max(...per.map((s) => s.layers[l].max));
    layers.push({ layer: l, median: +med.toPrecision(4), max: +max.toPrecision(4), ratio: +(max / med).toFixed(2) });
  }
  const pre = per.flatMap((s) => s.norms.patches.prenorm);
  const post = per.flatMap((s) => s.norms.patches.postnorm);
  const outliers = per.reduce((n, s) => n + s.outliers.count, 0);
  const tokens = per.reduce((n, s) => n + s.norms.patches.prenorm.length, 0);
  const withOut = per.filter((s) => s.outliers.count > 0);
  return {
    images: per.length,
    outlierShare: +(outliers / tokens).toFixed(4),
    imagesWithOutliers: withOut.length,
    prenorm: { median: +median(pre).toPrecision(4), max: +Math.max(...pre).toPrecision(4) },
    postnorm: { median: +median(post).toPrecision(4), max: +Math.max(...post).toPrecision(4) },
    layers,
    maxLayerRatio: Math.max(...layers.map((l) => l.ratio)),
    neighbourCosOutliers: withOut.length ? +median(withOut.map((s) => s.redundancy.outlierMean)).toFixed(3) : null,
    neighbourCosNormal: +median(per.map((s) => s.redundancy.normalMean)).toFixed(3),
    clsOutlierMass: +median(per.map((s) => s.cls.outlierMass)).toFixed(3),
    clsEntropy: +median(per.map((s) => s.cls.entropy)).toFixed(3),
    // the last block's output norm of CLS and of the registers (median over images): a sink that
    // moved to them shows here rather than on patches
    clsPrenorm: +median(per.map((s) => s.norms.cls.prenorm)).toPrecision(4),
    registerPrenorm: per[0].norms.registers.prenorm.length ? +median(per.flatMap((s) => s.norms.registers.prenorm)).toPrecision(4) : null,
  };
}

for (const cell of cells) {
  if (only.length && !only.includes(cell.name)) continue;
  if (done.has(cell.name)) {
    console.log(`${cell.name}: done, skipped`);
    continue;
  }
  const dir = join(outRoot, cell.name);
  mkdirSync(dir, { recursive: true });
  const regs = cell.registers ?? [0, 4];
  const runs = [];
  for (const r of regs) {
    const cfgFile = join(dir, `config-reg${r}.json`);
    const cfg = { ...cell.config, data: { ...(cell.config.data ?? {}), source: cell.data } };
    writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
    const out = join(dir, `train-reg${r}`);
    const t = vitreg(
      ['train', '--config', cfgFile, '--registers', String(r), '--engine', 'onnxruntime', '--threads', '1', '--no-progress', '--out', out],
      join(dir, `train-reg${r}.log`),
    );
    const summary = JSON.parse(t.stdout.trim().split('\n').pop());
    runs.push({ r, t, summary, weights: join(summary.checkpoint, 'model.safetensors') });
    console.log(`${cell.name} reg${r}: ${t.cpu.toFixed(0)} CPU s, ${JSON.stringify(summary)}`);
  }
  // analysis images: the dataset's probe/ folder (fashion-mnist.mjs) or the cell's "probe" folder
  // (its parent holds probe.coco.json, the boxes for LOST: synthetic-probe.mjs writes both)
  const probe = cell.probe ?? (cell.data === 'synthetic' ? null : join(cell.data, 'probe'));
  if (!probe) throw new Error(`${cell.name}: give "probe": a folder of images for analyze`);
  const size = String(cell.size ?? 48);
  const an = join(dir, 'analysis');
  const weightArgs = ['--weights', runs[0].weights, ...(runs[1] ? ['--weights-b', runs[1].weights] : [])];
  const lost = {};
  for (const run of runs) {
    const out = join(dir, `discover-reg${run.r}`);
    const probeRoot = join(probe, '..');
    const dataArgs = ['--data', join(probeRoot, 'probe.coco.json'), '--images', probe];
    vitreg(['discover', '--weights', run.weights, ...dataArgs, '--engine', 'onnxruntime', '--threads', '1', '--out', out], `${out}.log`);
    lost[run.r] = JSON.parse(readFileSync(join(out, 'corloc.json'), 'utf8'));
  }
  const common = ['--size', size, '--source', 'prenorm', '--engine', 'onnxruntime', '--threads', '1', '--out', an];
  const files = readdirSync(probe)
    .filter((f) => f.endsWith('.png'))
    .sort()
    .slice(0, cell.analyzeCount ?? 16)
    .map((f) => join(probe, f));
  vitreg(['analyze', ...weightArgs, ...files, ...common], `${an}.log`);
  const pooled = JSON.parse(readFileSync(join(an, 'summary.json'), 'utf8')).layerOutliers ?? [];
  for (const [i, run] of runs.entries()) {
    const row = {
      cell: cell.name,
      registers: run.r,
      cpuSeconds: +run.t.cpu.toFixed(1),
      wallSeconds: run.t.wall,
      rssMb: Math.round(run.t.rssMb),
      step: run.summary.step,
      valAccuracy: run.summary.val_accuracy ?? null,
      knnAccuracy: run.summary.knn_accuracy ?? null,
      corloc: lost[run.r].corloc ?? lost[run.r],
      ...analysisRows(an, i === 0 ? '' : 'b'),
      blockShares: pooled[i]?.layers.map((l) => l.share) ?? null,
      blockModeRatios: pooled[i]?.layers.map((l) => l.modeRatio) ?? null,
      config: cell.config,
    };
    appendFileSync(results, JSON.stringify(row) + '\n');
    console.log(
      `${cell.name} reg${run.r}: acc ${row.valAccuracy ?? row.knnAccuracy} outliers ${row.outlierShare} max/median per layer ${row.layers.map((l) => l.ratio).join(' ')} CorLoc ${JSON.stringify(row.corloc)}`,
    );
  }
}
