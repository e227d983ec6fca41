/**
 * The DINOv2 Vision Transformer with register tokens, in one file, with the config fields that make it
 * DINO, DeiT-III or a CLIP image tower (see config.ts):
 *
 *   image [B,H,W,3] -> patches (matMul over p x p x 3 pixels, + bias unless !patch_bias)
 *   -> (+ mask_token where masked)
 *   -> [CLS + pos[0], registers (no pos), patches + pos[1:]]     (pos_embed_cls: DINOv2, DINO, CLIP)
 *      [CLS, registers, patches + pos]                            (!pos_embed_cls: DeiT-III)
 *   -> (norm_pre LayerNorm: pre_norm, CLIP's ln_pre)
 *   -> depth x pre-norm blocks
 *      x = x + ls1 * attn(norm1(x));  x = x + ls2 * ffn(norm2(x))   (no ls when layerscale_init is null)
 *      ffn: fc2(act(fc1(x))), act = exact GELU or QuickGELU; or SwiGLU
 *   -> final LayerNorm -> CLS, registers, patches (registers and patches unnormalised when !final_norm_tokens)
 *   -> (pooled = CLS @ proj: proj_dim, CLIP's ln_post(x[:, 0]) @ proj).
 *
 * Parameters carry the official DINOv2 state-dict names, plus `norm_pre.weight/bias` (timm's name) and
 * `proj` [D, proj_dim] (CLIP's). Linear weights are stored transposed, [in, out], and the patch embedding
 * as a [p*p*3, D] matrix, so the forward pass is plain 2-D matMuls; weights.ts converts from and to every
 * family's names and PyTorch's layouts.
 *
 * Over 450 lines: one file on purpose, as nanoGPT's model.py:
 * the model reads top to bottom in one place (its parameters' names, shapes and initialisation, the
 * forward pass, drop path, the test-time register edit): all of it is what the model computes. What
 * stands on its own is already apart: the ops (ops.ts), positional-embedding interpolation
 * (interpolate.ts), configs (config.ts), checkpoint names and layouts (weights.ts and its parts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { ffnHiddenDim, posGrid, posLength, validateConfig, type ViTConfig } from './config.js';
import { posEmbedMatrices } from './interpolate.js';
import { gelu, geluLinear, layerNorm, linear, matMul2d, multiHeadAttention, reshape, residual, silu } from './ops.js';

/** QuickGELU, x * sigmoid(1.702 x), as open_clip's `QuickGELU` and OpenAI CLIP's (built-in gradients). */
export function quickGelu<R extends tf.Rank>(x: tf.Tensor<R>): tf.Tensor<R> {
  return tf.mul(x, tf.sigmoid(tf.mul(x, 1.702))) as tf.Tensor<R>;
}

export interface ForwardOptions {
  /** Return the softmax attention of the last block, of every block, or none (default). */
  attention?: 'none' | 'last' | 'all';
  /** Return the tokens after every block (before the final norm). */
  layers?: boolean;
  /** Return the keys / values of the last block, [B, heads, N, head_dim]. */
  keys?: boolean;
  values?: boolean;
  /** Training mode: enables drop path (stochastic depth) with `rng`. */
  training?: boolean;
  /**
   * Random source of drop path in training mode (required when drop_path_rate > 0): one Rng for the
   * batch, or one per image (each image's draws then do not depend on the batch it is in).
   */
  rng?: Rng | Rng[];
  /** [B, P] with 1 where a patch is replaced by the mask token (iBOT). */
  masks?: tf.Tensor2D;
  /**
   * Test-time registers (Jiang et al. 2025, nickjiang2378/test-time-registers, shared/hook_fn.py
   * `activate_on_registers`, normal_values "zero", scale 1): one extra token, zero and without positional
   * embedding. In each listed layer, at the MLP activation (after the activation, before the second
   * linear layer), per image, the listed neurons of that layer get on the extra token one signed maximum
   * taken jointly over those neurons and all tokens (the minimum when its magnitude is as large or larger), and 0 on
   * the patch tokens (CLS and trained registers keep theirs). The token sits after the trained registers,
   * so outputs keep the order [CLS, registers (trained, then test-time), patches] and `registers` has
   * R + 1 rows; the blocks are token-permutation equivariant, so this equals the reference's token
   * appended after the patches. Not for training (the edit has no gradient of its own).
   */
  testTimeRegisters?: { neurons: ReadonlyArray<{ layer: number; neuron: number }> };
  /**
   * Return every block's MLP activation [B, N, hidden] (after GELU / QuickGELU, or SwiGLU's silu(x1) x2:
   * the input of the second linear layer; after the test-time register edit where there is one), as the
   * reference's hooks on `mlp.act` log them (find_register_neurons).
   */
  mlpActivations?: boolean;
}

