/**
 * The cells of a sweep: the cartesian product of its axes (first axis slowest, values in file order), each
 * with a short name, its own folder <out>/cells/<index>-<name>/, the resolved training config and its hash;
 * and the cell's markers, each written atomically (temp file + rename): cell.json (what the cell is),
 * running.json, done.json, failed.json (attempts so far), and the state `status` reports.
 *
 * Folder of one cell: cell.json, config.json (the full resolved config `vitreg train --config` gets),
 * train/ (the run folder: checkpoints, metrics.jsonl, eval.json), eval/<stage>/ (evaluation outputs),
 * logs/<stage>.log, results.json (every measurement), done.json or failed.json.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { ensureDir, firstDifference, InputError, writeJsonAtomic } from '@vitreg/core';
import { validateTrainConfig, type TrainConfig } from '@vitreg/trainer';
import type { CellResources, SweepSpec } from './spec.js';

export interface Cell {
  index: number;
  /** <index>-<short axis values>, e.g. 03-reg2-seed1: the folder's name. */
  name: string;
  dir: string;
  /** Axis path -> this cell's value. */
  axes: Record<string, unknown>;
  config: TrainConfig;
  /** The sweep's resources with the overrides that match this cell. */
  resources: CellResources;
  /**
   * sha256 of the resolved config, the process and thread counts and the train_args that change the
   * trained weights (weightArgs; canonical JSON), 16 hex digits.
   */
  hash: string;
  /**
   * With weight-changing train_args: the hash vitreg gave the cell before they counted (config, processes,
   * threads only). A marker of that hash is the same cell when its eval_hash (which covers every
   * train_arg) equals this cell's: see sameTraining.
   */
  legacyHash?: string;
  /** sha256 of what the cell evaluates and all its train_args (a changed one evaluates it again), 16 hex digits. */
  evalHash: string;
}

/** JSON with object keys sorted (arrays kept in order): the same value always gives the same text. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object')
    return `{${Object.keys(v)
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return JSON.stringify(v);
}

export const shortHash = (v: unknown) => createHash('sha256').update(canonicalJson(v)).digest('hex').slice(0, 16);

/**
 * `vitreg train` flags that do not change the trained weights: how many ONNX Runtime threads (the same
 * numbers with any count), which GPU, the transport and timeout of the all-reduce, logging, stop signals,
 * the data index's rebuild. Every other flag of train_args (--engine: tfjs and onnxruntime differ in the
 * last digits; --backend, --device; the CLIP data flags; any flag not listed) is part of the cell's hash.
 */
const NEUTRAL_TRAIN_FLAGS = new Set([
  '--threads',
  '--gpu',
  '--transport',
  '--collective-timeout-ms',
  '--stop-signals',
  '--verbose',
  '--no-progress',
  '--rebuild-index',
]);
const VALUELESS_FLAGS = new Set(['--verbose', '--no-progress', '--rebuild-index']);

/** The train_args that change the trained weights: `args` without NEUTRAL_TRAIN_FLAGS (and their values). */
export function weightArgs(args: string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const flag = a.split('=')[0]!;
    if (!NEUTRAL_TRAIN_FLAGS.has(flag)) kept.push(a);
    else if (!a.includes('=') && !VALUELESS_FLAGS.has(flag)) i++;
  }
  return kept;
}

/** Axis short names: the last part of the path, with the common ones shortened. */
const SHORT: Record<string, string> = {
  num_register_tokens: 'reg',
  seed: 'seed',
  arch: '',
  objective: '',
  steps: 'steps',
  batch_size: 'bs',
};

function shortName(axes: [string, unknown][]): string {
  const part = ([path, v]: [string, unknown]) => {
    const last = path.split('.').pop()!;
    const key = last in SHORT ? SHORT[last]! : last.replace(/_/g, '').slice(0, 8);
    return `${key}${String(v)}`.replace(/[^A-Za-z0-9.]+/g, '-').slice(0, 32);
  };
  return axes.map(part).join('-');
}

/** Sets `value` at dotted `path` in `obj` (a copy of each object on the way). */
function setPath(obj: Record<string, unknown>, path: string, value: unknown): Record<string, unknown> {
  const [head, ...rest] = path.split('.');
  const out = { ...obj };
  if (rest.length === 0) out[head!] = value;
  else {
    const inner = out[head!];
    out[head!] = setPath(
      inner !== null && typeof inner === 'object' && !Array.isArray(inner) ? (inner as Record<string, unknown>) : {},
      rest.join('.'),
      value,
    );
  }
  return out;
}

