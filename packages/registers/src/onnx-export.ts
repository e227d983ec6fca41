/**
 * Export of the Vision Transformer (model.ts, DINOv2's architecture) to an ONNX graph, built in
 * TypeScript from the config and a DINOv2-named state dict in PyTorch layouts (weights.ts): opset 17,
 * one input `images` [batch, H, W, 3] (normalised NHWC float32, as the tfjs model takes), outputs by name.
 *
 * Input size: one graph per size. The positional embedding is resampled at export time with the exact
 * resampling matrices of interpolate.ts (PyTorch's bicubic, antialiased or DINOv2's legacy scale factor),
 * in float64, and stored as a constant. That is bit-for-bit the tfjs model's interpolation rule, needs no
 * Resize op (whose cubic / antialias / scale-factor arithmetic differs between runtimes) and costs nothing
 * at run time; the encoder builds and caches a graph per input size.
 *
 * The graph uses the patterns ONNX Runtime's optimiser fuses: LayerNormalization (opset 17), exact GELU
 * as x * 0.5 * (1 + Erf(x / sqrt 2)) after MatMul + Add (fused to BiasGelu), MatMul + Add linears, and
 * attention as MatMul / Softmax / MatMul on [B, H, N, hd] (PyTorch's export of the same module).
 * LayerScale is folded into the preceding linear (W gamma, b gamma) when weights are stored as float32.
 *
 * Over 450 lines: one job, the export; buildOnnxGraph writes the whole graph in one pass that reads as model.ts's
 * forward pass, and its checks, metadata and file writing are what that one graph needs.
 */
import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { ffnHiddenDim, posGrid, type ViTConfig } from './config.js';
import { posEmbedMatrices } from './interpolate.js';
import { ttrNeuronsByLayer } from './model.js';
import { GraphBuilder, type GraphValue, type Initializer } from './onnx-graph.js';
import { encodeModel } from './onnx-proto.js';

import { checkStateDict } from './torch-layout.js';
import { type StateDict } from './state-dict.js';

/**
 * What an exported graph can return, named as ViTOutput's fields: 'attention' is the last block's
 * softmax attention, 'attention:all' every block's; 'layers' every block's output tokens.
 */
export const ONNX_OUTPUTS = [
  'cls',
  'registers',
  'patches',
  'prenorm',
  'pooled',
  'embeddings',
  'attention',
  'attention:all',
  'keys',
  'values',
  'layers',
] as const;
export type OnnxOutput = (typeof ONNX_OUTPUTS)[number];
export const DEFAULT_ONNX_OUTPUTS: OnnxOutput[] = ['cls', 'registers', 'patches', 'prenorm'];

export interface OnnxExportOptions {
  /** Input height and width in pixels (multiples of the patch size). */
  height: number;
  width: number;
  /** Outputs to return (default cls, registers, patches, prenorm). */
  outputs?: readonly OnnxOutput[];
  /** Weight storage: float32 (default) or float16 (cast to float32 in the graph; compute stays float32). */
  weightType?: 'float32' | 'float16';
  /** Blocks whose attention, keys and values are not outputs use ONNX Runtime's com.microsoft.Attention. */
  contribAttention?: boolean;
  /**
   * One graph for every size (what the encoder runs): images [batch, height, width, 3] and a second input
   * `patch_pos` [1, patches, D], the resampled positional embedding of that size
   * (resampledPatchPositions), instead of the constant of `height` x `width`, which then only check
   * the config.
   */
  dynamicSize?: boolean;
  /**
   * Test-time registers (model.ts's forward option `testTimeRegisters`, Jiang et al. 2025): one extra
   * zero token without positional embedding after the trained registers, and in each listed layer, at
   * the MLP activation (after the activation, before the second linear layer), per image, one signed
   * maximum taken jointly over that layer's listed neurons and all tokens (Gather, ReduceMax, ReduceMin,
   * Where: the minimum when its magnitude is as large or larger) on the extra token at those neurons,
   * and 0 there on the patch tokens (Mul / Add with constant masks). `registers` then has R + 1 rows.
   */
  testTimeRegisters?: { neurons: ReadonlyArray<{ layer: number; neuron: number }> };
}

