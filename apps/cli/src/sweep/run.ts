/**
 * `vitreg sweep run`: the cells of a sweep on this machine, K at once (a pool: a free slot takes the next
 * cell in order). A failing cell is tried again up to the sweep's `retries`, then reported; a stop signal
 * lets the running cells write their checkpoints and starts no new one; the same command continues.
 */
import { installStopHandlers, stopRequested } from './child.js';
import type { Cell } from './cells.js';
import { runCellRetrying, type CellOutcome } from './run-cell.js';
import type { SweepSpec } from './spec.js';

export interface RunSummary {
  outcomes: CellOutcome[];
  /** 0: every cell done; 1: some failed; 128+n: stopped by a signal. */
  code: number;
}

/** Runs `cells` of `spec` here with `concurrency` at once; `log` gets one line per event. */
export async function runSweep(
  spec: SweepSpec,
  cells: Cell[],
  opts: { concurrency?: number; retryFailed?: boolean; log?: (line: string) => void } = {},
): Promise<RunSummary> {
  const k = Math.max(1, opts.concurrency ?? spec.max_concurrent);
  const say = opts.log ?? (() => {});
  installStopHandlers((signal) => say(`${signal}: the running cells stop after their step with a checkpoint; no new cell starts`));
  const queue = [...cells];
  const outcomes: CellOutcome[] = [];
  let stopCode = 0;
  const slot = async () => {
    for (let cell = queue.shift(); cell; cell = queue.shift()) {
      if (stopRequested()) return;
      // A failed attempt is tried again while attempts <= retries (runCell says "exhausted" after).
      const o = await runCellRetrying(spec, cell, {
        launcher: 'local',
        retryFailed: opts.retryFailed,
        log: say,
        onAttempt: (a) => say(a.message),
      });
      outcomes.push(o);
      if (o.outcome === 'interrupted') {
        stopCode ||= o.code;
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(k, cells.length) }, slot));
  outcomes.sort((a, b) => a.cell.index - b.cell.index);
  const bad = outcomes.some((o) => o.outcome === 'failed' || o.outcome === 'exhausted' || o.outcome === 'busy');
  return { outcomes, code: stopCode || (stopRequested() ? 130 : bad ? 1 : 0) };
}
