/**
 * The sweep file (SWEEP.json) of `vitreg sweep`: its shape, and the check that reads it and reports every
 * bad field at once, each named by the file and its field path ("sweep.json: field \"axes.train.seed\":
 * ..."). Relative paths in it (the base config file, evaluation data, out) are taken from the file's folder.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { InputError } from '@vitreg/core';
import { PRESET_ALIASES, PRESET_NAMES } from '@vitreg/trainer';

const PRESET_CHOICES = [...PRESET_NAMES, ...Object.keys(PRESET_ALIASES)];

/** One probe run after training: `vitreg probe` tasks on a data source. */
export interface ProbeEval {
  tasks: string[];
  /** 'synthetic', a folder, or per task { task: source }. */
  data: string | Record<string, string>;
  args: string[];
}

/** LOST object discovery (CorLoc when the data has boxes): `vitreg discover`. */
export interface LostEval {
  data: string;
  args: string[];
}

/** The outlier analysis: `vitreg analyze` on some images; share of high-norm patches and the norm histogram. */
export interface OutliersEval {
  /** 'synthetic' (count images of size px, written once per sweep) or a folder of images. */
  images: string;
  count: number;
  size: number;
  args: string[];
}

export interface SweepEvaluate {
  /** k-NN and linear probe of the class (probe task class) and any other probe task. */
  probe?: ProbeEval;
  /** DINOv2's linear dense probes (segmentation, depth). */
  dense?: ProbeEval;
  lost?: LostEval;
  outliers?: OutliersEval;
}

/** What one cell asks of the machine or scheduler. */
export interface CellResources {
  /** Training processes (> 1: a cluster job of its own: coordinator + workers). */
  processes: number;
  /** Threads per process (vitreg train --workers). */
  threads: number;
  gpus_per_process: number;
  cpus_per_process: number;
  /** Slurm's time limit, e.g. "04:00:00". */
  time: string;
  /** Memory per node, e.g. "32G" (Slurm's --mem: a number and K, M (default), G or T; optional). */
  memory?: string;
  /**
   * Processes of a multi-process cell on one node (Slurm's --ntasks-per-node; optional, default: all of
   * the cell's processes). A Kubernetes pod (one process) asks memory / processes_per_node.
   */
  processes_per_node?: number;
}

/** Resources of the cells whose axis values match `where` (later overrides win). */
export interface ResourceOverride {
  where: Record<string, unknown>;
  set: Partial<Omit<CellResources, 'time' | 'memory' | 'processes_per_node'>>;
}

export interface SlurmOptions {
  partition?: string;
  account?: string;
  /** More #SBATCH lines, e.g. "--qos=high". */
  sbatch: string[];
  /** Shell lines run before the cell (module load ..., source venv). */
  setup: string[];
}

export interface KubernetesOptions {
  image: string;
  namespace?: string;
  /** PersistentVolumeClaim holding the sweep's out folder (ReadWriteMany), mounted at `out`. */
  runs_claim: string;
  /** Optional claim of the data, mounted read-only at data_mount. */
  data_claim?: string;
  data_mount: string;
  /** The secret with key "token" for multi-process cells. */
  token_secret: string;
}

export interface SweepSpec {
  /** Absolute path of the sweep file. */
  file: string;
  name: string;
  /** A preset name, or an absolute path of a config file. */
  base: { preset: string } | { file: string };
  /** Fixed field overrides of every cell ("train.steps": 4). */
  set: Record<string, unknown>;
  /** Axes in file order: field path -> values. */
  axes: [string, unknown[]][];
  evaluate: SweepEvaluate;
  resources: CellResources;
  /** resources.overrides: e.g. one cell (or a model size) as a multi-process cluster job. */
  overrides: ResourceOverride[];
  /** Cells running at once (Slurm's %K, Kubernetes parallelism, `run`'s default). */
  max_concurrent: number;
  /** Attempts of a failing cell before `run` gives up on it. */
  retries: number;
  /** Flags added to `vitreg train` (e.g. ["--engine", "tfjs"]). */
  train_args: string[];
  /** Absolute out folder (the file's "out", relative to its folder; default runs/sweep-<name> there). */
  out: string;
  slurm: SlurmOptions;
  kubernetes: KubernetesOptions;
}

