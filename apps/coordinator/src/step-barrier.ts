/**
 * The step barrier of one membership epoch (the first phase of the two-phase step commit): the
 * CommitStep reports held until every unfinished member reported the same step.
 */
import type { RankValues, StepCommit } from '@vitreg/proto';
import { Refusal } from './job-settings.js';
import type { WorkerRecord } from './membership.js';

interface Held {
  worker: WorkerRecord;
  step: number;
  ranks: RankValues[];
  reply: (r: StepCommit) => void;
}

/** A step every active member reported: its ranks' values in rank order, and the replies to answer. */
export interface CompleteStep {
  step: number;
  ranks: RankValues[];
  replies: ((r: StepCommit) => void)[];
}

export class StepBarrier {
  private held = new Map<string, Held>();

  /**
   * Holds `worker`'s report of `step` (replacing, and answering not committed, an earlier one of the
   * same worker). A step other than the one other members reported in this epoch is refused. Returns
   * a function that withdraws the report.
   */
  hold(worker: WorkerRecord, step: number, ranks: RankValues[], reply: (r: StepCommit) => void, epoch: number): () => void {
    for (const h of this.held.values()) {
      if (h.worker !== worker && h.step !== step)
        throw new Refusal('INVALID_ARGUMENT', `step ${step} reported, but ${h.worker.name} reported step ${h.step} in epoch ${epoch}`);
    }
    this.held.get(worker.id)?.reply({ committed: false, epoch, ranks: [] }); // superseded by this report
    const entry: Held = { worker, step, ranks, reply };
    this.held.set(worker.id, entry);
    return () => {
      if (this.held.get(worker.id) === entry) this.held.delete(worker.id);
    };
  }

  /** When every one of `active` reported: the reports, taken from the barrier; else null. */
  takeIfComplete(active: readonly WorkerRecord[]): CompleteStep | null {
    if (active.length === 0 || !active.every((m) => this.held.has(m.id))) return null;
    const calls = [...this.held.values()];
    this.held = new Map();
    return {
      step: calls[0]!.step,
      ranks: calls.flatMap((h) => h.ranks).sort((a, b) => a.rank - b.rank),
      replies: calls.map((h) => h.reply),
    };
  }

  /** Answers every held report with committed = false and `epoch` (the membership changed, or the job ended). */
  release(epoch: number): void {
    const calls = [...this.held.values()];
    this.held = new Map();
    for (const h of calls) h.reply({ committed: false, epoch, ranks: [] });
  }
}
