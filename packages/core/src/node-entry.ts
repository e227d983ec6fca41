/**
 * How a process of this repository starts another of its bins (`node ARGS`): from the built packages the
 * entry as is; from the TypeScript sources (`entry` a .ts file, tsx running) with the loader flags and
 * export conditions of the sources, or, when VITREG_CHILDREN_FROM_DIST=1, the package's built file
 * instead (`<package>/dist/<name>.js`: `npm test` builds every package first, from the same sources, and
 * sets it for the unit suite, where a child from the sources cost about 0.7 CPU-seconds more to start:
 * tsx's hooks over every module).
 */
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** The variable that makes children of a source run start from the packages' dist. */
export const CHILDREN_FROM_DIST = 'VITREG_CHILDREN_FROM_DIST';

/** The built file of a package's source entry: `<package>/src/<name>.ts` -> `<package>/dist/<name>.js`. */
export function distEntry(entry: string): string {
  const src = dirname(entry);
  if (basename(src) !== 'src' || !entry.endsWith('.ts')) throw new Error(`${entry}: not a .ts file in a package's src/ folder`);
  const built = join(dirname(src), 'dist', basename(entry).replace(/\.ts$/, '.js'));
  if (!existsSync(built)) throw new Error(`${CHILDREN_FROM_DIST}=1, but ${built} is not built (npx nx run-many -t build)`);
  return built;
}

/**
 * The node arguments that start `entry` in a child process: `[entry]` for a built file; for a source
 * file `[...sourceFlags, entry]` (default: this process's own execArgv, e.g. --conditions=vitreg-source
 * --import tsx), or `[distEntry(entry)]` when VITREG_CHILDREN_FROM_DIST=1.
 */
export function childNodeArgs(entry: string, sourceFlags: readonly string[] = process.execArgv): string[] {
  if (!entry.endsWith('.ts')) return [entry];
  if (process.env[CHILDREN_FROM_DIST] === '1') return [distEntry(entry)];
  return [...sourceFlags, entry];
}
