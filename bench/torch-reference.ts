/**
 * `npm run bench -- torch-reference [--case forward|train-step|train-step-dinov2] [--batch N] [--size N] [--patch N] [--threads N] [...]`
 * The PyTorch CPU reference of the forward and train-step benchmarks, on its own: runs
 * bench/reference/torch_vit.py (forward, supervised train step) or torch_dinov2_step.py (a DINOv2 step:
 * 2 global + 8 local crops, DINO + iBOT + KoLeo, EMA teacher) with /usr/bin/python3 (Debian's
 * python3-torch; a benchmark-only tool); every other flag goes to the script (`--help` lists them).
 * `npm run bench -- train-step` runs the same scripts beside vitreg's step with the model taken from its
 * config. Without torch, prints one JSON line saying how to install it.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { python, referenceDir, torchEnv, torchMissing } from './_torch.js';

export async function run(argv: string[]): Promise<void> {
  const missing = torchMissing();
  if (missing) {
    process.stdout.write(`${JSON.stringify({ case: 'torch-reference', skipped: missing })}\n`);
    return;
  }
  const i = argv.indexOf('--threads');
  const threads = i >= 0 ? Number(argv[i + 1]) : 1;
  let args = argv;
  let script = join(referenceDir, 'torch_vit.py');
  const c = argv.indexOf('--case');
  if (c >= 0 && argv[c + 1] === 'train-step-dinov2') {
    script = join(referenceDir, 'torch_dinov2_step.py');
    args = [...argv.slice(0, c), ...argv.slice(c + 2)];
  }
  const r = spawnSync(python(), [script, ...args], { stdio: ['ignore', 'inherit', 'inherit'], env: torchEnv(threads) });
  if (r.status !== 0) process.exitCode = r.status ?? 1;
}
