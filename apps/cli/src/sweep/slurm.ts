/**
 * The Slurm plan of a sweep: one sbatch job array, one array task per cell (SLURM_ARRAY_TASK_ID = the
 * cell's index), K at once (--array=0-(N-1)%K), a log per task (%A_%a), SIGUSR1 to the cell's job steps
 * 3 minutes before the time limit (--signal=USR1@180: the training stops after a step with a checkpoint,
 * exit 138) and --requeue (a preempted task is requeued by Slurm; a task stopped for its time limit
 * requeues itself and continues from its checkpoint). Each task runs `vitreg sweep run-cell --launcher
 * srun`, which starts the cell's training with srun: one process, or P vitreg-worker tasks (a cluster job:
 * rank 0 hosts the coordinator on the allocation's first node), then evaluates on the batch node; a
 * failing cell is run again in the same allocation while its failed attempts are <= the sweep's
 * `retries` (failed.json counts them), then the task ends FAILED.
 * And `sacct`'s view of a sweep's array job for `status`.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import type { Cell } from './cells.js';
import type { SweepSpec } from './spec.js';

const q = (s: string) => (/^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The sbatch script of the sweep's N cells; `vitreg` is the command line of the vitreg command on the nodes. */
export function slurmScript(spec: SweepSpec, cells: Cell[], sweepFile: string, vitreg: string): string {
  const n = cells.length;
  // One request for every task of the array: the largest cell's (srun then starts each cell's own count).
  const most = (k: 'processes' | 'cpus_per_process' | 'gpus_per_process') => Math.max(...cells.map((c) => c.resources[k]));
  const r = {
    ...spec.resources,
    processes: most('processes'),
    cpus_per_process: most('cpus_per_process'),
    gpus_per_process: most('gpus_per_process'),
  };
  const k = Math.min(spec.max_concurrent, n);
  const logs = join(spec.out, 'logs', 'slurm');
  const lines = [
    '#!/bin/bash',
    `# vitreg sweep "${spec.name}": ${n} cells as one Slurm job array, ${k} at once. Written by vitreg sweep plan`,
    `# from ${spec.file}; submit with:  sbatch ${join(spec.out, 'plan', 'slurm', 'sweep.sbatch')}`,
    '#',
    '# Array task I runs cell I (the list: plan/cells.json). A cell already done is skipped; one stopped',
    '# before the time limit (SIGUSR1, exit 138) writes a checkpoint and is requeued; VITREG_REQUEUE=0: never.',
    `# A failing cell is run again in this allocation up to ${spec.retries} more time(s) (the sweep's retries), then reported.`,
    '# Status: vitreg sweep status SWEEP.json (markers + sacct). Edit the #SBATCH lines for your cluster.',
    `#SBATCH --job-name=vitreg-sweep-${spec.name}`,
    `#SBATCH --array=0-${n - 1}%${k}`,
    `#SBATCH --ntasks=${r.processes}`,
    ...(r.processes_per_node ? [`#SBATCH --ntasks-per-node=${r.processes_per_node}`] : []),
    `#SBATCH --cpus-per-task=${r.cpus_per_process}`,
    ...(r.gpus_per_process > 0 ? [`#SBATCH --gpus-per-task=${r.gpus_per_process}`] : []),
    ...(r.memory ? [`#SBATCH --mem=${r.memory}`] : []),
    `#SBATCH --time=${r.time}`,
    '#SBATCH --signal=USR1@180',
    '#SBATCH --requeue',
    '#SBATCH --open-mode=append',
    `#SBATCH --output=${logs}/%x-%A_%a.out`,
    ...(spec.slurm.partition ? [`#SBATCH --partition=${spec.slurm.partition}`] : []),
    ...(spec.slurm.account ? [`#SBATCH --account=${spec.slurm.account}`] : []),
    ...spec.slurm.sbatch.map((s) => `#SBATCH ${s}`),
    'set -uo pipefail',
    ...spec.slurm.setup,
    `echo "vitreg sweep ${spec.name}: array task \${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID} = cell \${SLURM_ARRAY_TASK_ID} on \${SLURM_JOB_NODELIST}"`,
    'code=0',
    `${vitreg} sweep run-cell ${q(sweepFile)} --cell "\${SLURM_ARRAY_TASK_ID}" --launcher srun || code=$?`,
    'if ((code == 138)) && [[ "${VITREG_REQUEUE:-1}" == 1 ]]; then',
    '  echo "vitreg sweep: cell ${SLURM_ARRAY_TASK_ID} stopped with a checkpoint before the time limit; requeueing"',
    '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
    'fi',
    'exit "$code"',
    '',
  ];
  return lines.join('\n');
}

/** One array task's state from sacct: cell index -> state (RUNNING, COMPLETED, FAILED, PENDING, ...). */
export type SacctStates = Map<number, { state: string; job: string }>;

/**
 * The states of array job `jobId`'s tasks from `sacct` (null when sacct is absent or fails: accounting
 * not set up, as on many small clusters; then the markers alone tell).
 */
export function sacctStates(jobId: string): SacctStates | null {
  let text: string;
  try {
    text = execFileSync('sacct', ['-n', '-P', '-X', '-j', jobId, '-o', 'JobID,State'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 15_000,
    });
  } catch {
    return null;
  }
  return parseSacct(text);
}

/**
 * `sacct -n -P -X -o JobID,State` lines of an array job as cell index -> state: "77_4|RUNNING" is task 4;
 * "77_[5-7%2]|PENDING" and "77_[8,10-11]|PENDING" are tasks not started yet; "CANCELLED by 0" is
 * CANCELLED; other lines (a header, steps, blank) are skipped.
 */
export function parseSacct(text: string): SacctStates {
  const states: SacctStates = new Map();
  for (const line of text.trim().split('\n')) {
    const [job, state] = line.split('|');
    if (!job || !state) continue;
    // 123_4 (one task) or 123_[5-7%2] (tasks not started yet).
    const one = /^\d+_(\d+)$/.exec(job);
    if (one) states.set(Number(one[1]), { state: state.split(' ')[0]!, job });
    const range = /^\d+_\[(.+?)(%\d+)?\]$/.exec(job);
    if (range)
      for (const part of range[1]!.split(',')) {
        const [a, b] = part.split('-').map(Number);
        for (let i = a!; i <= (b ?? a!); i++) states.set(i, { state: state.split(' ')[0]!, job: `${job.split('_')[0]}_${i}` });
      }
  }
  return states;
}
