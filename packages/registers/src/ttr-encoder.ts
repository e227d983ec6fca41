/**
 * Test-time registers behind the Encoder interface: a model trained without registers, run with the one
 * extra register of a neurons file (test-time-registers.ts; `vitreg registers find` writes it), on tfjs
 * or ONNX Runtime, so that features, analysis, probes and LOST take it as they take the plain model.
 */
import { asInputError, InputError } from '@vitreg/core';
import { TfjsEncoder, type Encoder, type EncodeOptions, type EncoderOutput, type ImageBatch } from './encoder.js';
import type { VisionTransformer } from './model.js';
import { OnnxEncoder } from './onnx-encoder.js';
import { loadTestTimeRegisters, testTimeRegisterNeurons, withTestTimeRegisters, type RegisterNeuron } from './test-time-registers.js';

/** Which test-time registers to run: a neurons file, and optionally the top K of its ranking instead of its selection. */
export interface TestTimeRegisterSpec {
  path: string;
  topK?: number;
}

/**
 * The neurons of `spec`'s file for `model` (a tfjs model, or an OnnxEncoder built from weights): its
 * fingerprint must be the one the file was made for. Every error (unreadable or malformed file, another
 * model) is an InputError naming the file.
 */
export async function readRegisterNeurons(spec: TestTimeRegisterSpec, model: VisionTransformer | OnnxEncoder): Promise<RegisterNeuron[]> {
  try {
    const file = await loadTestTimeRegisters(spec.path);
    return await testTimeRegisterNeurons(file, model, spec.path, spec.topK);
  } catch (err) {
    throw asInputError(err);
  }
}

/**
 * An Encoder on tfjs whose forward adds the test-time register of `neurons` (withTestTimeRegisters): its
 * outputs have R + 1 registers, the test-time one last; `description` names the neurons file. Disposing
 * it disposes `model` only when it `owns` it.
 */
export class TtrEncoder implements Encoder {
  readonly engine = 'tfjs' as const;
  readonly description: string;
  private inner: TfjsEncoder;
  constructor(model: VisionTransformer, neurons: RegisterNeuron[], file: string, owns: boolean) {
    this.inner = new TfjsEncoder(withTestTimeRegisters(model, neurons), owns);
    this.description = `${this.inner.description}, test-time register (${neurons.length} neurons from ${file})`;
  }
  get config() {
    return this.inner.config;
  }
  encode(images: ImageBatch, opts?: EncodeOptions): Promise<EncoderOutput> {
    return this.inner.encode(images, opts);
  }
  dispose(): Promise<void> {
    return this.inner.dispose();
  }
}

/**
 * An encoder of `base` with the test-time register of `spec` (its neurons file checked against the
 * weights): on tfjs a TtrEncoder, on ONNX Runtime an OnnxEncoder on the same weights whose graphs add it.
 * `base` is a TfjsEncoder or an OnnxEncoder built from weights (shared: disposing the result leaves it),
 * or a tfjs VisionTransformer (disposed with the result when `owns`). Errors about the file or the
 * engine are InputErrors; the file is read once per call.
 */
export async function testTimeRegisterEncoder(
  spec: TestTimeRegisterSpec,
  base: Encoder | VisionTransformer,
  opts: { owns?: boolean } = {},
): Promise<Encoder> {
  if (base instanceof OnnxEncoder) {
    const neurons = await readRegisterNeurons(spec, base);
    try {
      return await base.withTestTimeRegisters(neurons);
    } catch (err) {
      throw asInputError(err);
    }
  }
  let model: VisionTransformer;
  let owns = false;
  if (base instanceof TfjsEncoder) model = base.model;
  else if ('encode' in base) throw new InputError(`not available on ${base.description}`);
  else {
    model = base;
    owns = opts.owns ?? false;
  }
  const neurons = await readRegisterNeurons(spec, model);
  return new TtrEncoder(model, neurons, spec.path, owns);
}
