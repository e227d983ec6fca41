/**
 * The Vision Transformer's forward pass (@vitreg/registers' model.ts, DINOv2's architecture) as a
 * differentiable training graph: parameters are graph inputs in the model layout (linear weights
 * [in, out], patch_embed.proj.weight [p*p*3, D] in (kh, kw, c) order for NHWC images), so an engine
 * binds views of its flat buffers with no copy or transpose.
 *
 * Every option the trainer trains: registers, MLP (exact GELU or QuickGELU) or SwiGLU (w12 / w3),
 * LayerScale, qkv / proj / FFN biases on or off, patch bias, pos_embed with or without the class slot,
 * pre_norm, iBOT mask tokens (x (1 - m) + m mask_token), drop path as per-image factors of each block's
 * two branches (forwardDropPathFactors draws them on the host exactly as the tfjs model does, DINOv2's
 * batch-subset rule included), and crop sizes other than the model's with the positional grid resampled
 * IN the graph as one product with interpolate.ts's constant bicubic matrices (their Kronecker product),
 * so pos_embed gets its gradient.
 *
 * Attention stays in [B, H, N, hd]: scores are one FusedMatMul (k transposed, scale as alpha), and the
 * backward uses transposed products, never a transpose of the [B, H, N, N] scores.
 */
import { blockDropRate, posEmbedMatrices, posGrid, type ViTConfig } from '@vitreg/registers';
import type { TrainGraph, Value } from './autodiff.js';
import { activationLinear, layerNorm, linear, matmul, oneMinus, softmax } from './nn-ops.js';

/** Parameters by model name (`cls_token`, `blocks.0.attn.qkv.weight`, ...), declared as graph inputs on first use. */
export type ParamFn = (name: string) => Value;
/** Parameters that may be absent from a config (biases, LayerScale, registers). */
export type OptionalParamFn = (name: string) => Value | undefined;

export interface VitForwardOptions {
  /** Drop-path factors [depth, 2, B] (block, attention / FFN branch, image); none: no drop path (eval mode). */
  dropPath?: Value;
  /** iBOT masks [B, P] (1 = the patch is replaced by mask_token). */
  masks?: Value;
  /** Return the patch tokens [B, P, D] too (normalised unless final_norm_tokens is false). */
  patches?: boolean;
}

export interface VitForward {
  /** The normalised CLS token [B, D]. */
  cls: Value;
  /** Patch tokens [B, P, D] (when asked for). */
  patches?: Value;
}

/**
 * The [P, grid^2] matrix that resamples the positional grid to gh x gw patches (the Kronecker product of
 * interpolate.ts's row and column matrices, computed in float64), or null at the model's own grid.
 */
export function posResampleMatrix(vit: ViTConfig, gh: number, gw: number): Float32Array | null {
  const G = posGrid(vit);
  if (gh === G && gw === G) return null;
  const { rows, cols } = posEmbedMatrices(G, gh, gw, { antialias: vit.interpolate_antialias, offset: vit.interpolate_offset });
  const out = new Float32Array(gh * gw * G * G);
  for (let i = 0; i < gh; i++)
    for (let j = 0; j < gw; j++)
      for (let a = 0; a < G; a++) for (let b = 0; b < G; b++) out[(i * gw + j) * G * G + a * G + b] = rows[i * G + a]! * cols[j * G + b]!;
  return out;
}

/** The drop-path factors [B, 1, 1] of block `i`'s branch `k` (0 attention, 1 FFN), or undefined when it drops nothing. */
function keepFactors(t: TrainGraph, vit: ViTConfig, drop: Value | undefined, i: number, k: number): Value | undefined {
  if (!drop || !(blockDropRate(vit, i) > 0)) return undefined;
  const B = drop.shape[2]!;
  const row = t.emit('Slice', [drop, t.int64([i, k]), t.int64([i + 1, k + 1]), t.int64([0, 1])], [1, 1, B]);
  return t.emit('Reshape', [row, t.int64([B, 1, 1])], [B, 1, 1]);
}

