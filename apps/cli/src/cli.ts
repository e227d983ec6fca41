/**
 * Shared plumbing of the vitreg command: one error type whose message is the single line printed on
 * stderr, the flag parser every command uses (`parseFlags`: it collects every flag problem and reports
 * them together in one line before any work), value checks that name the flag, and the command type.
 *
 * How a command declares and validates its flags (see also /work/notes/cli-flags.md):
 *
 *   const f = parseFlags('probe', argv, { weights: { type: 'string', multiple: true }, steps: { type: 'string' } });
 *   const weights = f.require('weights', '--weights FILE is required');   // recorded when absent
 *   const steps = f.int('steps', 300);                                    // recorded when bad; fallback returned
 *   const engine = f.check(() => engineFlags(f.values), DEFAULT_ENGINE);   // any CliError recorded
 *   f.done();                                                             // throws one CliError naming them all
 */
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

/** One flag: a string value (repeatable with `multiple`) or a boolean switch. */
export interface FlagSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
}
type Options = Record<string, FlagSpec>;
type WithHelp<O extends Options> = O & { help: { type: 'boolean'; short: 'h' } };
type ValueOf<S extends FlagSpec> = S extends { type: 'boolean' }
  ? S extends { multiple: true }
    ? boolean[]
    : boolean
  : S extends { multiple: true }
    ? string[]
    : string;
/** The parsed values of options `O` (every one optional: absent flags are undefined). */
export type FlagValues<O extends Options> = { [K in keyof O]?: ValueOf<O[K]> };
/** What parseFlags returns besides the checks: typed values of the given options, and the positionals. */
export interface ParsedArgs<O extends Options> {
  values: FlagValues<WithHelp<O>>;
  positionals: string[];
}

/** A negative number, which a flag takes as its value (`--steps -3`, `--layer -2`). */
const NEGATIVE = /^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** Edit distance, for "did you mean" on unknown flags. */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length]![b.length]!;
}

/** The closest known flag name to `name`, when close enough to be a typo. */
function closest(name: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const dd = distance(name, k);
    if (dd < bestD) [best, bestD] = [k, dd];
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(name.length / 3)) ? best : undefined;
}

/**
 * The flags of one command run: the parsed values and positionals, and the problems found so far.
 * Nothing throws until `done()`, so one run reports every missing and invalid flag together.
 */
export class Flags<O extends Options> implements ParsedArgs<O> {
  readonly values: FlagValues<WithHelp<O>>;
  readonly positionals: string[] = [];
  private readonly problems: string[] = [];
  /** Flags an unknown one was taken for (`--wieghts` -> weights): their absence is not reported again. */
  private readonly guessed = new Set<string>();

