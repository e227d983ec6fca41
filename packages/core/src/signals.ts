/**
 * Process signals by name and number (node:os's table), for the stop requests that travel between a
 * cluster's processes as numbers (@vitreg/trainer's stop.ts, @vitreg/coordinator's job state).
 */
import { constants } from 'node:os';

/** A signal's number (SIGINT 2, SIGTERM 15, SIGUSR1 10 on Linux), or undefined for an unknown name. */
export function signalNumber(name: string): number | undefined {
  return (constants.signals as Record<string, number>)[name];
}

/** A signal's name from its number, or undefined (no signal has a number below 1). */
export function signalName(code: number): NodeJS.Signals | undefined {
  return (Object.entries(constants.signals) as [NodeJS.Signals, number][]).find(([, n]) => n === code)?.[0];
}
