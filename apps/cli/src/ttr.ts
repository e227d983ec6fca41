/**
 * The `--test-time-registers neurons.json [--ttr-top-k K]` flags that features, analyze, probe and
 * discover share: parsing, their help text, which engine they allow, and the encoder they make
 * (@vitreg/registers' testTimeRegisterEncoder) with errors as one line naming the flag.
 */
import { InputError } from '@vitreg/core';
import {
  OnnxEncoder,
  readRegisterNeurons,
  testTimeRegisterEncoder,
  type Encoder,
  type RegisterNeuron,
  type TestTimeRegisterSpec,
  type TfjsEncoder,
  type ViTConfig,
  type VisionTransformer,
} from '@vitreg/registers';
import { CliError, intFlag } from './cli.js';
import { loadEncoder, loadModel, type EngineSettings } from './inputs.js';

/** parseArgs options of the test-time register flags. */
export const TTR_FLAGS = {
  'test-time-registers': { type: 'string' },
  'ttr-top-k': { type: 'string' },
} as const;

/** Help text of the test-time register flags, descriptions starting at column `col`. */
export function ttrUsage(col = 20): string {
  const rows: [string, string[]][] = [
    [
      '--test-time-registers F',
      [
        'neurons.json from vitreg registers find: run with one test-time register',
        '(Jiang et al. 2025), on tfjs or ONNX Runtime (not on an exported .onnx file);',
        'refuses a file made for another model',
      ],
    ],
    ['--ttr-top-k K', ["use the K best neurons of the file's ranking instead of its selection"]],
  ];
  return rows.flatMap(([flag, lines]) => lines.map((l, i) => (i === 0 ? `  ${flag}`.padEnd(col) : ' '.repeat(col)) + l)).join('\n');
}

/** The parsed flags, or null without --test-time-registers. */
export type TtrSettings = TestTimeRegisterSpec;

export function ttrFlags(values: { 'test-time-registers'?: string; 'ttr-top-k'?: string }): TtrSettings | null {
  if (values['test-time-registers'] === undefined) {
    if (values['ttr-top-k'] !== undefined) throw new CliError('--ttr-top-k applies with --test-time-registers neurons.json');
    return null;
  }
  const topK = values['ttr-top-k'] === undefined ? undefined : intFlag('ttr-top-k', values['ttr-top-k'], 1);
  return { path: values['test-time-registers'], topK };
}

/**
 * The engine settings with test-time registers. .onnx weights are refused in one line (an exported
 * graph has no model fingerprint to check the file against). A command whose encoders take the engine
 * (`onnx: true`: ttrEncoder on an Encoder, or with `engine`) keeps the settings, so auto picks ONNX
 * Runtime when it loads; any other command runs tfjs (auto picks it; onnxruntime is refused).
 */
export function ttrEngine(
  engine: EngineSettings,
  ttr: TtrSettings | null,
  weights: (string | undefined)[],
  opts: { onnx?: boolean } = {},
): EngineSettings {
  if (!ttr) return engine;
  const onnx = weights.find((w) => w?.toLowerCase().endsWith('.onnx'));
  if (onnx) {
    const why = 'an exported graph cannot be checked against the neurons file';
    throw new CliError(`--test-time-registers needs the .safetensors or .pth weights, not ${onnx} (${why})`);
  }
  if (opts.onnx) return engine;
  if (engine.engine === 'onnxruntime' || engine.device !== 'cpu' || engine.threads !== undefined) {
    throw new CliError(
      '--test-time-registers runs on the tfjs engine only in this command: drop --engine onnxruntime / --device / --threads',
    );
  }
  return { ...engine, engine: 'tfjs' };
}

/** `f()` with the InputErrors of the neurons file as one line naming the flag. */
async function flagErrors<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (err) {
    if (err instanceof InputError) throw new CliError(`--test-time-registers: ${err.message}`);
    throw err;
  }
}

/** The neurons of --test-time-registers for `model` (fingerprint checked); errors are one line. */
export function ttrNeurons(ttr: TtrSettings, model: VisionTransformer | OnnxEncoder): Promise<RegisterNeuron[]> {
  return flagErrors(() => readRegisterNeurons(ttr, model));
}

/**
 * An encoder with the test-time register: on `base` (a tfjs or ONNX Runtime encoder of the same weights,
 * shared and not disposed by this one), or on the model loaded from `weights` (on `engine`'s engine;
 * tfjs without it).
 */
export async function ttrEncoder(
  ttr: TtrSettings,
  from: Encoder | { weights: string | undefined; model?: string; config?: Partial<ViTConfig>; flag?: string; engine?: EngineSettings },
): Promise<Encoder> {
  if ('encode' in from) return flagErrors(() => testTimeRegisterEncoder(ttr, from));
  if (from.engine) {
    const enc = await loadEncoder(from.weights, { model: from.model, config: from.config }, from.engine, from.flag);
    if (enc instanceof OnnxEncoder) {
      try {
        return await flagErrors(() => testTimeRegisterEncoder(ttr, enc));
      } finally {
        await enc.dispose(); // the new encoder shares its weights, not its sessions
      }
    }
    return flagErrors(() => testTimeRegisterEncoder(ttr, (enc as TfjsEncoder).model, { owns: true }));
  }
  const model = await loadModel(from.weights, { model: from.model, config: from.config }, from.flag);
  return flagErrors(() => testTimeRegisterEncoder(ttr, model, { owns: true }));
}