/** Metadata keys an export writes into ModelProto.metadata_props. */
export const ONNX_METADATA = {
  config: 'vitreg_config',
  outputs: 'vitreg_outputs',
  input: 'vitreg_input',
  weightType: 'vitreg_weight_type',
  /** The test-time register neurons ([{layer, neuron}] JSON), only in graphs that have one. */
  testTimeRegisters: 'vitreg_test_time_registers',
} as const;

/**
 * Config fields the exporter knows. Any other field (a later model family) must hold an "off" value
 * (false, null, 0, 'none' or absent), else export fails naming it.
 */
const HANDLED = new Set([
  'embed_dim',
  'depth',
  'num_heads',
  'patch_size',
  'num_register_tokens',
  'mlp_ratio',
  'ffn_layer',
  'img_size',
  'interpolate_antialias',
  'interpolate_offset',
  'layerscale_init',
  'qkv_bias',
  'proj_bias',
  'ffn_bias',
  'drop_path_rate',
  'drop_path_uniform',
  'drop_path_batch_subset',
  'norm_eps',
  'act_layer',
  'pos_embed_cls',
  'patch_bias',
  'pre_norm',
  'proj_dim',
  'final_norm_tokens',
]);

/** The model-family fields (DINO, DeiT-III, CLIP), with DINOv2's values where a config lacks them. */
interface Family {
  act: 'gelu' | 'quick_gelu';
  posCls: boolean;
  patchBias: boolean;
  preNorm: boolean;
  projDim: number | null;
  finalNormTokens: boolean;
}

function family(c: ViTConfig): Family {
  const f = c as unknown as Record<string, unknown>;
  return {
    act: (f.act_layer ?? 'gelu') as Family['act'],
    posCls: (f.pos_embed_cls ?? true) as boolean,
    patchBias: (f.patch_bias ?? true) as boolean,
    preNorm: (f.pre_norm ?? false) as boolean,
    projDim: (f.proj_dim ?? null) as number | null,
    finalNormTokens: (f.final_norm_tokens ?? true) as boolean,
  };
}

/** Throws "ONNX export does not support <field>=<value> yet" for config values the graph cannot express. */
export function checkExportable(c: ViTConfig): void {
  const unsupported = (k: string, v: unknown) => new Error(`ONNX export does not support ${k}=${JSON.stringify(v)} yet`);
  for (const [k, v] of Object.entries(c)) {
    if (HANDLED.has(k)) continue;
    if (v === false || v === null || v === 0 || v === 'none' || v === undefined) continue;
    throw unsupported(k, v);
  }
  if (c.ffn_layer !== 'mlp' && c.ffn_layer !== 'swiglu') throw unsupported('ffn_layer', c.ffn_layer);
  const act = family(c).act;
  if (act !== 'gelu' && act !== 'quick_gelu') throw unsupported('act_layer', act);
}

/** The graph's output names and shapes for a config, size and output list (graph order). */
export function onnxOutputValues(
  c: ViTConfig,
  height: number,
  width: number,
  outputs: readonly OnnxOutput[],
  dynamicSize = false,
  testTimeRegister = false,
): GraphValue[] {
  const R = c.num_register_tokens + (testTimeRegister ? 1 : 0);
  const P: number | string = dynamicSize ? 'patches' : (height / c.patch_size) * (width / c.patch_size);
  const N: number | string = dynamicSize ? 'tokens' : 1 + R + (P as number);
  const D = c.embed_dim;
  const H = c.num_heads;
  const want = new Set(outputs);
  const out: GraphValue[] = [];
  if (want.has('cls')) out.push({ name: 'cls', dims: ['batch', D] });
  if (want.has('registers') && R > 0) out.push({ name: 'registers', dims: ['batch', R, D] });
  if (want.has('patches')) out.push({ name: 'patches', dims: ['batch', P, D] });
  if (want.has('prenorm')) out.push({ name: 'prenorm', dims: ['batch', N, D] });
  const projDim = family(c).projDim;
  if (want.has('pooled') && projDim !== null) out.push({ name: 'pooled', dims: ['batch', projDim] });
  if (want.has('embeddings')) out.push({ name: 'embeddings', dims: ['batch', P, D] });
  for (let i = 0; i < c.depth; i++) {
    if (want.has('attention:all') || (want.has('attention') && i === c.depth - 1))
      out.push({ name: `attention.${i}`, dims: ['batch', H, N, N] });
  }
  if (want.has('keys')) out.push({ name: 'keys', dims: ['batch', H, N, D / H] });
  if (want.has('values')) out.push({ name: 'values', dims: ['batch', H, N, D / H] });
  if (want.has('layers')) for (let i = 0; i < c.depth; i++) out.push({ name: `layers.${i}`, dims: ['batch', N, D] });
  return out;
}

