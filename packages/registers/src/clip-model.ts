/**
 * The two-tower CLIP model of open_clip's `CLIP` class: an image tower (the VisionTransformer with its CLIP
 * config fields: ln_pre, a projection, registers where asked) and a text tower (text-tower.ts) projecting to
 * one joint embedding, a learnable temperature `logit_scale` (initialised at log(1/0.07), used as
 * exp(logit_scale), clamped to [0, log 100] after every optimiser step as open_clip's training loop does) and,
 * for SigLIP, a learnable `logit_bias`.
 *
 *   logits_per_image = exp(logit_scale) * normalize(image) @ normalize(text)^T (+ logit_bias)
 */
import * as tf from '@tensorflow/tfjs-core';
import { getConfig, validateConfig, type ViTConfig } from './config.js';
import { VisionTransformer, type ForwardOptions } from './model.js';
import { TextTransformer, validateTextConfig, type TextConfig } from './text-tower.js';

export interface ClipConfig {
  /** The image tower; its proj_dim is the joint embedding width. */
  vision: ViTConfig;
  /** The text tower; its proj_dim equals vision.proj_dim. */
  text: TextConfig;
  /** Initial logit_scale (open_clip: log(1 / 0.07)). */
  init_logit_scale: number;
  /** Initial logit_bias (SigLIP: -10), or null for none (CLIP). */
  init_logit_bias: number | null;
}

/** open_clip's clamp of logit_scale after every step: [0, log 100]. */
export const LOGIT_SCALE_MAX = Math.log(100);

/** A checked CLIP config (the towers' own checks, both projections equal, finite initial values). */
export function validateClipConfig(given: Record<string, unknown>, source = 'clip config'): ClipConfig {
  for (const k of Object.keys(given)) {
    if (!['vision', 'text', 'init_logit_scale', 'init_logit_bias'].includes(k))
      throw new Error(`${source}: unknown field "${k}"; expected vision, text, init_logit_scale, init_logit_bias`);
  }
  const vision = validateConfig((given.vision ?? {}) as Record<string, unknown>, `${source}.vision`);
  const text = validateTextConfig((given.text ?? {}) as Record<string, unknown>, `${source}.text`);
  if (vision.proj_dim === null) throw new Error(`${source}.vision: proj_dim must be set (the joint embedding width)`);
  if (text.proj_dim !== vision.proj_dim)
    throw new Error(
      `${source}: text.proj_dim (${text.proj_dim}) must equal vision.proj_dim (${vision.proj_dim}), the joint embedding width`,
    );
  const scale = given.init_logit_scale ?? Math.log(1 / 0.07);
  if (typeof scale !== 'number' || !Number.isFinite(scale))
    throw new Error(`${source}: init_logit_scale must be a finite number, got ${JSON.stringify(scale)}`);
  const bias = given.init_logit_bias ?? null;
  if (bias !== null && (typeof bias !== 'number' || !Number.isFinite(bias)))
    throw new Error(`${source}: init_logit_bias must be a finite number or null, got ${JSON.stringify(bias)}`);
  return { vision, text, init_logit_scale: scale, init_logit_bias: bias };
}

/**
 * open_clip's model_configs: ViT-B-16 (`openclip_vitb16`), ViT-B-32, ViT-L-14 with their text towers
 * (width 512 / 512 / 768, heads 8 / 8 / 12, 12 blocks, context 77, vocabulary 49408); `clip_*` are OpenAI's
 * (QuickGELU in both towers). `overrides.vision` (e.g. num_register_tokens: 4) and `overrides.text` apply to
 * the towers.
 */
export function getClipConfig(
  name: string,
  overrides: { vision?: Partial<ViTConfig>; text?: Partial<TextConfig>; init_logit_bias?: number | null } = {},
): ClipConfig {
  const texts: Record<string, Partial<TextConfig>> = {
    vitb32: { width: 512, heads: 8, layers: 12 },
    vitb16: { width: 512, heads: 8, layers: 12 },
    vitl14: { width: 768, heads: 12, layers: 12 },
  };
  const m = /^(openclip|clip)_(vitb32|vitb16|vitl14)$/.exec(name);
  if (!m) throw new Error(`unknown CLIP model "${name}"; expected one of ${CLIP_MODEL_NAMES.join(', ')}`);
  const vision = getConfig(name, overrides.vision);
  const act = m[1] === 'clip' ? 'quick_gelu' : 'gelu';
  return validateClipConfig({
    vision,
    text: { ...texts[m[2]!], act_layer: act, proj_dim: vision.proj_dim, ...overrides.text },
    init_logit_scale: Math.log(1 / 0.07),
    init_logit_bias: overrides.init_logit_bias ?? null,
  });
}

