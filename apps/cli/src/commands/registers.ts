/**
 * `vitreg registers find`: rank the MLP "register neurons" of a model trained without registers
 * (Jiang et al. 2025, "Vision Transformers Don't Need Trained Registers"; reference
 * nickjiang2378/test-time-registers) and save them as a small JSON. The `--test-time-registers` flags
 * that use the file are in ../ttr.ts.
 */
import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { imageFileBatches, log, type ImageTransform } from '@vitreg/core';
import { findRegisterNeurons, saveTestTimeRegisters, testTimeRegistersFile, TTR_PRESETS } from '@vitreg/registers';
import { CliError, parseFlags, type Command } from '../cli.js';
import {
  BACKEND_FLAGS,
  checkBackendFlags,
  configFlag,
  IMAGE_FLAGS,
  imageFiles,
  imageTransform,
  loadModel,
  MODEL_FLAGS,
  readTensorBatch,
  startBackend,
} from '../inputs.js';

const FIND_USAGE = `
Usage: vitreg registers find --weights FILE [--model NAME] [--config JSON|FILE.json]
                             (IMAGE... | --tensor FILE.safetensors[:NAME]) --out neurons.json
                             [--preset NAME] [--layer L] [--threshold auto|N] [--highest-layer H]
                             [--top-k K] [--sparsity] [--batch-size N] [--size N | --keep-aspect]
                             [--backend B] [--gpu N]

Finds the MLP "register neurons" that create a model's high-norm outlier tokens, as the reference's
find_register_neurons (Jiang et al. 2025, nickjiang2378/test-time-registers): per image, the L2 norm
of every token (CLS included) at the output of block L before the final norm; outliers are the
tokens above the threshold; every neuron of every block scores its mean |activation| (after the MLP
activation) at the outliers; images without outliers are skipped; scores are averaged and sorted.
The neurons of blocks <= H, top K, are the selection. neurons.json holds the whole ranking, the
selection, the settings and the model's fingerprint (it refuses to apply to another model).

  --weights FILE      .safetensors or .pth (DINOv2, timm, HF, DINO, DeiT-III or CLIP names; OpenAI
                      CLIP: --model clip_vitb16 or --config '{"act_layer":"quick_gelu"}'); --model NAME
                      a named config, --config JSON|FILE.json config fields over the inferred ones
  --preset NAME       the reference's settings: ${Object.entries(TTR_PRESETS)
    .map(([k, v]) => `${k} (L ${v.layer}, N ${v.threshold}, H ${v.highestLayer}, K ${v.topK})`)
    .join(',\n                      ')};
                      flags given override it
  --layer L           block whose output decides the outliers, negative from the end (default -1)
  --threshold T       auto (default: vitreg's bimodality rule on each image's token norms) or a
                      number: outliers have norm > T (reference: 150 for DINOv2-L, 30 for CLIP B/16)
  --highest-layer H   keep neurons of blocks <= H (default -1: all)
  --top-k K           neurons selected (default 50)
  --sparsity          the reference's sparsity filter: a neuron keeps its score on an image only if
                      its activation is < 0.5 on at least half of the tokens
  IMAGE...            image files, folders or globs (DINOv2's evaluation transform; --size N,
                      --keep-aspect as in vitreg features)
  --tensor SPEC       an already-normalised NHWC float32 batch [B,H,W,3] from a safetensors file
  --batch-size N      images per forward pass (default 8)
  --backend B         auto (default), tensorflow-gpu, webgpu, tensorflow, wasm or cpu
  --gpu N             the webgpu backend's adapter (default $VITREG_GPU, else 0)
  --verbose           say why the faster backends were skipped (default: one line, e.g. backend: wasm (auto))

Then: vitreg features|analyze|probe|discover ... --test-time-registers neurons.json [--ttr-top-k K]
`;

/** Image files as tfjs batches (split where the size changes), each disposed once the next is asked for. */
async function* imageBatches(files: string[], transform: ImageTransform, batchSize: number): AsyncGenerator<tf.Tensor4D> {
  for await (const b of imageFileBatches(files, transform, batchSize)) {
    const t = tf.tensor4d(b.data, b.shape);
    yield t;
    t.dispose();
  }
}

