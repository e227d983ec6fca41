/**
 * Where `vitreg train` starts in its run folder, decided before any work: the same command on a folder
 * that holds the same run's checkpoints continues it; a folder holding another run's is refused with the
 * first differing field and the ways out; `--restart` moves the old run's files aside (nothing written
 * is lost) and starts again; `--resume` on a folder without checkpoints says it starts fresh. And the
 * one line an interrupted run ends with.
 */
import { existsSync } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { resumePoint, RunMismatchError, type TrainConfig } from '@vitreg/trainer';
import { CliError } from './cli.js';

/** The run folder's files a new run replaces: moved aside by --restart. */
const RUN_FILES = ['checkpoints', 'metrics.jsonl', 'eval.json', 'config.json', 'ranks'];

/** A path as the user would type it (relative to the working folder when inside it). */
export function shown(path: string): string {
  const r = relative(process.cwd(), path);
  return r && !r.startsWith('..') ? r : path;
}

/**
 * The resume mode for `train` (and the workers of --nodes) given the flags: 'auto' continues the same
 * run, `true` (--resume) also says when there is nothing to continue, false (--restart) starts over.
 * Throws a CliError naming the first differing field when the folder holds another run's checkpoints.
 */
export async function planRun(
  out: string,
  config: TrainConfig,
  flags: { resume?: boolean; restart?: boolean },
): Promise<{ resume: boolean | 'auto'; from: { step: number; dir: string } | null }> {
  if (flags.restart) return { resume: false, from: null };
  try {
    const from = await resumePoint(out, config);
    return { resume: flags.resume ? true : 'auto', from };
  } catch (err) {
    if (!(err instanceof RunMismatchError)) throw err;
    const o = shown(out);
    throw new CliError(
      `--out ${o} holds the checkpoints of another run: field "${err.field}" is ${err.there} there and ${err.here} in this one; ` +
        `to continue that run use its config (vitreg train --resume --out ${o}), to start this one there use --restart ` +
        `(the old files are moved aside, not deleted), or give another --out`,
    );
  }
}

/** --restart: moves the previous run's files into `<out>/previous-<time>/`; returns that folder (null when there was nothing). */
export async function setAside(out: string): Promise<string | null> {
  const present = RUN_FILES.filter((f) => existsSync(join(out, f)));
  if (present.length === 0) return null;
  const dir = join(out, `previous-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  await mkdir(dir, { recursive: true });
  for (const f of present) await rename(join(out, f), join(dir, f));
  return dir;
}

/** The line an interrupted run ends with. */
export function interruptedLine(step: number, total: number, checkpoint: string | undefined): string {
  const written = checkpoint ? `checkpoint written (${shown(checkpoint)})` : 'nothing trained yet, no checkpoint';
  return `interrupted at step ${step} of ${total}; ${written}; run the same command to continue`;
}
