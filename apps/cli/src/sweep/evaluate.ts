/**
 * What a sweep cell measures after training, each stage one run of the vitreg command on the cell's final
 * checkpoint (so each stage resumes, logs and refuses other settings as that command does), and the
 * measurements read back from the files it wrote:
 *   train     train/eval.json (val_accuracy or knn_accuracy) and the last loss of train/metrics.jsonl
 *   probe     vitreg probe (class: linear top-1 "class.accuracy" and k-NN "class.knn_top1"; position, pixels)
 *   dense     vitreg probe --task segmentation,depth ("segmentation.miou", "depth.rmse", ...)
 *   lost      vitreg discover: "lost.corloc" (data with boxes)
 *   outliers  vitreg analyze: "outliers.fraction" (share of high-norm patches over all images),
 *             median and max patch norm; every patch norm in eval/outliers/norms.json (the histograms)
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodePng, ensureDir, SyntheticDataset, writeFileAtomic, writeJsonAtomic } from '@vitreg/core';
import { sweepColumns, type AnyProbeTask, type DenseProbeReport, type ProbeReport } from '@vitreg/probe';
import { runLogged, vitregCommand, type ChildResult } from './child.js';
import type { Cell } from './cells.js';
import type { SweepSpec } from './spec.js';

/** A stage that failed: its name, its log and the end of its output. */
export class StageError extends Error {
  constructor(
    readonly stage: string,
    readonly log: string,
    message: string,
  ) {
    super(message);
    this.name = 'StageError';
  }
}

export type Measurements = Record<string, number | null>;

/** The newest checkpoint of a run folder: <run>/checkpoints/step-N (largest N), or null. */
export function finalCheckpoint(run: string): string | null {
  const dir = join(run, 'checkpoints');
  if (!existsSync(dir)) return null;
  const steps = readdirSync(dir)
    .map((d) => /^step-(\d+)$/.exec(d))
    .filter((m): m is RegExpExecArray => m !== null && existsSync(join(dir, m[0], 'model.safetensors')))
    .map((m) => Number(m[1]));
  return steps.length ? join(dir, `step-${Math.max(...steps)}`) : null;
}

/** Measurements of the training itself. */
export function trainMeasurements(run: string): Measurements {
  const m: Measurements = {};
  const ev = readJsonFile(join(run, 'eval.json')) as Record<string, unknown> | null;
  for (const [k, v] of Object.entries(ev ?? {})) if (typeof v === 'number' && k !== 'step' && k !== 'num_classes') m[`train.${k}`] = v;
  const metrics = join(run, 'metrics.jsonl');
  if (existsSync(metrics)) {
    const lines = readFileSync(metrics, 'utf8').trim().split('\n').filter(Boolean);
    for (let i = lines.length - 1; i >= 0; i--) {
      try {
        const line = JSON.parse(lines[i]!) as Record<string, unknown>;
        if (typeof line.loss === 'number') {
          m['train.loss'] = line.loss;
          m['train.steps'] = typeof line.step === 'number' ? line.step : null;
          break;
        }
      } catch {
        /* a torn line */
      }
    }
  }
  return m;
}

function readJsonFile(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    return null;
  }
}

async function stage(name: string, cell: Cell, args: string[]): Promise<ChildResult> {
  const log = join(cell.dir, 'logs', `${name}.log`);
  const r = await runLogged([...vitregCommand(), ...args], log);
  if (r.code !== 0) throw new StageError(name, log, `vitreg ${args[0]} exited with ${r.code ?? r.signal}: ${lastLines(r.tail)}`);
  return r;
}

const lastLines = (s: string) =>
  s
    .trim()
    .split('\n')
    .filter((l) => !/^\[vitreg\]|already registered/.test(l))
    .slice(-2)
    .join(' | ');

/** The synthetic images of the outlier analysis: written once per sweep, `count` PNGs of `size` px. */
async function syntheticImages(out: string, count: number, size: number): Promise<string> {
  const dir = join(out, 'eval-images', `synthetic-${count}x${size}`);
  if (existsSync(join(dir, 'done'))) return dir;
  await ensureDir(dir);
  const ds = new SyntheticDataset({ seed: 0, count, size, split: 'val' });
  for (let i = 0; i < count; i++) {
    const item = await ds.get(i);
    await writeFileAtomic(join(dir, `${String(i).padStart(3, '0')}.png`), await encodePng(item.image, item.width, item.height));
  }
  await writeFileAtomic(join(dir, 'done'), '');
  return dir;
}