  constructor(
    readonly command: string,
    argv: string[],
    options: O,
  ) {
    const specs: Options = { ...options, help: { type: 'boolean', short: 'h' } };
    const shorts = new Map(Object.entries(specs).flatMap(([k, s]) => (s.short ? [[s.short, k] as const] : [])));
    const values: Record<string, unknown> = {};
    const set = (name: string, spec: FlagSpec, v: string | boolean) => {
      if (spec.multiple) ((values[name] ??= []) as unknown[]).push(v);
      else values[name] = v;
    };
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i]!;
      if (arg === '--') {
        this.positionals.push(...argv.slice(i + 1));
        break;
      }
      if (!arg.startsWith('-') || arg === '-' || NEGATIVE.test(arg)) {
        this.positionals.push(arg);
        continue;
      }
      let name: string;
      let inline: string | undefined;
      if (arg.startsWith('--')) {
        const eq = arg.indexOf('=');
        name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
        inline = eq < 0 ? undefined : arg.slice(eq + 1);
      } else {
        const long = shorts.get(arg.slice(1, 2));
        if (!long || arg.length > 2) {
          this.fail(`Unknown option '${arg}'`);
          continue;
        }
        name = long;
      }
      const spec = specs[name];
      if (!spec) {
        const guess = closest(name, Object.keys(specs));
        this.fail(`Unknown option '--${name}'${guess ? ` (did you mean --${guess}?)` : ''}`);
        if (guess) this.guessed.add(guess);
        // A typo of a flag that takes a value: its value is not an image or an input.
        if (guess && specs[guess]!.type === 'string' && inline === undefined && argv[i + 1] !== undefined && !argv[i + 1]!.startsWith('-'))
          i++;
        continue;
      }
      if (spec.type === 'boolean') {
        if (inline !== undefined) this.fail(`--${name} takes no value, got --${name}=${inline}`);
        else set(name, spec, true);
        continue;
      }
      if (inline !== undefined) {
        set(name, spec, inline);
        continue;
      }
      const next = argv[i + 1];
      if (next === undefined) {
        this.fail(`--${name}: a value is missing`);
        continue;
      }
      // A value may start with '-' when it is a number (--steps -3 is a bad step count, not a missing value).
      if (next.startsWith('-') && next !== '-' && !NEGATIVE.test(next)) {
        this.fail(`--${name}: a value is missing (got ${next}; a value starting with '-' needs the = form, e.g. --${name}=${next})`);
        continue;
      }
      set(name, spec, next);
      i++;
    }
    this.values = values as FlagValues<WithHelp<O>>;
  }

  /** Records a problem; the command goes on checking the other flags. */
  fail(message: string): void {
    if (!this.problems.includes(message)) this.problems.push(message);
  }

  /** True while no problem was recorded. */
  get ok(): boolean {
    return this.problems.length === 0;
  }

  /** `fn()`, or `fallback` with the CliError it threw recorded (any other error propagates). */
  check<T>(fn: () => T, fallback: T): T {
    try {
      return fn();
    } catch (err) {
      if (!(err instanceof CliError)) throw err;
      this.fail(err.message);
      return fallback;
    }
  }

  /** Records that a required flag is absent (unless an unknown flag was taken for it: that is said already). */
  missing(name: keyof O & string, message: string): void {
    if (!this.guessed.has(name)) this.fail(message);
  }

  /** The value of a string flag, or '' with `message` recorded when it is absent. */
  require(name: keyof O & string, message: string): string {
    const v = this.values[name];
    if (v === undefined || (Array.isArray(v) && v.length === 0)) {
      this.missing(name, message);
      return '';
    }
    return Array.isArray(v) ? String(v[0]) : String(v);
  }

  /** An integer flag >= min (fallback when absent or bad). */
  int(name: keyof O & string, fallback: number, min = 1): number {
    return this.check(() => intFlag(name, this.values[name] as string | undefined, fallback, min), fallback);
  }

  /** An integer flag >= min, or undefined when absent (or bad: then recorded). */
  optionalInt(name: keyof O & string, min = 1): number | undefined {
    const v = this.values[name] as string | undefined;
    return v === undefined ? undefined : this.check(() => intFlag(name, v, 0, min), undefined);
  }

  /** A number flag (fallback when absent or bad). */
  number(name: keyof O & string, fallback: number): number {
    return this.check(() => numberFlag(name, this.values[name] as string | undefined, fallback), fallback);
  }

  /** One of `allowed` (fallback when absent or bad). */
  choice<T extends string>(name: keyof O & string, allowed: readonly T[], fallback: T): T {
    return this.check(() => choiceFlag(name, this.values[name] as string | undefined, allowed, fallback), fallback);
  }

  /** No positional arguments: records the first as unexpected. */
  noPositionals(): void {
    if (this.positionals.length > 0) this.fail(`unexpected argument "${this.positionals[0]}"`);
  }

  /** The problems in one line: one as it is, several joined by '; ', the help pointer once at the end. */
  message(): string {
    const help = `(see vitreg ${this.command} --help)`;
    if (this.problems.length === 1) {
      const p = this.problems[0]!;
      return /^Unknown option|a value is missing/.test(p) && !p.includes(help) ? `${p} ${help}` : p;
    }
    const parts = this.problems.map((p) => p.replace(/ \(see vitreg [\w ]+ --help\)$/, ''));
    return `${parts.join('; ')} ${help}`;
  }

  /** Throws one CliError (exit 2) naming every problem recorded; returns when there is none. */
  done(): void {
    if (this.problems.length > 0) throw new CliError(this.message());
  }
}

/**
 * Parses `argv` against `options` (plus --help / -h). Unknown flags, missing values and values given
 * to switches are recorded, not thrown: validate the rest with the returned Flags, then call `done()`.
 * A value that starts with '-' is taken when it is a number (`--steps -3`, `--layer -2`).
 */
export function parseFlags<O extends Options>(command: string, argv: string[], options: O): Flags<O> {
  return new Flags(command, argv, options);
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