export interface ViTOutput {
  /** Normalised CLS token [B, D]. */
  cls: tf.Tensor2D;
  /** Register tokens [B, R, D], normalised (unless the config's final_norm_tokens is false). */
  registers: tf.Tensor3D;
  /** Patch tokens [B, P, D], row-major over the patch grid, normalised (unless final_norm_tokens is false). */
  patches: tf.Tensor3D;
  /** The projected CLS token [B, proj_dim], cls @ proj (CLIP's image embedding); only when proj_dim is set. */
  pooled?: tf.Tensor2D;
  /** Last block's output before the final norm, [B, 1+R+P, D]. */
  prenorm: tf.Tensor3D;
  /** Patch rows and columns. */
  grid: [number, number];
  /** Patch embeddings before the positional embedding, [B, P, D]. */
  embeddings: tf.Tensor3D;
  /** Softmax attention [B, heads, N, N]: one entry for 'last', one per block for 'all'. */
  attention?: tf.Tensor4D[];
  /** Tokens after each block, [B, N, D], N = 1+R+P. */
  layers?: tf.Tensor3D[];
  keys?: tf.Tensor4D;
  values?: tf.Tensor4D;
  /** Each block's MLP activation [B, N, hidden] (opts.mlpActivations). */
  mlpActivations?: tf.Tensor3D[];
}

/** Names and PyTorch-independent shapes of every parameter of a config, in state-dict order. */
export function parameterShapes(c: ViTConfig): Record<string, number[]> {
  const D = c.embed_dim;
  const p = c.patch_size;
  const hidden = ffnHiddenDim(c);
  const shapes: Record<string, number[]> = {
    cls_token: [1, 1, D],
    pos_embed: [1, posLength(c), D],
  };
  if (c.num_register_tokens > 0) shapes.register_tokens = [1, c.num_register_tokens, D];
  shapes.mask_token = [1, D];
  shapes['patch_embed.proj.weight'] = [p * p * 3, D];
  if (c.patch_bias) shapes['patch_embed.proj.bias'] = [D];
  if (c.pre_norm) {
    shapes['norm_pre.weight'] = [D];
    shapes['norm_pre.bias'] = [D];
  }
  for (let i = 0; i < c.depth; i++) {
    const b = `blocks.${i}.`;
    shapes[`${b}norm1.weight`] = [D];
    shapes[`${b}norm1.bias`] = [D];
    shapes[`${b}attn.qkv.weight`] = [D, 3 * D];
    if (c.qkv_bias) shapes[`${b}attn.qkv.bias`] = [3 * D];
    shapes[`${b}attn.proj.weight`] = [D, D];
    if (c.proj_bias) shapes[`${b}attn.proj.bias`] = [D];
    if (c.layerscale_init !== null) shapes[`${b}ls1.gamma`] = [D];
    shapes[`${b}norm2.weight`] = [D];
    shapes[`${b}norm2.bias`] = [D];
    const [fc1, fc2] = c.ffn_layer === 'swiglu' ? ['w12', 'w3'] : ['fc1', 'fc2'];
    const fc1Out = c.ffn_layer === 'swiglu' ? 2 * hidden : hidden;
    shapes[`${b}mlp.${fc1}.weight`] = [D, fc1Out];
    if (c.ffn_bias) shapes[`${b}mlp.${fc1}.bias`] = [fc1Out];
    shapes[`${b}mlp.${fc2}.weight`] = [hidden, D];
    if (c.ffn_bias) shapes[`${b}mlp.${fc2}.bias`] = [D];
    if (c.layerscale_init !== null) shapes[`${b}ls2.gamma`] = [D];
  }
  shapes['norm.weight'] = [D];
  shapes['norm.bias'] = [D];
  if (c.proj_dim !== null) shapes.proj = [D, c.proj_dim];
  return shapes;
}

