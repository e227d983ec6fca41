/**
 * CLIP's text tower (@vitreg/registers' text-tower.ts, open_clip's `TextTransformer`) as a differentiable
 * training graph, op for op as the tfjs tower computes it:
 *
 *   ids [B, L] -> token_embedding rows (Gather; the backward a ScatterND add, so repeated ids accumulate)
 *   + positional_embedding[:L] -> layers x pre-norm blocks with a causal mask (position i attends to 0..i)
 *   -> ln_final -> the row of each text's end-of-text token (argmax of its ids, given by the host as
 *   `eot_index`: b L + position) -> @ text_projection.
 *
 * Parameters are graph inputs named by the caller's `ParamFn` with open_clip's names of the text tower
 * (`token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight,
 * attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`) in the
 * tfjs tower's layouts (Linear weights [in, out]), so checkpoints are the same files on both engines.
 *
 * LayerNorm, the products, softmax and the MLP (activation + second layer as one op that recomputes the
 * activation) are nn-ops.ts's, as the image tower's (vit-graph.ts). Attention stays in [B, H, L, hd]; the
 * mask is a constant [L, L] added to the scores (-1e9 above the diagonal, as the tfjs tower's). Only the
 * end-of-text rows reach the loss, so the last block computes its attention output, projection and MLP for
 * those B rows alone (their queries against every position's keys and values): the same values and gradients.
 */
import type { TextConfig } from '@vitreg/registers';
import type { TrainGraph, Value } from './autodiff.js';
import { activationLinear, gatherRows, layerNorm, linear, matmul, softmax } from './nn-ops.js';
import type { ParamFn } from './vit-graph.js';

/** The additive causal mask [L, L]: 0 on and below the diagonal, -1e9 above (text-tower.ts's). */
export function causalMaskValues(L: number): Float32Array {
  const m = new Float32Array(L * L);
  for (let i = 0; i < L; i++) for (let j = i + 1; j < L; j++) m[i * L + j] = -1e9;
  return m;
}

/** Host feeds of a text batch: the ids as int64 [B L] and the end-of-text rows b L + argmax(ids[b]) (the first on ties). */
export function textFeeds(ids: Int32Array, batch: number): { ids: BigInt64Array; eot: BigInt64Array } {
  const L = ids.length / batch;
  const eot = new BigInt64Array(batch);
  for (let b = 0; b < batch; b++) {
    let best = 0;
    for (let j = 1; j < L; j++) if (ids[b * L + j]! > ids[b * L + best]!) best = j;
    eot[b] = BigInt(b * L + best);
  }
  return { ids: BigInt64Array.from(ids, (v) => BigInt(v)), eot };
}

export interface TextForwardOptions {
  /** Compute the last block for the end-of-text rows only (default true: the loss reads nothing else). */
  eotOnly?: boolean;
}

/**
 * The text features [B, proj_dim] (the pooled token [B, width] without projection) of `ids` int64 [B, L]
 * with end-of-text rows `eot` int64 [B] (`textFeeds`), unnormalised as the tfjs tower's `encode`.
 */
export function textForward(t: TrainGraph, c: TextConfig, p: ParamFn, ids: Value, eot: Value, o: TextForwardOptions = {}): Value {
  const [B, L] = ids.shape as [number, number];
  if (ids.shape.length !== 2 || ids.dtype !== 'int64')
    throw new Error(`text graph: ids must be int64 [batch, length], got ${ids.dtype} [${ids.shape}]`);
  if (L > c.context_length) throw new Error(`text graph: rows of ${L} tokens exceed the context length ${c.context_length}`);
  if (eot.dtype !== 'int64' || eot.shape.length !== 1 || eot.shape[0] !== B)
    throw new Error(`text graph: eot must be int64 [${B}], got ${eot.dtype} [${eot.shape}]`);
  const W = c.width;
  const flatIds = t.emit('Reshape', [ids, t.int64([B * L])], [B * L], {}, { dtype: 'int64' });
  const tok = t.reshape(gatherRows(t, p('token_embedding.weight'), flatIds), [B, L, W]);
  let x = t.add(tok, t.slice(p('positional_embedding'), 0, 0, L));
  const mask = t.constant('causal_mask', causalMaskValues(L), [L, L]);
  const eotOnly = o.eotOnly ?? true;
  for (let i = 0; i < c.layers; i++) {
    const last = eotOnly && i === c.layers - 1;
    x = t.scope(`text.resblocks.${i}`, () => textBlock(t, c, p, i, x, mask, last ? eot : null));
  }
  // After an eotOnly last block x is already the B pooled rows.
  const rows = eotOnly ? t.reshape(x, [B, W]) : gatherRows(t, t.reshape(x, [B * L, W]), eot);
  const pooled = layerNorm(t, rows, p('ln_final.weight'), p('ln_final.bias'), c.norm_eps);
  return c.proj_dim !== null ? matmul(t, pooled, p('text_projection')) : pooled;
}

/**
 * One pre-norm block with causal attention: x + out_proj(attn(ln_1(x))), then + c_proj(act(c_fc(ln_2(x)))).
 * With `rows` (int64 [B], rows of the flattened [B L]) only those rows' outputs are computed: [B, 1, W].
 */
function textBlock(t: TrainGraph, c: TextConfig, p: ParamFn, i: number, x: Value, mask: Value, rows: Value | null): Value {
  const [B, L, W] = x.shape as [number, number, number];
  const H = c.heads;
  const hd = W / H;
  const P = (n: string) => p(`transformer.resblocks.${i}.${n}`);
  const h1 = layerNorm(t, x, P('ln_1.weight'), P('ln_1.bias'), c.norm_eps);
  // [B, L, 3W] -> [3, B, H, L, hd] (q heads, k heads, v heads: in_proj's row order) -> q, k, v [B, H, L, hd].
  const heads = t.transpose(t.reshape(linear(t, h1, P('attn.in_proj_weight'), P('attn.in_proj_bias')), [B, L, 3, H, hd]), [2, 0, 3, 1, 4]);
  const [q, k, v] = t.split(heads, 0, [1, 1, 1]).map((s) => t.reshape(s, [B, H, L, hd])) as [Value, Value, Value];
  const scores = t.add(matmul(t, q, k, { transB: true, alpha: 1 / Math.sqrt(hd) }), mask);
  let merged = t.reshape(t.transpose(matmul(t, softmax(t, scores), v), [0, 2, 1, 3]), [B, L, W]);
  if (rows) {
    // The end-of-text rows only: their attention outputs (full attention computed above: it is small at
    // these lengths), the residual input at those rows, then projection and MLP of B tokens.
    merged = t.reshape(gatherRows(t, t.reshape(merged, [B * L, W]), rows), [B, 1, W]);
    x = t.reshape(gatherRows(t, t.reshape(x, [B * L, W]), rows), [B, 1, W]);
  }
  x = t.add(x, linear(t, merged, P('attn.out_proj.weight'), P('attn.out_proj.bias')));
  const h2 = linear(t, layerNorm(t, x, P('ln_2.weight'), P('ln_2.bias'), c.norm_eps), P('mlp.c_fc.weight'), P('mlp.c_fc.bias'));
  return t.add(x, activationLinear(t, h2, c.act_layer, P('mlp.c_proj.weight'), P('mlp.c_proj.bias')));
}
