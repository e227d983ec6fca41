/**
 * One membership epoch as a worker sees it: its place in the ring, the inbox its predecessor's frames
 * arrive in, the link it opens to its successor, and how the epoch ends (its collectives fail, its
 * links close). A new membership from the coordinator starts a new epoch.
 *
 * A ring link that breaks, stays silent past the link timeout (links.ts' liveness), or cannot be
 * opened or attached within it marks its neighbour `unreachable`: the worker's heartbeats then name
 * it, and the coordinator removes one of the two (the coordinator's broken-links.ts) unless one of
 * them turns out to be gone altogether.
 */
import type * as grpc from '@grpc/grpc-js';
import { PeerClient, type Member, type Membership } from '@vitreg/proto';
import { Inbox, type EpochEnded, type OutLink } from './frames.js';
import { connectTcpLink, encodeHello, GrpcOutLink, linkMac, type Liveness, type TlsFiles } from './links.js';
import type { RingIO } from './ring.js';
import { channelOptions, clientCredentials, deadlineIn, METADATA_LINK } from './grpc-client.js';
import { Fatal } from './fatal.js';

export interface EpochState {
  m: Membership;
  epoch: number;
  /** This worker's position in the ring. */
  position: number;
  /** The global rank of this worker's first thread. */
  firstRank: number;
  inbox: Inbox;
  /** Incoming link attached (one per epoch). */
  incoming: boolean;
  out: Promise<OutLink> | null;
  aborted: EpochEnded | null;
  /** Run when the epoch ends (links, clients). */
  closers: (() => void)[];
  /** The worker id of a ring neighbour whose link is down ('' while none): heartbeats report it. */
  unreachable: string;
}

/** Queue limits of an epoch's inbox: the link pauses above 256 MiB queued, resumes below 64 MiB. */
export const INBOX_HIGH = 256 << 20;
export const INBOX_LOW = 64 << 20;

export function openEpoch(m: Membership, me: Member): EpochState {
  const inbox = new Inbox(INBOX_HIGH, INBOX_LOW);
  const position = me.rank;
  return {
    m,
    epoch: m.epoch,
    position,
    firstRank: me.firstRank,
    inbox,
    incoming: false,
    out: null,
    aborted: null,
    closers: [],
    unreachable: '',
  };
}

/**
 * The link with a ring neighbour of `st` is down (not because the epoch ended): the neighbour becomes
 * `unreachable` (the first one named stays), with one log line.
 */
export function linkDown(st: EpochState, side: 'successor' | 'predecessor', err: Error, log: (line: string) => void): void {
  if (st.aborted || st.unreachable) return;
  const n = st.m.members.length;
  const peer = st.m.members[side === 'successor' ? (st.position + 1) % n : (st.position - 1 + n) % n]!;
  st.unreachable = peer.workerId;
  log(
    `the data link with ${peer.name}, this worker's ring ${side} in epoch ${st.epoch}, is down (${err.message}); telling the coordinator`,
  );
}

/** The predecessor's link not attached within `timeoutMs` of the epoch's start: it is down. */
export function watchIncoming(st: EpochState, timeoutMs: number, log: (line: string) => void): void {
  if (st.m.members.length < 2) return;
  const timer = setTimeout(() => {
    if (!st.incoming) linkDown(st, 'predecessor', new Error(`no link from it within ${timeoutMs} ms`), log);
  }, timeoutMs);
  timer.unref();
  st.closers.push(() => clearTimeout(timer));
}

/** Ends `st` with `reason`: its collectives fail, its links close. False when it had ended already. */
export function endEpoch(st: EpochState, reason: EpochEnded): boolean {
  if (st.aborted) return false;
  st.aborted = reason;
  st.inbox.fail(reason);
  for (const c of st.closers) c();
  st.out?.then(
    (l) => l.close(),
    () => undefined,
  );
  return true;
}

