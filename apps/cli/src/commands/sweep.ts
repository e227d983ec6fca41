/**
 * `vitreg sweep plan|run|status|collect|run-cell SWEEP.json`: the paper's register sweeps as a grid of
 * training runs (cells) on Slurm, Kubernetes or this machine. Flags and printing only; the work is in
 * ../sweep/ (spec, cells, run-cell, run, plan, slurm, kubernetes, status, collect, figures).
 */
import { relative } from 'node:path';
import { InputError } from '@vitreg/core';
import { CliError, inputAsCliError, parseFlags, type Command } from '../cli.js';
import { expandCells, type Cell } from '../sweep/cells.js';
import { installStopHandlers } from '../sweep/child.js';
import { collectRows, writeTable } from '../sweep/collect.js';
import { writeFigures } from '../sweep/figures.js';
import { writePlan } from '../sweep/plan.js';
import { runSweep } from '../sweep/run.js';
import { LAUNCHERS, runCell, runCellRetrying, type Launcher } from '../sweep/run-cell.js';
import { loadSweep, type SweepSpec } from '../sweep/spec.js';
import { formatStatus, sweepStatus } from '../sweep/status.js';

const usage = `
Usage: vitreg sweep plan SWEEP.json [--out DIR] [--vitreg CMD]
       vitreg sweep run SWEEP.json [--out DIR] [--concurrency K] [--cells I,J,...] [--retry-failed]
       vitreg sweep status SWEEP.json [--out DIR] [--job SLURM_JOB_ID] [--json]
       vitreg sweep collect SWEEP.json [--out DIR] [--partial]
       vitreg sweep run-cell SWEEP.json [--cell I] [--launcher local|srun|env] [--index-map I,J,..] [--retry-failed]

A sweep file names a base config (a preset or a config file), axes (any config field: the cells are
their cartesian product, the first axis slowest), what each cell evaluates after training, and the
resources of one cell; see the root README's "Sweeps" and sweeps/*.json. Every cell has its folder
OUT/cells/<index>-<name>/ (config.json and its hash, train/ with checkpoints and metrics, eval/, logs/,
results.json, done.json or failed.json). A done cell is never run again; a stopped or killed one
continues from its checkpoint; a cell whose config changed under the same folder is refused.

  plan       writes OUT/sweep.json, OUT/plan/cells.json, the cells' configs, OUT/plan/slurm/sweep.sbatch
             (one job array: --array=0-(N-1)%K, --signal=USR1@180, --requeue; submit it with sbatch)
             and OUT/plan/kubernetes/*.yaml (an Indexed Job; a Job per cell for multi-process cells,
             beyond K created suspended: OUT/plan/kubernetes/release.sh starts them K at a time);
             runs nothing. --vitreg CMD: how the nodes run vitreg (default "vitreg")
  run        runs the cells here, K at once (--concurrency, default the file's max_concurrent); a
             failing cell is tried again up to the file's retries; Ctrl-C stops every cell after a
             checkpoint, and the same command continues. --cells: only these indices
  status     done / running / failed / pending per cell (markers; sacct for a Slurm array job)
  collect    OUT/results.jsonl, OUT/results.csv (one row per cell: axes and every measurement),
             OUT/figures/*.png (each metric against the register count, one line per model, error
             bars over seeds; norm histograms side by side), OUT/figures/figures.json (the plotted
             numbers) and OUT/report.html; refuses a sweep with cells not done unless --partial
  run-cell   one cell (what the schedulers run): --cell I (default $SLURM_ARRAY_TASK_ID, else
             $JOB_COMPLETION_INDEX); --launcher local (default: vitreg train, --nodes P for P > 1),
             srun (inside a Slurm job: srun starts the training's P tasks) or env (one rank of a
             cluster job the scheduler started, as in deploy/kubernetes; rank 0 evaluates); under
             srun a failing cell is tried again at once up to the file's retries;
             --index-map I,J,...: index k of the scheduler runs the k-th listed cell
  --out DIR  the sweep's folder (default: the file's "out", else runs/sweep-<name> beside the file)
Exit codes: 0 done; 1 a cell failed; 2 a bad sweep file or flag; 130 / 138 / 143 stopped by a signal.
`;