/**
 * Runs the evaluation stages of `spec` on the cell's final checkpoint; returns every measurement. A stage
 * that fails throws a StageError naming it and its log.
 */
export async function evaluateCell(spec: SweepSpec, cell: Cell, checkpoint: string): Promise<Measurements> {
  const weights = join(checkpoint, 'model.safetensors');
  const e = spec.evaluate;
  const m: Measurements = {};
  const evalDir = join(cell.dir, 'eval');
  const probeLike = async (name: 'probe' | 'dense', tasks: string[], data: string | Record<string, string>, args: string[]) => {
    const out = join(evalDir, name);
    const dataArgs = typeof data === 'string' ? ['--data', data] : Object.entries(data).flatMap(([t, s]) => ['--data', `${t}=${s}`]);
    await stage(name, cell, ['probe', '--weights', weights, '--task', tasks.join(','), ...dataArgs, '--out', out, ...args]);
    for (const task of tasks) {
      const file = join(out, tasks.length === 1 ? 'results.json' : `results-${task}.json`);
      const report = readJsonFile(file) as (ProbeReport & DenseProbeReport) | null;
      if (!report) throw new StageError(name, join(cell.dir, 'logs', `${name}.log`), `${file} was not written`);
      for (const [k, v] of Object.entries(sweepColumns(task as AnyProbeTask, report))) m[`${task}.${k}`] = v;
    }
  };
  if (e.probe) await probeLike('probe', e.probe.tasks, e.probe.data, e.probe.args);
  if (e.dense) await probeLike('dense', e.dense.tasks, e.dense.data, e.dense.args);
  if (e.lost) {
    const out = join(evalDir, 'lost');
    await stage('lost', cell, ['discover', '--weights', weights, '--data', e.lost.data, '--out', out, ...e.lost.args]);
    const c = readJsonFile(join(out, 'corloc.json')) as { corloc?: number } | null;
    m['lost.corloc'] = typeof c?.corloc === 'number' ? c.corloc : null;
  }
  if (e.outliers) {
    const o = e.outliers;
    const images = o.images === 'synthetic' ? await syntheticImages(spec.out, o.count, o.size) : o.images;
    const out = join(evalDir, 'outliers');
    const size = o.images === 'synthetic' ? ['--size', String(o.size)] : [];
    await stage('outliers', cell, ['analyze', images, '--weights', weights, '--out', out, ...size, ...o.args]);
    Object.assign(m, await outlierMeasurements(out));
  }
  return m;
}

interface ImageStats {
  normSource?: 'prenorm' | 'postnorm';
  norms?: { patches?: { prenorm?: number[]; postnorm?: number[] } };
  outliers?: { count?: number; threshold?: number | null };
}

/** Outlier share, norms and the pooled patch norms (eval/outliers/norms.json) of an analyze folder. */
export async function outlierMeasurements(out: string): Promise<Measurements> {
  const norms: number[] = [];
  let outliers = 0;
  let threshold: number | null = null;
  for (const d of readdirSync(out, { withFileTypes: true })) {
    if (!d.isDirectory()) continue;
    const s = readJsonFile(join(out, d.name, 'stats.json')) as ImageStats | null;
    if (!s) continue;
    const patches = s.norms?.patches?.[s.normSource ?? 'postnorm'] ?? [];
    norms.push(...patches);
    outliers += s.outliers?.count ?? 0;
    if (typeof s.outliers?.threshold === 'number') threshold = Math.min(threshold ?? Infinity, s.outliers.threshold);
  }
  if (norms.length === 0) throw new Error(`${out}: no stats.json with patch norms`);
  const sorted = Float64Array.from(norms).sort();
  await writeJsonAtomic(join(out, 'norms.json'), { source: 'patch token norms, all images', threshold, values: norms });
  return {
    'outliers.fraction': outliers / norms.length,
    'outliers.median_norm': sorted[sorted.length >> 1]!,
    'outliers.max_norm': sorted[sorted.length - 1]!,
    'outliers.threshold': threshold,
  };
}
