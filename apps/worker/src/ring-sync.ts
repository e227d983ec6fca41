/**
 * The GradientSync of a cluster worker's training thread: each collective (all-reduce, broadcast,
 * step commit) is a request to the agent on the process's main thread (collectives.ts), which runs
 * it across the cluster; a collective the agent aborts (the membership changed) rejects with
 * MembershipChanged and gives the thread its place in the new epoch.
 */
import { parentPort, type MessagePort } from 'node:worker_threads';
import { MembershipChanged, unflattenInto, type GradientSync } from '@vitreg/trainer';
import type { AgentToThread, ThreadToAgent } from './messages.js';
import { decodeState, encodeState } from './state-codec.js';

/** GradientSync of one training thread: each collective is a request to the agent. */
export class GrpcRingSync implements GradientSync {
  rank: number;
  worldSize: number;
  membership: number;
  private seq = 0;
  /** The step the next all-reduce belongs to (1-based, as commitStep's). */
  private nextStep = 1;
  private waiting = new Map<number, { resolve: (m: Extract<AgentToThread, { kind: 'result' }>) => void; reject: (e: Error) => void }>();

  constructor(
    private readonly thread: number,
    rank: number,
    worldSize: number,
    membership: number,
    /** The agent's end of the conversation (default: this worker thread's parent). */
    private readonly port: MessagePort = parentPort!,
  ) {
    this.rank = rank;
    this.worldSize = worldSize;
    this.membership = membership;
    port.on('message', (m: AgentToThread) => this.onMessage(m));
  }

  private onMessage(m: AgentToThread): void {
    const w = this.waiting.get(m.seq);
    if (!w) return;
    this.waiting.delete(m.seq);
    if (m.kind === 'result') return w.resolve(m);
    if (m.next) {
      this.rank = m.next.rank;
      this.worldSize = m.next.worldSize;
      this.membership = m.next.membership;
      this.seq = 0;
    }
    w.reject(new MembershipChanged(m.reason, this.membership));
  }

  private request(
    msg: Record<string, unknown> & { kind: ThreadToAgent['kind'] },
    step: number,
    transfer: ArrayBuffer[] = [],
  ): Promise<Extract<AgentToThread, { kind: 'result' }>> {
    const seq = this.seq++;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      this.port.postMessage({ ...msg, thread: this.thread, seq, membership: this.membership, step } as ThreadToAgent, transfer);
    });
  }

  /** The shared buffer the agent reduces in place (kept: every step all-reduces the same length). */
  private stage: Float32Array | null = null;
  private staging = false;

  /**
   * The mean of each buffer over every rank, written into the buffer: the buffers are copied into this
   * thread's shared stage (a SharedArrayBuffer kept from step to step), which the agent on the process's
   * main thread reduces in place, and the means copied back: one copy in, one out, nothing allocated.
   * The engines' own buffers cannot be the stage: onnxruntime-node takes no tensor over a
   * SharedArrayBuffer.
   */
  async allReduce(buffers: Float32Array[]): Promise<void> {
    const total = buffers.reduce((n, b) => n + b.length, 0);
    // A second all-reduce while one is under way (none in the loop) gets a stage of its own.
    const own = !this.staging;
    if (own && (this.stage?.length ?? -1) < total) this.stage = new Float32Array(new SharedArrayBuffer(4 * total));
    const stage = own ? this.stage!.subarray(0, total) : new Float32Array(new SharedArrayBuffer(4 * total));
    if (own) this.staging = true;
    try {
      let off = 0;
      for (const b of buffers) {
        stage.set(b, off);
        off += b.length;
      }
      await this.request({ kind: 'allReduce', data: stage }, this.nextStep);
      unflattenInto(stage, buffers);
    } finally {
      if (own) this.staging = false;
    }
  }

  async broadcast(state: Record<string, Float32Array>, meta?: unknown): Promise<{ state: Record<string, Float32Array>; meta: unknown }> {
    let payload: Uint8Array | undefined;
    if (this.rank === 0) payload = encodeState(state, meta);
    const r = await this.request({ kind: 'broadcast', payload }, 0, payload ? [payload.buffer as ArrayBuffer] : []);
    const got = this.rank === 0 ? { state, meta } : decodeState(r.payload!);
    const step = (got.meta as { step?: number } | undefined)?.step;
    if (typeof step === 'number') this.nextStep = step + 1;
    return got;
  }

  async commitStep(step: number, values: Record<string, number>): Promise<Record<string, number>[]> {
    const r = await this.request({ kind: 'commit', values }, step);
    this.nextStep = step + 1;
    return r.reports!;
  }

  async checkpointWritten(step: number, path: string): Promise<void> {
    this.port.postMessage({ kind: 'checkpoint', thread: this.thread, step, path } as ThreadToAgent);
  }
}
