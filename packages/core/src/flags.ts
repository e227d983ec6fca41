/**
 * Flag parsing for vitreg's executables (the vitreg command, vitreg-worker, vitreg-coordinator): a parser
 * that collects every flag problem of a run (unknown flags with the one they may mean, missing values,
 * values given to switches, bad numbers and choices, missing required flags, paths that do not exist or
 * are of the wrong kind) and reports them together in one line before any work, and value checks that
 * name the flag. A negative number is taken as a flag's value (`--steps -3` is a bad step count).
 *
 *   const f = new Flags('vitreg-worker', argv, { steps: { type: 'string' }, data: { type: 'string' } });
 *   const steps = f.optionalInt('steps', 1);   // recorded when bad
 *   f.path('data', 'dir');                       // recorded when absent on disk or not a folder
 *   f.done();                                    // throws one FlagError (exit 2) naming them all
 */
import { statSync } from 'node:fs';

/** A bad flag (or several): the message is the one line to print; exit code 2. */
export class FlagError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
    this.name = 'FlagError';
  }
}

/** One flag: a string value (repeatable with `multiple`) or a boolean switch. */
export interface FlagSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
}
export type FlagOptions = Record<string, FlagSpec>;
type Options = FlagOptions;
export type WithHelp<O extends Options> = O & { help: { type: 'boolean'; short: 'h' } };
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

  /**
   * @param program what the help pointer names: `(see ${program} --help)`, e.g. 'vitreg probe' or 'vitreg-worker'
   * @param argv the arguments after the program (and command) name
   * @param options the flags it takes (--help / -h is added)
   */
  constructor(
    readonly program: string,
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

  /** `fn()`, or `fallback` with the FlagError it threw recorded (any other error propagates). */
  check<T>(fn: () => T, fallback: T): T {
    try {
      return fn();
    } catch (err) {
      if (!(err instanceof FlagError)) throw err;
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

  /**
   * Checks that every value of path flag `name` exists and is of `kind` (a file, a folder, or either),
   * recording `--name: PATH does not exist` / `is a folder, not a file` / `is not a folder`. Values that
   * `skip` accepts (e.g. 'synthetic', a JSON text) are not paths and are left alone. Absent flags pass.
   */
  path(name: keyof O & string, kind: 'file' | 'folder' | 'any' = 'file', skip?: (value: string) => boolean): void {
    const v = this.values[name] as string | string[] | boolean | undefined;
    if (v === undefined || typeof v === 'boolean') return;
    for (const p of Array.isArray(v) ? v : [v]) {
      if (skip?.(p)) continue;
      const problem = pathProblem(p, kind);
      if (problem) this.fail(`--${name}: ${problem}`);
    }
  }

  /**
   * Input paths given as positionals (files, folders or globs): records each plain path (no `*` or `?`)
   * that does not exist, as `PATH: no such file or folder` (the image lister's words).
   */
  inputs(paths: readonly string[]): void {
    for (const p of paths) if (!/[*?]/.test(p) && pathProblem(p, 'any')) this.fail(`${p}: no such file or folder`);
  }

  /** No positional arguments: records the first as unexpected. */
  noPositionals(): void {
    if (this.positionals.length > 0) this.fail(`unexpected argument "${this.positionals[0]}"`);
  }

  /** The problems in one line: one as it is, several joined by '; ', the help pointer once at the end. */
  message(): string {
    const help = `(see ${this.program} --help)`;
    if (this.problems.length === 1) {
      const p = this.problems[0]!;
      return /^Unknown option|a value is missing/.test(p) && !p.includes(help) ? `${p} ${help}` : p;
    }
    const parts = this.problems.map((p) => p.replace(/ \(see [\w -]+ --help\)$/, ''));
    return `${parts.join('; ')} ${help}`;
  }

  /** The error `done()` throws (a subclass may throw its own FlagError subclass). */
  protected error(message: string): FlagError {
    return new FlagError(message);
  }

  /** Throws one FlagError (exit 2) naming every problem recorded; returns when there is none. */
  done(): void {
    if (this.problems.length > 0) throw this.error(this.message());
  }
}

/** Parse an integer flag, naming the flag in the error. */
export function intFlag(name: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (!/^-?\d+$/.test(value) || Number(value) < min) {
    throw new FlagError(`--${name}: expected an integer >= ${min}, got "${value}"`);
  }
  return Number(value);
}

/** Parse a number flag, naming the flag in the error. */
export function numberFlag(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new FlagError(`--${name}: expected a number, got "${value}"`);
  return n;
}

/** Parse one of a fixed set of values, naming the flag and the allowed values in the error. */
export function choiceFlag<T extends string>(name: string, value: string | undefined, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(value)) {
    throw new FlagError(`--${name}: expected one of ${allowed.join(', ')}, got "${value}"`);
  }
  return value as T;
}

/** What is wrong with `path` as a `kind` (undefined when nothing is). */
export function pathProblem(path: string, kind: 'file' | 'folder' | 'any'): string | undefined {
  let info;
  try {
    info = statSync(path);
  } catch {
    return `${path} does not exist`;
  }
  if (kind === 'file' && info.isDirectory()) return `${path} is a folder, not a file`;
  if (kind === 'folder' && !info.isDirectory()) return `${path} is not a folder`;
  return undefined;
}
