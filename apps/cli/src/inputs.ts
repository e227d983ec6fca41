/**
 * Inputs every model command shares: --backend, --engine/--device/--threads, --weights/--model/--config,
 * --tensor FILE[:NAME], image files with --size / --keep-aspect. Each turns bad input into a one-line
 * CliError naming the flag, file or tensor.
 */
import { existsSync, readFileSync } from 'node:fs';
import {
  BACKEND_NAMES,
  initBackend,
  listImageFiles,
  SafetensorsReader,
  SyntheticDataset,
  toFloat32,
  type BackendInfo,
  type BackendName,
  type ImageTransform,
} from '@vitreg/core';
import {
  CONFIG_FIELDS,
  ENGINE_CHOICES,
  loadWeights,
  ONNX_DEVICES,
  OnnxEncoder,
  onnxRuntimeAvailable,
  readWeights,
  TfjsEncoder,
  type Encoder,
  type EngineChoice,
  type EngineName,
  type OnnxDevice,
  type ViTConfig,
  type VisionTransformer,
} from '@vitreg/registers';
import { choiceFlag, CliError, intFlag, type Flags, type FlagSpec } from './cli.js';

/** parseArgs options of the model flags. */
export const MODEL_FLAGS = {
  weights: { type: 'string' },
  model: { type: 'string' },
  config: { type: 'string' },
  backend: { type: 'string' },
} as const;

/** The options of --backend, --gpu and --verbose, for the commands that start a backend. */
export const BACKEND_FLAGS = {
  backend: { type: 'string' },
  gpu: { type: 'string' },
  verbose: { type: 'boolean' },
} as const;

/** Records the problems of --backend and --gpu, checked with the other flags before the backend starts. */
export function checkBackendFlags(f: Flags<Record<string, FlagSpec>>): void {
  const values = f.values as { backend?: string; gpu?: string };
  f.check(() => choiceFlag('backend', values.backend, BACKEND_NAMES, 'auto'), 'auto');
  if (values.gpu !== undefined) f.check(() => intFlag('gpu', values.gpu, 0, 0), 0);
}

/**
 * --backend: start the backend (auto by default) and return what was chosen; it logs one short line
 * (`backend: wasm (auto)`), with --verbose also why the faster ones were skipped (`quiet`: no line, the
 * caller says it). --gpu N: the WebGPU adapter (default $VITREG_GPU, else 0).
 */
export async function startBackend(value: string | undefined, gpu?: string, verbose = false, quiet = false): Promise<BackendInfo> {
  const name = choiceFlag('backend', value, BACKEND_NAMES, 'auto') as BackendName;
  const index = gpu === undefined ? undefined : intFlag('gpu', gpu, 0, 0);
  try {
    return await initBackend(name, { verbose, ...(quiet ? { log: () => {} } : {}), ...(index === undefined ? {} : { gpu: index }) });
  } catch (err) {
    throw new CliError(`--backend: ${(err as Error).message}`);
  }
}

/** parseArgs options of the forward-engine flags. */
export const ENGINE_FLAGS = {
  engine: { type: 'string' },
  device: { type: 'string' },
  threads: { type: 'string' },
} as const;

/** Help text of the engine flags, for the commands' usage, descriptions starting at column `col`. */
export function engineUsage(col = 20): string {
  const rows: [string, string[]][] = [
    [
      '--engine E',
      [
        'auto (default: onnxruntime when onnxruntime-node loads, else tfjs), tfjs or',
        'onnxruntime; an .onnx --weights file (vitreg export) runs on onnxruntime',
      ],
    ],
    ['--device D', ["onnxruntime's execution provider: cpu (default), cuda or webgpu"]],
    ['--threads N', ["onnxruntime's intra-op threads (default: one per physical core)"]],
  ];
  return rows.flatMap(([flag, lines]) => lines.map((l, i) => (i === 0 ? `  ${flag}`.padEnd(col) : ' '.repeat(col)) + l)).join('\n');
}

/** The parsed engine flags. */
export interface EngineSettings {
  engine: EngineChoice;
  device: OnnxDevice;
  threads?: number;
}

/** The engine settings without flags (what a bad flag falls back to while the others are checked). */
export const DEFAULT_ENGINE: EngineSettings = { engine: 'auto', device: 'cpu' };

