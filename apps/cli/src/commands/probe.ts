/**
 * `vitreg probe`: linear probes of what one token holds (image class, patch position, patch pixels),
 * and DINOv2's linear dense probes (semantic segmentation, monocular depth), on frozen features of one
 * or several checkpoints; resumable, and several tasks side by side in a sweep (the paper's Table 2).
 */
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { BACKEND_NAMES, SettingsMismatchError } from '@vitreg/core';
import {
  ALL_PROBE_TASKS,
  isDenseTask,
  openDenseSource,
  openProbeSource,
  runProbeSweep,
  TOKEN_CHOICES,
  type AnyProbeTask,
  type DataPart,
  type DenseProbeReport,
  type DensePart,
  type ProbeModel,
  type ProbeReport,
  type SweepTask,
} from '@vitreg/probe';
import { TfjsEncoder, withTestTimeRegisters, type Encoder } from '@vitreg/registers';
import { CliError, inputAsCliError, intFlag, parseFlags, type Command } from '../cli.js';
import { ZEROSHOT_FLAGS, ZEROSHOT_USAGE, zeroShotCliError, zeroShotSettings } from './probe-zeroshot.js';
import { TTR_FLAGS, ttrEncoder, ttrEngine, ttrFlags, ttrNeurons, ttrUsage } from '../ttr.js';
import {
  BACKEND_FLAGS,
  checkBackendFlags,
  configFlag,
  DEFAULT_ENGINE,
  ENGINE_FLAGS,
  engineFlags,
  engineUsage,
  loadEncoder,
  startBackend,
  SYNTHETIC_FLAGS,
} from '../inputs.js';

const USAGE = `
Usage: vitreg probe --weights FILE [--weights FILE ...] --data SRC | --data TASK=SRC ...
                    --task TASK[,TASK...] [--token cls|normal|outlier|register|cls+mean] --out DIR

Linear probes on frozen features (images resized to --size x --size):
  class     the image class from one token: cls, a random normal patch, the outlier patch (the
            highest-norm patch the automatic outlier rule flags, else the max-norm patch), a register,
            or cls+mean (CLS concatenated with the mean patch token); softmax regression with a
            weight-decay sweep on a held-out 20% of the training images, plus weighted k-NN (k=20, T=0.07)
  position  the grid cell of a normal or outlier patch token: top-1 and mean distance in patches
  pixels    the patch_size x patch_size x 3 normalised input values under a normal or outlier patch
            token (ridge regression): mean squared error and mean L2 error per patch
  segmentation  DINOv2's linear segmentation: BatchNorm + 1x1 conv on the normalised patch tokens
            (last block, or --layers 4: the last 4), logits resized bilinearly to the label size,
            cross-entropy ignoring label 255, AdamW; mIoU (and pixel accuracy) at each label's size
  depth     DINOv2's linear depth head: patch tokens + CLS before the final norm, upsampled 4x, 1x1
            conv to 256 depth bins in [0.001, 10] m (--depth-head regression: one output), SigLoss,
            AdamW; RMSE, delta < 1.25 and abs rel at each depth map's size (NYU: Eigen crop)
  zeroshot  zero-shot classification with a whole CLIP checkpoint (both towers; open_clip or OpenAI
            names): class names x templates through the text tower, 100 x cosine, top-1 and top-5
            (open_clip's zero-shot ImageNet evaluation; CLIP's mean and std; needs --tokenizer)
Writes DIR/results.json (several tasks: DIR/results-<task>.json; dense tasks also head-<task>.safetensors
with DINOv2's head names). Several --weights run a sweep: DIR/<checkpoint>/... and DIR/sweep.{csv,json,png}
(one row per checkpoint, every task's metrics as columns, plotted against the number of registers; e.g.
the paper's Table 2: --task class,segmentation,depth --data class=IMAGENET --data segmentation=ADE20K
--data depth=NYU). Interrupted runs resume: finished checkpoint/task results with the same settings are
kept (other settings in the same --out are an error), and dense feature extraction continues from
DIR/cache-<task> (removed when the task is done).

Options:
  --data SRC         for class, position, pixels: an image folder (one sub-folder per class; DIR/train and
                     DIR/val when both exist, else a seeded 80/20 split), or 'synthetic' (--count N training
                     images, default 200; --test-count N, default count/4; --synthetic-size N, default 224;
                     --seed). For segmentation: 'synthetic' (the shapes with per-pixel classes, background
                     = 0) or an ADE20k folder (ADEChallengeData2016: images/ and annotations/, training /
                     validation); for depth: 'synthetic' (a depth map per shape image) or an NYU Depth v2
                     folder (nyu_train.txt / nyu_test.txt, or train/ and test/ with rgb_<id>.jpg +
                     sync_depth_<id>.png in mm); ade20k:DIR / nyu:DIR name the layout. With ADE20k / NYU,
                     --count / --test-count take seeded random subsets. TASK=SRC gives one task its data.
  --task T[,T...]    ${ALL_PROBE_TASKS.join(' | ')} | zeroshot (default class)
${ZEROSHOT_USAGE}
  --token T          ${TOKEN_CHOICES.join(' | ')} (default cls; position and pixels: normal | outlier)
  --register N       register read by --token register (default 0)
  --threshold X      outlier rule: auto (default) or a norm
  --size N           input side in pixels (default 224)
  --steps N          softmax-regression steps (default 300); dense head steps (default 1000)
  --layers 1|4       dense tasks: features of the last block (default) or of 4 blocks (segmentation: the
                     last 4; depth: blocks 2, 5, 8, 11 of 12, as DINOv2's linear4 heads)
  --depth-head H     bins (default, DINOv2's linear head) | regression
  --head-batch-size N  images per dense head step (default 4)
  --train-label-size N dense training targets resized (nearest) to N x N (default --size)
  --lr X             dense head AdamW lr (default: segmentation 1e-3, depth 5e-3)
  --weights FILE     .safetensors or .pth (DINOv2, timm, HF, DINO, DeiT-III or CLIP names; OpenAI
                     CLIP: --model clip_vitb16 or --config '{"act_layer":"quick_gelu"}'); --model
                     NAME, --config JSON as for discover
  --batch-size N     images per forward pass (default 8)
  --backend B        ${BACKEND_NAMES.join(' | ')}
  --gpu N            the webgpu backend's adapter (default $VITREG_GPU, else 0)
  --verbose          say why the faster backends were skipped (default: one line, e.g. backend: wasm (auto))
${engineUsage(21)}
                     (feature extraction; heads and probes train on tfjs)
${ttrUsage(21)}
  --out DIR          output folder
`;

