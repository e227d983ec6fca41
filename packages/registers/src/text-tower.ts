/**
 * The text tower of CLIP as open_clip's `TextTransformer` (and OpenAI CLIP's `encode_text`) computes it:
 *
 *   ids [B, L] -> token_embedding[ids] + positional_embedding[:L]
 *   -> layers x pre-norm blocks with a causal mask (token i attends to tokens 0..i)
 *      x = x + attn(ln_1(x));  x = x + c_proj(act(c_fc(ln_2(x))))     act: exact GELU or QuickGELU
 *   -> ln_final -> the token at argmax(ids) (the end-of-text token, the largest id; the first on ties)
 *   -> @ text_projection [width, proj_dim].
 *
 * Parameters carry open_clip's names of the text tower in a whole `CLIP` model (`token_embedding.weight`,
 * `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias,
 * attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`), with Linear weights stored
 * transposed ([in, out]) as the image tower's, so every product is a plain 2-D matMul; clip-weights.ts
 * converts to and from PyTorch's layouts. The attention is written here (the image tower's has no mask);
 * LayerNorm, Linear, GELU and the residual are ops.ts's, QuickGELU model.ts's.
 *
 * The causal mask makes the token at position p depend on positions 0..p only, so `encode` runs the ids cut
 * after the batch's last end-of-text position: the same features as the padded 77 tokens, far less work.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { quickGelu } from './model.js';
import { geluLinear, layerNorm, linear, matMul2d, reshape, residual } from './ops.js';

export interface TextConfig {
  /** Positions of the positional embedding: the longest token sequence (open_clip 77). */
  context_length: number;
  /** Rows of the token embedding (CLIP's BPE vocabulary: 49408). */
  vocab_size: number;
  /** Token width (512 for ViT-B, 768 for ViT-L). */
  width: number;
  /** Attention heads (width / 64 in open_clip's configs). */
  heads: number;
  /** Blocks. */
  layers: number;
  /** MLP hidden width = floor(width * mlp_ratio). */
  mlp_ratio: number;
  /** 'gelu' (open_clip's LAION models) or 'quick_gelu' (OpenAI CLIP). */
  act_layer: 'gelu' | 'quick_gelu';
  /** LayerNorm eps (1e-5, PyTorch's default). */
  norm_eps: number;
  /** Width of text_projection's output (the joint embedding), or null for no projection. */
  proj_dim: number | null;
}

/** open_clip's CLIPTextCfg defaults (ViT-B-16's text tower), projected to 512. */
export const DEFAULT_TEXT_CONFIG: TextConfig = {
  context_length: 77,
  vocab_size: 49408,
  width: 512,
  heads: 8,
  layers: 12,
  mlp_ratio: 4,
  act_layer: 'gelu',
  norm_eps: 1e-5,
  proj_dim: 512,
};

const TEXT_INTS = ['context_length', 'vocab_size', 'width', 'heads', 'layers'] as const;