/** Test-time register neurons by layer, checked against the config (errors name the entry); model and ONNX export share it. */
export function ttrNeuronsByLayer(c: ViTConfig, neurons: ReadonlyArray<{ layer: number; neuron: number }>): Map<number, number[]> {
  const hidden = ffnHiddenDim(c);
  const byLayer = new Map<number, number[]>();
  neurons.forEach((n, k) => {
    if (!Number.isInteger(n.layer) || n.layer < 0 || n.layer >= c.depth)
      throw new Error(`testTimeRegisters.neurons[${k}].layer: expected an integer in [0, ${c.depth - 1}], got ${n.layer}`);
    if (!Number.isInteger(n.neuron) || n.neuron < 0 || n.neuron >= hidden)
      throw new Error(`testTimeRegisters.neurons[${k}].neuron: expected an integer in [0, ${hidden - 1}], got ${n.neuron}`);
    const list = byLayer.get(n.layer) ?? [];
    if (!list.includes(n.neuron)) list.push(n.neuron);
    byLayer.set(n.layer, list);
  });
  return byLayer;
}

/** Drop path rate of block `i`: the same in every block, or linear from 0 to drop_path_rate (np.linspace). */
export function blockDropRate(c: ViTConfig, i: number): number {
  if (c.drop_path_uniform) return c.drop_path_rate;
  return c.depth > 1 ? (c.drop_path_rate * i) / (c.depth - 1) : c.drop_path_rate;
}

/**
 * The factors a residual branch is scaled by, one per image, from one uniform draw in [0, 1) per image.
 * Independent drop: draw < rate -> 0, else 1 / (1 - rate). Batch subset (DINOv2, only for rate > 0.1):
 * the S = max(floor(B (1 - rate)), 1) images with the smallest draws (ties by index) get B / S, the others 0.
 * The branch is computed for the whole batch and multiplied by these factors: the official values and
 * gradients, without the compute the official code saves by running the branch on the subset only. Which
 * images form the subset depends on the batch, so (as in DINOv2) a run on W ranks of B images drops
 * differently from one rank of W x B images.
 */
