/**
 * `vitreg demo`: the paper's story at toy scale, on built-in data, on a CPU in a few minutes.
 * Trains the same tiny ViT twice on the synthetic shapes (without and with 4 registers), then runs the
 * other commands on the two checkpoints: `analyze` (norms, outliers, attention, PCA; report.html with
 * both side by side) and `discover` (LOST, CorLoc against the known boxes). Everything lands in one
 * folder; a rerun continues interrupted training and redoes the rest.
 */
import { copyFile, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { encodePng, ensureDir, SyntheticDataset, writeFileAtomic, writeJsonAtomic } from '@vitreg/core';
import { signalExitCode, validateTrainConfig } from '@vitreg/trainer';
import { runLocalJob } from '@vitreg/worker';
import { CliError, parseFlags, type Command } from '../cli.js';
import { BACKEND_FLAGS, checkBackendFlags, DEFAULT_ENGINE, ENGINE_FLAGS, engineFlags, resolveEngine, startBackend } from '../inputs.js';
import { analyze } from './analyze.js';
import { discover } from './discover.js';

const usage = `
Usage: vitreg demo [--out DIR] [--steps N] [--images N] [--backend B] [--gpu N] [--engine E] [--device D] [--threads N]

Trains the tiny-supervised preset (ViT-micro/8 on 32 px synthetic shapes) twice, with 0 and with 4
register tokens, each as a local cluster job of 2 worker processes (vitreg train --nodes 2: a
coordinator, gRPC, a ring all-reduce; 16 images per worker and step), then analyses both on synthetic images at 64 px (positional embedding interpolated)
and runs LOST object discovery on them. Writes into DIR (default runs/demo):
  train-reg0/, train-reg4/   run folders of vitreg train (metrics.jsonl, checkpoints/, eval.json,
                             logs/ of the coordinator and workers, ranks/ per-rank metrics)
  weights/reg{0,4}.safetensors  the two trained backbones (vitreg features --weights ...)
  images/                    the synthetic images analysed
  analysis/report.html       vitreg analyze, the two models side by side
  discover/                  vitreg discover: results.jsonl and corloc.json per model, sweep.{csv,json,png}
  summary.json               the numbers printed at the end

  --steps N     training steps per model (default: the preset's 1200, about two minutes each)
  --images N    synthetic images to analyse (default 6) and 4x as many for LOST
  --backend B   auto (default), tensorflow-gpu, webgpu, tensorflow, wasm or cpu
  --gpu N       the webgpu backend's adapter (default $VITREG_GPU, else 0); passed to the training
                workers too (vitreg-worker --gpu N: CUDA device N and WebGPU adapter N)
  --verbose     say why the faster backends were skipped (default: one line, e.g. backend: wasm (auto))
  --engine E    auto (default: onnxruntime when onnxruntime-node loads), tfjs or onnxruntime: the training
                workers' step engine and the forward passes of analyze and discover
  --device D    onnxruntime's execution provider: cpu (default), cuda or webgpu
  --threads N   onnxruntime's intra-op threads (the training workers' --engine-threads)
Interrupted? Run it again: training resumes from its last checkpoint.
`;

/** Runs another command in-process, turning a non-zero exit into an error naming it. */
async function runCommand(name: string, cmd: Command, argv: string[]): Promise<void> {
  const code = await cmd.run(argv);
  if (typeof code === 'number' && code !== 0) throw new CliError(`demo: vitreg ${name} exited with code ${code}`, code);
}

export const demo: Command = {
  summary: 'train tiny ViTs with and without registers on built-in data, then analyse and run LOST',
  usage,
  async run(argv) {
    const f = parseFlags('demo', argv, {
      out: { type: 'string' },
      steps: { type: 'string' },
      images: { type: 'string' },
      ...BACKEND_FLAGS,
      ...ENGINE_FLAGS,
    });
    const { values } = f;
    f.noPositionals();
    const out = resolve(values.out ?? join('runs', 'demo'));
    const images = f.int('images', 6);
    const steps = f.optionalInt('steps', 1);
    checkBackendFlags(f);
    const engine = f.check(() => engineFlags(values), DEFAULT_ENGINE);
    f.done();
    const engineArgs = (threadsFlag: string) => [
      ...(values.engine === undefined ? [] : ['--engine', values.engine]),
      ...(values.device === undefined ? [] : ['--device', values.device]),
      ...(values.threads === undefined ? [] : [threadsFlag, values.threads]),
    ];
    // The demo says which engine does what in its own lines (training: the workers say theirs).
    const tfjs = await startBackend(values.backend, values.gpu, values.verbose, !values.verbose);
    await ensureDir(join(out, 'weights'));

    const evals: Record<string, unknown>[] = [];
    const weights: string[] = [];
    // Training goes through a local cluster job of 2 worker processes (the code paths of a
    // multi-machine job); the preset's batch of 32 is split into 16 per worker.
    const preset = validateTrainConfig({ preset: 'tiny-supervised' });
    for (const registers of [0, 4]) {
      process.stderr.write(`demo: training with ${registers} registers: a local cluster job of 2 worker processes\n`);
      const runDir = join(out, `train-reg${registers}`);
      await ensureDir(runDir);
      const config = validateTrainConfig({
        preset: 'tiny-supervised',
        model: { num_register_tokens: registers },
        train: { batch_size: preset.train.batch_size / 2, ...(steps ? { steps } : {}) },
      });
      const configPath = join(runDir, 'demo-config.json');
      await writeFileAtomic(configPath, JSON.stringify(config, null, 2) + '\n');
      const job = await runLocalJob({
        nodes: 2,
        outDir: runDir,
        onStop: (signal) =>
          process.stderr.write(`demo: ${signal}: training stops after the same step on both workers, with a checkpoint (again: at once)\n`),
        trainArgs: [
          '--config',
          configPath,
          // No --resume: the workers continue a run folder of the same config by themselves (quietly fresh otherwise).
          '--backend',
          values.backend ?? 'auto',
          ...(values.gpu === undefined ? [] : ['--gpu', values.gpu]),
          ...(values.verbose ? ['--verbose'] : []),
          ...engineArgs('--engine-threads'),
        ],
      });
      const result = job.result as
        { checkpoint?: string; num_classes?: number; val_accuracy?: number; interrupted?: { step: number; signal?: string } } | undefined;
      if (result?.interrupted) {
        const { step, signal } = result.interrupted;
        process.stderr.write(
          `demo: interrupted at step ${step} of training with ${registers} registers; checkpoint written; run the same command to continue\n`,
        );
        return signalExitCode(signal);
      }
      if (!job.finished || !result?.checkpoint) {
        throw new Error(`training with ${registers} registers stopped (see ${join(runDir, 'logs')}); run the demo again to resume it`);
      }
      const w = join(out, 'weights', `reg${registers}.safetensors`);
      await copyFile(join(result.checkpoint, 'model.safetensors'), w);
      weights.push(w);
      evals.push({ registers, num_classes: result.num_classes, val_accuracy: result.val_accuracy });
    }

    // Fresh images of the validation split, at twice the training resolution.
    const dir = join(out, 'images');
    await ensureDir(dir);
    const data = new SyntheticDataset({ seed: 1, count: images, size: 64, split: 'val' });
    for (let i = 0; i < images; i++) {
      const item = await data.get(i);
      await writeFileAtomic(
        join(dir, `shape-${i}-${data.classNames[item.label]}.png`),
        await encodePng(item.image, item.width, item.height),
      );
    }

    // analyze and discover run the forward passes on the engine --engine auto picks, the rest on tfjs.
    const forward = (await resolveEngine(engine, weights[0]!)) === 'onnxruntime' ? `onnxruntime (${engine.device})` : `tfjs ${tfjs.name}`;
    const engines = { forward, analysis: `tfjs ${tfjs.name}` };
    process.stderr.write(`demo: analysing both models: forward passes on ${forward}; token analysis and figures on tfjs ${tfjs.name}\n`);
    await runCommand('analyze', analyze, [
      dir,
      '--weights',
      weights[0],
      '--weights-b',
      weights[1],
      '--size',
      '64',
      '--out',
      join(out, 'analysis'),
      ...engineArgs('--threads'),
    ]);
    process.stderr.write(`demo: LOST object discovery: forward passes on ${forward}; LOST on tfjs ${tfjs.name}\n`);
    await runCommand('discover', discover, [
      '--weights',
      weights[0],
      '--weights',
      weights[1],
      '--data',
      'synthetic',
      '--count',
      String(4 * images),
      '--synthetic-size',
      '64',
      '--size',
      '64',
      '--seed',
      '1',
      '--out',
      join(out, 'discover'),
      ...engineArgs('--threads'),
    ]);

    const analysis = JSON.parse(await readFile(join(out, 'analysis', 'summary.json'), 'utf8'));
    const sweep = JSON.parse(await readFile(join(out, 'discover', 'sweep.json'), 'utf8'));
    const rows = evals.map((e, k) => {
      const perImage = (analysis.images as { models: { outliers: number; fraction: number | null }[] }[]).map((im) => im.models[k]);
      const corloc = sweep.rows[k]?.corloc ?? null;
      return {
        registers: e.registers,
        val_accuracy: e.val_accuracy,
        outlier_fraction: perImage.reduce((s, m) => s + (m.fraction ?? 0), 0) / Math.max(1, perImage.length),
        corloc,
        weights: weights[k],
      };
    });
    await writeJsonAtomic(join(out, 'summary.json'), { models: rows, engines, report: join(out, 'analysis', 'report.html') });
    const pct = (x: unknown) => (typeof x === 'number' ? `${(100 * x).toFixed(1)}%` : 'n/a');
    process.stdout.write('\nregisters  val accuracy  outlier patches  LOST CorLoc\n');
    for (const r of rows) {
      process.stdout.write(
        `${String(r.registers).padStart(9)}  ${pct(r.val_accuracy).padStart(12)}  ${pct(r.outlier_fraction).padStart(15)}  ${pct(r.corloc).padStart(11)}\n`,
      );
    }
    process.stdout.write(
      `\n(chance accuracy ${pct(1 / data.numClasses)}; at this toy scale these numbers are noise: the paper's\n` +
        ` artifacts grow in large ViTs after long training; a search at small scale: docs/small-scale-study.md)\n` +
        `forward passes on ${forward}; token analysis, figures and LOST on tfjs ${tfjs.name}\n` +
        `report: ${join(out, 'analysis', 'report.html')}\n`,
    );
  },
};
