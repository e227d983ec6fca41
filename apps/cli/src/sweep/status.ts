/**
 * `vitreg sweep status`: done / running / failed / pending per cell, from the cells' markers and, where a
 * Slurm array job ran the sweep and `sacct` answers, the scheduler's own state of each array task (a task
 * Slurm ended as FAILED, TIMEOUT, OUT_OF_MEMORY or NODE_FAIL without a done marker is failed; one RUNNING
 * is running; PENDING stays pending, with the job named).
 */
import { cellStatus, markerPath, readJson, type Cell, type CellState, type RunningMarker } from './cells.js';
import { sacctStates, type SacctStates } from './slurm.js';
import type { SweepSpec } from './spec.js';

export interface StatusRow {
  index: number;
  name: string;
  state: CellState;
  attempts: number;
  detail: string;
  /** The scheduler's state, when known (sacct). */
  scheduler?: string;
}

/** The array job of the sweep: `job` if given, else the newest one named in a running marker. */
function arrayJob(cells: Cell[], job?: string): string | null {
  if (job) return job;
  for (const c of cells) {
    const r = readJson<RunningMarker>(markerPath(c, 'running'));
    const m = r?.job && /^slurm (\d+)_\d+$/.exec(r.job);
    if (m) return m[1]!;
  }
  return null;
}

const FAILED = /^(FAILED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|BOOT_FAIL|DEADLINE|CANCELLED)/;

/** Every cell's state; `job`: the Slurm array job to ask sacct about. */
export function sweepStatus(
  spec: SweepSpec,
  cells: Cell[],
  opts: { job?: string; sacct?: (job: string) => SacctStates | null } = {},
): StatusRow[] {
  const job = arrayJob(cells, opts.job);
  const sacct = job ? (opts.sacct ?? sacctStates)(job) : null;
  return cells.map((c) => {
    const s = cellStatus(c, spec.retries);
    const row: StatusRow = { index: c.index, name: c.name, state: s.state, attempts: s.attempts, detail: s.detail };
    const task = sacct?.get(c.index);
    // The scheduler knows better than a running marker (a task killed with its node leaves one behind).
    if (task && s.state !== 'done') {
      row.scheduler = `${task.job} ${task.state}`;
      if (task.state === 'RUNNING') row.state = 'running';
      else if (/^(PENDING|REQUEUED|REQUEUE_HOLD|SUSPENDED)/.test(task.state)) row.state = s.state === 'failed' ? 'failed' : 'pending';
      else if (FAILED.test(task.state)) row.state = 'failed';
    }
    return row;
  });
}

/** The status table as text: one line per cell and the counts. */
export function formatStatus(spec: SweepSpec, rows: StatusRow[]): string {
  const w = Math.max(...rows.map((r) => r.name.length));
  const lines = rows.map((r) =>
    `${r.name.padEnd(w)}  ${r.state.padEnd(7)}  ${[r.scheduler, r.detail].filter(Boolean).join('; ')}`.trimEnd(),
  );
  const count = (s: CellState) => rows.filter((r) => r.state === s).length;
  lines.push(
    `${spec.name}: ${rows.length} cells: ${count('done')} done, ${count('running')} running, ${count('failed')} failed, ${count('pending')} pending (${spec.out})`,
  );
  return lines.join('\n');
}