export function dropPathFactors(draws: number[], rate: number, batchSubset: boolean): Float32Array {
  const B = draws.length;
  const out = new Float32Array(B);
  if (batchSubset && rate > 0.1) {
    const S = Math.max(Math.floor(B * (1 - rate)), 1);
    const order = draws.map((d, i) => [d, i] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    for (let k = 0; k < S; k++) out[order[k]![1]] = B / S;
    return out;
  }
  for (let i = 0; i < B; i++) out[i] = draws[i]! < rate ? 0 : 1 / (1 - rate);
  return out;
}

/**
 * The drop-path factors of one training forward pass over a batch of `batch` images, drawn from `rng`
 * exactly as `VisionTransformer.forward` draws them: block by block, for each block whose rate
 * (`blockDropRate`) is above 0, the attention branch and then the FFN branch, one uniform draw per image
 * in image order (from `rng[i]` with one generator per image, else `batch` draws from the one generator),
 * turned into factors by `dropPathFactors` (DINOv2's batch-subset rule where the config asks for it).
 * Returns [depth, 2, batch] (block, branch 0 attention / 1 FFN, image), 1 where nothing drops. The tfjs
 * model and the ONNX Runtime training graphs both take these, so both engines drop the same paths.
 */
export function forwardDropPathFactors(c: ViTConfig, rng: Rng | Rng[], batch: number): Float32Array {
  const out = new Float32Array(c.depth * 2 * batch).fill(1);
  for (let i = 0; i < c.depth; i++) {
    const rate = blockDropRate(c, i);
    if (!(rate > 0)) continue;
    if (Array.isArray(rng) && rng.length !== batch) {
      throw new Error(`forward: opts.rng has ${rng.length} generators for a batch of ${batch} images`);
    }
    for (let branch = 0; branch < 2; branch++) {
      const draws = Array.from({ length: batch }, (_, b) => (Array.isArray(rng) ? rng[b]! : rng).float());
      out.set(dropPathFactors(draws, rate, c.drop_path_batch_subset), (i * 2 + branch) * batch);
    }
  }
  return out;
}

/**
 * DINOv2's initialisation (timm ViT init): trunc-normal .02 Linear/pos, tiny CLS/registers, LayerScale;
 * CLIP's projection as open_clip's: normal with std D^-0.5.
 */
function initialValue(name: string, shape: number[], c: ViTConfig, rng: Rng): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const normal = (std: number) => {
    for (let i = 0; i < n; i++) {
      let v: number;
      do v = rng.normal(0, std);
      while (v < -2 || v > 2);
      out[i] = v;
    }
  };
  if (name === 'mask_token' || (name.endsWith('.bias') && !name.startsWith('patch_embed'))) return out;
  if (name.endsWith('ls1.gamma') || name.endsWith('ls2.gamma')) return out.fill(c.layerscale_init ?? 1);
  if (/(^|\.)norm(\d|_pre)?\.weight$/.test(name)) return out.fill(1);
  if (name === 'cls_token' || name === 'register_tokens') normal(1e-6);
  else if (name === 'proj') normal(c.embed_dim ** -0.5);
  else if (name === 'pos_embed') normal(0.02);
  else if (name.startsWith('patch_embed')) {
    // PyTorch's Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    const bound = 1 / Math.sqrt(c.patch_size * c.patch_size * 3);
    for (let i = 0; i < n; i++) out[i] = (rng.float() * 2 - 1) * bound;
  } else normal(0.02);
  return out;
}

/**
 * The initial weights of `new VisionTransformer(config, { seed })` on the host, as Float32Arrays by
 * parameter name in `parameterShapes` order and layouts (drawn in that order from one generator seeded
 * with `seed`, bit for bit the model's): for engines that keep their weights outside tfjs.
 */
export function initialParameters(config: ViTConfig, seed = 0): Record<string, Float32Array> {
  const c = validateConfig(config as unknown as Record<string, unknown>);
  const rng = new Rng(seed);
  const out: Record<string, Float32Array> = {};
  for (const [name, shape] of Object.entries(parameterShapes(c))) out[name] = initialValue(name, shape, c, rng);
  return out;
}

/** Suffix that keeps tfjs variable names unique across models. */
let nextId = 0;

export class VisionTransformer {
  readonly config: ViTConfig;
  /** Parameters by DINOv2 state-dict name (Linear weights [in, out]; patch_embed.proj.weight [p*p*3, D]). */
  readonly params: Record<string, tf.Variable>;

  /**
   * A model with freshly initialised weights (seeded), or with `weights` given as Float32Arrays in this
   * class's layouts (see `parameterShapes`); weights.ts builds models from checkpoint files.
   */
  constructor(config: ViTConfig, opts: { seed?: number; weights?: Record<string, Float32Array>; trainable?: boolean } = {}) {
    this.config = validateConfig(config as unknown as Record<string, unknown>);
    const rng = new Rng(opts.seed ?? 0);
    this.params = {};
    for (const [name, shape] of Object.entries(parameterShapes(this.config))) {
      const given = opts.weights?.[name];
      const values = given ?? initialValue(name, shape, this.config, rng);
      const n = shape.reduce((a, b) => a * b, 1);
      if (values.length !== n) throw new Error(`parameter ${name}: expected ${n} values for shape [${shape}], got ${values.length}`);
      // In a tidy: tf.variable(t) shares t's data and keeps t alive; disposing the model must free both.
      this.params[name] = tf.tidy(() =>
        tf.variable(tf.tensor(values, shape, 'float32'), opts.trainable ?? true, `vitreg/${name}/${nextId++}`),
      );
    }
  }

