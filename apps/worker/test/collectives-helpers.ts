/**
 * Two ring positions over an in-memory link (as ring-memory.test.ts), each with its own Collectives and a
 * host that records what the agent posts to its training threads: the agent's collectives without
 * processes or sockets.
 */
import type { Membership } from '@vitreg/proto';
import type { CollectivesHost } from '../src/collectives.js';
import type { EpochState } from '../src/epoch.js';
import { Inbox, type FrameHeader } from '../src/frames.js';
import type { AgentToThread } from '../src/messages.js';

export interface Post {
  thread: number;
  msg: AgentToThread;
  transfer?: ArrayBuffer[];
}

/**
 * Two epoch states of a job of `worldSize` ranks whose links deliver a copy of each frame to the other
 * position's inbox on a later turn.
 */
export function twoPositions(worldSize = 2): EpochState[] {
  const inboxes = [new Inbox(), new Inbox()];
  const m = { epoch: 1, committedStep: 0, worldSize, members: [{}, {}] } as unknown as Membership;
  return inboxes.map((inbox, i) => ({
    m,
    epoch: 1,
    position: i,
    firstRank: i * (worldSize / 2),
    inbox,
    incoming: true,
    out: Promise.resolve({
      ready: async () => undefined,
      close: () => undefined,
      send: (h: FrameHeader, data: Uint8Array) =>
        new Promise<void>((resolve) =>
          setImmediate(() => {
            inboxes[(i + 1) % 2]!.push({ ...h, data: data.slice() });
            resolve();
          }),
        ),
    }) as unknown as EpochState['out'],
    aborted: null,
    closers: [],
    unreachable: '',
  }));
}

/** A host of `threads` training threads at position `st` that records posts and failures. */
export function recordingHost(st: EpochState, threads: number, posts: Post[], failed: Error[]): CollectivesHost {
  return {
    threads,
    current: () => st,
    post: (thread, msg, transfer) => posts.push({ thread, msg, transfer }),
    commitStep: () => Promise.reject(new Error('no commit here')),
    waitForEpoch: () => Promise.resolve(),
    membershipWaitMs: () => 1000,
    coordinatorTimeoutMs: 1000,
    reached: () => undefined,
    fail: (err) => failed.push(err),
    log: () => undefined,
  };
}

/** Waits (up to 2 s) until `done()` or a failure. */
export async function until(done: () => boolean, failed: Error[]): Promise<void> {
  for (let i = 0; i < 1000 && !done() && failed.length === 0; i++) await new Promise((r) => setTimeout(r, 2));
}
