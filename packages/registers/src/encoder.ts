/**
 * One forward-only interface over the engines that run the model: TensorFlow.js (the VisionTransformer
 * of model.ts, also the training engine) and ONNX Runtime (onnx-encoder.ts). Both take a batch of
 * normalised NHWC float32 images and return the same outputs as host arrays, named and shaped as
 * ViTOutput's fields. A later engine plugs in by implementing `Encoder`.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ViTConfig } from './config.js';
import { checkVitFits } from './memory-need.js';
import type { ForwardOptions, ViTOutput, VisionTransformer } from './model.js';

export type EngineName = 'tfjs' | 'onnxruntime';
export const ENGINE_CHOICES = ['auto', 'tfjs', 'onnxruntime'] as const;
export type EngineChoice = (typeof ENGINE_CHOICES)[number];

/** A float32 array with its shape (row-major). */
export interface HostArray {
  data: Float32Array;
  shape: number[];
}

/** A batch of normalised NHWC float32 images [B, H, W, 3]. */
export interface ImageBatch {
  data: Float32Array;
  shape: [number, number, number, number];
}

/** What to compute besides cls, registers, patches and prenorm (ForwardOptions' names). */
export interface EncodeOptions {
  attention?: 'none' | 'last' | 'all';
  layers?: boolean;
  keys?: boolean;
  values?: boolean;
  /** Patch embeddings before the positional embedding (always there on tfjs). */
  embeddings?: boolean;
}

/** ViTOutput on the host: the same fields, shapes and token order. */
export interface EncoderOutput {
  cls: HostArray;
  registers: HostArray;
  patches: HostArray;
  prenorm: HostArray;
  /** The projected CLS (configs with proj_dim). */
  pooled?: HostArray;
  grid: [number, number];
  embeddings?: HostArray;
  /** Softmax attention [B, H, N, N]: the last block's, or one per block for 'all'. */
  attention?: HostArray[];
  /** Every block's output tokens [B, N, D]. */
  layers?: HostArray[];
  keys?: HostArray;
  values?: HostArray;
}

/** A forward-only model on some engine. */
export interface Encoder {
  readonly engine: EngineName;
  readonly config: ViTConfig;
  /** Engine, device and threads in words, for logs and result files. */
  readonly description: string;
  encode(images: ImageBatch, opts?: EncodeOptions): Promise<EncoderOutput>;
  /**
   * The final LayerNorm's weight and bias [D] (config.norm_eps), for code that normalises intermediate
   * blocks' tokens as DINOv2's get_intermediate_layers(norm=True) does; undefined where the engine does
   * not hold them (an exported .onnx file).
   */
  finalNorm?(): Promise<{ weight: Float32Array; bias: Float32Array } | undefined>;
  /** Frees the model (and sessions); the encoder cannot be used afterwards. */
  dispose(): Promise<void>;
}

/** Checks an image batch against a patch size; the error names what was expected. */
export function checkImageBatch(images: ImageBatch, patchSize: number): void {
  const [B, H, W, C] = images.shape;
  if (images.shape.length !== 4 || C !== 3)
    throw new Error(`images: expected a [batch, height, width, 3] batch, got shape [${images.shape}]`);
  if (images.data.length !== B * H * W * 3) throw new Error(`images: ${images.data.length} values do not match shape [${images.shape}]`);
  if (!(H > 0 && W > 0 && H % patchSize === 0 && W % patchSize === 0)) {
    throw new Error(`images: height and width must be positive multiples of the patch size ${patchSize}, got ${H}x${W}`);
  }
}

async function host(t: tf.Tensor): Promise<HostArray> {
  return { data: (await t.data()) as Float32Array, shape: [...t.shape] };
}

/** The tfjs engine: a VisionTransformer (not disposed by `dispose` unless `owns`). */
export class TfjsEncoder implements Encoder {
  readonly engine = 'tfjs' as const;
  readonly description: string;
  /** The batch shape last checked to fit the backend (memory-need.ts). */
  private fits = '';
  constructor(
    readonly model: VisionTransformer,
    private owns = true,
  ) {
    this.description = `tfjs ${tf.getBackend()}`;
  }

  get config(): ViTConfig {
    return this.model.config;
  }

  async encode(images: ImageBatch, opts: EncodeOptions = {}): Promise<EncoderOutput> {
    checkImageBatch(images, this.config.patch_size);
    const [B, H, W] = images.shape;
    const fits = `${B}x${H}x${W}`;
    if (this.fits !== fits) checkVitFits(this.config, { batch: B, imageSize: [H, W], what: 'the tfjs forward' });
    this.fits = fits;
    const fopts: ForwardOptions = { attention: opts.attention ?? 'none', layers: opts.layers, keys: opts.keys, values: opts.values };
    const x = tf.tensor4d(images.data, images.shape);
    const out = this.model.forward(x, fopts);
    x.dispose();
    try {
      const res: EncoderOutput = {
        cls: await host(out.cls),
        registers: await host(out.registers),
        patches: await host(out.patches),
        prenorm: await host(out.prenorm),
        grid: out.grid,
      };
      const pooled = (out as ViTOutput & { pooled?: tf.Tensor }).pooled;
      if (pooled) res.pooled = await host(pooled);
      if (opts.embeddings) res.embeddings = await host(out.embeddings);
      if (out.attention) res.attention = await Promise.all(out.attention.map(host));
      if (out.layers) res.layers = await Promise.all(out.layers.map(host));
      if (opts.keys && out.keys) res.keys = await host(out.keys);
      if (opts.values && out.values) res.values = await host(out.values);
      return res;
    } finally {
      disposeOutput(out);
    }
  }

  async finalNorm(): Promise<{ weight: Float32Array; bias: Float32Array }> {
    return {
      weight: (await this.model.param('norm.weight').data()) as Float32Array,
      bias: (await this.model.param('norm.bias').data()) as Float32Array,
    };
  }

  async dispose(): Promise<void> {
    if (this.owns) this.model.dispose();
  }
}

/** Disposes every tensor of a ViTOutput. */
export function disposeOutput(out: ViTOutput): void {
  const pooled = (out as ViTOutput & { pooled?: tf.Tensor }).pooled;
  tf.dispose([out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...(out.attention ?? []), ...(out.layers ?? [])]);
  for (const t of [out.keys, out.values, pooled]) t?.dispose();
}

/**
 * An encoder output as tfjs tensors, laid out as ViTOutput, for code that takes a forward pass's tensors
 * (token analysis, LOST). `embeddings` is an empty [B, 0, D] tensor when it was not computed. The caller
 * disposes the tensors (disposeOutput).
 */
export function outputTensors(out: EncoderOutput): ViTOutput {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const t = (a: HostArray): any => tf.tensor(a.data, a.shape, 'float32');
  const [B, , D] = out.prenorm.shape;
  const res: ViTOutput = {
    cls: t(out.cls),
    registers: t(out.registers),
    patches: t(out.patches),
    prenorm: t(out.prenorm),
    grid: out.grid,
    embeddings: out.embeddings ? t(out.embeddings) : tf.zeros([B!, 0, D!]),
  };
  if (out.pooled) (res as ViTOutput & { pooled?: tf.Tensor }).pooled = t(out.pooled);
  if (out.attention) res.attention = out.attention.map(t);
  if (out.layers) res.layers = out.layers.map(t);
  if (out.keys) res.keys = t(out.keys);
  if (out.values) res.values = t(out.values);
  return res;
}