  /** Parameter by name; throws naming it when absent. */
  param(name: string): tf.Variable {
    const p = this.params[name];
    if (!p) throw new Error(`model has no parameter "${name}"`);
    return p;
  }

  /**
   * Positional embedding for a gh x gw patch grid, laid out as `pos_embed`: [1, 1 + gh*gw, D] with the
   * class slot first, or [1, gh*gw, D] without (pos_embed_cls false). The patch grid is resampled as the
   * config says (DINOv2's / DINO's interpolate_pos_encoding, timm's resample_abs_pos_embed); the class
   * slot is kept as is.
   */
  positionalEmbedding(gh: number, gw: number): tf.Tensor3D {
    const c = this.config;
    const grid = posGrid(c);
    const pos = this.param('pos_embed');
    if (gh === grid && gw === grid) return pos as unknown as tf.Tensor3D;
    const D = c.embed_dim;
    const first = c.pos_embed_cls ? 1 : 0;
    const { rows, cols } = posEmbedMatrices(grid, gh, gw, { antialias: c.interpolate_antialias, offset: c.interpolate_offset });
    const patchPos = tf.reshape(tf.slice(pos, [0, first, 0], [1, grid * grid, D]), [grid, grid * D]);
    // rows: [gh, grid] @ [grid, grid*D] -> [gh, grid, D] -> [grid, gh*D]; cols: [gw, grid] @ -> [gw, gh, D].
    const byRows = matMul2d(tf.tensor2d(Float32Array.from(rows), [gh, grid]), patchPos as tf.Tensor2D);
    const swapped = tf.reshape(tf.transpose(tf.reshape(byRows, [gh, grid, D]), [1, 0, 2]), [grid, gh * D]);
    const byCols = matMul2d(tf.tensor2d(Float32Array.from(cols), [gw, grid]), swapped as tf.Tensor2D);
    const resized = tf.reshape(tf.transpose(tf.reshape(byCols, [gw, gh, D]), [1, 0, 2]), [1, gh * gw, D]) as tf.Tensor3D;
    return c.pos_embed_cls ? (tf.concat([tf.slice(pos, [0, 0, 0], [1, 1, D]), resized], 1) as tf.Tensor3D) : resized;
  }

  /** Patch embedding of NHWC images: [B, gh*gw, D] as a matMul over non-overlapping p x p x 3 patches. */
  embedPatches(images: tf.Tensor4D): tf.Tensor3D {
    const p = this.config.patch_size;
    const [B, H, W, C] = images.shape;
    const gh = H / p;
    const gw = W / p;
    // [B, gh, p, gw, p*3] -> [B, gh, gw, p, p*3]: rows of (kh, kw, c), the layout of patch_embed.proj.weight.
    const x = tf.transpose(tf.reshape(images, [B * gh, p, gw, p * C]), [0, 2, 1, 3]);
    const rows = reshape<tf.Rank.R3>(x, [B, gh * gw, p * p * C]);
    return linear(rows, this.param('patch_embed.proj.weight'), this.params['patch_embed.proj.bias']);
  }

  /**
   * The forward pass. `images` are normalised NHWC float32 with sides that are multiples of the patch
   * size. Intermediate tensors are freed; the caller owns (and disposes) the returned ones.
   */
  forward(images: tf.Tensor4D, opts: ForwardOptions = {}): ViTOutput {
    return tf.tidy(() => this.forwardTensors(images, opts) as unknown as tf.TensorContainer) as unknown as ViTOutput;
  }

