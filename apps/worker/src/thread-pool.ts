/**
 * A worker's training threads (worker_threads running thread.ts, one rank each): started once the
 * first membership gives their ranks; their messages (log lines, checkpoints written, collective
 * requests, results) dispatched to the agent; a thread that fails or exits before finishing is fatal.
 */
import type { Worker } from 'node:worker_threads';
import { startThread } from '@vitreg/core';
import type { TrainResult } from '@vitreg/trainer';
import { Fatal } from './fatal.js';
import type { AgentToThread, ThreadData, ThreadToAgent } from './messages.js';

/** What the threads tell the agent. */
export interface ThreadPoolHost {
  /** True once the worker finished or failed (a thread exiting then is no failure). */
  over(): boolean;
  log(line: string): void;
  /** Rank 0's thread wrote a checkpoint of `step` at `path`. */
  checkpoint(step: number, path: string): void;
  /** A thread asks for a collective. */
  collective(thread: number, m: Extract<ThreadToAgent, { kind: 'allReduce' | 'broadcast' | 'commit' }>): void;
  /** Every thread finished training; `results[t]` is thread t's. */
  finished(results: TrainResult[]): void;
  fail(err: Error): void;
}

/** The entry of a training thread, beside this file (thread.ts from the sources, thread.js from dist). */
const THREAD_ENTRY = new URL(`./thread${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);

export class ThreadPool {
  private threads: Worker[] = [];
  private results: (TrainResult | undefined)[] = [];

  constructor(private readonly host: ThreadPoolHost) {}

  get started(): boolean {
    return this.threads.length > 0;
  }

  /** Starts one thread per entry of `data` (thread t gets data[t]). */
  start(data: ThreadData[]): void {
    data.forEach((d, t) => {
      const w = startThread(THREAD_ENTRY, d);
      this.threads.push(w);
      w.on('message', (m: ThreadToAgent) => this.onMessage(t, m));
      w.on('error', (err) => this.host.fail(new Fatal(`training thread ${t} failed: ${err.message}`)));
      w.on('exit', (code) => {
        if (this.host.over() || this.results[t] !== undefined) return;
        this.host.fail(new Fatal(`training thread ${t} exited with code ${code} before finishing`));
      });
    });
  }

  post(thread: number, msg: AgentToThread, transfer: ArrayBuffer[] = []): void {
    this.threads[thread]?.postMessage(msg, transfer);
  }

  private onMessage(t: number, m: ThreadToAgent): void {
    switch (m.kind) {
      case 'log':
        this.host.log(m.line);
        return;
      case 'checkpoint':
        this.host.checkpoint(m.step, m.path);
        return;
      case 'done':
        this.results[t] = m.result;
        if (this.results.filter((r) => r !== undefined).length === this.threads.length) this.host.finished(this.results as TrainResult[]);
        return;
      default:
        this.host.collective(t, m);
    }
  }

  async terminate(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.terminate().catch(() => undefined)));
  }
}