/** The worker id of this worker's ring predecessor in `st`. */
export function predecessorId(st: EpochState): string {
  const n = st.m.members.length;
  return st.m.members[(st.position - 1 + n) % n]!.workerId;
}

/** The ring of `st` for the collectives (waits for the outgoing link). */
export async function ringIO(st: EpochState): Promise<RingIO> {
  const out = st.out ? await st.out : undefined;
  return { out, inbox: st.inbox, epoch: st.epoch, position: st.position, size: st.m.members.length };
}

/** Who opens a link, and with what. */
export interface LinkIdentity {
  workerId: string;
  token: string;
  /** The job's call metadata. */
  metadata: grpc.Metadata;
  tls?: TlsFiles;
  log: (line: string) => void;
  /** Signs of life on the raw link; its timeout also bounds how long opening the link may fail before the successor counts as unreachable. */
  liveness?: Liveness;
}

/**
 * Opens the link to the successor of `st` (TCP through OpenLink, or a PushChunks stream), retrying
 * while the successor is not ready: past the liveness timeout the successor counts as unreachable
 * (linkDown), past max(30 s, twice that) this worker gives up (Fatal); the epoch ending stops it.
 * The link's own failures later mark the successor unreachable too.
 */
export async function connectSuccessor(st: EpochState, me: LinkIdentity): Promise<OutLink> {
  const n = st.m.members.length;
  const next = st.m.members[(st.position + 1) % n]!;
  const unreachableAfter = me.liveness?.timeoutMs ?? 30_000;
  const peer = new PeerClient(next.peerAddress, clientCredentials(me.tls), channelOptions(unreachableAfter));
  st.closers.push(() => peer.close());
  const start = Date.now();
  const deadline = start + Math.max(30_000, 2 * unreachableAfter);
  // One attempt lasts at most the unreachable time (a partitioned peer answers nothing at all).
  const attemptMs = Math.min(20_000, Math.max(2_000, unreachableAfter));
  const down = (err: Error) => linkDown(st, 'successor', err, me.log);
  for (;;) {
    if (st.aborted) throw st.aborted;
    try {
      // Both data planes start with OpenLink: a one-time nonce whose MAC proves the job token.
      const reply = await new Promise<{ port: number; nonce: Uint8Array }>((resolve, reject) => {
        peer.openLink({ workerId: me.workerId, epoch: st.epoch }, me.metadata, { deadline: deadlineIn(attemptMs) }, (err, v) =>
          err ? reject(err) : resolve(v!),
        );
      });
      const mac = linkMac(me.token, reply.nonce, st.epoch, me.workerId);
      if (st.m.transport === 'grpc') {
        const md = me.metadata.clone();
        md.set(METADATA_LINK, `${Buffer.from(reply.nonce).toString('hex')}:${mac.toString('hex')}`);
        const call = peer.pushChunks(md, (err) => {
          if (err && !st.aborted) me.log(`link to ${next.name} ended: ${err.details}`);
        });
        const link = new GrpcOutLink(call as unknown as grpc.ClientWritableStream<unknown>, me.workerId);
        st.closers.push(() => link.close());
        link.onFailure(down);
        return link;
      }
      const host = next.peerAddress.slice(0, next.peerAddress.lastIndexOf(':')).replace(/^\[|\]$/g, '');
      const hello = encodeHello(me.workerId, st.epoch, reply.nonce, mac);
      const link = await connectTcpLink(host, reply.port, hello, me.tls, Math.min(10_000, attemptMs), me.liveness);
      st.closers.push(() => link.close());
      if (st.aborted) link.close();
      link.onFailure(down);
      return link;
    } catch (err) {
      if (st.aborted) throw st.aborted;
      if (Date.now() - start > unreachableAfter) down(new Error(`cannot open it for ${Date.now() - start} ms: ${(err as Error).message}`));
      if (Date.now() > deadline)
        throw new Fatal(`cannot open the data link to ${next.name} at ${next.peerAddress}: ${(err as Error).message}`, { cause: err });
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}