  private forwardTensors(images: tf.Tensor4D, opts: ForwardOptions): ViTOutput {
    const c = this.config;
    if (images.rank !== 4 || images.shape[3] !== 3) {
      throw new Error(`images: expected a [batch, height, width, 3] tensor, got shape [${images.shape}]`);
    }
    const [B, H, W] = images.shape;
    const p = c.patch_size;
    if (H % p !== 0 || W % p !== 0 || H === 0 || W === 0) {
      throw new Error(`images: height and width must be positive multiples of the patch size ${p}, got ${H}x${W}`);
    }
    const gh = H / p;
    const gw = W / p;
    const D = c.embed_dim;
    const R = c.num_register_tokens;
    const embeddings = this.embedPatches(images);
    let x: tf.Tensor3D = embeddings;
    if (opts.masks) {
      if (opts.masks.shape[0] !== B || opts.masks.shape[1] !== gh * gw) {
        throw new Error(`masks: expected shape [${B}, ${gh * gw}], got [${opts.masks.shape}]`);
      }
      const m = tf.expandDims(tf.cast(opts.masks, 'float32'), 2);
      x = tf.add(tf.mul(x, tf.sub(1, m)), tf.mul(m, tf.reshape(this.param('mask_token'), [1, 1, D])));
    }
    const pos = this.positionalEmbedding(gh, gw);
    const P = gh * gw;
    const first = c.pos_embed_cls ? 1 : 0;
    const clsToken = c.pos_embed_cls ? tf.add(this.param('cls_token'), tf.slice(pos, [0, 0, 0], [1, 1, D])) : this.param('cls_token');
    const parts: tf.Tensor[] = [tf.tile(clsToken, [B, 1, 1])];
    if (R > 0) parts.push(tf.tile(this.param('register_tokens'), [B, 1, 1]));
    const ttr = opts.testTimeRegisters ? ttrNeuronsByLayer(this.config, opts.testTimeRegisters.neurons) : undefined;
    if (ttr) parts.push(tf.zeros([B, 1, D]));
    const T = ttr ? 1 : 0;
    parts.push(tf.add(x, tf.slice(pos, [0, first, 0], [1, P, D])));
    x = tf.concat(parts, 1) as tf.Tensor3D;
    if (c.pre_norm) x = layerNorm(x, this.param('norm_pre.weight'), this.param('norm_pre.bias'), c.norm_eps);

    const want = opts.attention ?? 'none';
    const attentions: tf.Tensor4D[] = [];
    const layers: tf.Tensor3D[] = [];
    const acts: tf.Tensor3D[] = [];
    let keys: tf.Tensor4D | undefined;
    let values: tf.Tensor4D | undefined;
    const dropRng = opts.training && c.drop_path_rate > 0 ? opts.rng : undefined;
    if (opts.training && c.drop_path_rate > 0 && !opts.rng) throw new Error('forward: training with drop_path_rate > 0 needs opts.rng');
    // Every block's factors up front, in the order the blocks would draw them.
    const factors = dropRng ? forwardDropPathFactors(c, dropRng, B) : undefined;
    for (let i = 0; i < c.depth; i++) {
      const last = i === c.depth - 1;
      const dropRate = factors ? blockDropRate(c, i) : 0;
      // One tidy per block: intermediates are freed as soon as the block is done (a gradient tape keeps
      // what it needs), so peak memory is one block's, not the whole network's.
      const input = x;
      const res = tf.tidy(() =>
        this.block(i, input, {
          attention: want === 'all' || (want === 'last' && last),
          kv: last && (opts.keys || opts.values),
          keep: factors && dropRate > 0 ? [0, 1].map((k) => factors.subarray((i * 2 + k) * B, (i * 2 + k + 1) * B)) : undefined,
          ttr: ttr?.get(i) ? { neurons: ttr.get(i)!, register: 1 + R, patches: 1 + R + T } : undefined,
          act: opts.mlpActivations,
        }),
      );
      if (!opts.layers && i > 0) input.dispose();
      x = res.x;
      if (res.attn) attentions.push(res.attn);
      if (last) {
        if (opts.keys) keys = res.k;
        if (opts.values) values = res.v;
      }
      if (opts.layers) layers.push(x);
      if (res.act) acts.push(res.act);
    }
    const normed = layerNorm(x, this.param('norm.weight'), this.param('norm.bias'), c.norm_eps);
    const tokens = c.final_norm_tokens ? normed : x;
    const cls = tf.reshape(tf.slice(normed, [0, 0, 0], [B, 1, D]), [B, D]) as tf.Tensor2D;
    const out: ViTOutput = {
      cls,
      registers: tf.slice(tokens, [0, 1, 0], [B, R + T, D]),
      patches: tf.slice(tokens, [0, 1 + R + T, 0], [B, P, D]),
      prenorm: x,
      grid: [gh, gw],
      embeddings,
    };
    if (c.proj_dim !== null) out.pooled = matMul2d(cls, this.param('proj') as unknown as tf.Tensor2D);
    if (want !== 'none') out.attention = attentions;
    if (opts.layers) out.layers = layers;
    if (opts.mlpActivations) out.mlpActivations = acts;
    if (keys) out.keys = keys;
    if (values) out.values = values;
    return out;
  }

