/**
 * `vitreg train`: train a ViT with registers, supervised (DeiT-III style) or self-supervised
 * (DINOv2: DINO + iBOT + KoLeo), from a preset or a JSON config, with exact resume.
 */
import { join, resolve } from 'node:path';
import {
  assertDataSource,
  checkThreadsOnDevice,
  MAX_WORKERS,
  openCaptionData,
  openDataAsync,
  parseStopSignals,
  PRESET_ALIASES,
  PRESET_NAMES,
  PRESETS,
  resolveTrainConfig,
  resolveTrainEngine,
  signalExitCode,
  STOP_SIGNALS,
  stopOnSignals,
  train,
  trainThreads,
  type EngineFactory,
  type TrainConfig,
} from '@vitreg/trainer';
import type { EngineChoice, OnnxDevice } from '@vitreg/registers';
import { CliError, inputAsCliError, parseFlags, type Command } from '../cli.js';
import { BACKEND_FLAGS, checkBackendFlags, DEFAULT_ENGINE, ENGINE_FLAGS, engineFlags, startBackend } from '../inputs.js';
import { interruptedLine, planRun, setAside, shown } from '../run-folder.js';
import { runLocalJob } from '@vitreg/worker';

const usage = `
Usage: vitreg train (--preset NAME | --config FILE.json) [--data DIR|FILE|synthetic] [--registers N]
                    [--steps N] [--out DIR] [--resume | --restart] [--seed N] [--workers N] [--nodes N]
                    [--backend auto|tensorflow-gpu|webgpu|tensorflow|wasm|cpu] [--gpu N] [--no-progress]
                    [--stop-signals INT,TERM,USR1] [--engine auto|tfjs|onnxruntime] [--device cpu|cuda|webgpu]
                    [--threads N] [--tokenizer FILE] [--csv-img-key K] [--csv-caption-key K] [--csv-separator S]
       vitreg train --list-presets
       vitreg train (--preset NAME | --config FILE.json) [overrides] --print-config
       vitreg train --resume --out DIR          (continues with DIR/config.json)

Trains a Vision Transformer with N register tokens and writes the run folder DIR:
  config.json               the full, validated config
  metrics.jsonl             one JSON line per step: loss parts, lr, wd, grad_norm, images_per_s,
                            rss_mb, tf_tensors, tf_mb (and periodic {"step", "eval": {...}} lines)
  checkpoints/step-N/       model.safetensors (loadable by vitreg features --weights), teacher.safetensors,
                            heads.safetensors, optimizer.safetensors, state.json
  eval.json                 num_classes and val_accuracy (supervised) or knn_accuracy (self-supervised)

  --preset NAME      tiny-supervised, tiny-dino (CPU-sized, synthetic data, a few minutes); the paper's
                     recipes for GPU clusters, which need --data: dinov2-l14-reg4, dinov2-l14,
                     deit3-b16-in1k-reg4, deit3-b16-in1k, deit3-b16-in22k-reg4, deit3-b16-in22k
                     (see --list-presets; deit3-b16[-reg4] are the in1k ones)
  --config FILE      a JSON object with any of the sections objective, model, data, train, optim,
                     supervised, dino, ibot, crops (and optionally "preset" to start from); the rest
                     are defaults (see the @vitreg/trainer README)
  --data DIR|FILE    a folder with train/ and val/ class folders, or class folders split by
                     data.val_fraction, or a file list (train.txt / train.csv: "path label" lines,
                     val from the sibling val.txt); "synthetic": the built-in shapes (the CPU
                     presets' data; a paper preset warns). Folders are indexed once in
                     .vitreg-index.jsonl;  --rebuild-index lists them again
                     Objective clip (tiny-clip, openclip-b16[-reg4]): "synthetic" (generated captions), a
                     CSV / TSV table of image paths and captions (open_clip's CsvDataset), or a folder of
                     WebDataset .tar shards (.jpg/.png + .txt per key; at least one shard per rank)
  --tokenizer FILE   clip: CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz; clip.tokenizer); the
                     synthetic captions have a built-in word vocabulary
  --csv-img-key K    clip: the table's image column (default filepath);  --csv-caption-key K: its
                     caption column (default title);  --csv-separator S: tab unless the file ends in .csv
  --registers N      register tokens, 0-16 (model.num_register_tokens)
  --steps N          training steps (train.steps);  --seed N: train.seed
  --out DIR          run folder (default runs/train-<preset>)
  --print-config     print the resolved config (every field, after the preset, the file and the
                     flags) as JSON and exit, to diff it against another recipe
  --resume           continue from the newest checkpoint in --out, with the same weights, optimiser,
                     data order and random numbers as if never stopped. This is also what the same
                     command does without --resume when --out holds checkpoints of the same config
                     ("resuming from step N of M"); --resume alone (no --preset / --config) takes the
                     config from DIR/config.json, and says so when there is no checkpoint yet. A folder
                     holding another config's checkpoints is refused, naming the first differing field
  --restart          start again from step 0 in --out; the previous run's checkpoints, metrics and
                     config are moved to DIR/previous-<time>/ (not deleted)
  --stop-signals L   signals that stop training cleanly (default INT,TERM,USR1; "none": the signals'
                     defaults): the step in progress finishes, a checkpoint is written, the run exits
                     with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM) saying
                     "interrupted at step N ...; run the same command to continue"; a second signal
                     exits at once. With --nodes every worker stops after the same step
  --workers N        data-parallel training over N worker threads, 1-64 (default 1: in this thread);
                     use one per CPU core. train.batch_size is per worker: the global batch is
                     batch_size x N. A run may be resumed with another N. Each thread trains on
                     --engine (--threads N: each thread's onnxruntime threads; one process with
                     --threads N alone is usually faster: its threads share one copy of the weights);
                     not with --device webgpu (one WebGPU context per process: use --nodes N)
  --nodes N          a local cluster job: a coordinator and N worker processes on this machine over
                     loopback (the code paths of a multi-machine job: gRPC, ring all-reduce, job
                     token); with --workers T each process runs T threads. Logs in DIR/logs/,
                     per-rank metrics in DIR/ranks/. The job goes on while --min-workers remain.
  --min-workers N    with --nodes: fewest worker processes the job continues with (default 1)
  --transport tcp|grpc  with --nodes: the ring's data plane (default tcp)
  --collective-timeout-ms MS  with --nodes: the longest an all-reduce or state broadcast waits for the
                     ring before that neighbour counts as unreachable (default 600000, NCCL's 10 minutes)
  --backend B        auto (default), tensorflow-gpu, webgpu, tensorflow, wasm or cpu; with --nodes
                     passed to every worker process
  --gpu N            the webgpu backend's adapter (default $VITREG_GPU, else 0); with --nodes passed
                     to every worker process (vitreg-worker --gpu N: CUDA device N and WebGPU adapter N)
  --verbose          say why the faster backends were skipped (default: one line, e.g. backend: wasm (auto))
  --engine E         the step engine: auto (default: onnxruntime when onnxruntime-node loads, else
                     tfjs), tfjs, or onnxruntime (vitreg's forward + backward graphs on ONNX Runtime;
                     the same checkpoints either way); with --nodes passed to every worker process
  --device D         onnxruntime's execution provider: cpu (default), cuda (CUDA 12) or webgpu
  --threads N        onnxruntime's intra-op threads (default: one per physical core); with --nodes
                     each worker process's (vitreg-worker --engine-threads N)
On a cluster, start vitreg-worker (same options) with the cluster's launcher: see deploy/.
`;