/** [rows, cols] -> [cols, rows]. */
function transposed(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]!;
  return out;
}

/**
 * The positional embedding of the patches for a gh x gw grid, [gh * gw, D], resampled in float64 with
 * interpolate.ts's matrices (as model.ts's positionalEmbedding). `pos` is the whole pos_embed.
 */
export function resampledPatchPositions(c: ViTConfig, pos: Float32Array, gh: number, gw: number): Float32Array {
  const g = posGrid(c);
  const D = c.embed_dim;
  const patchPos = family(c).posCls ? pos.subarray(D) : pos; // without the class slot, if any
  if (gh === g && gw === g) return patchPos.slice();
  const { rows, cols } = posEmbedMatrices(g, gh, gw, { antialias: c.interpolate_antialias, offset: c.interpolate_offset });
  const byRows = new Float64Array(gh * g * D); // [gh, g(cols), D]
  for (let i = 0; i < gh; i++)
    for (let a = 0; a < g; a++) {
      const w = rows[i * g + a]!;
      if (w === 0) continue;
      for (let b = 0; b < g; b++) {
        const src = (a * g + b) * D;
        const dst = (i * g + b) * D;
        for (let d = 0; d < D; d++) byRows[dst + d] += w * patchPos[src + d]!;
      }
    }
  const out = new Float64Array(gh * gw * D);
  for (let i = 0; i < gh; i++)
    for (let j = 0; j < gw; j++)
      for (let b = 0; b < g; b++) {
        const w = cols[j * g + b]!;
        if (w === 0) continue;
        const src = (i * g + b) * D;
        const dst = (i * gw + j) * D;
        for (let d = 0; d < D; d++) out[dst + d] += w * byRows[src + d]!;
      }
  return Float32Array.from(out);
}

/** Checks the options against the config; returns the normalised output list. */
function checkOptions(c: ViTConfig, opts: OnnxExportOptions): OnnxOutput[] {
  checkExportable(c);
  const p = c.patch_size;
  const { height, width } = opts;
  if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0 && height % p === 0 && width % p === 0)) {
    throw new Error(`ONNX export: size ${height}x${width} must be positive multiples of the patch size ${p}`);
  }
  const outputs = [...(opts.outputs ?? DEFAULT_ONNX_OUTPUTS)];
  for (const o of outputs) {
    if (!(ONNX_OUTPUTS as readonly string[]).includes(o))
      throw new Error(`ONNX export: unknown output "${o}"; expected some of ${ONNX_OUTPUTS.join(', ')}`);
  }
  if (outputs.length === 0) throw new Error('ONNX export: no outputs requested');
  if (outputs.includes('pooled') && family(c).projDim === null)
    throw new Error('ONNX export: output "pooled" needs a config with proj_dim (a CLIP image tower)');
  return outputs;
}

/**
 * Builds the graph of a config and state dict (DINOv2 names, PyTorch layouts) for one input size.
 * Returns the builder (nodes and initializers) and the graph's inputs, outputs and metadata.
 */