  private block(
    i: number,
    x: tf.Tensor3D,
    o: {
      attention: boolean;
      kv: boolean | undefined;
      keep?: Float32Array[];
      ttr?: { neurons: number[]; register: number; patches: number };
      act?: boolean;
    },
  ): { x: tf.Tensor3D; attn?: tf.Tensor4D; k?: tf.Tensor4D; v?: tf.Tensor4D; act?: tf.Tensor3D } {
    const c = this.config;
    const b = `blocks.${i}.`;
    const P = (n: string) => this.params[b + n];
    const [B, N, D] = x.shape;
    const H = c.num_heads;
    const hd = D / H;

    // Attention branch.
    const h1 = layerNorm(x, P('norm1.weight'), P('norm1.bias'), c.norm_eps);
    // [B, N, 3D] -> [3, H*B, N, hd]: q, k, v of every (head, batch) pair as row blocks (4-D transposes
    // only: rank-5 ones are a slow generic loop on wasm).
    const qkv = reshape<tf.Rank.R4>(
      tf.transpose(reshape(linear(h1, P('attn.qkv.weight'), P('attn.qkv.bias')), [B, N, 3 * H, hd]), [2, 0, 1, 3]),
      [3, H * B, N, hd],
    );
    const sink: { attn?: tf.Tensor3D } = {};
    const out = multiHeadAttention(qkv, 1 / Math.sqrt(hd), o.attention ? sink : undefined);
    const merged = reshape<tf.Rank.R3>(tf.transpose(reshape(out, [H, B, N, hd]), [1, 2, 0, 3]), [B, N, D]);
    const part = (j: number) =>
      tf.transpose(tf.reshape(tf.slice(tf.reshape(qkv, [3, H * B * N * hd]), [j, 0], [1, -1]), [H, B, N, hd]), [1, 0, 2, 3]) as tf.Tensor4D;
    const k = o.kv ? part(1) : undefined;
    const v = o.kv ? part(2) : undefined;
    const attn = sink.attn ? (tf.transpose(tf.reshape(sink.attn, [H, B, N, N]), [1, 0, 2, 3]) as tf.Tensor4D) : undefined;
    if (sink.attn) sink.attn.dispose();
    const a = linear(merged, P('attn.proj.weight'), P('attn.proj.bias'));
    x = residual(x, a, P('ls1.gamma'), o.keep ? tf.tensor3d(o.keep[0]!, [B, 1, 1]) : undefined);

    // FFN branch.
    const h2 = layerNorm(x, P('norm2.weight'), P('norm2.bias'), c.norm_eps);
    let f: tf.Tensor3D;
    let act: tf.Tensor3D | undefined;
    if (o.ttr || o.act) {
      const h = linear(
        h2,
        P(c.ffn_layer === 'swiglu' ? 'mlp.w12.weight' : 'mlp.fc1.weight'),
        P(c.ffn_layer === 'swiglu' ? 'mlp.w12.bias' : 'mlp.fc1.bias'),
      );
      if (c.ffn_layer === 'swiglu') {
        const [x1, x2] = tf.split(h, 2, 2);
        act = tf.mul(silu(x1), x2) as tf.Tensor3D;
      } else act = c.act_layer === 'quick_gelu' ? quickGelu(h) : gelu(h);
      if (o.ttr) act = moveToRegister(act, o.ttr.neurons, o.ttr.register, o.ttr.patches);
      f = linear(
        act,
        P(c.ffn_layer === 'swiglu' ? 'mlp.w3.weight' : 'mlp.fc2.weight'),
        P(c.ffn_layer === 'swiglu' ? 'mlp.w3.bias' : 'mlp.fc2.bias'),
      );
    } else if (c.ffn_layer === 'swiglu') {
      const [x1, x2] = tf.split(linear(h2, P('mlp.w12.weight'), P('mlp.w12.bias')), 2, 2);
      f = linear(tf.mul(silu(x1), x2) as tf.Tensor3D, P('mlp.w3.weight'), P('mlp.w3.bias'));
    } else if (c.act_layer === 'quick_gelu') {
      f = linear(quickGelu(linear(h2, P('mlp.fc1.weight'), P('mlp.fc1.bias'))), P('mlp.fc2.weight'), P('mlp.fc2.bias'));
    } else {
      f = geluLinear(linear(h2, P('mlp.fc1.weight'), P('mlp.fc1.bias')), P('mlp.fc2.weight'), P('mlp.fc2.bias'));
    }
    x = residual(x, f, P('ls2.gamma'), o.keep ? tf.tensor3d(o.keep[1]!, [B, 1, 1]) : undefined);
    return { x, attn, k, v, act: o.act ? act : undefined };
  }