/** x + branch (* gamma) (* keep): LayerScale and drop path of one residual branch. */
function residual(t: TrainGraph, x: Value, branch: Value, gamma: Value | undefined, keep: Value | undefined): Value {
  let y = gamma ? t.mul(branch, gamma) : branch;
  if (keep) y = t.mul(y, keep);
  return t.add(x, y);
}

/**
 * One pre-norm block: x + ls1 attn(norm1(x)), then + ls2 ffn(norm2(x)). With `clsOnly` (the last block
 * when only CLS is used) only the CLS token's output [B, 1, D] is computed: its query against every
 * token's key and value, then the projection and FFN of that one token (the same values and gradients;
 * the other tokens' outputs would get none).
 */
function block(t: TrainGraph, vit: ViTConfig, p: ParamFn, opt: OptionalParamFn, i: number, x: Value, drop?: Value, clsOnly = false): Value {
  const [B, N, D] = x.shape as [number, number, number];
  const H = vit.num_heads;
  const hd = D / H;
  const b = `blocks.${i}.`;
  const eps = vit.norm_eps;
  const h1 = layerNorm(t, x, p(`${b}norm1.weight`), p(`${b}norm1.bias`), eps);
  const w = p(`${b}attn.qkv.weight`);
  const bias = opt(`${b}attn.qkv.bias`);
  const M = clsOnly ? 1 : N;
  let q: Value, k: Value, v: Value;
  if (clsOnly) {
    // q of CLS only [B, H, 1, hd]; k, v of every token: [B, N, 2D] -> [2, B, H, N, hd].
    const qb = bias ? t.slice(bias, 0, 0, D) : null;
    q = t.transpose(t.reshape(linear(t, t.slice(h1, 1, 0, 1), t.slice(w, 1, 0, D), qb), [B, 1, H, hd]), [0, 2, 1, 3]);
    const kv = linear(t, h1, t.slice(w, 1, D, 3 * D), bias ? t.slice(bias, 0, D, 3 * D) : null);
    const heads = t.transpose(t.reshape(kv, [B, N, 2, H, hd]), [2, 0, 3, 1, 4]);
    [k, v] = t.split(heads, 0, [1, 1]).map((s) => t.reshape(s, [B, H, N, hd])) as [Value, Value];
    x = t.slice(x, 1, 0, 1);
  } else {
    // [B, N, 3D] -> [3, B, H, N, hd] -> q, k, v [B, H, N, hd].
    const heads = t.transpose(t.reshape(linear(t, h1, w, bias), [B, N, 3, H, hd]), [2, 0, 3, 1, 4]);
    [q, k, v] = t.split(heads, 0, [1, 1, 1]).map((s) => t.reshape(s, [B, H, N, hd])) as [Value, Value, Value];
  }
  const attn = softmax(t, matmul(t, q, k, { transB: true, alpha: 1 / Math.sqrt(hd) }));
  const merged = t.reshape(t.transpose(matmul(t, attn, v), [0, 2, 1, 3]), [B, M, D]);
  const a = linear(t, merged, p(`${b}attn.proj.weight`), opt(`${b}attn.proj.bias`));
  x = residual(t, x, a, opt(`${b}ls1.gamma`), keepFactors(t, vit, drop, i, 0));
  // FFN: MLP (GELU / QuickGELU) or SwiGLU.
  const h2 = layerNorm(t, x, p(`${b}norm2.weight`), p(`${b}norm2.bias`), eps);
  const [fc1, fc2] = vit.ffn_layer === 'swiglu' ? ['w12', 'w3'] : ['fc1', 'fc2'];
  const act = vit.ffn_layer === 'swiglu' ? 'swiglu' : vit.act_layer;
  const h = linear(t, h2, p(`${b}mlp.${fc1}.weight`), opt(`${b}mlp.${fc1}.bias`));
  const f = activationLinear(t, h, act, p(`${b}mlp.${fc2}.weight`), opt(`${b}mlp.${fc2}.bias`));
  return residual(t, x, f, opt(`${b}ls2.gamma`), keepFactors(t, vit, drop, i, 1));
}