async function find(argv: string[]): Promise<number> {
  const f = parseFlags('registers find', argv, {
    ...MODEL_FLAGS,
    ...IMAGE_FLAGS,
    ...BACKEND_FLAGS,
    tensor: { type: 'string' },
    out: { type: 'string' },
    preset: { type: 'string' },
    layer: { type: 'string' },
    threshold: { type: 'string' },
    'highest-layer': { type: 'string' },
    'top-k': { type: 'string' },
    sparsity: { type: 'boolean' },
    'batch-size': { type: 'string' },
  });
  const { values, positionals } = f;
  if (values.help) {
    process.stdout.write(FIND_USAGE.trimStart());
    return 0;
  }
  const out = f.require('out', '--out neurons.json is required');
  if (out && !out.endsWith('.json')) f.fail(`--out: expected a .json path, got ${out}`);
  if (positionals.length > 0 === (values.tensor !== undefined))
    f.fail('give either IMAGE... or --tensor FILE.safetensors[:NAME] (not both)');
  let preset: (typeof TTR_PRESETS)[string] | undefined;
  if (values.preset !== undefined) {
    preset = TTR_PRESETS[values.preset];
    if (!preset) f.fail(`--preset: expected one of ${Object.keys(TTR_PRESETS).join(', ')}, got "${values.preset}"`);
  }
  const signedInt = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    if (!/^-?\d+$/.test(v)) {
      f.fail(`--${name}: expected an integer, got "${v}"`);
      return undefined;
    }
    return Number(v);
  };
  const layer = signedInt('layer', values.layer) ?? preset?.layer ?? -1;
  const highestLayer = signedInt('highest-layer', values['highest-layer']) ?? preset?.highestLayer ?? -1;
  const topK = values['top-k'] !== undefined ? f.int('top-k', 50) : (preset?.topK ?? 50);
  let threshold: number | 'auto' = preset?.threshold ?? 'auto';
  if (values.threshold !== undefined) {
    threshold = values.threshold === 'auto' ? 'auto' : f.number('threshold', 0);
    if (threshold !== 'auto' && threshold < 0) f.fail(`--threshold: expected auto or a number >= 0, got "${values.threshold}"`);
  }
  const batchSize = f.int('batch-size', 8);
  const weights = f.require('weights', '--weights FILE is required (.safetensors or .pth)');
  if (values.tensor === undefined) f.check(() => imageTransform(values, 1), undefined);
  checkBackendFlags(f);
  const config = f.check(() => configFlag(values.config), undefined);
  f.inputs(positionals);
  f.done();

  await startBackend(values.backend, values.gpu, values.verbose);
  const model = await loadModel(weights, { model: values.model, config });
  const p = model.config.patch_size;
  let images: tf.Tensor4D | AsyncIterable<tf.Tensor4D>;
  let count: number;
  if (values.tensor !== undefined) {
    const t = await readTensorBatch(values.tensor, p);
    images = tf.tensor4d(t.data, t.shape);
    count = t.shape[0];
  } else {
    const files = await imageFiles(positionals);
    images = imageBatches(files, imageTransform(values, p), batchSize);
    count = files.length;
  }
  let result;
  try {
    result = await findRegisterNeurons(model, images, {
      layer,
      threshold,
      highestLayer,
      topK,
      sparsity: values.sparsity ?? false,
      batchSize,
    });
  } catch (err) {
    throw err instanceof CliError ? err : new CliError((err as Error).message);
  } finally {
    if (images instanceof tf.Tensor) images.dispose();
  }
  await saveTestTimeRegisters(resolve(out), await testTimeRegistersFile(model, result, weights));
  const s = result.settings;
  log(
    `${count} image(s): ${result.images.used} with outliers at block ${s.layer < 0 ? model.config.depth + s.layer : s.layer} (threshold ${s.threshold}), ${result.images.skipped} skipped`,
  );
  process.stdout.write(
    `layer\tneuron\tscore\n${result.neurons
      .slice(0, 10)
      .map((n) => `${n.layer}\t${n.neuron}\t${n.score.toPrecision(5)}`)
      .join('\n')}\n`,
  );
  if (result.neurons.length > 10) process.stdout.write(`... ${result.neurons.length - 10} more selected\n`);
  log(
    `wrote ${out}: ${result.neurons.length} neurons selected (blocks <= ${s.highestLayer === -1 ? 'all' : s.highestLayer}), ranking of ${result.ranking.length}`,
  );
  model.dispose();
  return 0;
}

export const registersCommand: Command = {
  summary: 'test-time registers: find the register neurons of a model trained without registers',
  usage: `
Usage: vitreg registers find ...      (vitreg registers find --help)
${FIND_USAGE}`,
  async run(argv) {
    const [sub, ...rest] = argv;
    if (sub === 'find') return find(rest);
    if (sub === undefined || sub === '--help' || sub === '-h') {
      process.stdout.write(this.usage.trimStart());
      return sub === undefined ? 2 : 0;
    }
    throw new CliError(`registers: unknown subcommand "${sub}"; expected find`);
  },
};