const TOP = [
  'name',
  'base',
  'set',
  'axes',
  'evaluate',
  'resources',
  'max_concurrent',
  'retries',
  'train_args',
  'out',
  'slurm',
  'kubernetes',
  'description',
];
const RESOURCE_KEYS = ['processes', 'threads', 'gpus_per_process', 'cpus_per_process', 'time', 'memory', 'processes_per_node', 'overrides'];
const OVERRIDE_KEYS = ['processes', 'threads', 'gpus_per_process', 'cpus_per_process'];
const EVAL_KEYS = ['probe', 'dense', 'lost', 'outliers'];
const PROBE_TASKS = ['class', 'position', 'pixels'];
const DENSE_TASKS = ['segmentation', 'depth'];

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);
const show = (v: unknown) => JSON.stringify(v);

/** Collects the problems of one file; `done()` throws them all as one InputError. */
class Problems {
  readonly list: string[] = [];
  constructor(readonly file: string) {}
  add(path: string, msg: string): void {
    this.list.push(`field "${path}": ${msg}`);
  }
  done(): void {
    if (this.list.length === 0) return;
    const n = this.list.length;
    throw new InputError(`${this.file}: ${n} problem${n === 1 ? '' : 's'}: ${this.list.join('; ')}`);
  }
}

function strings(p: Problems, path: string, v: unknown, fallback: string[] = []): string[] {
  if (v === undefined) return fallback;
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) {
    p.add(path, `expected a list of strings, got ${show(v)}`);
    return fallback;
  }
  return v as string[];
}

function int(p: Problems, path: string, v: unknown, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    p.add(path, `expected an integer >= ${min}, got ${show(v)}`);
    return fallback;
  }
  return v;
}

function str(p: Problems, path: string, v: unknown, fallback: string): string;
function str(p: Problems, path: string, v: unknown, fallback?: string): string | undefined;
function str(p: Problems, path: string, v: unknown, fallback?: string): string | undefined {
  if (v === undefined) return fallback;
  if (typeof v !== 'string' || v === '') {
    p.add(path, `expected a non-empty string, got ${show(v)}`);
    return fallback;
  }
  return v;
}

function unknownKeys(p: Problems, path: string, o: Obj, known: string[]): void {
  for (const k of Object.keys(o))
    if (!known.includes(k)) p.add(path ? `${path}.${k}` : k, `unknown field; expected one of ${known.join(', ')}`);
}

const abs = (dir: string, path: string) => (isAbsolute(path) ? path : resolve(dir, path));
/** A data source: 'synthetic' / 'ade20k:DIR' style prefixes kept, a plain path made absolute. */
function dataPath(dir: string, src: string): string {
  if (src === 'synthetic') return src;
  const m = /^([a-z0-9]+):(.+)$/.exec(src);
  return m ? `${m[1]}:${abs(dir, m[2]!)}` : abs(dir, src);
}