/** --data SRC of a one-token task (class, position, pixels), with --count, --test-count, --synthetic-size, --seed. */
function openData(
  data: string,
  values: { count?: string; 'test-count'?: string; 'synthetic-size'?: string; seed?: string },
): { train: DataPart; test: DataPart } {
  const seed = intFlag('seed', values.seed, 0, 0);
  if (data === 'synthetic') {
    const count = intFlag('count', values.count, 200, 2);
    const testCount = intFlag('test-count', values['test-count'], Math.max(1, Math.ceil(count / 4)));
    const syntheticSize = intFlag('synthetic-size', values['synthetic-size'], 224, 16);
    return openProbeSource('synthetic', { count, testCount, seed, syntheticSize });
  }
  if (!existsSync(data) || !statSync(data).isDirectory()) {
    throw new CliError(`--data: expected an image folder or 'synthetic', got ${data}`);
  }
  try {
    return openProbeSource(data, { seed });
  } catch (err) {
    throw new CliError(`--data ${data}: ${(err as Error).message}`);
  }
}

/** A task of this command: the probe package's, or zero-shot classification (probe-zeroshot.ts). */
type CliTask = SweepTask;
const CLI_TASKS: readonly string[] = [...ALL_PROBE_TASKS, 'zeroshot'];

/** --task: one task, or several comma-separated (their columns side by side in a sweep). */
function parseTasks(value: string | undefined): CliTask[] {
  const list = (value ?? 'class').split(',').map((t) => t.trim());
  for (const t of list) {
    if (!CLI_TASKS.includes(t)) {
      throw new CliError(`--task: expected one of ${CLI_TASKS.join(', ')} (or several, comma-separated), got "${t}"`);
    }
  }
  if (new Set(list).size !== list.length) throw new CliError(`--task: "${value}" names a task twice`);
  return list as CliTask[];
}

/** --data (repeatable): a plain SRC used by every task, or TASK=SRC for one task. */
function dataSources(values: string[], tasks: CliTask[]): Map<CliTask, string> {
  const named = new Map<string, string>();
  let plain: string | undefined;
  for (const v of values) {
    const m = /^([a-z]+)=(.+)$/.exec(v);
    if (m && CLI_TASKS.includes(m[1])) {
      if (named.has(m[1])) throw new CliError(`--data: two sources for task ${m[1]}`);
      named.set(m[1], m[2]);
    } else {
      if (plain !== undefined) throw new CliError(`--data: two sources for every task (${plain} and ${v}); give TASK=SRC for each task`);
      plain = v;
    }
  }
  const out = new Map<CliTask, string>();
  for (const t of tasks) {
    const src = named.get(t) ?? plain;
    if (src === undefined) throw new CliError(`--data: no data for task ${t}; give --data ${t}=SRC or one --data SRC for every task`);
    out.set(t, src);
  }
  for (const k of named.keys())
    if (!tasks.includes(k as CliTask)) throw new CliError(`--data ${k}=...: task ${k} is not in --task ${tasks.join(',')}`);
  return out;
}

