/**
 * Shared plumbing of the vitreg command: one error type whose message is the single line printed on
 * stderr, the flag parser every command uses (`parseFlags`: @vitreg/core's Flags, which collects every
 * flag problem and reports them together in one line before any work; vitreg-worker and
 * vitreg-coordinator use the same), value checks that name the flag, and the command type.
 *
 * How a command declares and validates its flags (see also /work/notes/cli-flags.md):
 *
 *   const f = parseFlags('probe', argv, { weights: { type: 'string', multiple: true }, steps: { type: 'string' } });
 *   const weights = f.require('weights', '--weights FILE is required');   // recorded when absent
 *   const steps = f.int('steps', 300);                                    // recorded when bad; fallback returned
 *   const engine = f.check(() => engineFlags(f.values), DEFAULT_ENGINE);   // any CliError recorded
 *   f.path('weights', 'file');                                            // absent on disk / a folder: recorded
 *   f.done();                                                             // throws one CliError naming them all
 */
import {
  choiceFlag as coreChoiceFlag,
  FlagError,
  Flags as CoreFlags,
  InputError,
  intFlag as coreIntFlag,
  numberFlag as coreNumberFlag,
  type FlagOptions,
} from '@vitreg/core';

/** A user error: printed as one line on stderr, exit code 2 (a FlagError, so Flags.check records it). */
export class CliError extends FlagError {
  constructor(message: string, exitCode = 2) {
    super(message, exitCode);
    this.name = 'CliError';
  }
}

/**
 * A package's InputError (an input it refused, named in the message) as a CliError with the same message
 * (exit code 2); any other error as it is (a failure: exit code 1).
 */
export function inputAsCliError(err: unknown): unknown {
  return err instanceof InputError ? new CliError(err.message) : err;
}

export interface Command {
  /** One line for `vitreg --help`. */
  summary: string;
  /** Full text for `vitreg <command> --help`. */
  usage: string;
  run(argv: string[]): Promise<number | void>;
}

export type { FlagSpec, FlagValues, ParsedArgs } from '@vitreg/core';

/** The flags of one vitreg command run (@vitreg/core's Flags): `done()` throws a CliError naming every problem. */
export class Flags<O extends FlagOptions> extends CoreFlags<O> {
  constructor(
    readonly command: string,
    argv: string[],
    options: O,
  ) {
    super(`vitreg ${command}`, argv, options);
  }

  protected override error(message: string): CliError {
    return new CliError(message);
  }
}

/**
 * Parses `argv` against `options` (plus --help / -h). Unknown flags, missing values and values given
 * to switches are recorded, not thrown: validate the rest with the returned Flags, then call `done()`.
 * A value that starts with '-' is taken when it is a number (`--steps -3`, `--layer -2`).
 */
export function parseFlags<O extends FlagOptions>(command: string, argv: string[], options: O): Flags<O> {
  return new Flags(command, argv, options);
}

/** `fn()` with a FlagError it throws as a CliError (same message). */
function asCli<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof FlagError && !(err instanceof CliError)) throw new CliError(err.message, err.exitCode);
    throw err;
  }
}

/** Parse an integer flag >= min, naming the flag in the error (a CliError). */
export function intFlag(name: string, value: string | undefined, fallback: number, min = 1): number {
  return asCli(() => coreIntFlag(name, value, fallback, min));
}

/** Parse a number flag, naming the flag in the error (a CliError). */
export function numberFlag(name: string, value: string | undefined, fallback: number): number {
  return asCli(() => coreNumberFlag(name, value, fallback));
}

/** Parse one of a fixed set of values, naming the flag and the allowed values in the error (a CliError). */
export function choiceFlag<T extends string>(name: string, value: string | undefined, allowed: readonly T[], fallback: T): T {
  return asCli(() => coreChoiceFlag(name, value, allowed, fallback));
}