/** What the first stop signal prints: the run goes on to the end of its step, then stops. */
function stoppingLine(signal: NodeJS.Signals, how = 'the step in progress finishes'): string {
  const again = signal === 'SIGINT' ? 'Ctrl-C' : signal;
  return `vitreg train: ${signal}: stopping (${how}, then a checkpoint is written; ${again} again exits at once)\n`;
}

/** The step engine of --engine / --device / --threads, said in one line. */
async function trainEngine(s: { engine: EngineChoice; device: OnnxDevice; threads?: number }): Promise<EngineFactory> {
  try {
    return (await resolveTrainEngine(s, { log: (line) => process.stderr.write(`[vitreg] ${line}\n`) })).factory;
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

function listPresets(): string {
  const width = Math.max(...PRESET_NAMES.map((n) => n.length));
  const aliases = Object.entries(PRESET_ALIASES).map(([a, to]) => `${a.padEnd(width)}  the same as ${to}`);
  return [...PRESET_NAMES.map((n) => `${n.padEnd(width)}  ${PRESETS[n]!.summary}`), ...aliases].join('\n');
}

export const trainCommand: Command = {
  summary: 'train a ViT with registers (supervised or DINOv2 self-supervised) with exact resume',
  usage,
  async run(argv) {
    const f = parseFlags('train', argv, {
      config: { type: 'string' },
      preset: { type: 'string' },
      data: { type: 'string' },
      registers: { type: 'string' },
      steps: { type: 'string' },
      out: { type: 'string' },
      resume: { type: 'boolean' },
      seed: { type: 'string' },
      ...BACKEND_FLAGS,
      workers: { type: 'string' },
      nodes: { type: 'string' },
      'min-workers': { type: 'string' },
      transport: { type: 'string' },
      'collective-timeout-ms': { type: 'string' },
      'list-presets': { type: 'boolean' },
      'print-config': { type: 'boolean' },
      'rebuild-index': { type: 'boolean' },
      'no-progress': { type: 'boolean' },
      restart: { type: 'boolean' },
      'stop-signals': { type: 'string' },
      tokenizer: { type: 'string' },
      'csv-img-key': { type: 'string' },
      'csv-caption-key': { type: 'string' },
      'csv-separator': { type: 'string' },
      ...ENGINE_FLAGS,
    });
    const { values } = f;
    f.noPositionals();
    if (values['list-presets'] && f.ok) {
      process.stdout.write(listPresets() + '\n');
      return 0;
    }
    const workers = f.int('workers', 1);
    if (workers > MAX_WORKERS) f.fail(`--workers: expected an integer from 1 to ${MAX_WORKERS}, got "${values.workers}"`);
    checkBackendFlags(f);
    const registers = f.optionalInt('registers', 0);
    const steps = f.optionalInt('steps', 1);
    const seed = f.optionalInt('seed', 0);
    const nodes = f.optionalInt('nodes', 1);
    const transport = values.transport === 'grpc' ? 'grpc' : 'tcp';
    if (values.transport !== undefined && values.transport !== transport)
      f.fail(`--transport: expected tcp or grpc, got "${values.transport}"`);
    const minWorkers = f.int('min-workers', 1);
    const collectiveTimeoutMs = f.optionalInt('collective-timeout-ms', 1);
    if (nodes !== undefined && minWorkers > nodes) f.fail(`--min-workers: ${minWorkers} is more than --nodes ${nodes}`);
    if (values.resume && values.restart) f.fail('--resume and --restart exclude each other');
    const stopSignals = f.check(() => {
      try {
        return parseStopSignals(values['stop-signals'] ?? STOP_SIGNALS.join(','));
      } catch (err) {
        throw new CliError(`--stop-signals: ${(err as Error).message}`);
      }
    }, []);
    const engine = f.check(() => engineFlags(values), DEFAULT_ENGINE);
    f.check(() => {
      try {
        checkThreadsOnDevice(engine, workers, '--workers');
      } catch (err) {
        throw inputAsCliError(err);
      }
    }, undefined);
    const out = resolve(values.out ?? join('runs', `train-${values.preset ?? 'config'}`));
    let config: TrainConfig | undefined;
    try {
      config = resolveTrainConfig({
        configFile: values.config,
        preset: values.preset,
        resumeDir: values.resume ? out : undefined,
        data: values.data,
        registers,
        steps,
        seed,
        tokenizer: values.tokenizer === undefined ? undefined : resolve(values.tokenizer),
        csvImgKey: values['csv-img-key'],
        csvCaptionKey: values['csv-caption-key'],
        csvSeparator: values['csv-separator'] === '\\t' ? '\t' : values['csv-separator'],
        warn: (message) => process.stderr.write(`vitreg train: warning: ${message}\n`),
      });
    } catch (err) {
      f.fail((err as Error).message);
    }
    f.done();
    if (!config) throw new CliError('unreachable: the config was checked');
    try {
      if (values['print-config']) {
        process.stdout.write(JSON.stringify(config, null, 2) + '\n');
        return 0;
      }
      assertDataSource(config);
      // Lists an image folder once (in parallel) and writes its index; the training reads the index.
      if (config.objective === 'clip') await openCaptionData(config);
      else await openDataAsync(config, { rebuildIndex: values['rebuild-index'] ?? false });
    } catch (err) {
      if (err instanceof CliError) throw err;
      throw new CliError((err as Error).message);
    }
    // Resume by default; another run's checkpoints are refused before any work.
    const plan = await planRun(out, config, { resume: values.resume, restart: values.restart });
    if (values.restart) {
      const aside = await setAside(out);
      if (aside) process.stderr.write(`vitreg train: --restart: the previous run's files are in ${shown(aside)}\n`);
    }
    const total = config.train.steps;
    if (nodes !== undefined) {
      const pass: [string, string | boolean | undefined][] = [
        ['--config', values.config],
        ['--preset', values.preset],
        ['--data', values.data],
        ['--registers', values.registers],
        ['--steps', values.steps],
        ['--seed', values.seed],
        ['--backend', values.backend],
        ['--gpu', values.gpu],
        ['--verbose', values.verbose],
        ['--engine', values.engine],
        ['--device', values.device],
        ['--engine-threads', values.threads],
        // Objective clip's caption flags (the tokenizer as an absolute path, as the config holds it).
        ['--tokenizer', values.tokenizer === undefined ? undefined : resolve(values.tokenizer)],
        ['--csv-img-key', values['csv-img-key']],
        ['--csv-caption-key', values['csv-caption-key']],
        ['--csv-separator', values['csv-separator']],
        // The workers continue the run the CLI found (the same config: checked above).
        ['--resume', plan.resume === true || plan.from !== null],
        ['--no-progress', values['no-progress']],
      ];
      const trainArgs = pass.flatMap(([flag, v]) => (v === undefined || v === false ? [] : v === true ? [flag] : [flag, v]));
      const r = await runLocalJob({
        nodes,
        threads: workers,
        minWorkers,
        transport,
        outDir: out,
        trainArgs,
        ...(collectiveTimeoutMs === undefined ? {} : { workerArgs: ['--collective-timeout-ms', String(collectiveTimeoutMs)] }),
        stopSignals,
        onStop: (signal) => process.stderr.write(stoppingLine(signal, 'every worker stops after the same step')),
        onSecondSignal: (signal) => process.exit(signalExitCode(signal)),
      });
      const interrupted = r.result?.interrupted as { step: number; signal?: string } | undefined;
      if (interrupted) {
        process.stderr.write(`vitreg train: ${interruptedLine(interrupted.step, total, r.result?.checkpoint as string | undefined)}\n`);
        return signalExitCode(interrupted.signal);
      }
      const failed = r.workerCodes.map((code, i) => [i, code, r.workerSignals[i]] as const).filter(([, code]) => code !== 0);
      for (const [i, code, signal] of failed)
        process.stderr.write(
          `vitreg train: worker-${i} ended with ${signal ?? `code ${code}`} (log: ${join(out, 'logs', `worker-${i}.log`)})\n`,
        );
      if (!r.finished) {
        throw new CliError(
          `the job stopped before finishing (coordinator exit code ${r.coordinatorCode}; see ${join(out, 'logs')}); run again with --resume to continue from the last checkpoint`,
          1,
        );
      }
      process.stdout.write(JSON.stringify(r.result ?? { out }) + '\n');
      return 0;
    }
    await startBackend(values.backend, values.gpu, values.verbose);
    const signals = stopOnSignals(stopSignals, { onFirst: (signal) => process.stderr.write(stoppingLine(signal)) });
    try {
      const opts = { outDir: out, resume: plan.resume, progress: !values['no-progress'], stop: signals.stop };
      // With --workers N every training thread resolves --engine itself (an engine cannot cross to a thread).
      const result =
        workers === 1
          ? await train(config, { ...opts, engine: await trainEngine(engine) })
          : await trainThreads(config, { ...opts, workers, engineOptions: engine });
      if (result.interrupted) {
        process.stderr.write(`vitreg train: ${interruptedLine(result.interrupted.step, total, result.checkpoint)}\n`);
        return signalExitCode(result.interrupted.signal);
      }
      process.stdout.write(JSON.stringify({ out, step: result.step, checkpoint: result.checkpoint, ...result.eval }) + '\n');
      return 0;
    } finally {
      signals.dispose();
    }
  },
};
