/**
 * `vitreg probe`: linear probes of what one token holds (image class, patch position, patch pixels),
 * on frozen features of one or several checkpoints.
 */
import { existsSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { BACKEND_NAMES, ensureDir, ImageFolderDataset, Progress, writeJsonAtomic } from '@vitreg/core';
import { PROBE_TASKS, runProbe, splitIndices, TOKEN_CHOICES, writeSweep, type DataPart, type ProbeReport } from '@vitreg/probe';
import { choiceFlag, CliError, intFlag, numberFlag, parseCommandArgs, type Command } from '../cli.js';
import { TfjsEncoder } from '@vitreg/registers';
import {
  checkpointNames, configFlag, ENGINE_FLAGS, engineFlags, engineUsage, loadEncoder, startBackend, SYNTHETIC_FLAGS, syntheticDataset,
} from '../inputs.js';

const USAGE = `
Usage: vitreg probe --weights FILE [--weights FILE ...] --data DIR|synthetic
                    --task class|position|pixels --token cls|normal|outlier|register|cls+mean --out DIR

Linear probes on frozen output tokens (images resized to --size x --size):
  class     the image class from one token: cls, a random normal patch, the outlier patch (the
            highest-norm patch the automatic outlier rule flags, else the max-norm patch), a register,
            or cls+mean (CLS concatenated with the mean patch token); softmax regression with a
            weight-decay sweep on a held-out 20% of the training images, plus weighted k-NN (k=20, T=0.07)
  position  the grid cell of a normal or outlier patch token: top-1 and mean distance in patches
  pixels    the patch_size x patch_size x 3 normalised input values under a normal or outlier patch
            token (ridge regression): mean squared error and mean L2 error per patch
Writes DIR/results.json. Several --weights run a sweep: DIR/<checkpoint>/results.json and
DIR/sweep.{csv,json,png} (the metric against the number of registers).

Options:
  --data SRC         an image folder (one sub-folder per class; DIR/train and DIR/val when both exist,
                     else a seeded 80/20 split), or 'synthetic' (--count N training images, default 200;
                     --test-count N, default count/4; --synthetic-size N, default 224; --seed)
  --task T           ${PROBE_TASKS.join(' | ')} (default class)
  --token T          ${TOKEN_CHOICES.join(' | ')} (default cls; position and pixels: normal | outlier)
  --register N       register read by --token register (default 0)
  --threshold X      outlier rule: auto (default) or a norm
  --size N           input side in pixels (default 224)
  --steps N          softmax-regression steps (default 300)
  --weights FILE     .safetensors or .pth; --model NAME, --config JSON as for discover
  --batch-size N     images per forward pass (default 8)
  --backend B        ${BACKEND_NAMES.join(' | ')}
${engineUsage(21)}
                     (probe runs on tfjs for now: auto picks tfjs, onnxruntime is refused)
  --out DIR          output folder
`;

/** The metric a sweep plots for each task. */
const SWEEP_METRICS: Record<string, string[]> = { class: ['accuracy', 'knn_top1'], position: ['top1'], pixels: ['l2'] };

function openData(data: string, values: Parameters<typeof syntheticDataset>[0] & { 'test-count'?: string }): { train: DataPart; test: DataPart } {
  if (data === 'synthetic') {
    const count = intFlag('count', values.count, 200, 2);
    const testCount = intFlag('test-count', values['test-count'], Math.max(1, Math.ceil(count / 4)));
    return {
      train: { dataset: syntheticDataset({ ...values, count: String(count) }, 'train', count) },
      test: { dataset: syntheticDataset({ ...values, count: String(testCount) }, 'val', testCount) },
    };
  }
  if (!existsSync(data) || !statSync(data).isDirectory()) throw new CliError(`--data: expected an image folder or 'synthetic', got ${data}`);
  try {
    if (existsSync(join(data, 'train')) && existsSync(join(data, 'val'))) {
      return { train: { dataset: new ImageFolderDataset(join(data, 'train')) }, test: { dataset: new ImageFolderDataset(join(data, 'val')) } };
    }
    const ds = new ImageFolderDataset(data);
    const { train, heldOut } = splitIndices(ds.length, 0.2, intFlag('seed', values.seed, 0, 0));
    return { train: { dataset: ds, indices: Array.from(train) }, test: { dataset: ds, indices: Array.from(heldOut) } };
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError(`--data ${data}: ${(err as Error).message}`);
  }
}

export const probe: Command = {
  summary: 'linear probes (class, position, pixels) and k-NN on one token of frozen features',
  usage: USAGE,
  async run(argv) {
    const { values } = parseCommandArgs('probe', argv, {
      weights: { type: 'string', multiple: true },
      model: { type: 'string' },
      config: { type: 'string' },
      data: { type: 'string' },
      ...SYNTHETIC_FLAGS,
      'test-count': { type: 'string' },
      task: { type: 'string' },
      token: { type: 'string' },
      register: { type: 'string' },
      threshold: { type: 'string' },
      size: { type: 'string' },
      steps: { type: 'string' },
      'batch-size': { type: 'string' },
      backend: { type: 'string' },
      ...ENGINE_FLAGS,
      out: { type: 'string' },
    });
    const weights = values.weights ?? [];
    if (weights.length === 0) throw new CliError('--weights FILE is required (see vitreg probe --help)');
    if (!values.data) throw new CliError('--data DIR|synthetic is required (see vitreg probe --help)');
    if (!values.out) throw new CliError('--out DIR is required (see vitreg probe --help)');
    const task = choiceFlag('task', values.task, PROBE_TASKS, 'class');
    const token = choiceFlag('token', values.token, TOKEN_CHOICES, task === 'class' ? 'cls' : 'normal');
    if (task !== 'class' && token !== 'normal' && token !== 'outlier') {
      throw new CliError(`--token: task ${task} reads one patch token, expected normal or outlier, got ${token}`);
    }
    const threshold = values.threshold === undefined || values.threshold === 'auto' ? 'auto' : numberFlag('threshold', values.threshold, 0);
    const opts = {
      task,
      token,
      threshold,
      register: intFlag('register', values.register, 0, 0),
      size: intFlag('size', values.size, 224),
      steps: intFlag('steps', values.steps, 300),
      batchSize: intFlag('batch-size', values['batch-size'], 8),
      seed: intFlag('seed', values.seed, 0, 0),
    } as const;
    const config = configFlag(values.config);
    const engine = engineFlags(values);
    // @vitreg/probe's runProbe drives a tfjs VisionTransformer: auto means tfjs here until it takes an Encoder.
    if (engine.engine === 'onnxruntime' || engine.device !== 'cpu' || engine.threads !== undefined || weights.some((w) => w.toLowerCase().endsWith('.onnx'))) {
      throw new CliError('vitreg probe runs on --engine tfjs only for now (@vitreg/probe\'s runProbe takes a tfjs model): give .safetensors or .pth weights without --device / --threads');
    }
    const { train, test } = openData(values.data, values);
    await startBackend(values.backend);
    const rows: Record<string, string | number>[] = [];
    const dirs = checkpointNames(weights);
    for (const [i, w] of weights.entries()) {
      const encoder = await loadEncoder(w, { model: values.model, config }, { ...engine, engine: 'tfjs' });
      const model = (encoder as TfjsEncoder).model;
      let report: ProbeReport;
      try {
        const total = (train.indices?.length ?? train.dataset.length) + (test.indices?.length ?? test.dataset.length);
        const progress = new Progress({ total, label: `probe ${task}/${token} ${basename(w)}`, unit: 'img' });
        let seen = 0;
        try {
          report = await runProbe(model, train, test, {
            ...opts,
            onProgress: (done) => {
              progress.tick(done - seen);
              seen = done;
            },
          });
        } catch (err) {
          throw new CliError((err as Error).message);
        }
        progress.done();
        const out = weights.length > 1 ? join(values.out, dirs[i]) : values.out;
        await ensureDir(out);
        await writeJsonAtomic(join(out, 'results.json'), { weights: w, config: model.config, ...report });
        const metrics = {
          accuracy: report.accuracy, knn_top1: report.knn?.top1, top1: report.top1, mean_distance: report.meanDistance,
          mse: report.mse, l2: report.l2,
        };
        rows.push({
          checkpoint: w,
          registers: model.config.num_register_tokens,
          ...Object.fromEntries(Object.entries(metrics).filter((e): e is [string, number] => e[1] !== undefined)),
        });
        const headline = task === 'class'
          ? `accuracy ${(100 * report.accuracy!).toFixed(2)}%, k-NN ${(100 * report.knn!.top1).toFixed(2)}%`
          : task === 'position' ? `top-1 ${(100 * report.top1!).toFixed(2)}%, mean distance ${report.meanDistance!.toFixed(2)} patches`
            : `MSE ${report.mse!.toFixed(4)}, L2 ${report.l2!.toFixed(4)}`;
        process.stderr.write(`${w}: ${task}/${token}: ${headline}\n`);
      } finally {
        model.dispose();
      }
    }
    if (weights.length > 1) await writeSweep(values.out, rows, { x: 'registers', metrics: SWEEP_METRICS[task] });
  },
};