const pct = (v: number | undefined) => `${(100 * (v ?? NaN)).toFixed(2)}%`;

/** A task's result in one line. */
function headline(task: AnyProbeTask, report: ProbeReport | DenseProbeReport): string {
  if (!isDenseTask(task)) {
    const r = report as ProbeReport;
    if (task === 'class') return `accuracy ${pct(r.accuracy)}, k-NN ${pct(r.knn?.top1)}`;
    if (task === 'position') return `top-1 ${pct(r.top1)}, mean distance ${r.meanDistance!.toFixed(2)} patches`;
    return `MSE ${r.mse!.toFixed(4)}, L2 ${r.l2!.toFixed(4)}`;
  }
  const r = report as DenseProbeReport;
  if (task === 'segmentation') {
    const baseline = `most frequent class everywhere: mIoU ${pct(r.baseline.miou)}`;
    return `mIoU ${pct(r.segmentation?.miou)}, pixel accuracy ${pct(r.segmentation?.accuracy)} (${baseline})`;
  }
  const baseline = `a constant depth: RMSE ${r.baseline.rmse!.toFixed(4)} m`;
  return `RMSE ${r.depth!.rmse.toFixed(4)} m, delta<1.25 ${pct(r.depth!.delta1)}, abs rel ${r.depth!.absRel.toFixed(4)} (${baseline})`;
}