/**
 * The forward pass of NHWC `images` [B, S, S, 3] (S a multiple of the patch size): CLS (and the patch
 * tokens) as model.ts computes them, in training mode when `dropPath` is given.
 */
export function vitForward(
  t: TrainGraph,
  vit: ViTConfig,
  p: ParamFn,
  opt: OptionalParamFn,
  images: Value,
  o: VitForwardOptions = {},
): VitForward {
  const [B, S, W, C] = images.shape as [number, number, number, number];
  const ps = vit.patch_size;
  if (images.shape.length !== 4 || C !== 3 || S % ps !== 0 || W % ps !== 0) {
    throw new Error(`training graph: images must be [batch, H, W, 3] with sides multiples of ${ps}, got [${images.shape}]`);
  }
  const gh = S / ps;
  const gw = W / ps;
  const P = gh * gw;
  const D = vit.embed_dim;
  const R = vit.num_register_tokens;
  if (o.dropPath && (o.dropPath.shape[0] !== vit.depth || o.dropPath.shape[1] !== 2 || o.dropPath.shape[2] !== B)) {
    throw new Error(`training graph: drop-path factors must be [${vit.depth}, 2, ${B}], got [${o.dropPath.shape}]`);
  }
  // Patch embedding: [B, gh, p, gw, p*3] -> [B, gh, gw, p, p*3] -> rows of (kh, kw, c).
  const rows = t.reshape(t.transpose(t.reshape(images, [B * gh, ps, gw, ps * 3]), [0, 2, 1, 3]), [B, P, ps * ps * 3]);
  let x = linear(t, rows, p('patch_embed.proj.weight'), opt('patch_embed.proj.bias'));
  if (o.masks) {
    if (o.masks.shape[0] !== B || o.masks.shape[1] !== P)
      throw new Error(`training graph: masks must be [${B}, ${P}], got [${o.masks.shape}]`);
    const m = t.reshape(o.masks, [B, P, 1]);
    x = t.add(t.mul(x, oneMinus(t, m)), t.mul(m, t.reshape(p('mask_token'), [1, 1, D])));
  }
  // Positional embedding, resampled in the graph at other grid sizes.
  const G = posGrid(vit);
  const first = vit.pos_embed_cls ? 1 : 0;
  const pos = p('pos_embed');
  const grid = t.slice(pos, 1, first, first + G * G);
  const resample = posResampleMatrix(vit, gh, gw);
  const patchPos = resample
    ? t.reshape(matmul(t, t.constant('pos_resample', resample, [P, G * G]), t.reshape(grid, [G * G, D])), [1, P, D])
    : grid;
  const clsToken = vit.pos_embed_cls ? t.add(p('cls_token'), t.slice(pos, 1, 0, 1)) : p('cls_token');
  const parts = [t.expand(clsToken, [B, 1, D])];
  if (R > 0) parts.push(t.expand(p('register_tokens'), [B, R, D]));
  parts.push(t.add(x, patchPos));
  x = t.concat(parts, 1);
  if (vit.pre_norm) x = layerNorm(t, x, p('norm_pre.weight'), p('norm_pre.bias'), vit.norm_eps);
  // Without patch tokens the last block and the final norm compute the CLS token only.
  for (let i = 0; i < vit.depth; i++) {
    const clsOnly = !o.patches && i === vit.depth - 1;
    x = t.scope(`blocks.${i}`, () => block(t, vit, p, opt, i, x, o.dropPath, clsOnly));
  }
  const norm = (v: Value) => layerNorm(t, v, p('norm.weight'), p('norm.bias'), vit.norm_eps);
  if (!o.patches) return { cls: t.reshape(norm(t.slice(x, 1, 0, 1)), [B, D]) };
  if (!vit.final_norm_tokens) return { cls: t.reshape(norm(t.slice(x, 1, 0, 1)), [B, D]), patches: t.slice(x, 1, 1 + R, 1 + R + P) };
  const normed = norm(x);
  return { cls: t.reshape(t.slice(normed, 1, 0, 1), [B, D]), patches: t.slice(normed, 1, 1 + R, 1 + R + P) };
}
