/**
 * `npm run bench -- torch-reference [--case forward|train-step] [--batch N] [--size N] [--patch N] [--threads N]`
 * The PyTorch CPU reference of the forward and train-step benchmarks, on this machine: runs
 * bench/reference/torch_vit.py with /usr/bin/python3 (Debian's python3-torch; a benchmark-only tool).
 * Without it, prints one JSON line saying how to install it.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export async function run(argv: string[]): Promise<void> {
  const script = join(dirname(fileURLToPath(import.meta.url)), 'reference', 'torch_vit.py');
  const python = process.env.VITREG_PYTHON ?? '/usr/bin/python3';
  const probe = spawnSync(python, ['-c', 'import torch'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    process.stdout.write(
      JSON.stringify({
        case: 'torch-reference',
        skipped: `${python} has no torch: apt-get install -y python3-torch libopenblas0-pthread`,
      }) + '\n',
    );
    return;
  }
  // PyTorch's own thread count does not bind Debian's OpenBLAS: pin both to --threads (default 1).
  const i = argv.indexOf('--threads');
  const threads = i >= 0 ? argv[i + 1]! : '1';
  const env = { ...process.env, OPENBLAS_NUM_THREADS: threads, OMP_NUM_THREADS: threads };
  const r = spawnSync(python, [script, ...argv], { stdio: ['ignore', 'inherit', 'inherit'], env });
  if (r.status !== 0) process.exitCode = r.status ?? 1;
}
