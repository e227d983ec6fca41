/**
 * Logging for people: one line per message on stderr, prefixed `[vitreg]`, no timestamps (a launcher or
 * a log collector adds those). stdout stays free for a command's results. `setQuiet(true)` silences
 * these lines and the progress bars (errors are not logged here: they are thrown).
 */

let quiet = false;

/** Silence (`true`) or restore (`false`) `log()` lines and progress output. */
export function setQuiet(value: boolean): void {
  quiet = value;
}

/** Whether `setQuiet(true)` is in effect. */
export function isQuiet(): boolean {
  return quiet;
}

/** Write one line to stderr as `[vitreg] <line>` unless quiet. */
export function log(line: string): void {
  if (!quiet) process.stderr.write(`[vitreg] ${line}\n`);
}
