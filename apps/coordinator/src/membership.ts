/**
 * Workers and the membership messages of a job: a worker's record as the job state keeps it, the
 * ring order, the member list of an epoch (ranks and first ranks from each worker's threads), and the
 * delivery of a membership to the sinks workers watch with.
 */
import type { Member, Membership } from '@vitreg/proto';
import type { MembershipSink, WorkerState } from './job-settings.js';

/** A worker as the job knows it. */
export interface WorkerRecord {
  id: string;
  name: string;
  launcherRank: number;
  peerAddress: string;
  threads: number;
  joinOrder: number;
  /** When it last gave a sign of life (the job state's clock). */
  lastSeen: number;
  state: WorkerState;
  finished: boolean;
  /** Why it was removed or left. */
  why?: string;
  watchers: Set<MembershipSink>;
}

/** Ring order: launcher rank >= 0 ascending first, then the others in join order. */
export function ringOrder(a: WorkerRecord, b: WorkerRecord): number {
  const ra = a.launcherRank >= 0 ? a.launcherRank : Infinity;
  const rb = b.launcherRank >= 0 ? b.launcherRank : Infinity;
  if (ra !== rb) return ra - rb;
  return a.joinOrder - b.joinOrder;
}

/** The members of an epoch, `members` already in ring order: rank = position, firstRank = threads before it. */
export function memberList(members: readonly WorkerRecord[]): Member[] {
  let first = 0;
  return members.map((w, rank): Member => {
    const m: Member = { workerId: w.id, name: w.name, rank, firstRank: first, threads: w.threads, peerAddress: w.peerAddress };
    first += w.threads;
    return m;
  });
}

/** "name=rank@firstRank ..." for log lines. */
export function ringText(members: readonly Member[]): string {
  return members.map((m) => `${m.name}=${m.rank}@${m.firstRank}`).join(' ');
}

/** Sends `m` to every sink of every worker in `audience`, then ends the sinks of those in `endFor`. */
export function deliver(m: Membership | null, audience: Iterable<WorkerRecord>, endFor: Iterable<WorkerRecord> = []): void {
  if (m)
    for (const w of audience) {
      for (const s of w.watchers) {
        try {
          s.write(m);
        } catch {
          /* the stream is gone; its close handler removes it */
        }
      }
    }
  for (const w of endFor) {
    for (const s of [...w.watchers]) {
      w.watchers.delete(s);
      try {
        s.end();
      } catch {
        /* already closed */
      }
    }
  }
}
