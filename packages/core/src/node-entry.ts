/**
 * How a process of this repository starts another of its bins (`node ARGS`): from the built packages the
 * entry as is; from the TypeScript sources (`entry` a .ts file, tsx running) with the loader flags and
 * export conditions of the sources, or, when VITREG_CHILDREN_FROM_DIST=1, the package's built file
 * instead (`<package>/dist/<name>.js`: `npm test` builds every package first, from the same sources, and
 * sets it for the unit suite, where a child from the sources cost about 0.7 CPU-seconds more to start:
 * tsx's hooks over every module).
 * Also the glibc malloc settings those processes start with (MALLOC_TUNABLES).
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

/**
 * glibc malloc settings that vitreg's training commands start Node with (the `vitreg` and `vitreg-worker`
 * bins' `#!/usr/bin/env -S GLIBC_TUNABLES=...` line, the repository's npm scripts, the processes
 * `vitreg train --nodes` and `vitreg sweep run` start): large blocks from the heap instead of a fresh
 * mmap each (`mmap_max=0`) and the heap's free top kept (`trim_threshold` 1 TiB). ONNX Runtime's CPU
 * engine allocates and frees every activation of a training step each step (its arena is off: it kept a
 * third more memory); with glibc's defaults each block over 32 MiB is a new mapping whose pages are
 * faulted in again every step (1.5 of 17 CPU-seconds of a ViT-S/16 step, trainer README). With these the
 * freed blocks are reused, at the same peak RSS. Other C libraries ignore the variable.
 */
export const MALLOC_TUNABLES = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776';

/**
 * `env` with MALLOC_TUNABLES ahead of its own GLIBC_TUNABLES (glibc reads them in order, so the caller's
 * own settings still win); unchanged when they are there already.
 */
export function withMallocTunables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const own = env.GLIBC_TUNABLES ?? '';
  if (own === MALLOC_TUNABLES || own.startsWith(`${MALLOC_TUNABLES}:`)) return env;
  return { ...env, GLIBC_TUNABLES: own ? `${MALLOC_TUNABLES}:${own}` : MALLOC_TUNABLES };
}

/**
 * Whether this process runs on glibc without MALLOC_TUNABLES in its GLIBC_TUNABLES (read at its start:
 * started by something other than the bins or withMallocTunables' environment), where the ONNX Runtime
 * engine's CPU steps took 6-23 % longer in the train-step bench (README). False on other C libraries and operating systems.
 */
export function mallocTunablesMissing(env: NodeJS.ProcessEnv = process.env): boolean {
  if (process.platform !== 'linux') return false;
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  if (!header?.glibcVersionRuntime) return false;
  return !(env.GLIBC_TUNABLES ?? '').includes(MALLOC_TUNABLES);
}
