/**
 * `npm run bench -- engine-parity [--device cuda|webgpu|cpu] [--reference cpu|tfjs] [--preset tiny-supervised,tiny-dino]
 *   [--steps 10] [--threads N] [--atol 5e-3] [--rtol 1e-2]`
 * The same short training run on two engines, compared: the ONNX Runtime engine on `--device` against the
 * reference (ONNX Runtime on the CPU, or tfjs), each preset from the same initial weights and the same
 * batches (the trainer's seeded data, augmentation, drop path and masks), `--steps` steps. Prints one JSON
 * line per preset: both loss curves, the largest relative loss difference, the largest absolute
 * difference of any student weight after the run (and which tensor), the wall seconds of each run, and
 * whether both are within tolerance (weights `--atol`, losses `--rtol`). GPU arithmetic (TF32 products,
 * other reduction orders) moves the weights by more than the CPU engines' 1e-4; the tolerances say how
 * much is accepted. A device whose provider is missing gives one `skipped` line. Used by scripts/gpu-check.sh.
 */
import { parseArgs } from 'node:util';
import { initBackend } from '@vitreg/core';
import type { OnnxDevice } from '@vitreg/registers';
import { presetConfig, resolveTrainEngine, Trainer, validateTrainConfig, type EngineFactory, type TrainConfig } from '@vitreg/trainer';
import { load1, machineInfo, round } from './_machine.js';

interface RunResult {
  losses: number[];
  weights: Record<string, Float32Array>;
  seconds: number;
  description: string;
}

async function trainRun(config: TrainConfig, factory: EngineFactory, description: string): Promise<RunResult> {
  const trainer = new Trainer(config, { engine: factory });
  try {
    trainer.initTeacher();
    const losses: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < config.train.steps; i++) losses.push((await trainer.trainStep()).loss!);
    const seconds = (performance.now() - t0) / 1000;
    await trainer.engine.flush?.(); // the state on a WebGPU device comes back to the host
    const state = trainer.engine.exportState().tensors;
    const weights = Object.fromEntries(Object.entries(state).filter(([k]) => k.startsWith('student.')));
    return { losses, weights, seconds, description };
  } finally {
    trainer.engine.dispose();
  }
}

function compare(a: RunResult, b: RunResult): { maxAbs: number; worst: string; maxLossRel: number } {
  let maxAbs = 0;
  let worst = '';
  for (const [k, wa] of Object.entries(a.weights)) {
    const wb = b.weights[k];
    if (!wb || wb.length !== wa.length) throw new Error(`engine-parity: the two runs' states differ in tensor ${k}`);
    for (let i = 0; i < wa.length; i++) {
      const d = Math.abs(wa[i]! - wb[i]!);
      if (!(d <= maxAbs)) {
        maxAbs = d;
        worst = k;
      }
    }
  }
  const maxLossRel = Math.max(...a.losses.map((l, i) => Math.abs(l - b.losses[i]!) / Math.max(Math.abs(b.losses[i]!), 1e-12)));
  return { maxAbs, worst, maxLossRel };
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      device: { type: 'string', default: 'cuda' },
      reference: { type: 'string', default: 'cpu' },
      preset: { type: 'string', default: 'tiny-supervised,tiny-dino' },
      steps: { type: 'string', default: '10' },
      threads: { type: 'string' },
      atol: { type: 'string', default: '5e-3' },
      rtol: { type: 'string', default: '1e-2' },
    },
  });
  const steps = Number(values.steps);
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  const device = values.device as OnnxDevice;
  // tfjs: the reference engine when asked, and the ONNX Runtime engine's host-side DINO targets.
  await initBackend('wasm', { log: () => {} });
  for (const preset of values.preset!.split(',')) {
    const base = presetConfig(preset);
    const config = validateTrainConfig({ preset, train: { steps, eval_every: 0, checkpoint_every: 0 } }, `preset ${preset}`);
    const head = { case: 'engine-parity', preset, device, reference: values.reference, steps, batch: base.train.batch_size };
    let tested;
    try {
      tested = await resolveTrainEngine({ engine: 'onnxruntime', device, threads });
    } catch (err) {
      process.stdout.write(`${JSON.stringify({ ...head, skipped: (err as Error).message.split('\n')[0] })}\n`);
      continue;
    }
    const ref =
      values.reference === 'tfjs'
        ? await resolveTrainEngine({ engine: 'tfjs' })
        : await resolveTrainEngine({ engine: 'onnxruntime', device: 'cpu', threads });
    const load = load1();
    const a = await trainRun(config, tested.factory, tested.description);
    const b = await trainRun(config, ref.factory, ref.description);
    const d = compare(a, b);
    const atol = Number(values.atol);
    const rtol = Number(values.rtol);
    process.stdout.write(
      `${JSON.stringify({
        ...head,
        engine: a.description,
        reference_engine: b.description,
        losses: a.losses.map((l) => round(l, 5)),
        reference_losses: b.losses.map((l) => round(l, 5)),
        max_loss_rel_diff: Number(d.maxLossRel.toPrecision(3)),
        max_abs_weight_diff: Number(d.maxAbs.toPrecision(3)),
        worst_tensor: d.worst,
        atol,
        rtol,
        within_tolerance: d.maxAbs <= atol && d.maxLossRel <= rtol,
        seconds: round(a.seconds, 2),
        reference_seconds: round(b.seconds, 2),
        machine: machineInfo(),
        load_1m_before: load,
      })}\n`,
    );
  }
}
