/**
 * Shared plumbing of the vitreg command: one error type whose message is the single line printed on
 * stderr, argument parsing on top of node:util parseArgs, and the command table type.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InputError } from '@vitreg/core';

/** A user error: printed as one line on stderr, exit code 2. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
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

type Options = NonNullable<ParseArgsConfig['options']>;
type WithHelp<O extends Options> = O & { help: { type: 'boolean'; short: 'h' } };
/** What parseCommandArgs returns: typed values of the given options, and the positionals. */
export type ParsedArgs<O extends Options> = ReturnType<
  typeof parseArgs<{ args: string[]; options: WithHelp<O>; allowPositionals: true; strict: true }>
>;

/**
 * parseArgs with errors turned into CliError naming the command and the flag. Returns the values and
 * positionals; `help` is always accepted.
 */
export function parseCommandArgs<O extends Options>(command: string, argv: string[], options: O): ParsedArgs<O> {
  try {
    return parseArgs({
      args: argv,
      options: { ...options, help: { type: 'boolean', short: 'h' } } as WithHelp<O>,
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    const msg = (err as Error).message;
    // Node hides its hint ("use --gpu=-1") on a second line: say it in the one line.
    const dash = /^Option '(--[\w-]+)' argument is ambiguous/.exec(msg);
    if (dash)
      throw new CliError(`${dash[1]}: a value starting with '-' needs the = form, e.g. ${dash[1]}=-1 (see vitreg ${command} --help)`);
    throw new CliError(`${msg.split('\n')[0]} (see vitreg ${command} --help)`);
  }
}

/** Parse an integer flag, naming the flag in the error. */
export function intFlag(name: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (!/^-?\d+$/.test(value) || Number(value) < min) {
    throw new CliError(`--${name}: expected an integer >= ${min}, got "${value}"`);
  }
  return Number(value);
}

/** Parse a number flag, naming the flag in the error. */
export function numberFlag(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new CliError(`--${name}: expected a number, got "${value}"`);
  return n;
}

/** Parse one of a fixed set of values, naming the flag and the allowed values in the error. */
export function choiceFlag<T extends string>(name: string, value: string | undefined, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(value)) {
    throw new CliError(`--${name}: expected one of ${allowed.join(', ')}, got "${value}"`);
  }
  return value as T;
}
