/**
 * The trainer's heads (heads.ts) as training-graph ops, with the same parameter names and layouts:
 * the linear classifier `head.weight` [D, C], `head.bias` [C]; DINOv2's DINOHead (`mlp.0`, `mlp.2`, ...
 * [in, out] linears with exact GELU between them, L2 normalisation with eps 1e-12, then the
 * weight-normalised last layer g v / ||v|| with `last_layer.weight_g` [1, K] trained and
 * `last_layer.weight_v` [bottleneck, K]).
 */
import type { DinoHeadConfig } from '../heads.js';
import type { TrainGraph, Value } from './autodiff.js';
import { activationLinear, l2Normalize, linear, matmul } from './nn-ops.js';
import type { ParamFn } from './vit-graph.js';

/** The names of a DinoHead's linear layers, as heads.ts names them (`mlp` for one layer, else `mlp.0`, `mlp.2`, ...). */
function mlpLayers(cfg: DinoHeadConfig): string[] {
  return cfg.nlayers === 1 ? ['mlp'] : Array.from({ length: cfg.nlayers }, (_, i) => `mlp.${2 * i}`);
}

/** Parameter names and shapes of a DinoHead (heads.ts's DinoHead.params), in its order. */
export function dinoHeadShapes(cfg: DinoHeadConfig): Record<string, number[]> {
  const { inDim, outDim, hiddenDim, bottleneckDim, nlayers } = cfg;
  if (!(Number.isInteger(nlayers) && nlayers >= 1)) throw new Error(`DinoHead: nlayers must be an integer >= 1, got ${nlayers}`);
  const dims = nlayers === 1 ? [inDim, bottleneckDim] : [inDim, ...Array<number>(nlayers - 1).fill(hiddenDim), bottleneckDim];
  const out: Record<string, number[]> = {};
  mlpLayers(cfg).forEach((name, i) => {
    out[`${name}.weight`] = [dims[i]!, dims[i + 1]!];
    out[`${name}.bias`] = [dims[i + 1]!];
  });
  out['last_layer.weight_g'] = [1, outDim];
  out['last_layer.weight_v'] = [bottleneckDim, outDim];
  return out;
}

/** Parameter names and shapes of the classifier (heads.ts's ClassifierHead). */
export function classifierShapes(inDim: number, numClasses: number): Record<string, number[]> {
  return { weight: [inDim, numClasses], bias: [numClasses] };
}

/** DINOHead on x [rows, inDim] -> logits [rows, K]; `p` gives the head's parameters by their names without prefix. */
export function dinoHead(t: TrainGraph, cfg: DinoHeadConfig, p: ParamFn, x: Value): Value {
  const layers = mlpLayers(cfg);
  let h = x;
  layers.forEach((name, i) => {
    // Layers after the first take GELU of the previous one's output, recomputed in the backward pass.
    const [w, b] = [p(`${name}.weight`), p(`${name}.bias`)];
    h = i === 0 ? linear(t, h, w, b) : activationLinear(t, h, 'gelu', w, b);
  });
  h = l2Normalize(t, h, 1e-12);
  const v = p('last_layer.weight_v');
  // weight_norm: each output unit's weight vector (a column here) is g v / ||v||.
  const w = t.mul(t.div(v, t.sqrt(t.reduceSum(t.mul(v, v), [0], true))), p('last_layer.weight_g'));
  return matmul(t, h, w);
}

/** The linear classifier on x [rows, D] -> logits [rows, C]. */
export function classifierHead(t: TrainGraph, p: ParamFn, x: Value): Value {
  return linear(t, x, p('weight'), p('bias'));
}
