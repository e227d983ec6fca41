/** Runs the vitreg command from source, as a user would, and paths of the repo's fixtures. */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const MAIN = join(ROOT, 'apps', 'cli', 'src', 'main.ts');
export const FIXTURES = join(ROOT, 'packages', 'registers', 'test', 'fixtures', 'dinov2-parity');

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `vitreg ...args` in a child process (async, so tests in one file can overlap their waits). */
export function vitreg(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=vitreg-source', '--import', 'tsx', MAIN, ...args], {
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