const ACTIONS = ['plan', 'run', 'status', 'collect', 'run-cell'] as const;
type Action = (typeof ACTIONS)[number];

const say = (line: string) => process.stderr.write(`vitreg sweep: ${line}\n`);
const shown = (p: string) => {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
};

function load(file: string, out: string | undefined): { spec: SweepSpec; cells: Cell[] } {
  try {
    const spec = loadSweep(file, { out });
    return { spec, cells: expandCells(spec) };
  } catch (err) {
    throw inputAsCliError(err);
  }
}

/** --cells 0,3,5 -> those cells (each index checked). */
function pick(cells: Cell[], list: string | undefined): Cell[] {
  if (list === undefined) return cells;
  const picked: Cell[] = [];
  for (const s of list.split(',')) {
    const i = Number(s);
    const c = cells.find((x) => x.index === i);
    if (!c || s.trim() === '') throw new CliError(`--cells: "${s}" is not a cell index (0-${cells.length - 1})`);
    picked.push(c);
  }
  return picked;
}

export const sweepCommand: Command = {
  summary: 'register sweeps: plan (Slurm array, Kubernetes Indexed Job), run here, status, collect (table + figures)',
  usage,
  async run(argv) {
    const f = parseFlags('sweep', argv, {
      out: { type: 'string' },
      vitreg: { type: 'string' },
      concurrency: { type: 'string', short: 'j' },
      cells: { type: 'string' },
      'retry-failed': { type: 'boolean' },
      job: { type: 'string' },
      json: { type: 'boolean' },
      partial: { type: 'boolean' },
      cell: { type: 'string' },
      launcher: { type: 'string' },
      'index-map': { type: 'string' },
    });
    const [action, file, ...extra] = f.positionals;
    if (action === undefined) f.fail(`expected an action: ${ACTIONS.join(', ')}`);
    else if (!ACTIONS.includes(action as Action)) f.fail(`unknown action "${action}"; expected one of ${ACTIONS.join(', ')}`);
    if (action !== undefined && file === undefined) f.fail('expected the sweep file: vitreg sweep ACTION SWEEP.json');
    if (extra.length) f.fail(`unexpected arguments: ${extra.join(' ')}`);
    const onlyFor: [string, Action[]][] = [
      ['vitreg', ['plan']],
      ['concurrency', ['run']],
      ['cells', ['run']],
      ['retry-failed', ['run', 'run-cell']],
      ['job', ['status']],
      ['json', ['status']],
      ['partial', ['collect']],
      ['cell', ['run-cell']],
      ['launcher', ['run-cell']],
      ['index-map', ['run-cell']],
    ];
    for (const [flag, actions] of onlyFor)
      if (f.values[flag as keyof typeof f.values] !== undefined && action && !actions.includes(action as Action))
        f.fail(`--${flag} is for ${actions.join(' / ')}, not ${action}`);
    const concurrency = f.optionalInt('concurrency', 1);
    const launcher = f.choice('launcher', LAUNCHERS, 'local') as Launcher;
    const cellFlag = f.values.cell ?? process.env.SLURM_ARRAY_TASK_ID ?? process.env.JOB_COMPLETION_INDEX;
    if (action === 'run-cell' && (cellFlag === undefined || !/^\d+$/.test(cellFlag)))
      f.fail(
        `--cell: expected a cell index (or $SLURM_ARRAY_TASK_ID / $JOB_COMPLETION_INDEX), got ${cellFlag === undefined ? 'none' : `"${cellFlag}"`}`,
      );
    const indexMap = f.values['index-map']?.split(',').map(Number);
    if (indexMap?.some((i) => !Number.isInteger(i) || i < 0))
      f.fail(`--index-map: expected cell indices like 0,1,3, got "${f.values['index-map']}"`);
    f.done();
    const { spec, cells } = load(file!, f.values.out);
    try {
      switch (action as Action) {
        case 'plan': {
          const files = await writePlan(spec, cells, { vitreg: f.values.vitreg });
          const k = Math.min(spec.max_concurrent, cells.length);
          process.stdout.write(
            [
              `${spec.name}: ${cells.length} cells (${spec.axes.map(([a, v]) => `${a} x${v.length}`).join(', ')}), ${k} at once, ${spec.resources.processes} process(es) each`,
              `  cells:      ${shown(files.cells)}`,
              `  Slurm:      sbatch ${shown(files.slurm)}`,
              ...files.kubernetes.map((k8) => `  Kubernetes: kubectl apply -f ${shown(k8)}`),
              ...(files.release ? [`              then ${shown(files.release)} (starts the suspended per-cell Jobs, ${k} at a time)`] : []),
              `  here:       vitreg sweep run ${shown(files.sweep)}`,
            ].join('\n') + '\n',
          );
          return 0;
        }
        case 'run': {
          const chosen = pick(cells, f.values.cells);
          say(
            `${spec.name}: ${chosen.length} cells, ${Math.min(concurrency ?? spec.max_concurrent, chosen.length)} at once, in ${shown(spec.out)}`,
          );
          const r = await runSweep(spec, chosen, { concurrency, retryFailed: f.values['retry-failed'], log: say });
          const count = (o: string) => r.outcomes.filter((x) => x.outcome === o).length;
          process.stdout.write(
            JSON.stringify({
              out: spec.out,
              cells: chosen.length,
              done: count('done'),
              skipped: count('skipped'),
              failed: count('failed') + count('exhausted'),
              interrupted: count('interrupted'),
              ...(count('busy') ? { busy: count('busy') } : {}),
            }) + '\n',
          );
          return r.code;
        }
        case 'run-cell': {
          // --index-map: the scheduler's index k runs the k-th listed cell (an Indexed Job of some cells).
          const index = indexMap ? indexMap[Number(cellFlag)] : Number(cellFlag);
          const cell = cells.find((c) => c.index === index);
          if (!cell)
            throw new CliError(
              `--cell ${cellFlag}${indexMap ? ` (--index-map: ${index ?? 'none'})` : ''}: the sweep has cells 0-${cells.length - 1}`,
            );
          installStopHandlers((signal) => say(`${signal}: cell ${cell.name} stops after its step with a checkpoint`));
          // A Slurm array task (srun) retries its failing cell in its allocation up to `retries`; elsewhere
          // the scheduler retries (Kubernetes: a new pod per attempt) or `vitreg sweep run` does.
          const opts = { launcher, retryFailed: f.values['retry-failed'], log: say };
          if (launcher !== 'srun') {
            const o = await runCell(spec, cell, opts);
            say(o.message);
            return o.code;
          }
          return (await runCellRetrying(spec, cell, { ...opts, onAttempt: (a) => say(a.message) })).code;
        }
        case 'status': {
          const rows = sweepStatus(spec, cells, { job: f.values.job });
          process.stdout.write((f.values.json ? JSON.stringify(rows, null, 1) : formatStatus(spec, rows)) + '\n');
          return 0;
        }
        case 'collect': {
          const c = collectRows(spec, cells, { partial: f.values.partial });
          const table = await writeTable(spec, c);
          const figs = await writeFigures(spec, cells, c);
          if (c.missing.length)
            say(`incomplete: ${c.missing.length} of ${cells.length} cells missing (${c.missing.map((m) => m.name).join(', ')})`);
          process.stdout.write(
            [
              `${shown(table.csv)}`,
              `${shown(table.jsonl)}`,
              ...Object.values(figs.plots).map(shown),
              ...(figs.histograms ? [shown(figs.histograms)] : []),
              shown(figs.html),
            ].join('\n') + '\n',
          );
          return 0;
        }
      }
    } catch (err) {
      if (err instanceof InputError) throw new CliError(err.message);
      throw err;
    }
  },
};