export const probe: Command = {
  summary: 'linear probes (class, position, pixels, segmentation, depth) and k-NN on frozen features',
  usage: USAGE,
  async run(argv) {
    const f = parseFlags('probe', argv, {
      weights: { type: 'string', multiple: true },
      model: { type: 'string' },
      config: { type: 'string' },
      data: { type: 'string', multiple: true },
      ...SYNTHETIC_FLAGS,
      'test-count': { type: 'string' },
      task: { type: 'string' },
      token: { type: 'string' },
      register: { type: 'string' },
      threshold: { type: 'string' },
      size: { type: 'string' },
      steps: { type: 'string' },
      layers: { type: 'string' },
      'depth-head': { type: 'string' },
      'head-batch-size': { type: 'string' },
      'train-label-size': { type: 'string' },
      lr: { type: 'string' },
      'batch-size': { type: 'string' },
      ...BACKEND_FLAGS,
      ...ENGINE_FLAGS,
      ...TTR_FLAGS,
      ...ZEROSHOT_FLAGS,
      out: { type: 'string' },
    });
    const { values } = f;
    f.noPositionals();
    const weights = values.weights ?? [];
    if (weights.length === 0) f.missing('weights', '--weights FILE is required (see vitreg probe --help)');
    if (!values.data?.length) f.missing('data', '--data DIR|synthetic is required (see vitreg probe --help)');
    const outDir = f.require('out', '--out DIR is required (see vitreg probe --help)');
    const tasks = f.check(() => parseTasks(values.task), null);
    const probeTasks = (tasks ?? []).filter((t): t is AnyProbeTask => t !== 'zeroshot');
    const zeroShot = tasks?.includes('zeroshot') ? f.check(() => zeroShotSettings(values), null) : null;
    const tokenTasks = probeTasks.filter((t) => !isDenseTask(t));
    const token = f.choice('token', TOKEN_CHOICES, tokenTasks.includes('class') || tokenTasks.length === 0 ? 'cls' : 'normal');
    for (const t of tokenTasks) {
      if (t !== 'class' && token !== 'normal' && token !== 'outlier') {
        f.fail(`--token: task ${t} reads one patch token, expected normal or outlier, got ${token}`);
      }
    }
    const threshold = values.threshold === undefined || values.threshold === 'auto' ? 'auto' : f.number('threshold', 0);
    const opts = {
      token,
      threshold,
      register: f.int('register', 0, 0),
      size: f.int('size', 224),
      batchSize: f.int('batch-size', 8),
      seed: f.int('seed', 0, 0),
    } as const;
    const dense = {
      layers: f.choice('layers', ['1', '4'] as const, '1') === '4' ? (4 as const) : (1 as const),
      depthHead: f.choice('depth-head', ['bins', 'regression'] as const, 'bins'),
      headBatchSize: f.int('head-batch-size', 4),
      trainLabelSize: f.int('train-label-size', opts.size),
      lr: values.lr === undefined ? undefined : f.number('lr', 0),
    };
    const steps = f.optionalInt('steps', 1);
    const countFlags = {
      count: f.optionalInt('count', 1),
      testCount: f.optionalInt('test-count', 1),
      syntheticSize: f.int('synthetic-size', 224, 16),
      seed: opts.seed,
    };
    checkBackendFlags(f);
    const config = f.check(() => configFlag(values.config), undefined);
    const ttr = f.check(() => ttrFlags(values), null);
    // Features come from the engine --engine picks (auto: ONNX Runtime when it loads); heads train on tfjs.
    const engine = f.check(() => ttrEngine(engineFlags(values), ttr, weights, { onnx: true }), DEFAULT_ENGINE);
    // Every task's data source, named before any model runs.
    const sources = tasks && values.data?.length ? f.check(() => dataSources(values.data!, tasks), null) : null;
    f.done();
    if (!tasks || !sources) throw new CliError('unreachable: flags checked');
    // Every task's data, opened before any model runs (bad paths fail fast).
    const parts = new Map<CliTask, { train: DataPart | DensePart; test: DataPart | DensePart }>();
    for (const t of tasks) {
      if (t === 'zeroshot' || !isDenseTask(t)) parts.set(t, openData(sources.get(t)!, values));
      else {
        try {
          parts.set(t, openDenseSource(sources.get(t)!, t, countFlags));
        } catch (err) {
          throw new CliError(`--data ${sources.get(t)}: ${(err as Error).message}`);
        }
      }
    }
    await startBackend(values.backend, values.gpu, values.verbose);
    const quickGelu =
      (values.model ?? '').startsWith('clip_') || (config as { act_layer?: string } | undefined)?.act_layer === 'quick_gelu';
    try {
      await runProbeSweep({
        weights,
        outDir,
        tasks,
        parts,
        data: sources,
        // With --test-time-registers: the model counts the test-time register among the registers (R + 1).
        // On tfjs the probes drive the VisionTransformer itself, on ONNX Runtime the Encoder.
        async openModel(w, i) {
          const encoder = await loadEncoder(w, { model: values.model, config }, engine);
          let ttrOnnx: Encoder | undefined;
          let model: ProbeModel;
          try {
            if (encoder instanceof TfjsEncoder)
              model = ttr ? withTestTimeRegisters(encoder.model, await ttrNeurons(ttr, encoder.model)) : encoder.model;
            else model = ttr ? (ttrOnnx = await ttrEncoder(ttr, encoder)) : encoder;
          } catch (err) {
            await encoder.dispose();
            throw err;
          }
          if (i === 0) process.stderr.write(`probe features: ${ttrOnnx?.description ?? encoder.description}\n`);
          return {
            model,
            async dispose() {
              await ttrOnnx?.dispose();
              await encoder.dispose();
            },
          };
        },
        settings: (w, task) => ({
          weights: resolve(w),
          model: values.model ?? null,
          config: config ?? null,
          task,
          data: sources.get(task),
          size: opts.size,
          seed: opts.seed,
          count: values.count ?? null,
          testCount: values['test-count'] ?? null,
          syntheticSize: countFlags.syntheticSize,
          ...(ttr && task !== 'zeroshot' ? { testTimeRegisters: resolve(ttr.path), ttrTopK: ttr.topK ?? null } : {}),
        }),
        probe: { ...opts, ...dense, steps },
        ...(zeroShot ? { zeroShot: { ...zeroShot, quickGelu } } : {}),
        onResult(r) {
          if (r.reused) process.stderr.write(`${r.weights}: ${r.task}: already done (${r.file})\n`);
          if (r.task === 'zeroshot')
            process.stderr.write(`${r.weights}: zeroshot: top-1 ${pct(r.report.top1)}, top-5 ${pct(r.report.top5)}\n`);
          else
            process.stderr.write(`${r.weights}: ${isDenseTask(r.task) ? r.task : `${r.task}/${token}`}: ${headline(r.task, r.report)}\n`);
        },
      });
    } catch (err) {
      if (err instanceof SettingsMismatchError) throw new CliError(`--out: ${err.message}; use another --out or delete it`);
      throw inputAsCliError(zeroShotCliError(err));
    }
  },
};
