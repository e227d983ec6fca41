/** Runs the vitreg command from source, as a user would, and paths of the repo's fixtures. */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childNodeArgs } from '@vitreg/core';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const MAIN = join(ROOT, 'apps', 'cli', 'src', 'main.ts');
export const FIXTURES = join(ROOT, 'packages', 'registers', 'test', 'fixtures', 'dinov2-parity');

/**
 * The node arguments that start a bin of this repository from the sources (tsx, the vitreg-source
 * condition), or from its built dist where the unit suite asks for it (VITREG_CHILDREN_FROM_DIST).
 */
export function nodeArgsOf(entry: string = MAIN): string[] {
  return childNodeArgs(entry, ['--conditions=vitreg-source', '--import', 'tsx']);
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `vitreg ...args` in a child process (async, so tests in one file can overlap their waits). */
export function vitreg(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgsOf(MAIN), ...args], {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The last non-empty line of stderr, where a failing command says why. */
export const lastLine = (s: string): string => s.trim().split('\n').pop() ?? '';

/**
 * `vitreg ...args` for a run that is refused before any work, in this process (a process of its own
 * costs 1-1.5 CPU-seconds): the command's module from the table main uses, and the one stderr line and
 * exit code main makes of its CliError or InputError. Output of a run that is not refused is not
 * captured: use `vitreg` for those.
 */
export async function refusedInProcess(args: string[]): Promise<RunResult> {
  const [{ commandTable }, { CliError }, { InputError }] = await Promise.all([
    import('../src/commands/table.ts'),
    import('../src/cli.ts'),
    import('@vitreg/core'),
  ]);
  const [name, ...rest] = args;
  const cmd = await commandTable[name!]!.load();
  try {
    await cmd.run(rest);
  } catch (err) {
    if (err instanceof CliError) return { code: err.exitCode, stdout: '', stderr: `vitreg ${name}: ${err.message}\n` };
    if (err instanceof InputError) return { code: 2, stdout: '', stderr: `vitreg ${name}: ${err.message}\n` };
    throw err;
  }
  throw new Error(`vitreg ${args.join(' ')} was not refused`);
}
