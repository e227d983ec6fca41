/**
 * The ONNX Runtime graphs of the `clip` objective (a @vitreg/registers ClipModel: image tower + text tower,
 * logit_scale, logit_bias), built as graphs.ts builds the other objectives' (autodiff.ts, forward as the tfjs
 * step computes it, backward appended op by op):
 *
 * - `clipFeaturesGraph`: both towers' normalised features (forward only), for the step across ranks.
 * - `clipTowersGraph`: both towers' forward + backward given the gradients of the loss with respect to
 *   this rank's normalised features (GradCache's second pass, steps/clip.ts: the features of every rank
 *   are gathered on the host between the two graphs, and clip-loss.ts's `contrastiveStep` computes the
 *   loss and the feature gradients there); outputs the towers' parameter gradients.
 * - `clipLossStepGraph`: one rank alone: both towers, the loss (open_clip's ClipLoss or SigLipLoss with
 *   exp(logit_scale) and logit_bias) and every gradient, logit_scale's and logit_bias's included, in one
 *   forward and one backward pass (no host loss, no second forward).
 *
 * Parameters are graph inputs named `visual.<model name>` (parameterShapes: the image tower with `proj`),
 * `text.<open_clip name>` (textParameterShapes), `logit_scale`, `logit_bias` ([] each), the names of
 * clip-train.ts's `clipParamSpecs`, in the tfjs layouts (Linear weights [in, out]); gradients are outputs
 * `grad.<name>`. Other inputs: `images` [B, S, S, 3] (CLIP-normalised NHWC), `ids` int64 [B, L], `eot`
 * int64 [B] (text-graph.ts's `textFeeds`), `drop_path` [depth, 2, B] when the image tower has drop path,
 * and `grad_image_features` / `grad_text_features` [B, E] (towers graph). Outputs: `image_features`,
 * `text_features` [B, E] (features graph), `loss` (loss step graph).
 */
import { parameterShapes, textParameterShapes, type ClipConfig } from '@vitreg/registers';
import { TrainGraph, type GraphBuildOptions, type Value } from './autodiff.js';
import { finishGraph, type BuiltGraph } from './graphs.js';
import { l2Normalize, logSoftmax, matmul } from './nn-ops.js';
import { textForward, type TextForwardOptions } from './text-graph.js';
import { vitForward } from './vit-graph.js';

export type ClipLossKind = 'clip' | 'siglip';

export interface ClipGraphOptions extends GraphBuildOptions {
  /** Pairs per run. */
  batch: number;
  /** Side of the square images (the image tower's img_size). */
  imageSize: number;
  /** Tokens per text row (<= context_length; the rows cut after the batch's last end-of-text token). */
  textLength: number;
  /** Text-graph options (`eotOnly`). */
  text?: TextForwardOptions;
}

/** Every parameter of a ClipConfig by its flat name (clipParamSpecs' names), with its shape. */
export function clipParameterShapes(cfg: ClipConfig): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const [k, s] of Object.entries(parameterShapes(cfg.vision))) out.set(`visual.${k}`, s);
  for (const [k, s] of Object.entries(textParameterShapes(cfg.text))) out.set(`text.${k}`, s);
  out.set('logit_scale', []);
  if (cfg.init_logit_bias !== null) out.set('logit_bias', []);
  return out;
}

/** Parameters declared as graph inputs on first use (all trained when `trained`). */
class Params {
  readonly declared = new Map<string, Value>();
  constructor(
    private readonly t: TrainGraph,
    private readonly shapes: Map<string, number[]>,
    private readonly trained: boolean,
  ) {}

  get = (name: string): Value => {
    const known = this.declared.get(name);
    if (known) return known;
    const shape = this.shapes.get(name);
    if (!shape) throw new Error(`clip graph: no parameter "${name}"`);
    const v = this.t.input(name, shape, { grad: this.trained });
    this.declared.set(name, v);
    return v;
  };

  opt = (name: string): Value | undefined => (this.shapes.has(name) ? this.get(name) : undefined);
}