/** --engine, --device, --threads, validated (the engine is resolved when the model loads). */
export function engineFlags(values: { engine?: string; device?: string; threads?: string }): EngineSettings {
  const engine = choiceFlag('engine', values.engine, ENGINE_CHOICES, 'auto');
  const device = choiceFlag('device', values.device, ONNX_DEVICES, 'cpu');
  const threads = values.threads === undefined ? undefined : intFlag('threads', values.threads, 1);
  if (engine === 'tfjs' && (values.device !== undefined || threads !== undefined)) {
    throw new CliError(
      `--${values.device !== undefined ? 'device' : 'threads'} applies to --engine onnxruntime; tfjs picks its device with --backend`,
    );
  }
  return { engine, device, threads };
}

/** The engine --engine names for these weights: auto is onnxruntime when it loads (always for .onnx files). */
export async function resolveEngine(s: EngineSettings, path: string): Promise<EngineName> {
  const onnxFile = path.toLowerCase().endsWith('.onnx');
  if (s.engine === 'tfjs') {
    if (onnxFile) throw new CliError(`--engine tfjs cannot run ${path}: give the .safetensors or .pth weights, or --engine onnxruntime`);
    return 'tfjs';
  }
  if (s.engine === 'onnxruntime' || onnxFile || s.device !== 'cpu' || s.threads !== undefined) return 'onnxruntime';
  return (await onnxRuntimeAvailable()) ? 'onnxruntime' : 'tfjs';
}

/** The weight namings vitreg reads, and how OpenAI CLIP's QuickGELU is named, for help and error texts. */
export const WEIGHTS_NAMINGS = `DINOv2, timm, HF, DINO, DeiT-III or CLIP names; OpenAI CLIP: --model clip_vitb16 or --config '{"act_layer":"quick_gelu"}'`;

/**
 * --weights as a forward-only Encoder on the engine the flags choose: a checkpoint (with --model /
 * --config) on tfjs or onnxruntime, or an .onnx file from vitreg export on onnxruntime. Errors are one line.
 */
export async function loadEncoder(
  path: string | undefined,
  opts: { model?: string; config?: Partial<ViTConfig> },
  s: EngineSettings,
  flag = 'weights',
): Promise<Encoder> {
  if (!path) throw new CliError(`--${flag} FILE is required (.safetensors, .pth or an .onnx from vitreg export; ${WEIGHTS_NAMINGS})`);
  if (!existsSync(path)) throw new CliError(`--${flag}: ${path} does not exist`);
  const engine = await resolveEngine(s, path);
  if (engine === 'tfjs') return new TfjsEncoder(await loadModel(path, opts, flag));
  try {
    if (path.toLowerCase().endsWith('.onnx')) {
      if (opts.model || opts.config) throw new CliError(`--model and --config do not apply to ${path}: an .onnx file holds its config`);
      return await OnnxEncoder.fromFile(path, { device: s.device, threads: s.threads });
    }
    const { config, stateDict } = await readWeights(path, opts);
    return await OnnxEncoder.fromWeights(config, stateDict, { device: s.device, threads: s.threads });
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError((err as Error).message);
  }
}

