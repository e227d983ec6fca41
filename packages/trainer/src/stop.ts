/**
 * Stopping a training run on purpose (Ctrl-C, a scheduler's warning before a time limit or a
 * preemption, a pod being deleted): `train(config, { stop })` ends after the step in progress with a
 * checkpoint when `stop` is requested, and `TrainResult.interrupted` says at which step.
 *
 * - `StopSignal` is anything with `aborted` (an AbortSignal does), or a `SharedStop`, whose flag lives
 *   in shared memory and so also reaches worker threads (`trainThreads`, a cluster worker's threads).
 * - Every rank puts a request it sees into its step report (`STOP_KEY`, the signal's number), and the
 *   loop stops after the first step whose committed reports hold one: every rank of a job stops after
 *   the same step, whichever of them (or a cluster's coordinator) saw the signal.
 * - `stopOnSignals(['SIGINT', 'SIGTERM', 'SIGUSR1'])` wires process signals to a SharedStop: the first
 *   requests the stop, a second exits at once with 128 + its number (as shells report a signal).
 */
import { signalName, signalNumber } from '@vitreg/core';

/** What `train`'s `stop` option takes: an AbortSignal, or anything with `aborted` (and `reason`). */
export interface StopSignal {
  readonly aborted: boolean;
  readonly reason?: unknown;
}

/** The step-report value that carries a stop request to every rank (the signal's number, or -1). */
export const STOP_KEY = 'stop_signal';

/** The signals `stopOnSignals` listens to by default. */
export const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGUSR1'];

/** A signal's number and name: @vitreg/core's (signals.ts), which the coordinator uses too. */
export { signalName, signalNumber };

/** The exit code a shell reports for a process ended by `signal`: 128 + its number (130 for SIGINT, 143 for SIGTERM). */
export function signalExitCode(signal: string | undefined): number {
  const n = signal === undefined ? undefined : signalNumber(signal);
  return n === undefined ? 1 : 128 + n;
}

/**
 * A stop request in shared memory: `request(code)` sets it (first request wins), `aborted` reads it.
 * Passed to a worker thread (in workerData) it arrives as `{ flag }` on the same memory, which `train`
 * reads the same way.
 */
export class SharedStop implements StopSignal {
  readonly flag: Int32Array;

  constructor(flag?: Int32Array) {
    this.flag = flag ?? new Int32Array(new SharedArrayBuffer(4));
  }

  /** Requests the stop with a signal's number (-1: no signal); later requests keep the first. */
  request(code = -1): void {
    Atomics.compareExchange(this.flag, 0, 0, code === 0 ? -1 : code);
  }

  get aborted(): boolean {
    return Atomics.load(this.flag, 0) !== 0;
  }

  /** The signal that requested the stop, if one did. */
  get reason(): NodeJS.Signals | undefined {
    const code = Atomics.load(this.flag, 0);
    return code > 0 ? signalName(code) : undefined;
  }
}

/**
 * The request `stop` holds: 0 when none, else the signal's number (-1 when requested without a signal).
 * Takes a StopSignal or a SharedStop as a worker thread receives it (`{ flag }`).
 */
export function stopCode(stop: StopSignal | { flag: Int32Array } | undefined): number {
  if (!stop) return 0;
  if ('flag' in stop && stop.flag instanceof Int32Array) return Atomics.load(stop.flag, 0);
  if (!(stop as StopSignal).aborted) return 0;
  const reason = (stop as StopSignal).reason;
  const n = typeof reason === 'string' ? signalNumber(reason) : undefined;
  return n ?? -1;
}

export interface StopOnSignalsOptions {
  /** Called once, on the first signal (e.g. to say that the run stops after the current step). */
  onFirst?: (signal: NodeJS.Signals) => void;
  /** Called on a second signal; default: exit at once with 128 + its number. */
  onSecond?: (signal: NodeJS.Signals) => void;
}

/**
 * Listens to `signals` (default SIGINT, SIGTERM, SIGUSR1): the first requests a stop on the returned
 * SharedStop, a second exits at once. `dispose()` removes the listeners (the signals' defaults return).
 */
export function stopOnSignals(
  signals: readonly NodeJS.Signals[] = STOP_SIGNALS,
  opts: StopOnSignalsOptions = {},
): { stop: SharedStop; dispose(): void } {
  const stop = new SharedStop();
  const handler = (signal: NodeJS.Signals) => {
    if (!stop.aborted) {
      stop.request(signalNumber(signal) ?? -1);
      opts.onFirst?.(signal);
      return;
    }
    if (opts.onSecond) opts.onSecond(signal);
    else process.exit(signalExitCode(signal));
  };
  for (const s of signals) process.on(s, handler);
  return {
    stop,
    dispose: () => {
      for (const s of signals) process.off(s, handler);
    },
  };
}

/** Parses a list such as "INT,TERM,USR1" (or "SIGINT,...", or "none") into signal names; throws naming a bad one. */
export function parseStopSignals(text: string): NodeJS.Signals[] {
  if (text.trim() === 'none') return [];
  return text.split(',').map((part) => {
    const t = part.trim().toUpperCase();
    const name = (t.startsWith('SIG') ? t : `SIG${t}`) as NodeJS.Signals;
    if (signalNumber(name) === undefined || name === 'SIGKILL' || name === 'SIGSTOP')
      throw new Error(`"${part.trim()}" is not a signal a process can catch (e.g. INT, TERM, USR1, USR2, HUP)`);
    return name;
  });
}
