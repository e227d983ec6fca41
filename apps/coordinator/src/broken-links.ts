/**
 * The rule for a broken ring link: two ring neighbours that both still reach the coordinator but not
 * each other (a network path between two machines broke). Their data link stays silent, so the step's
 * all-reduce would wait forever; a worker that hears nothing on a ring link for the worker timeout (or
 * sees it break) names that neighbour in its heartbeats (`HeartbeatRequest.unreachable_peer`).
 *
 * The rule: a report counts when it is of the current membership epoch and names a ring neighbour of
 * the reporter, both unfinished members. It is acted on once BOTH workers gave a sign of life after it
 * arrived (a heartbeat, a step report): then the coordinator removes the later of the two in ring
 * order (position 0, which hosts an in-process coordinator, is never the one removed for a link) and
 * publishes the smaller ring, as for any removal. Waiting for both signs of life keeps a report about
 * a worker that is really gone (its whole host cut off, or stopped) from removing the healthy
 * reporter: that worker misses its heartbeats instead and is removed by the worker timeout. A new
 * membership clears every report.
 */
import type { WorkerRecord } from './membership.js';

/** A report of a broken link between two workers, and when it first arrived. */
export interface LinkReport {
  reporter: WorkerRecord;
  peer: WorkerRecord;
  since: number;
}

export class BrokenLinks {
  private reports = new Map<string, LinkReport>();

  /**
   * Records that `reporter` cannot reach `peer` (the caller checked the epoch). Ignored unless both are
   * unfinished members and ring neighbours in `members` (the current ring order). True when new.
   */
  report(members: readonly WorkerRecord[], reporter: WorkerRecord, peer: WorkerRecord, now: number): boolean {
    if (reporter === peer || reporter.finished || peer.finished) return false;
    const a = members.indexOf(reporter);
    const b = members.indexOf(peer);
    const n = members.length;
    if (a < 0 || b < 0 || n < 2) return false;
    if ((a + 1) % n !== b && (b + 1) % n !== a) return false;
    const key = [reporter.id, peer.id].sort().join(' ');
    if (this.reports.has(key)) return false;
    this.reports.set(key, { reporter, peer, since: now });
    return true;
  }

  /**
   * A report whose two workers both gave a sign of life after it arrived, if any (then forgotten).
   * A report against a worker that itself reports another neighbour waits: a ring stalls downstream
   * of the one worker that stopped sending (each waits for its predecessor), so the reports form a
   * chain, and only its head names the culprit; removing it ends the others (a new membership).
   */
  takeConfirmed(): LinkReport | undefined {
    const reports = [...this.reports.values()];
    for (const [key, r] of this.reports) {
      if (reports.some((o) => o.reporter === r.peer && o.peer !== r.reporter)) continue;
      if (r.reporter.lastSeen > r.since && r.peer.lastSeen > r.since) {
        this.reports.delete(key);
        return r;
      }
    }
    return undefined;
  }

  clear(): void {
    this.reports.clear();
  }
}

/** Of a broken link's two workers, the one removed: the later in ring order (`members` is the ring). */
export function removedFor(members: readonly WorkerRecord[], r: LinkReport): WorkerRecord {
  return members.indexOf(r.reporter) > members.indexOf(r.peer) ? r.reporter : r.peer;
}