/** A complete, checked text config from given fields (unknown fields and bad values are errors naming them). */
export function validateTextConfig(given: Record<string, unknown>, source = 'text config'): TextConfig {
  const known = Object.keys(DEFAULT_TEXT_CONFIG);
  for (const k of Object.keys(given))
    if (!known.includes(k)) throw new Error(`${source}: unknown field "${k}"; expected one of ${known.join(', ')}`);
  const c = { ...DEFAULT_TEXT_CONFIG, ...given } as Record<string, unknown>;
  for (const k of TEXT_INTS) {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1)
      throw new Error(`${source}: ${k} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  if (typeof c.mlp_ratio !== 'number' || !(c.mlp_ratio > 0))
    throw new Error(`${source}: mlp_ratio must be a positive number, got ${JSON.stringify(c.mlp_ratio)}`);
  if (typeof c.norm_eps !== 'number' || !(c.norm_eps > 0))
    throw new Error(`${source}: norm_eps must be a positive number, got ${JSON.stringify(c.norm_eps)}`);
  if (c.act_layer !== 'gelu' && c.act_layer !== 'quick_gelu')
    throw new Error(`${source}: act_layer must be "gelu" or "quick_gelu", got ${JSON.stringify(c.act_layer)}`);
  if (c.proj_dim !== null && (typeof c.proj_dim !== 'number' || !Number.isInteger(c.proj_dim) || c.proj_dim < 1))
    throw new Error(`${source}: proj_dim must be a positive integer or null, got ${JSON.stringify(c.proj_dim)}`);
  if ((c.width as number) % (c.heads as number) !== 0) throw new Error(`${source}: width ${c.width} is not divisible by heads ${c.heads}`);
  return c as unknown as TextConfig;
}

/** MLP hidden width, as open_clip's `int(width * mlp_ratio)`. */
export function textHiddenDim(c: TextConfig): number {
  return Math.floor(c.width * c.mlp_ratio);
}

/** Names and shapes of the text tower's parameters (Linear weights [in, out]), in open_clip's state-dict order. */
export function textParameterShapes(c: TextConfig): Record<string, number[]> {
  const W = c.width;
  const hidden = textHiddenDim(c);
  const shapes: Record<string, number[]> = { positional_embedding: [c.context_length, W] };
  for (let i = 0; i < c.layers; i++) {
    const b = `transformer.resblocks.${i}.`;
    shapes[`${b}ln_1.weight`] = [W];
    shapes[`${b}ln_1.bias`] = [W];
    shapes[`${b}attn.in_proj_weight`] = [W, 3 * W];
    shapes[`${b}attn.in_proj_bias`] = [3 * W];
    shapes[`${b}attn.out_proj.weight`] = [W, W];
    shapes[`${b}attn.out_proj.bias`] = [W];
    shapes[`${b}ln_2.weight`] = [W];
    shapes[`${b}ln_2.bias`] = [W];
    shapes[`${b}mlp.c_fc.weight`] = [W, hidden];
    shapes[`${b}mlp.c_fc.bias`] = [hidden];
    shapes[`${b}mlp.c_proj.weight`] = [hidden, W];
    shapes[`${b}mlp.c_proj.bias`] = [W];
  }
  shapes['token_embedding.weight'] = [c.vocab_size, W];
  shapes['ln_final.weight'] = [W];
  shapes['ln_final.bias'] = [W];
  if (c.proj_dim !== null) shapes.text_projection = [W, c.proj_dim];
  return shapes;
}

/** The text tower's Linear weights: stored [in, out] here, [out, in] in PyTorch. */
export function isTextLinearWeight(name: string): boolean {
  return /\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$/.test(name);
}

/**
 * open_clip's `TextTransformer.init_parameters`: token embedding std 0.02, positions std 0.01, attention input
 * std width^-0.5, output projections std width^-0.5 (2 layers)^-0.5, c_fc std (2 width)^-0.5, text
 * projection std width^-0.5; attention biases zero (nn.MultiheadAttention), MLP biases PyTorch's Linear
 * default U(-1/sqrt(in), 1/sqrt(in)), LayerNorms 1 and 0.
 */
function initialTextValue(name: string, shape: number[], c: TextConfig, rng: Rng): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const normal = (std: number) => {
    for (let i = 0; i < n; i++) out[i] = rng.normal(0, std);
    return out;
  };
  const W = c.width;
  const projStd = W ** -0.5 * (2 * c.layers) ** -0.5;
  if (/ln_(1|2|final)\.weight$/.test(name)) return out.fill(1);
  if (/ln_(1|2|final)\.bias$/.test(name) || name.endsWith('attn.in_proj_bias') || name.endsWith('attn.out_proj.bias')) return out;
  if (name === 'token_embedding.weight') return normal(0.02);
  if (name === 'positional_embedding') return normal(0.01);
  if (name === 'text_projection' || name.endsWith('attn.in_proj_weight')) return normal(W ** -0.5);
  if (name.endsWith('attn.out_proj.weight') || name.endsWith('mlp.c_proj.weight')) return normal(projStd);
  if (name.endsWith('mlp.c_fc.weight')) return normal((2 * W) ** -0.5);
  const fanIn = name.endsWith('c_fc.bias') ? W : textHiddenDim(c);
  for (let i = 0; i < n; i++) out[i] = (rng.float() * 2 - 1) / Math.sqrt(fanIn);
  return out;
}

/**
 * Rows of `weight` [V, W] at `ids`: a gather whose gradient is summed into the rows on the host (the wasm
 * backend has no UnsortedSegmentSum, which tf.gather's gradient needs).
 */
function embedRows(weight: tf.Tensor2D, ids: Int32Array): tf.Tensor2D {
  const [V, W] = weight.shape;
  const op = tf.customGrad(((w: tf.Tensor | tf.GradSaveFunc) => ({
    value: tf.gather(w as tf.Tensor, tf.tensor1d(ids, 'int32')) as tf.Tensor2D,
    gradFunc: (dy: tf.Tensor) => {
      const g = dy.dataSync() as Float32Array;
      const out = new Float32Array(V * W);
      for (let r = 0; r < ids.length; r++) {
        const o = ids[r]! * W;
        for (let j = 0; j < W; j++) out[o + j] += g[r * W + j]!;
      }
      return tf.tensor2d(out, [V, W]);
    },
  })) as (...args: (tf.Tensor | tf.GradSaveFunc)[]) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor) => tf.Tensor });
  return op(weight) as tf.Tensor2D;
}

/** The additive causal mask [L, L]: 0 on and below the diagonal, -1e9 above (exp underflows to 0, as -inf). */
function causalMask(L: number): tf.Tensor2D {
  const m = new Float32Array(L * L);
  for (let i = 0; i < L; i++) for (let j = i + 1; j < L; j++) m[i * L + j] = -1e9;
  return tf.tensor2d(m, [L, L]);
}

/** End-of-text positions: the first position of each row's largest id (torch's argmax). */
export function eotPositions(ids: Int32Array, batch: number, length: number): number[] {
  const out: number[] = [];
  for (let b = 0; b < batch; b++) {
    let best = 0;
    for (let j = 1; j < length; j++) if (ids[b * length + j]! > ids[b * length + best]!) best = j;
    out.push(best);
  }
  return out;
}

export interface TextOutput {
  /** The pooled token @ text_projection [B, proj_dim] (the pooled token [B, width] without projection). */
  features: tf.Tensor2D;
  /** Every token after ln_final, [B, L, width] (L: the ids' length; `encode` cuts after the last end-of-text). */
  tokens: tf.Tensor3D;
  /** Tokens after each block, [B, L, width] (opts.layers). */
  layers?: tf.Tensor3D[];
}

/** Suffix that keeps tfjs variable names unique across models. */
let nextId = 0;

export class TextTransformer {
  readonly config: TextConfig;
  /** Parameters by open_clip name (Linear weights [in, out]). */
  readonly params: Record<string, tf.Variable>;

  constructor(config: TextConfig, opts: { seed?: number; weights?: Record<string, Float32Array>; trainable?: boolean } = {}) {
    this.config = validateTextConfig(config as unknown as Record<string, unknown>);
    const rng = new Rng(opts.seed ?? 0);
    this.params = {};
    for (const [name, shape] of Object.entries(textParameterShapes(this.config))) {
      const values = opts.weights?.[name] ?? initialTextValue(name, shape, this.config, rng);
      const n = shape.reduce((a, b) => a * b, 1);
      if (values.length !== n) throw new Error(`text parameter ${name}: expected ${n} values for shape [${shape}], got ${values.length}`);
      // In a tidy: the initial tensor is freed (a variable made from it would keep it alive).
      this.params[name] = tf.tidy(() =>
        tf.variable(tf.tensor(values, shape, 'float32'), opts.trainable ?? true, `vitreg/text/${name}/${nextId++}`),
      );
    }
  }

  param(name: string): tf.Variable {
    const p = this.params[name];
    if (!p) throw new Error(`text tower has no parameter "${name}"`);
    return p;
  }

  /**
   * Text features of token ids (open_clip's `encode_text`, unnormalised): `ids` [B, L] row-major with
   * L <= context_length (the tokenizer's rows of context_length ids), cut after the batch's last
   * end-of-text position first (the same numbers: the mask is causal).
   */
  encode(ids: Int32Array, batch: number): tf.Tensor2D {
    const L = ids.length / batch;
    const last = Math.max(...eotPositions(ids, batch, L)) + 1;
    const cut = last === L ? ids : new Int32Array(batch * last);
    if (cut !== ids) for (let b = 0; b < batch; b++) cut.set(ids.subarray(b * L, b * L + last), b * last);
    const out = this.forward(cut, batch);
    out.tokens.dispose();
    return out.features;
  }

  /** The forward pass on ids [B, L] (row-major); the caller owns the returned tensors. */
  forward(ids: Int32Array, batch: number, opts: { layers?: boolean } = {}): TextOutput {
    const c = this.config;
    const L = ids.length / batch;
    if (!Number.isInteger(L) || L < 1) throw new Error(`text ids: ${ids.length} ids do not make ${batch} rows`);
    if (L > c.context_length) throw new Error(`text ids: rows of ${L} tokens exceed the context length ${c.context_length}`);
    for (const id of ids) {
      if (!(id >= 0 && id < c.vocab_size)) throw new Error(`text ids: token id ${id} is outside the vocabulary [0, ${c.vocab_size - 1}]`);
    }
    return tf.tidy(() => {
      const W = c.width;
      const tok = reshape<tf.Rank.R3>(embedRows(this.param('token_embedding.weight') as unknown as tf.Tensor2D, ids), [batch, L, W]);
      const pos =
        L === c.context_length ? this.param('positional_embedding') : tf.slice(this.param('positional_embedding'), [0, 0], [L, W]);
      let x = tf.add(tok, pos) as tf.Tensor3D;
      const mask = causalMask(L);
      const layers: tf.Tensor3D[] = [];
      for (let i = 0; i < c.layers; i++) {
        const input = x;
        x = tf.tidy(() => this.block(i, input, mask));
        if (opts.layers) layers.push(x);
      }
      const tokens = layerNorm(x, this.param('ln_final.weight'), this.param('ln_final.bias'), c.norm_eps);
      // Pooling as a one-hot [B, B*L] product: gather's gradient is missing on wasm.
      const select = new Float32Array(batch * batch * L);
      eotPositions(ids, batch, L).forEach((p, b) => (select[b * batch * L + b * L + p] = 1));
      const pooled = matMul2d(tf.tensor2d(select, [batch, batch * L]), reshape<tf.Rank.R2>(tokens, [batch * L, W]));
      const features = c.proj_dim !== null ? matMul2d(pooled, this.param('text_projection') as unknown as tf.Tensor2D) : pooled;
      const out: TextOutput = { features, tokens };
      if (opts.layers) out.layers = layers;
      return out as unknown as tf.TensorContainer;
    }) as unknown as TextOutput;
  }

  private block(i: number, x: tf.Tensor3D, mask: tf.Tensor2D): tf.Tensor3D {
    const c = this.config;
    const P = (n: string) => this.param(`transformer.resblocks.${i}.${n}`);
    const [B, L, W] = x.shape;
    const H = c.heads;
    const hd = W / H;
    const h1 = layerNorm(x, P('ln_1.weight'), P('ln_1.bias'), c.norm_eps);
    // [B, L, 3W] -> [3H, B, L, hd] (q heads, k heads, v heads) -> q, k, v as [H*B, L, hd].
    const qkv = tf.transpose(reshape(linear(h1, P('attn.in_proj_weight'), P('attn.in_proj_bias')), [B, L, 3 * H, hd]), [2, 0, 1, 3]);
    const [q, k, v] = tf.split(reshape<tf.Rank.R3>(qkv, [3 * H * B, L, hd]), 3, 0) as tf.Tensor3D[];
    const scores = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hd)), mask);
    const attn = tf.matMul(tf.softmax(scores), v);
    const merged = reshape<tf.Rank.R3>(tf.transpose(reshape(attn, [H, B, L, hd]), [1, 2, 0, 3]), [B, L, W]);
    x = residual(x, linear(merged, P('attn.out_proj.weight'), P('attn.out_proj.bias')));
    const h2 = linear(layerNorm(x, P('ln_2.weight'), P('ln_2.bias'), c.norm_eps), P('mlp.c_fc.weight'), P('mlp.c_fc.bias'));
    const f =
      c.act_layer === 'quick_gelu'
        ? linear(quickGelu(h2), P('mlp.c_proj.weight'), P('mlp.c_proj.bias'))
        : geluLinear(h2, P('mlp.c_proj.weight'), P('mlp.c_proj.bias'));
    return residual(x, f);
  }

  /** Parameters as host Float32Arrays in this class's layouts. */
  async weights(): Promise<Record<string, Float32Array>> {
    const out: Record<string, Float32Array> = {};
    for (const [name, v] of Object.entries(this.params)) out[name] = (await v.data()) as Float32Array;
    return out;
  }

  variables(): tf.Variable[] {
    return Object.values(this.params);
  }

  dispose(): void {
    for (const v of Object.values(this.params)) v.dispose();
  }
}