/** --config: a JSON object, or a .json file holding one, of ViTConfig fields. */
export function configFlag(value: string | undefined): Partial<ViTConfig> | undefined {
  if (value === undefined) return undefined;
  let text = value;
  let where = '--config';
  if (!value.trim().startsWith('{')) {
    if (!existsSync(value))
      throw new CliError(`--config: expected a JSON object such as '{"num_heads": 3}' or a .json file, got ${JSON.stringify(value)}`);
    text = readFileSync(value, 'utf8');
    where = `--config ${value}`;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new CliError(`${where}: expected a JSON object such as '{"num_heads": 3}' (${(err as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new CliError(`${where}: expected a JSON object of config fields, got ${JSON.stringify(parsed)}`);
  }
  for (const key of Object.keys(parsed)) {
    if (!(CONFIG_FIELDS as string[]).includes(key)) {
      throw new CliError(`${where}: unknown field "${key}"; expected one of ${CONFIG_FIELDS.join(', ')}`);
    }
  }
  return parsed as Partial<ViTConfig>;
}

/** A checkpoint with --model / --config applied; load errors become one line naming the file. */
export async function loadModel(
  path: string | undefined,
  opts: { model?: string; config?: Partial<ViTConfig> } = {},
  flag = 'weights',
): Promise<VisionTransformer> {
  if (!path) throw new CliError(`--${flag} FILE is required (.safetensors or .pth; ${WEIGHTS_NAMINGS})`);
  if (!existsSync(path)) throw new CliError(`--${flag}: ${path} does not exist`);
  try {
    return await loadWeights(path, opts);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

/** parseArgs options that describe the built-in synthetic data. */
export const SYNTHETIC_FLAGS = {
  count: { type: 'string' },
  'synthetic-size': { type: 'string' },
  seed: { type: 'string' },
} as const;

/** The built-in synthetic dataset from --count, --synthetic-size (default 224) and --seed. */
export function syntheticDataset(
  values: { count?: string; 'synthetic-size'?: string; seed?: string },
  split: 'train' | 'val',
  fallbackCount: number,
): SyntheticDataset {
  return new SyntheticDataset({
    seed: intFlag('seed', values.seed, 0, 0),
    count: intFlag('count', values.count, fallbackCount),
    size: intFlag('synthetic-size', values['synthetic-size'], 224, 16),
    split,
  });
}

/** A batch of already-normalised NHWC images read from a safetensors file. */
export interface TensorBatch {
  file: string;
  name: string;
  data: Float32Array;
  shape: [number, number, number, number];
}

/** --tensor FILE.safetensors[:NAME]: the named tensor, or the only one; must be [B, H, W, 3]. */
export async function readTensorBatch(spec: string, patchSize?: number): Promise<TensorBatch> {
  const m = /^(.*?\.safetensors)(?::(.+))?$/.exec(spec);
  if (!m) throw new CliError(`--tensor: expected FILE.safetensors[:NAME], got ${spec}`);
  const [, file, wanted] = m;
  if (!existsSync(file)) throw new CliError(`--tensor: ${file} does not exist`);
  const reader = await SafetensorsReader.open(file).catch((err: Error) => {
    throw new CliError(`--tensor: ${err.message}`);
  });
  try {
    const names = reader.names();
    if (wanted === undefined && names.length !== 1) {
      const list = `${names.slice(0, 5).join(', ')}${names.length > 5 ? ', ...' : ''}`;
      throw new CliError(`--tensor ${file}: holds ${names.length} tensors; name one as ${file}:NAME (${list})`);
    }
    const name = wanted ?? names[0];
    if (!reader.has(name)) throw new CliError(`--tensor ${file}: no tensor named "${name}"`);
    const shape = reader.info(name).shape;
    if (shape.length !== 4 || shape[3] !== 3) {
      throw new CliError(`--tensor ${file}:${name}: expected an NHWC image batch [B, H, W, 3], got shape [${shape.join(', ')}]`);
    }
    const [, h, w] = shape;
    if (patchSize && (h % patchSize !== 0 || w % patchSize !== 0)) {
      throw new CliError(`--tensor ${file}:${name}: height ${h} and width ${w} must be multiples of the patch size ${patchSize}`);
    }
    return { file, name, data: toFloat32(await reader.read(name)), shape: shape as TensorBatch['shape'] };
  } finally {
    await reader.close();
  }
}

/** parseArgs options of the image-geometry flags. */
export const IMAGE_FLAGS = {
  size: { type: 'string' },
  'keep-aspect': { type: 'boolean' },
  'max-side': { type: 'string' },
} as const;

/**
 * --size N: DINOv2's evaluation transform at crop N (shorter side resized to N * 256/224, centre crop);
 * --keep-aspect: keep the aspect ratio, sides rounded to multiples of the patch size (--max-side caps
 * the longer side). Default: the 256 -> 224 evaluation transform.
 */
export function imageTransform(values: { size?: string; 'keep-aspect'?: boolean; 'max-side'?: string }, patchSize: number): ImageTransform {
  if (values.size !== undefined && values['keep-aspect']) throw new CliError('--size and --keep-aspect exclude each other');
  if (values['keep-aspect']) {
    const maxSide = values['max-side'] === undefined ? undefined : intFlag('max-side', values['max-side'], 0, patchSize);
    return { kind: 'keep-aspect', patchSize, maxSide };
  }
  const crop = intFlag('size', values.size, 224, patchSize);
  if (crop % patchSize !== 0) throw new CliError(`--size: ${crop} is not a multiple of the patch size ${patchSize}`);
  return { kind: 'eval', crop, resize: Math.round((crop * 256) / 224) };
}

/** Image files from files, folders and globs; an empty result is an error. */
export async function imageFiles(patterns: string[]): Promise<string[]> {
  let files: string[];
  try {
    files = await listImageFiles(patterns);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  if (files.length === 0) throw new CliError(`no images found in ${patterns.join(' ')}`);
  return files;
}
