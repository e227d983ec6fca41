/**
 * One membership epoch as a worker sees it: its place in the ring, the inbox its predecessor's frames
 * arrive in, the link it opens to its successor, and how the epoch ends (its collectives fail, its
 * links close). A new membership from the coordinator starts a new epoch.
 */
import type * as grpc from '@grpc/grpc-js';
import { PeerClient, type Member, type Membership } from '@vitreg/proto';
import { Inbox, type EpochEnded, type OutLink } from './frames.js';
import { connectTcpLink, encodeHello, GrpcOutLink, linkMac, type TlsFiles } from './links.js';
import type { RingIO } from './ring.js';
import { CHANNEL_OPTIONS, clientCredentials, deadlineIn, METADATA_LINK } from './grpc-client.js';
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
}

/** Queue limits of an epoch's inbox: the link pauses above 256 MiB queued, resumes below 64 MiB. */
export const INBOX_HIGH = 256 << 20;
export const INBOX_LOW = 64 << 20;

export function openEpoch(m: Membership, me: Member): EpochState {
  const inbox = new Inbox(INBOX_HIGH, INBOX_LOW);
  return { m, epoch: m.epoch, position: me.rank, firstRank: me.firstRank, inbox, incoming: false, out: null, aborted: null, closers: [] };
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
}

/**
 * Opens the link to the successor of `st` (TCP through OpenLink, or a PushChunks stream), retrying
 * for 30 s while the successor is not ready; the epoch ending stops it.
 */
export async function connectSuccessor(st: EpochState, me: LinkIdentity): Promise<OutLink> {
  const n = st.m.members.length;
  const next = st.m.members[(st.position + 1) % n]!;
  const peer = new PeerClient(next.peerAddress, clientCredentials(me.tls), CHANNEL_OPTIONS);
  st.closers.push(() => peer.close());
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (st.aborted) throw st.aborted;
    try {
      // Both data planes start with OpenLink: a one-time nonce whose MAC proves the job token.
      const reply = await new Promise<{ port: number; nonce: Uint8Array }>((resolve, reject) => {
        peer.openLink({ workerId: me.workerId, epoch: st.epoch }, me.metadata, { deadline: deadlineIn(20_000) }, (err, v) =>
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
        return link;
      }
      const host = next.peerAddress.slice(0, next.peerAddress.lastIndexOf(':')).replace(/^\[|\]$/g, '');
      const hello = encodeHello(me.workerId, st.epoch, reply.nonce, mac);
      const link = await connectTcpLink(host, reply.port, hello, me.tls, 10_000);
      st.closers.push(() => link.close());
      if (st.aborted) link.close();
      return link;
    } catch (err) {
      if (st.aborted) throw st.aborted;
      if (Date.now() > deadline)
        throw new Fatal(`cannot open the data link to ${next.name} at ${next.peerAddress}: ${(err as Error).message}`, { cause: err });
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}
