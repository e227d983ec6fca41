/**
 * `vitreg sweep plan`: writes, without running anything, everything a scheduler needs in the sweep's out
 * folder (which every node must see):
 *   sweep.json                 the sweep, self-contained (absolute paths; a base config file copied in)
 *   base-config.json           that copy, when the base is a config file
 *   plan/cells.json            index, name, axes and config hash of every cell
 *   cells/<index>-<name>/      cell.json and config.json of every cell (the resolved training config)
 *   plan/slurm/sweep.sbatch    one job array (see slurm.ts)
 *   plan/kubernetes/*.yaml     one Indexed Job, or a Service + Job per multi-process cell (see kubernetes.ts)
 *   plan/kubernetes/release.sh starts the per-cell Jobs created suspended, K at a time (more than K of them)
 * The schedulers run `vitreg sweep run-cell <out>/sweep.json --cell I`.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureDir, writeFileAtomic, writeJsonAtomic } from '@vitreg/core';
import { checkCellHash, writeMarker, type Cell } from './cells.js';
import { kubernetesManifests, kubernetesRelease } from './kubernetes.js';
import { slurmScript } from './slurm.js';
import type { SweepSpec } from './spec.js';

/** The sweep as a self-contained file: what loadSweep reads back to the same spec and cells. */
export function sweepJson(spec: SweepSpec, base: string): Record<string, unknown> {
  return {
    name: spec.name,
    base,
    set: spec.set,
    axes: Object.fromEntries(spec.axes),
    evaluate: spec.evaluate,
    resources: { ...spec.resources, overrides: spec.overrides.map((o) => ({ where: o.where, ...o.set })) },
    max_concurrent: spec.max_concurrent,
    retries: spec.retries,
    train_args: spec.train_args,
    out: spec.out,
    slurm: spec.slurm,
    kubernetes: spec.kubernetes,
  };
}

export interface PlanFiles {
  sweep: string;
  cells: string;
  slurm: string;
  kubernetes: string[];
  /** plan/kubernetes/release.sh, when the per-cell Jobs are more than max_concurrent. */
  release: string | null;
}

/**
 * Writes the plan of `spec`'s `cells` into its out folder; `vitreg` is how the nodes run the vitreg
 * command (default "vitreg"). A cell folder of another config is refused before anything is written.
 */
export async function writePlan(spec: SweepSpec, cells: Cell[], opts: { vitreg?: string } = {}): Promise<PlanFiles> {
  for (const c of cells) checkCellHash(c, spec.file);
  const vitreg = opts.vitreg ?? 'vitreg';
  const out = spec.out;
  await ensureDir(join(out, 'plan', 'slurm'));
  await ensureDir(join(out, 'plan', 'kubernetes'));
  mkdirSync(join(out, 'logs', 'slurm'), { recursive: true });
  let base: string;
  if ('preset' in spec.base) base = spec.base.preset;
  else {
    base = join(out, 'base-config.json');
    if (spec.base.file !== base) copyFileSync(spec.base.file, base);
  }
  const sweep = join(out, 'sweep.json');
  await writeJsonAtomic(sweep, sweepJson(spec, base));
  const list = cells.map((c) => ({
    index: c.index,
    name: c.name,
    axes: c.axes,
    hash: c.hash,
    processes: c.resources.processes,
    dir: c.dir,
  }));
  const cellsFile = join(out, 'plan', 'cells.json');
  await writeJsonAtomic(cellsFile, { sweep: spec.name, count: cells.length, cells: list });
  for (const c of cells) {
    await ensureDir(c.dir);
    await writeMarker(c, 'cell', { index: c.index, name: c.name, axes: c.axes, hash: c.hash, eval_hash: c.evalHash });
    if (!existsSync(join(c.dir, 'config.json'))) await writeJsonAtomic(join(c.dir, 'config.json'), c.config);
  }
  const slurm = join(out, 'plan', 'slurm', 'sweep.sbatch');
  await writeFileAtomic(slurm, slurmScript(spec, cells, sweep, vitreg));
  const kubernetes: string[] = [];
  for (const m of kubernetesManifests(spec, cells, sweep, vitreg)) {
    const f = join(out, 'plan', 'kubernetes', m.file);
    await writeFileAtomic(f, m.text);
    kubernetes.push(f);
  }
  let release: string | null = join(out, 'plan', 'kubernetes', 'release.sh');
  const script = kubernetesRelease(spec, cells);
  if (script) {
    await writeFileAtomic(release, script);
    chmodSync(release, 0o755);
  } else {
    rmSync(release, { force: true });
    release = null;
  }
  return { sweep, cells: cellsFile, slurm, kubernetes, release };
}
