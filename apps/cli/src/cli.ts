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
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { extname } from 'node:path';
import {
  choiceFlag as coreChoiceFlag,
  fileKind,
  FlagError,
  Flags as CoreFlags,
  InputError,
  intFlag as coreIntFlag,
  numberFlag as coreNumberFlag,
  pathProblem,
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

/**
 * What is wrong with `path` as a weights file: absent, a folder, or (from its first bytes) clearly a file
 * of another kind than its extension says, in the readers' words ("README.md is not a safetensors file:
 * it is text ("# vitreg...")"). An .onnx file's contents are left to its reader.
 */
export function weightsFileProblem(path: string): string | undefined {
  const problem = pathProblem(path, 'file');
  if (problem) return problem;
  const ext = extname(path).toLowerCase();
  if (ext === '.onnx') return undefined;
  let kind: string | undefined;
  try {
    const fd = openSync(path, 'r');
    try {
      const head = new Uint8Array(64);
      const n = readSync(fd, head, 0, 64, 0);
      kind = fileKind(head.subarray(0, n), fstatSync(fd).size);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    return `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  // A kind the first bytes do not tell, and a legacy torch.save pickle (its reader explains), are left to the readers.
  if (kind === undefined) return undefined;
  if (['.pth', '.pt', '.bin', '.ckpt'].includes(ext)) {
    return kind.startsWith('a zip archive') || kind.startsWith('a Python pickle')
      ? undefined
      : `${path}: not a zip archive (torch.save checkpoints are zip files): it is ${kind}`;
  }
  return kind === 'a safetensors file' ? undefined : `${path} is not a safetensors file: it is ${kind}`;
}

/**
 * The flags of one vitreg command run (@vitreg/core's Flags): `done()` also checks the path flags the
 * model commands share, when given (--weights and --weights-b: weights files that exist and are of the
 * kind their extension says; --tensor FILE.safetensors[:NAME] and --test-time-registers: files that
 * exist), and throws a CliError naming every problem.
 */
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

  override done(): void {
    const values = this.values as Record<string, unknown>;
    for (const name of ['weights', 'weights-b']) {
      const v = values[name];
      for (const p of typeof v === 'string' ? [v] : Array.isArray(v) ? (v as string[]) : []) {
        const problem = weightsFileProblem(p);
        if (problem) this.fail(`--${name}: ${problem}`);
      }
    }
    const tensor = values.tensor;
    if (typeof tensor === 'string') {
      const file = /^(.*?\.safetensors)(?::.+)?$/.exec(tensor)?.[1];
      const problem = file === undefined ? undefined : pathProblem(file, 'file');
      if (problem) this.fail(`--tensor: ${problem}`);
    }
    this.path('test-time-registers' as keyof O & string, 'file');
    super.done();
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