export function buildOnnxGraph(
  c: ViTConfig,
  sd: StateDict,
  opts: OnnxExportOptions,
): { graph: GraphBuilder; inputs: GraphValue[]; outputs: GraphValue[]; metadata: Record<string, string> } {
  const outputs = checkOptions(c, opts);
  checkStateDict(sd, c, 'ONNX export');
  const weightType = opts.weightType ?? 'float32';
  const g = new GraphBuilder(weightType);
  const t = (name: string) => sd[name]!.data;
  const D = c.embed_dim;
  const H = c.num_heads;
  const hd = D / H;
  const R = c.num_register_tokens;
  const p = c.patch_size;
  const gh = opts.height / p;
  const gw = opts.width / p;
  const P = gh * gw;
  const hidden = ffnHiddenDim(c);
  const fold = weightType === 'float32' && c.layerscale_init !== null;
  const fam = family(c);
  const dyn = opts.dynamicSize ?? false;
  const ttr = opts.testTimeRegisters ? ttrNeuronsByLayer(c, opts.testTimeRegisters.neurons) : undefined;
  const T = ttr ? 1 : 0;
  const wantValues = onnxOutputValues(c, opts.height, opts.width, outputs, dyn, !!ttr);
  const wanted = new Set(wantValues.map((v) => v.name));
  /** A graph output keeps its public name; anything else gets a fresh internal one. */
  const out = (name: string, internal: string) => (wanted.has(name) ? `=${name}` : internal);

  const linear = (x: string, prefix: string, inDim: number, outDim: number, scale?: Float32Array, output = 'lin'): string => {
    let w = transposed(t(`${prefix}.weight`), outDim, inDim); // [in, out]
    let b = sd[`${prefix}.bias`]?.data;
    if (scale) {
      w = w.map((v, i) => v * scale[i % outDim]!);
      b = b?.map((v, i) => v * scale[i]!);
    }
    const y = g.op('MatMul', [x, g.weight(`${prefix}.weight`, w, [inDim, outDim])], `${prefix}.mm`);
    return b ? g.op('Add', [y, g.weight(`${prefix}.bias`, b, [outDim])], output) : y;
  };
  const layerNorm = (x: string, prefix: string, output = 'ln') =>
    g.node(
      'LayerNormalization',
      [x, g.weight(`${prefix}.weight`, t(`${prefix}.weight`), [D]), g.weight(`${prefix}.bias`, t(`${prefix}.bias`), [D])],
      output,
      {
        axis: -1,
        epsilon: { float: c.norm_eps },
      },
    )[0]!;

  // Patch embedding: NHWC -> NCHW, Conv p x p stride p, [B, D, gh, gw] -> [B, P, D].
  const nchw = g.op('Transpose', ['images'], 'images_nchw', { perm: [0, 3, 1, 2] });
  const convInputs = [nchw, g.weight('patch_embed.proj.weight', t('patch_embed.proj.weight'), [D, 3, p, p])];
  if (fam.patchBias) convInputs.push(g.weight('patch_embed.proj.bias', t('patch_embed.proj.bias'), [D]));
  const conv = g.op('Conv', convInputs, 'patch_conv', {
    kernel_shape: [p, p],
    strides: [p, p],
  });
  const flat = g.op('Reshape', [conv, g.int64([0, D, -1])], 'patch_flat');
  const embeddings = g.op('Transpose', [flat], out('embeddings', 'embeddings_'), { perm: [0, 2, 1] });

  // Tokens [CLS + pos[0], registers, (test-time register: zeros), patches + pos[1:]] (CLS without
  // position when pos_embed has no class slot): the prefix is one constant expanded over the batch.
  const pos = t('pos_embed');
  const prefix = new Float32Array((1 + R + T) * D);
  for (let d = 0; d < D; d++) prefix[d] = fam.posCls ? Math.fround(t('cls_token')[d]! + pos[d]!) : t('cls_token')[d]!;
  if (R > 0) prefix.set(t('register_tokens'), D);
  const batch = g.op('Slice', [g.op('Shape', ['images'], 'in_shape'), g.int64([0]), g.int64([1])], 'batch');
  const prefixShape = g.op('Concat', [batch, g.int64([1 + R + T, D])], 'prefix_shape', { axis: 0 });
  const prefixTokens = g.op('Expand', [g.floats('cls_registers', prefix, [1, 1 + R + T, D]), prefixShape], 'prefix');
  const patchPos = dyn ? 'patch_pos' : g.floats('patch_pos', resampledPatchPositions(c, pos, gh, gw), [1, P, D]);
  const patches0 = g.op('Add', [embeddings, patchPos], 'patch_tokens');
  let x = g.op('Concat', [prefixTokens, patches0], 'tokens', { axis: 1 });
  if (fam.preNorm) x = layerNorm(x, 'norm_pre', 'tokens_pre_normed');

  const scale = new Float32Array([1 / Math.sqrt(hd)]);
  /** Attention as MatMul / Softmax / MatMul: [B, N, 3D] -> [B, N, 3, H, hd] -> [3, B, H, N, hd] -> q, k, v. */
  const attention = (h1: string, b: string, i: number, last: boolean): string => {
    const qkv = linear(h1, `${b}.attn.qkv`, D, 3 * D);
    const heads = g.op('Transpose', [g.op('Reshape', [qkv, g.int64([0, -1, 3, H, hd])], `${b}.qkv5`)], `${b}.qkv_heads`, {
      perm: [2, 0, 3, 1, 4],
    });
    const part = (k: number, name: string) =>
      g.op('Gather', [heads, g.int64([k], [])], last ? out(name, `${b}.${name}`) : `${b}.${name}`, { axis: 0 });
    const q = part(0, 'queries');
    const k = part(1, 'keys');
    const v = part(2, 'values');
    const scores = g.op(
      'MatMul',
      [g.op('Mul', [q, g.floats(`${b}.scale`, scale, [])], `${b}.q_scaled`), g.op('Transpose', [k], `${b}.keys_t`, { perm: [0, 1, 3, 2] })],
      `${b}.scores`,
    );
    const attn = g.op('Softmax', [scores], out(`attention.${i}`, `${b}.attn`), { axis: -1 });
    const perToken = g.op('Transpose', [g.op('MatMul', [attn, v], `${b}.attn_v`)], `${b}.attn_t`, { perm: [0, 2, 1, 3] });
    return g.op('Reshape', [perToken, g.int64([0, -1, D])], `${b}.attn_merged`);
  };
  /** ONNX Runtime's com.microsoft.Attention (qkv projection, softmax(q k^T / sqrt(hd)) v in one kernel). */
  const contribAttention = (h1: string, b: string): string => {
    const w = transposed(t(`${b}.attn.qkv.weight`), 3 * D, D);
    const bias = sd[`${b}.attn.qkv.bias`]?.data ?? new Float32Array(3 * D);
    return g.node(
      'Attention',
      [h1, g.weight(`${b}.attn.qkv.weight`, w, [D, 3 * D]), g.weight(`${b}.attn.qkv.bias`, bias, [3 * D])],
      `${b}.attn_merged`,
      { num_heads: H },
      'com.microsoft',
    )[0]!;
  };
  /**
   * The test-time register edit of one layer's MLP activation [B, N, hidden] (model.ts moveToRegister):
   * v = ReduceMax or ReduceMin of the listed neurons over all tokens, per image; tokens [CLS, registers]
   * keep theirs, the test-time register gets v at the neurons, the patches 0 there.
   */
  const moveToRegister = (act: string, b: string, neurons: number[]): string => {
    const sel = g.op('Gather', [act, g.int64(neurons)], `${b}.ttr_sel`, { axis: 2 });
    const hi = g.op('ReduceMax', [sel], `${b}.ttr_max`, { axes: [1, 2], keepdims: 1 });
    const lo = g.op('ReduceMin', [sel], `${b}.ttr_min`, { axes: [1, 2], keepdims: 1 });
    const bigger = g.op('Greater', [g.op('Abs', [hi], `${b}.ttr_abs_max`), g.op('Abs', [lo], `${b}.ttr_abs_min`)], `${b}.ttr_cmp`);
    const v = g.op('Where', [bigger, hi, lo], `${b}.ttr_value`); // [B, 1, 1]
    const cols = new Float32Array(hidden);
    for (const n of neurons) cols[n] = 1;
    const col = g.floats(`${b}.ttr_cols`, cols, [1, 1, hidden]);
    const keep = g.floats(
      `${b}.ttr_keep`,
      cols.map((x) => 1 - x),
      [1, 1, hidden],
    );
    const prefixAct = g.op('Slice', [act, g.int64([0]), g.int64([1 + R]), g.int64([1])], `${b}.ttr_prefix`);
    const regAct = g.op('Slice', [act, g.int64([1 + R]), g.int64([2 + R]), g.int64([1])], `${b}.ttr_reg`);
    const patchAct = g.op('Slice', [act, g.int64([2 + R]), g.int64([2 ** 53 - 1]), g.int64([1])], `${b}.ttr_patches`);
    const reg = g.op(
      'Add',
      [g.op('Mul', [regAct, keep], `${b}.ttr_reg_kept`), g.op('Mul', [col, v], `${b}.ttr_reg_value`)],
      `${b}.ttr_reg_new`,
    );
    const patches = g.op('Mul', [patchAct, keep], `${b}.ttr_patches_new`);
    return g.op('Concat', [prefixAct, reg, patches], `${b}.ttr_act`, { axis: 1 });
  };
  const edit = (act: string, b: string, i: number): string => (ttr?.get(i) ? moveToRegister(act, b, ttr.get(i)!) : act);

  for (let i = 0; i < c.depth; i++) {
    const b = `blocks.${i}`;
    const last = i === c.depth - 1;
    const ls1 = c.layerscale_init !== null ? t(`${b}.ls1.gamma`) : undefined;
    const ls2 = c.layerscale_init !== null ? t(`${b}.ls2.gamma`) : undefined;
    const h1 = layerNorm(x, `${b}.norm1`);
    const needs = wanted.has(`attention.${i}`) || (last && (wanted.has('keys') || wanted.has('values')));
    const merged = opts.contribAttention && !needs ? contribAttention(h1, b) : attention(h1, b, i, last);
    let a = linear(merged, `${b}.attn.proj`, D, D, fold ? ls1 : undefined);
    if (ls1 && !fold) a = g.op('Mul', [a, g.weight(`${b}.ls1.gamma`, ls1, [D])], `${b}.ls1`);
    x = g.op('Add', [x, a], `${b}.res1`);

    // FFN: MLP with exact GELU, or SwiGLU (x1 * sigmoid(x1) * x2).
    const h2 = layerNorm(x, `${b}.norm2`);
    let f: string;
    if (c.ffn_layer === 'swiglu') {
      const x12 = linear(h2, `${b}.mlp.w12`, D, 2 * hidden);
      const [x1, x2] = g.node('Split', [x12, g.int64([hidden, hidden])], [`${b}.x1`, `${b}.x2`], { axis: -1 });
      const gated = g.op('Mul', [g.op('Mul', [x1!, g.op('Sigmoid', [x1!], `${b}.sig`)], `${b}.silu`), x2!], `${b}.gated`);
      f = linear(edit(gated, b, i), `${b}.mlp.w3`, hidden, D, fold ? ls2 : undefined);
    } else if (fam.act === 'quick_gelu') {
      const h = linear(h2, `${b}.mlp.fc1`, D, hidden);
      const sig = g.op('Sigmoid', [g.op('Mul', [h, g.floats(`${b}.qg`, new Float32Array([1.702]), [])], `${b}.qg_mul`)], `${b}.qg_sig`);
      f = linear(edit(g.op('Mul', [h, sig], `${b}.quick_gelu`), b, i), `${b}.mlp.fc2`, hidden, D, fold ? ls2 : undefined);
    } else {
      const h = linear(h2, `${b}.mlp.fc1`, D, hidden);
      const erf = g.op(
        'Erf',
        [g.op('Div', [h, g.floats(`${b}.sqrt2`, new Float32Array([Math.SQRT2]), [])], `${b}.gelu_div`)],
        `${b}.gelu_erf`,
      );
      const one = g.op('Add', [erf, g.floats(`${b}.one`, new Float32Array([1]), [])], `${b}.gelu_add`);
      const gelu = g.op('Mul', [g.op('Mul', [h, one], `${b}.gelu_mul`), g.floats(`${b}.half`, new Float32Array([0.5]), [])], `${b}.gelu`);
      f = linear(edit(gelu, b, i), `${b}.mlp.fc2`, hidden, D, fold ? ls2 : undefined);
    }
    if (ls2 && !fold) f = g.op('Mul', [f, g.weight(`${b}.ls2.gamma`, ls2, [D])], `${b}.ls2`);
    const layerOut = last ? out('prenorm', out(`layers.${i}`, `${b}.out`)) : out(`layers.${i}`, `${b}.out`);
    x = g.op('Add', [x, f], layerOut);
    if (last && wanted.has('prenorm') && wanted.has(`layers.${i}`)) g.op('Identity', [x], `=layers.${i}`);
  }

  const normed = layerNorm(x, 'norm', 'normed');
  const cls = g.op('Gather', [normed, g.int64([0], [])], out('cls', 'cls_'), { axis: 1 });
  if (wanted.has('pooled')) g.op('MatMul', [cls, g.weight('proj', t('proj'), [D, fam.projDim!])], '=pooled');
  const tokens = fam.finalNormTokens ? normed : x;
  if (wanted.has('registers')) g.op('Slice', [tokens, g.int64([1]), g.int64([1 + R + T]), g.int64([1])], '=registers');
  if (wanted.has('patches')) g.op('Slice', [tokens, g.int64([1 + R + T]), g.int64([2 ** 53 - 1]), g.int64([1])], '=patches');

  const metadata: Record<string, string> = {
    [ONNX_METADATA.config]: JSON.stringify(c),
    [ONNX_METADATA.outputs]: JSON.stringify(outputs),
    [ONNX_METADATA.input]: JSON.stringify([opts.height, opts.width]),
    [ONNX_METADATA.weightType]: weightType,
  };
  if (opts.testTimeRegisters)
    metadata[ONNX_METADATA.testTimeRegisters] = JSON.stringify(
      opts.testTimeRegisters.neurons.map((n) => ({ layer: n.layer, neuron: n.neuron })),
    );
  const inputs: GraphValue[] = dyn
    ? [
        { name: 'images', dims: ['batch', 'height', 'width', 3] },
        { name: 'patch_pos', dims: [1, 'patches', D] },
      ]
    : [{ name: 'images', dims: ['batch', opts.height, opts.width, 3] }];
  if (dyn) metadata[ONNX_METADATA.input] = JSON.stringify('dynamic');
  return { graph: g, inputs, outputs: wantValues, metadata };
}