function probeEval(p: Problems, path: string, v: unknown, dir: string, allowed: string[], fallback: string[]): ProbeEval | undefined {
  if (v === undefined) return undefined;
  if (!isObj(v)) {
    p.add(path, `expected an object {tasks, data, args}, got ${show(v)}`);
    return undefined;
  }
  unknownKeys(p, path, v, ['tasks', 'data', 'args']);
  const tasks = strings(p, `${path}.tasks`, v.tasks, fallback);
  for (const t of tasks) if (!allowed.includes(t)) p.add(`${path}.tasks`, `unknown task "${t}"; expected ${allowed.join(', ')}`);
  let data: ProbeEval['data'] = 'synthetic';
  if (typeof v.data === 'string') data = dataPath(dir, v.data);
  else if (isObj(v.data)) {
    data = {};
    for (const [t, s] of Object.entries(v.data)) {
      if (!tasks.includes(t)) p.add(`${path}.data.${t}`, `not one of the tasks ${tasks.join(', ')}`);
      if (typeof s !== 'string') p.add(`${path}.data.${t}`, `expected a data source string, got ${show(s)}`);
      else data[t] = dataPath(dir, s);
    }
  } else if (v.data !== undefined) p.add(`${path}.data`, `expected "synthetic", a folder, or {task: source}, got ${show(v.data)}`);
  return { tasks, data, args: strings(p, `${path}.args`, v.args) };
}

/**
 * Reads and checks sweep file `file`: every problem (unknown fields, bad values, a missing base config)
 * in one InputError naming the file and each field path. Axis and `set` paths are checked against the
 * training config later, per cell (cells.ts), in the same way.
 */