  /** Parameters as host Float32Arrays in this class's layouts (for saving and syncing). */
  async weights(): Promise<Record<string, Float32Array>> {
    const out: Record<string, Float32Array> = {};
    for (const [name, v] of Object.entries(this.params)) out[name] = (await v.data()) as Float32Array;
    return out;
  }

  /** Trainable variables in a stable (state-dict) order. */
  variables(): tf.Variable[] {
    return Object.values(this.params);
  }

  dispose(): void {
    for (const v of Object.values(this.params)) v.dispose();
  }
}

/**
 * The test-time register edit of one layer's MLP activation `act` [B, N, hidden] (reference:
 * test-time-registers shared/hook_fn.py `activate_on_registers` with shared/utils.py `sign_max`, done for
 * every image instead of image 0): per image, v = max over all tokens and the given neurons, or the
 * minimum when |min| >= |max|; the register row `register` gets v at those neurons, the patch rows from
 * `firstPatch` on get 0 there.
 */
function moveToRegister(act: tf.Tensor3D, neurons: number[], register: number, firstPatch: number): tf.Tensor3D {
  const [B, N, hidden] = act.shape;
  const sel = tf.gather(act, neurons, 2);
  const hi = tf.max(sel, [1, 2]);
  const lo = tf.min(sel, [1, 2]);
  const v = tf.reshape(tf.where(tf.greater(tf.abs(hi), tf.abs(lo)), hi, lo), [B, 1, 1]);
  const cols = new Float32Array(hidden);
  for (const n of neurons) cols[n] = 1;
  const rows = new Float32Array(N);
  const regRow = new Float32Array(N);
  regRow[register] = 1;
  rows[register] = 1;
  for (let j = firstPatch; j < N; j++) rows[j] = 1;
  const col = tf.tensor3d(cols, [1, 1, hidden]);
  const cleared = tf.mul(col, tf.tensor3d(rows, [1, N, 1]));
  const onRegister = tf.mul(tf.mul(col, tf.tensor3d(regRow, [1, N, 1])), v);
  return tf.add(tf.mul(act, tf.sub(1, cleared)), onRegister) as tf.Tensor3D;
}