export const CLIP_MODEL_NAMES = ['openclip_vitb32', 'openclip_vitb16', 'openclip_vitl14', 'clip_vitb32', 'clip_vitb16', 'clip_vitl14'];

export class ClipModel {
  readonly config: ClipConfig;
  readonly visual: VisionTransformer;
  readonly text: TextTransformer;
  readonly logitScale: tf.Variable;
  readonly logitBias: tf.Variable | null;

  /**
   * Fresh towers (seeded; the text tower with seed + 1), or the given ones; logit_scale and logit_bias at the
   * config's initial values unless given.
   */
  constructor(
    config: ClipConfig,
    opts: {
      seed?: number;
      trainable?: boolean;
      visual?: VisionTransformer;
      text?: TextTransformer;
      logitScale?: number;
      logitBias?: number;
    } = {},
  ) {
    this.config = validateClipConfig(config as unknown as Record<string, unknown>);
    const trainable = opts.trainable ?? true;
    this.visual = opts.visual ?? new VisionTransformer(this.config.vision, { seed: opts.seed, trainable });
    this.text = opts.text ?? new TextTransformer(this.config.text, { seed: (opts.seed ?? 0) + 1, trainable });
    this.logitScale = tf.tidy(() => tf.variable(tf.scalar(opts.logitScale ?? this.config.init_logit_scale), trainable));
    const bias = opts.logitBias ?? this.config.init_logit_bias;
    if (opts.logitBias !== undefined && this.config.init_logit_bias === null)
      throw new Error('ClipModel: a logit_bias was given but the config has none (init_logit_bias null)');
    this.logitBias = bias === null ? null : tf.tidy(() => tf.variable(tf.scalar(bias), trainable));
  }

  /** Image features [B, proj_dim] (unnormalised), the image tower's `pooled`. */
  encodeImage(images: tf.Tensor4D, opts: ForwardOptions = {}): tf.Tensor2D {
    return tf.tidy(() => {
      const out = this.visual.forward(images, opts);
      return out.pooled!;
    });
  }

  /** Text features [B, proj_dim] (unnormalised) of token ids [B, L] (row-major, L <= context_length). */
  encodeText(ids: Int32Array, batch: number): tf.Tensor2D {
    return this.text.encode(ids, batch);
  }

  /**
   * open_clip's `get_logits`: [logits_per_image, logits_per_text] of unnormalised features, each
   * exp(logit_scale) * cosine (+ logit_bias).
   */
  logits(imageFeatures: tf.Tensor2D, textFeatures: tf.Tensor2D): [tf.Tensor2D, tf.Tensor2D] {
    return tf.tidy(() => {
      const img = l2Normalize(imageFeatures);
      const txt = l2Normalize(textFeatures);
      let perImage = tf.mul(tf.exp(this.logitScale), tf.matMul(img, txt, false, true)) as tf.Tensor2D;
      if (this.logitBias) perImage = tf.add(perImage, this.logitBias);
      return [perImage, tf.transpose(perImage)] as [tf.Tensor2D, tf.Tensor2D];
    });
  }

  /** open_clip's `model.logit_scale.clamp_(0, math.log(100))` after each optimiser step. */
  clampLogitScale(): void {
    tf.tidy(() => this.logitScale.assign(tf.clipByValue(this.logitScale, 0, LOGIT_SCALE_MAX)));
  }

  /** Every trainable variable: image tower, text tower, logit_scale, logit_bias. */
  variables(): tf.Variable[] {
    return [...this.visual.variables(), ...this.text.variables(), this.logitScale, ...(this.logitBias ? [this.logitBias] : [])];
  }

  dispose(): void {
    this.visual.dispose();
    this.text.dispose();
    this.logitScale.dispose();
    this.logitBias?.dispose();
  }
}

/** x / max(||x||, 1e-12) over the last axis (F.normalize). */
export function l2Normalize(x: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => tf.div(x, tf.maximum(tf.norm(x, 2, -1, true), 1e-12)) as tf.Tensor2D);
}