export function loadSweep(file: string, opts: { out?: string } = {}): SweepSpec {
  const path = resolve(file);
  const dir = dirname(path);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new InputError(e.code === 'ENOENT' ? `${file}: no such sweep file` : `${file}: not valid JSON (${e.message})`);
  }
  const p = new Problems(file);
  if (!isObj(raw)) {
    p.add('(top)', `expected a JSON object, got ${show(raw)}`);
    p.done();
  }
  const o = raw as Obj;
  unknownKeys(p, '', o, TOP);
  const name = str(p, 'name', o.name, 'sweep');
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name))
    p.add('name', `letters, digits, ".", "_" and "-" only (it names jobs and folders), got ${show(name)}`);

  let base: SweepSpec['base'] = { preset: 'tiny-supervised' };
  if (typeof o.base !== 'string' || o.base === '')
    p.add('base', `expected a preset name (${PRESET_CHOICES.join(', ')}) or a config file, got ${show(o.base)}`);
  else if (PRESET_CHOICES.includes(o.base)) base = { preset: o.base };
  else if (/\.json$/i.test(o.base)) base = { file: abs(dir, o.base) };
  else p.add('base', `"${o.base}" is neither a preset (${PRESET_CHOICES.join(', ')}) nor a .json config file`);

  const set: Obj = {};
  if (o.set !== undefined && !isObj(o.set)) p.add('set', `expected an object {"field.path": value}, got ${show(o.set)}`);
  else if (isObj(o.set)) Object.assign(set, o.set);

  const axes: [string, unknown[]][] = [];
  if (!isObj(o.axes) || Object.keys(o.axes).length === 0)
    p.add('axes', `expected an object {"field.path": [values...]} with at least one axis, got ${show(o.axes)}`);
  else {
    for (const [k, vals] of Object.entries(o.axes)) {
      if (!/^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$/i.test(k))
        p.add(`axes.${k}`, 'expected a config field path like "model.num_register_tokens"');
      if (!Array.isArray(vals) || vals.length === 0) p.add(`axes.${k}`, `expected a non-empty list of values, got ${show(vals)}`);
      else {
        const seen = new Set(vals.map((v) => JSON.stringify(v)));
        if (seen.size !== vals.length) p.add(`axes.${k}`, `values repeat: ${show(vals)}`);
        if (vals.some((v) => isObj(v) || Array.isArray(v) || v === null))
          p.add(`axes.${k}`, `values must be numbers, strings or booleans, got ${show(vals)}`);
        axes.push([k, vals]);
      }
      if (k in set) p.add(`axes.${k}`, 'is also in "set": give it in one place');
    }
  }

  const evaluate: SweepEvaluate = {};
  if (o.evaluate !== undefined && !isObj(o.evaluate)) p.add('evaluate', `expected an object, got ${show(o.evaluate)}`);
  else if (isObj(o.evaluate)) {
    const e = o.evaluate;
    unknownKeys(p, 'evaluate', e, EVAL_KEYS);
    evaluate.probe = probeEval(p, 'evaluate.probe', e.probe, dir, PROBE_TASKS, ['class']);
    evaluate.dense = probeEval(p, 'evaluate.dense', e.dense, dir, DENSE_TASKS, ['segmentation', 'depth']);
    if (e.lost !== undefined) {
      if (!isObj(e.lost)) p.add('evaluate.lost', `expected an object {data, args}, got ${show(e.lost)}`);
      else {
        unknownKeys(p, 'evaluate.lost', e.lost, ['data', 'args']);
        evaluate.lost = {
          data: dataPath(dir, str(p, 'evaluate.lost.data', e.lost.data, 'synthetic')),
          args: strings(p, 'evaluate.lost.args', e.lost.args),
        };
      }
    }
    if (e.outliers !== undefined) {
      if (!isObj(e.outliers)) p.add('evaluate.outliers', `expected an object {images, count, size, args}, got ${show(e.outliers)}`);
      else {
        const x = e.outliers;
        unknownKeys(p, 'evaluate.outliers', x, ['images', 'count', 'size', 'args']);
        const images = str(p, 'evaluate.outliers.images', x.images, 'synthetic');
        evaluate.outliers = {
          images: images === 'synthetic' ? images : abs(dir, images),
          count: int(p, 'evaluate.outliers.count', x.count, 8, 1),
          size: int(p, 'evaluate.outliers.size', x.size, 224, 16),
          args: strings(p, 'evaluate.outliers.args', x.args),
        };
      }
    }
  }

  const r = isObj(o.resources) ? o.resources : {};
  if (o.resources !== undefined && !isObj(o.resources)) p.add('resources', `expected an object, got ${show(o.resources)}`);
  unknownKeys(p, 'resources', r, RESOURCE_KEYS);
  const resources: CellResources = {
    processes: int(p, 'resources.processes', r.processes, 1, 1),
    threads: int(p, 'resources.threads', r.threads, 1, 1),
    gpus_per_process: int(p, 'resources.gpus_per_process', r.gpus_per_process, 0, 0),
    cpus_per_process: int(p, 'resources.cpus_per_process', r.cpus_per_process, 1, 1),
    time: str(p, 'resources.time', r.time, '04:00:00'),
    memory: str(p, 'resources.memory', r.memory),
    ...(r.processes_per_node !== undefined
      ? { processes_per_node: int(p, 'resources.processes_per_node', r.processes_per_node, 1, 1) }
      : {}),
  };
  if (resources.memory !== undefined && !/^\d+[KMGT]?$/.test(resources.memory))
    p.add(
      'resources.memory',
      `expected Slurm's --mem form, a number and K, M (default), G or T (e.g. "32G"), got ${show(resources.memory)}`,
    );
  if (!/^(\d+-)?\d+(:\d\d){0,2}$/.test(resources.time))
    p.add('resources.time', `expected Slurm's [D-]HH:MM:SS (or minutes), got ${show(resources.time)}`);
  if (resources.threads > resources.cpus_per_process && r.cpus_per_process !== undefined)
    p.add('resources.threads', `${resources.threads} threads per process but cpus_per_process is ${resources.cpus_per_process}`);
  if (r.cpus_per_process === undefined) resources.cpus_per_process = resources.threads;
  const overrides: ResourceOverride[] = [];
  if (r.overrides !== undefined && !Array.isArray(r.overrides))
    p.add('resources.overrides', `expected a list of {"where": {axis: value}, "processes": N, ...}, got ${show(r.overrides)}`);
  for (const [i, ov] of (Array.isArray(r.overrides) ? r.overrides : []).entries()) {
    const path = `resources.overrides.${i}`;
    if (!isObj(ov) || !isObj(ov.where)) {
      p.add(path, `expected {"where": {axis: value}, "processes": N, ...}, got ${show(ov)}`);
      continue;
    }
    unknownKeys(p, path, ov, ['where', ...OVERRIDE_KEYS]);
    const axisValues = new Map(isObj(o.axes) ? Object.entries(o.axes) : []);
    for (const [k, v] of Object.entries(ov.where)) {
      const vals = axisValues.get(k);
      if (!Array.isArray(vals)) p.add(`${path}.where.${k}`, 'not an axis of this sweep');
      else if (!vals.some((x) => JSON.stringify(x) === JSON.stringify(v)))
        p.add(`${path}.where.${k}`, `${show(v)} is not one of the axis values ${show(vals)}`);
    }
    const set: ResourceOverride['set'] = {};
    for (const k of OVERRIDE_KEYS)
      if (ov[k] !== undefined) set[k as keyof ResourceOverride['set']] = int(p, `${path}.${k}`, ov[k], 1, k === 'gpus_per_process' ? 0 : 1);
    overrides.push({ where: ov.where, set });
  }

  const sl = isObj(o.slurm) ? o.slurm : {};
  if (o.slurm !== undefined && !isObj(o.slurm)) p.add('slurm', `expected an object, got ${show(o.slurm)}`);
  unknownKeys(p, 'slurm', sl, ['partition', 'account', 'sbatch', 'setup']);
  const k8 = isObj(o.kubernetes) ? o.kubernetes : {};
  if (o.kubernetes !== undefined && !isObj(o.kubernetes)) p.add('kubernetes', `expected an object, got ${show(o.kubernetes)}`);
  unknownKeys(p, 'kubernetes', k8, ['image', 'namespace', 'runs_claim', 'data_claim', 'data_mount', 'token_secret']);

  const outField = str(p, 'out', o.out);
  const spec: SweepSpec = {
    file: path,
    name,
    base,
    set,
    axes,
    evaluate,
    resources,
    overrides,
    max_concurrent: int(p, 'max_concurrent', o.max_concurrent, 1, 1),
    retries: int(p, 'retries', o.retries, 2, 0),
    train_args: strings(p, 'train_args', o.train_args),
    out: opts.out ? resolve(opts.out) : abs(dir, outField ?? `runs/sweep-${name}`),
    slurm: {
      partition: str(p, 'slurm.partition', sl.partition),
      account: str(p, 'slurm.account', sl.account),
      sbatch: strings(p, 'slurm.sbatch', sl.sbatch),
      setup: strings(p, 'slurm.setup', sl.setup),
    },
    kubernetes: {
      image: str(p, 'kubernetes.image', k8.image, 'ghcr.io/example/vitreg:0.1.0'),
      namespace: str(p, 'kubernetes.namespace', k8.namespace),
      runs_claim: str(p, 'kubernetes.runs_claim', k8.runs_claim, 'vitreg-runs'),
      data_claim: str(p, 'kubernetes.data_claim', k8.data_claim),
      data_mount: str(p, 'kubernetes.data_mount', k8.data_mount, '/data'),
      token_secret: str(p, 'kubernetes.token_secret', k8.token_secret, 'vitreg-train-token'),
    },
  };
  const engine = spec.train_args[spec.train_args.indexOf('--engine') + 1];
  const threaded = resources.threads > 1 || overrides.some((o) => (o.set.threads ?? 1) > 1);
  if (spec.train_args.includes('--engine') && engine === 'onnxruntime' && threaded)
    p.add(
      'resources.threads',
      'threads per process are tfjs training threads (vitreg train --workers); with --engine onnxruntime give ONNX Runtime threads as train_args ["--threads", "N"]',
    );
  for (const flag of ['--out', '--config', '--preset', '--nodes', '--workers', '--resume', '--restart'])
    if (spec.train_args.includes(flag)) p.add('train_args', `${flag} is set by the sweep itself`);
  p.done();
  return spec;
}
