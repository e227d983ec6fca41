/**
 * A training thread of a cluster worker: one rank running @vitreg/trainer's `train` with a
 * `GrpcRingSync`, whose collectives the agent (the process's main thread) runs across the cluster.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initBackend } from '@vitreg/core';
import { flattenBuffers, MembershipChanged, train, unflattenInto, type GradientSync } from '@vitreg/trainer';
import type { AgentToThread, ThreadData, ThreadToAgent } from './messages.js';

const d = workerData as ThreadData;

/** GradientSync of one training thread: each collective is a request to the agent. */
export class GrpcRingSync implements GradientSync {
  rank: number;
  worldSize: number;
  membership: number;
  private seq = 0;
  /** The step the next all-reduce belongs to (1-based, as commitStep's). */
  private nextStep = 1;
  private waiting = new Map<number, { resolve: (m: Extract<AgentToThread, { kind: 'result' }>) => void; reject: (e: Error) => void }>();

  constructor(private readonly thread: number, rank: number, worldSize: number, membership: number) {
    this.rank = rank;
    this.worldSize = worldSize;
    this.membership = membership;
    parentPort!.on('message', (m: AgentToThread) => this.onMessage(m));
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

  private request(msg: Record<string, unknown> & { kind: ThreadToAgent['kind'] }, step: number, transfer: ArrayBuffer[] = []): Promise<Extract<AgentToThread, { kind: 'result' }>> {
    const seq = this.seq++;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      parentPort!.postMessage({ ...msg, thread: this.thread, seq, membership: this.membership, step } as ThreadToAgent, transfer);
    });
  }

  /**
   * The mean of each buffer over every rank, written into the buffer: the buffers are copied into one
   * array handed to the agent (transferred, not cloned), and the agent's result is copied back.
   */
  async allReduce(buffers: Float32Array[]): Promise<void> {
    const flat = flattenBuffers(buffers);
    const r = await this.request({ kind: 'allReduce', data: flat }, this.nextStep, [flat.buffer]);
    unflattenInto(r.data!, buffers);
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
    parentPort!.postMessage({ kind: 'checkpoint', thread: this.thread, step, path } as ThreadToAgent);
  }
}

/** [u32 JSON length][JSON {names, sizes, meta}][zero padding to 4][float32 values]. */
export function encodeState(state: Record<string, Float32Array>, meta: unknown): Uint8Array {
  const names = Object.keys(state);
  const sizes = names.map((k) => state[k]!.length);
  const json = new TextEncoder().encode(JSON.stringify({ names, sizes, meta: meta ?? null }));
  const head = 4 + json.length + ((4 - ((4 + json.length) % 4)) % 4);
  const total = sizes.reduce((a, b) => a + b, 0);
  const out = new Uint8Array(head + 4 * total);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 4);
  const floats = new Float32Array(out.buffer, head, total);
  let off = 0;
  for (const k of names) {
    floats.set(state[k]!, off);
    off += state[k]!.length;
  }
  return out;
}

export function decodeState(bytes: Uint8Array): { state: Record<string, Float32Array>; meta: unknown } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = view.getUint32(0, true);
  const { names, sizes, meta } = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + len))) as { names: string[]; sizes: number[]; meta: unknown };
  const head = 4 + len + ((4 - ((4 + len) % 4)) % 4);
  const state: Record<string, Float32Array> = {};
  let off = bytes.byteOffset + head;
  names.forEach((k, i) => {
    state[k] = new Float32Array(bytes.buffer.slice(off, off + 4 * sizes[i]!));
    off += 4 * sizes[i]!;
  });
  return { state, meta };
}

async function main(): Promise<void> {
  const log = (line: string) => parentPort!.postMessage({ kind: 'log', thread: d.thread, line } as ThreadToAgent);
  await initBackend(d.backend, d.rank === 0 ? {} : { log: () => {} });
  const sync = new GrpcRingSync(d.thread, d.rank, d.worldSize, d.membership);
  const result = await train(d.config, {
    outDir: d.outDir, resume: d.resume, sync, progress: d.progress, checksum: d.checksum, rankName: d.rankName, logSamples: d.logSamples, log,
  });
  parentPort!.postMessage({ kind: 'done', thread: d.thread, result } as ThreadToAgent);
}

// Only when started as a thread by the agent (tests import the codec above).
if (parentPort && (workerData as ThreadData | undefined)?.config) {
  main().catch((err: unknown) => {
    throw err;
  });
}