/** The serialised model in memory (weights inside; protobuf limits it to 2 GiB). */
export function onnxModelBytes(c: ViTConfig, sd: StateDict, opts: OnnxExportOptions): Uint8Array {
  const { graph, inputs, outputs, metadata } = buildOnnxGraph(c, sd, opts);
  if (graph.weightBytes() > 2 ** 31 - 2 ** 24) {
    throw new Error(
      `ONNX export: ${(graph.weightBytes() / 2 ** 30).toFixed(2)} GiB of weights do not fit in one protobuf (2 GiB): export to a file with external data`,
    );
  }
  return encodeModel(graph.model(inputs, outputs, metadata));
}

export interface OnnxFileOptions extends OnnxExportOptions {
  /** Weights in a separate `<file>.data` (ONNX external data): 'auto' (default) when they exceed 1.8 GiB. */
  externalData?: boolean | 'auto';
}

/**
 * Writes the model to `path` (atomically: a temporary file renamed into place), with its weights in
 * `path + '.data'` when external data is used. Returns the files written.
 */
export async function exportOnnx(path: string, c: ViTConfig, sd: StateDict, opts: OnnxFileOptions): Promise<string[]> {
  const { graph, inputs, outputs, metadata } = buildOnnxGraph(c, sd, opts);
  const external = opts.externalData === true || ((opts.externalData ?? 'auto') === 'auto' && graph.weightBytes() > 1.8 * 2 ** 30);
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  const files = [path];
  try {
    if (!external) {
      await writeFile(tmp, encodeModel(graph.model(inputs, outputs, metadata)));
    } else {
      const dataPath = `${path}.data`;
      const dataTmp = `${dataPath}.tmp-${process.pid}`;
      const fh = await open(dataTmp, 'w');
      let offset = 0;
      const placed: { t: Initializer; offset: number }[] = [];
      const model = graph.model(inputs, outputs, metadata, {
        location: basename(dataPath),
        place: (t) => {
          offset = Math.ceil(offset / 64) * 64; // aligned offsets for memory mapping
          placed.push({ t, offset });
          const at = offset;
          offset += t.bytes.length;
          return at;
        },
      });
      try {
        for (const { t, offset: at } of placed) await fh.write(t.bytes, 0, t.bytes.length, at);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await writeFile(tmp, encodeModel(model));
      await rename(dataTmp, dataPath);
      files.push(dataPath);
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return files;
}
