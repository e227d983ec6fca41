#!/usr/bin/env node
/**
 * Per-block outlier shares of trained checkpoints (issue 24): runs `vitreg analyze` (ONNX Runtime, one
 * thread, last block's output norms before the final LayerNorm) on the first --count probe images with
 * one or two models and appends, per model, one row to OUT.jsonl: the automatic rule's outlier share of
 * every block over all images pooled (summary.json `layerOutliers`), its fitted mode ratio, the median and
 * maximum patch norm per block, and the CPU seconds of the analysis (user + system, /usr/bin/time).
 *
 *   node docs/study/layers.mjs OUT.jsonl NAME PROBE_DIR SIZE WEIGHTS_A [WEIGHTS_B] [--count 32]
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const args = process.argv.slice(2);
const ci = args.indexOf('--count');
const count = ci >= 0 ? Number(args.splice(ci, 2)[1]) : 32;
const [outFile, name, probe, size, weightsA, weightsB] = args;
if (!weightsA) throw new Error('usage: node docs/study/layers.mjs OUT.jsonl NAME PROBE_DIR SIZE WEIGHTS_A [WEIGHTS_B] [--count N]');
const files = readdirSync(probe)
  .filter((f) => f.endsWith('.png'))
  .sort()
  .slice(0, count)
  .map((f) => join(probe, f));
const out = mkdtempSync(join(tmpdir(), `layers-${name}-`));
const timeFile = join(out, 'time');
const cli = ['--conditions=vitreg-source', '--import', 'tsx', resolve('apps/cli/src/main.ts'), 'analyze'];
const r = spawnSync(
  '/usr/bin/time',
  [
    '-f',
    '%U %S',
    '-o',
    timeFile,
    process.execPath,
    ...cli,
    '--weights',
    weightsA,
    ...(weightsB ? ['--weights-b', weightsB] : []),
    ...files,
    '--size',
    size,
    '--source',
    'prenorm',
    '--engine',
    'onnxruntime',
    '--threads',
    '1',
    '--out',
    out,
  ],
  { encoding: 'utf8', maxBuffer: 1 << 26 },
);
if (r.status !== 0) throw new Error(`vitreg analyze failed (exit ${r.status}):\n${r.stderr}`);
const [user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ').map(Number);
const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
for (const [k, m] of summary.layerOutliers.entries()) {
  const row = {
    name,
    model: m.label,
    weights: k === 0 ? weightsA : weightsB,
    images: files.length,
    layers: m.layers.map((l) => ({ layer: l.layer, share: l.share, modeRatio: l.modeRatio, median: l.median, max: l.max })),
    analysisCpuSeconds: +(user + sys).toFixed(1),
    out,
  };
  appendFileSync(outFile, JSON.stringify(row) + '\n');
  console.log(
    `${name} ${m.label}: share ${row.layers.map((l) => `${(100 * l.share).toFixed(1)}%`).join(' ')}; mode ratio ${row.layers.map((l) => l.modeRatio.toFixed(2)).join(' ')}`,
  );
}