/** Both towers' normalised features [B, E] (F.normalize, eps 1e-12). */
function towers(t: TrainGraph, cfg: ClipConfig, params: Params, o: ClipGraphOptions): { img: Value; txt: Value } {
  const vit = cfg.vision;
  if (vit.proj_dim === null) throw new Error('clip graph: the image tower needs proj_dim');
  if (o.imageSize % vit.patch_size !== 0)
    throw new Error(`clip graph: image size ${o.imageSize} is not a multiple of the patch size ${vit.patch_size}`);
  const B = o.batch;
  const images = t.input('images', [B, o.imageSize, o.imageSize, 3]);
  const ids = t.input('ids', [B, o.textLength], { dtype: 'int64' });
  const eot = t.input('eot', [B], { dtype: 'int64' });
  const dropPath = vit.drop_path_rate > 0 ? t.input('drop_path', [vit.depth, 2, B]) : undefined;
  const vp = (n: string) => params.get(`visual.${n}`);
  const vo = (n: string) => params.opt(`visual.${n}`);
  const { cls } = t.scope('visual', () => vitForward(t, vit, vp, vo, images, { dropPath }));
  const img = l2Normalize(t, matmul(t, cls, vp('proj')), 1e-12);
  const txt = l2Normalize(
    t,
    textForward(t, cfg.text, (n) => params.get(`text.${n}`), ids, eot, o.text),
    1e-12,
  );
  return { img, txt };
}

function finish(t: TrainGraph, params: Params, loss: Value | null, kind: string): BuiltGraph {
  return finishGraph(t, [...params.declared.values()], loss, kind);
}

/** Forward only: `image_features`, `text_features` [B, E], normalised (training mode: drop path when the tower has it). */
export function clipFeaturesGraph(cfg: ClipConfig, o: ClipGraphOptions): BuiltGraph {
  const t = new TrainGraph(o);
  const params = new Params(t, clipParameterShapes(cfg), false);
  const { img, txt } = towers(t, cfg, params, o);
  t.output(img, 'image_features');
  t.output(txt, 'text_features');
  return finish(t, params, null, 'clip_features');
}

/** Both towers' gradients given `grad_image_features` / `grad_text_features` (the loss's, from the host): sum(f g) back-propagated. */
export function clipTowersGraph(cfg: ClipConfig, o: ClipGraphOptions): BuiltGraph {
  const t = new TrainGraph(o);
  const params = new Params(t, clipParameterShapes(cfg), true);
  const { img, txt } = towers(t, cfg, params, o);
  const E = img.shape[1]!;
  const gi = t.input('grad_image_features', [o.batch, E]);
  const gt = t.input('grad_text_features', [o.batch, E]);
  const surrogate = t.add(t.reduceSum(t.mul(img, gi), [0, 1]), t.reduceSum(t.mul(txt, gt), [0, 1]));
  return finish(t, params, surrogate, 'clip_towers');
}

/** log sigmoid(z) = z - log(1 + e^z) = the first column of LogSoftmax over [z, 0] (stable at both ends). */
function logSigmoid(t: TrainGraph, z: Value): Value {
  const s = [...z.shape, 1];
  const pair = t.concat([t.reshape(z, s), t.zeros(s)], z.shape.length);
  return t.reshape(t.slice(logSoftmax(t, pair, -1), -1, 0, 1), z.shape);
}

/** One rank alone: the towers, the loss and every gradient (see the module comment); output `loss`. */
export function clipLossStepGraph(cfg: ClipConfig, o: ClipGraphOptions & { loss: ClipLossKind }): BuiltGraph {
  if (o.loss === 'siglip' && cfg.init_logit_bias === null)
    throw new Error('clip graph: the SigLIP loss needs a model with logit_bias (init_logit_bias)');
  const t = new TrainGraph(o);
  const params = new Params(t, clipParameterShapes(cfg), true);
  const { img, txt } = towers(t, cfg, params, o);
  const B = o.batch;
  const eye = new Float32Array(B * B);
  for (let i = 0; i < B; i++) eye[i * B + i] = 1;
  const labels = t.constant('labels', eye, [B, B]);
  const scale = t.exp(params.get('logit_scale'));
  const sims = matmul(t, img, txt, { transB: true });
  let loss: Value;
  if (o.loss === 'clip') {
    // (CE(logits_per_image) + CE(logits_per_text)) / 2, labels on the diagonal.
    const perImage = t.mul(sims, scale);
    const perText = t.transpose(perImage, [1, 0]);
    const ce = (logits: Value) => t.reduceSum(t.mul(logSoftmax(t, logits, -1), labels), [0, 1]);
    loss = t.scale(t.add(ce(perImage), ce(perText)), -0.5 / B);
  } else {
    // -sum(log sigmoid(sign (scale sims + bias))) / B, sign +1 on the diagonal, -1 elsewhere.
    const signs = t.constant(
      'signs',
      eye.map((v) => 2 * v - 1),
      [B, B],
    );
    const logits = t.add(t.mul(sims, scale), params.get('logit_bias'));
    loss = t.scale(t.reduceSum(logSigmoid(t, t.mul(logits, signs)), [0, 1]), -1 / B);
  }
  t.output(loss, 'loss');
  return finish(t, params, loss, `clip_${o.loss}_step`);
}