function baseRaw(spec: SweepSpec): Record<string, unknown> {
  if ('preset' in spec.base) return { preset: spec.base.preset };
  const file = spec.base.file;
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new InputError(
      `${spec.file}: field "base": ${e.code === 'ENOENT' ? `no such config file ${file}` : `${file} is not valid JSON (${e.message})`}`,
    );
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new InputError(`${spec.file}: field "base": ${file} is not a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * Every cell of `spec`, in a stable order: the cartesian product of the axes, the first axis slowest.
 * Each cell's config is the base with `set` then the cell's axis values applied and validated; the
 * problems of every cell are reported together (naming the sweep file and the field paths).
 */
export function expandCells(spec: SweepSpec): Cell[] {
  const raw0 = baseRaw(spec);
  let base = raw0;
  for (const [k, v] of Object.entries(spec.set)) base = setPath(base, k, v);
  const combos: [string, unknown][][] = [[]];
  for (const [path, values] of spec.axes) {
    const next: [string, unknown][][] = [];
    for (const c of combos) for (const v of values) next.push([...c, [path, v]]);
    combos.splice(0, combos.length, ...next);
  }
  const width = String(combos.length - 1).length;
  const problems = new Set<string>();
  // The same refusal for several cells is said once, naming the cells.
  const perCell = new Map<string, number[]>();
  const evalHash = shortHash({ evaluate: spec.evaluate, train_args: spec.train_args });
  const cells: Cell[] = [];
  combos.forEach((combo, index) => {
    let raw = base;
    for (const [path, v] of combo) raw = setPath(raw, path, v);
    let config: TrainConfig;
    try {
      config = validateTrainConfig(raw, 'config');
    } catch (err) {
      // The trainer names the field ("config: field "model.x" ..."); say which cell and which axes.
      const msg = (err as Error).message.replace(/^config: /, '');
      perCell.set(msg, [...(perCell.get(msg) ?? []), index]);
      return;
    }
    // A field the trainer ignored (a typo in a path it does not check) must not pass silently.
    for (const [path] of [...combo, ...Object.entries(spec.set)]) {
      let v: unknown = config;
      for (const part of path.split('.')) v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[part] : undefined;
      if (v === undefined)
        problems.add(`field "${combo.some(([p]) => p === path) ? 'axes' : 'set'}.${path}": not a field of the training config`);
    }
    const name = `${String(index).padStart(width, '0')}-${shortName(combo)}`;
    const axes = Object.fromEntries(combo);
    const resources = { ...spec.resources };
    for (const o of spec.overrides)
      if (Object.entries(o.where).every(([k, v]) => JSON.stringify(axes[k]) === JSON.stringify(v))) Object.assign(resources, o.set);
    // A multi-process cell's train_args go to vitreg-worker, whose --threads / --workers are data-parallel
    // threads (the global batch), not the engine's: resources.threads says that, --engine-threads the other.
    if (resources.processes > 1 && spec.train_args.some((a) => /^--(threads|workers)(=|$)/.test(a))) {
      const msg =
        'train_args: --threads / --workers change the global batch of a multi-process cell (vitreg-worker): ' +
        'set resources.threads, or give --engine-threads N for ONNX Runtime threads';
      perCell.set(msg, [...(perCell.get(msg) ?? []), index]);
      return;
    }
    // Processes and threads per process change the global batch, --engine and the like the last digits:
    // part of what the cell is. (No such train_args: the hash of the cells made before they counted.)
    const trainArgs = weightArgs(spec.train_args);
    const counts = { config, processes: resources.processes, threads: resources.threads };
    const hash = shortHash({ ...counts, ...(trainArgs.length ? { train_args: trainArgs } : {}) });
    const legacy = trainArgs.length ? { legacyHash: shortHash(counts) } : {};
    cells.push({ index, name, dir: join(spec.out, 'cells', name), axes, config, resources, hash, ...legacy, evalHash });
  });
  for (const [msg, list] of perCell) problems.add(`${list.length === 1 ? 'cell' : 'cells'} ${list.join(', ')}: ${msg}`);
  if (problems.size)
    throw new InputError(`${spec.file}: ${problems.size} problem${problems.size === 1 ? '' : 's'}: ${[...problems].join('; ')}`);
  return cells;
}

// ---------------------------------------------------------------------------------------------
// Markers

export interface DoneMarker {
  hash: string;
  eval_hash: string;
  finished: string;
  seconds: number;
}
export interface FailedMarker {
  hash: string;
  attempts: number;
  error: string;
  stage: string;
  log: string;
  at: string;
}
export interface RunningMarker {
  pid: number;
  host: string;
  started: string;
  attempt: number;
  /** The scheduler's id of the task running it (Slurm job_task, pod name), when there is one. */
  job?: string;
}
export interface CellMarker {
  index: number;
  name: string;
  axes: Record<string, unknown>;
  hash: string;
  eval_hash: string;
}

export function readJson<T>(path: string): T | null {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return null;
  }
}

export const markerPath = (cell: Cell, kind: 'cell' | 'done' | 'failed' | 'running' | 'results') => join(cell.dir, `${kind}.json`);

export async function writeMarker(cell: Cell, kind: 'cell' | 'done' | 'failed' | 'running' | 'results', value: unknown): Promise<void> {
  await ensureDir(cell.dir);
  await writeJsonAtomic(markerPath(cell, kind), value);
}

export async function removeMarker(cell: Cell, kind: 'done' | 'failed' | 'running'): Promise<void> {
  await rm(markerPath(cell, kind), { force: true });
}

export type CellState = 'done' | 'running' | 'failed' | 'pending';

export interface CellStatus {
  cell: Cell;
  state: CellState;
  /** Failed attempts so far. */
  attempts: number;
  detail: string;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return true;
  }
}

/**
 * Refuses a cell folder that holds another config's cell (the sweep file changed under it), naming the
 * cell and the way out.
 */
/**
 * A marker (cell.json, done.json) describes this cell's training: its hash is the cell's, or the hash of
 * an older vitreg that left train_args out (legacyHash) and its eval_hash, which covers every train_arg,
 * is this cell's, so the train_args were these.
 */
export function sameTraining(m: { hash: string; eval_hash?: string }, cell: Cell): boolean {
  return m.hash === cell.hash || (cell.legacyHash !== undefined && m.hash === cell.legacyHash && m.eval_hash === cell.evalHash);
}

export function checkCellHash(cell: Cell, file: string): void {
  const m = readJson<CellMarker>(markerPath(cell, 'cell'));
  if (m && !sameTraining(m, cell)) {
    const there = readJson<TrainConfig>(join(cell.dir, 'config.json'));
    const diff = there ? firstDifference(there, cell.config) : null;
    const field = diff ? diff.path || '(top)' : null;
    throw new InputError(
      `${file}: cell ${cell.index} (${cell.name}) in ${cell.dir} was made with another config (hash ${m.hash}, now ${cell.hash}` +
        `${field ? `; field "${field}" differs` : '; the processes, threads per process or weight-changing train_args differ'}): give the sweep another out folder, or move that cell folder away to run it again`,
    );
  }
}

/** The cell's state from its markers alone (a running marker of a dead process on this host: not running). */
export function cellStatus(cell: Cell, retries: number): CellStatus {
  const done = readJson<DoneMarker>(markerPath(cell, 'done'));
  const failed = readJson<FailedMarker>(markerPath(cell, 'failed'));
  const attempts = failed && failed.hash === cell.hash ? failed.attempts : 0;
  if (done && sameTraining(done, cell) && done.eval_hash === cell.evalHash && existsSync(markerPath(cell, 'results')))
    return { cell, state: 'done', attempts, detail: `${done.seconds.toFixed(0)} s` };
  const running = readJson<RunningMarker>(markerPath(cell, 'running'));
  if (running && (running.host !== hostname() || pidAlive(running.pid)))
    return {
      cell,
      state: 'running',
      attempts,
      detail: `${running.job ?? `pid ${running.pid}`} on ${running.host} since ${running.started}`,
    };
  if (attempts > 0)
    return {
      cell,
      state: attempts > retries ? 'failed' : 'pending',
      attempts,
      detail: `${attempts} failed attempt${attempts === 1 ? '' : 's'} (${failed!.stage}: ${failed!.error}; log ${failed!.log})`,
    };
  return { cell, state: 'pending', attempts, detail: done ? 'evaluation settings changed: evaluated again' : '' };
}
