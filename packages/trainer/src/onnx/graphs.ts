/**
 * The ONNX Runtime training graphs of the trainer: each builder returns a serialised ModelProto (opset 17
 * plus com.microsoft FusedMatMul, which every ONNX Runtime build has) with its inputs and outputs, built
 * in TypeScript by autodiff.ts (forward as the tfjs steps compute it, backward appended op by op).
 *
 * Contract with an engine (names are the StepEngine's ParameterInfo names):
 * - Parameters are graph INPUTS named `backbone.<model name>` (@vitreg/registers' `parameterShapes`, model
 *   layout: linear weights [in, out], patch_embed.proj.weight [p*p*3, D] in (kh, kw, c) order),
 *   `head.weight` / `head.bias`, `dino_head.<name>` / `ibot_head.<name>` (heads.ts's names and layouts),
 *   so an engine binds views of its flat buffers with no copy or transpose. Only the parameters a graph
 *   uses are inputs (`BuiltGraph.parameters`).
 * - Gradients are outputs `grad.<parameter name>` with the parameter's shape, for each parameter of
 *   `trained` that the loss reaches (`BuiltGraph.gradients`); an unreached one has gradient 0.
 *   ONNX Runtime writes outputs into preallocated tensors, so they can land in the flat gradient buffer.
 * - supervisedStepGraph: inputs params, `images` [B, S, S, 3], `targets` [B, C], `loss_scale` [] (the
 *   micro-batch's share n / B of the step, 1 without micro-batches), and `drop_path` [depth, 2, B]
 *   when the model has drop path; outputs `loss` and `loss_ce` | `loss_bce` (both the scaled loss, as
 *   the tfjs step's parts), grads.
 * - dinoStudentStepGraph: inputs params, `globals` [2B, S, S, 3], `locals` [nLocal B, s, s, 3],
 *   `drop_path_global` [depth, 2, 2B], `drop_path_local` [depth, 2, nLocal B] (with drop path),
 *   `dino_targets` [2B, K] (the teacher's targets, crops swapped; locals and targets only with a DINO
 *   term, dinoWeight > 0), and with iBOT rows (maskRows > 0)
 *   `masks` [2B, P], `mask_index` [maskRows] int64 (rows of the flattened [2B P] patch tokens),
 *   `mask_weight` [maskRows] (1 / masked patches of the crop, 0 on padding rows), `ibot_targets`
 *   [maskRows, K']; outputs `loss`, `loss_dino_global`, `loss_dino_local`, `loss_koleo`, `loss_ibot`
 *   (each before its weight, as the tfjs step names them; absent when off), grads. Padding rows
 *   (index 0, weight 0, target 0) change nothing: maskRowBucket sizes the buckets.
 * - teacherGraph (forward only, eval mode, unmasked globals): `dino_logits` [2B, K] of the CLS tokens in
 *   swapped order (crop 2 then crop 1) and `ibot_logits` [maskRows, K'] of the gathered patches (through
 *   the DINO head when the iBOT head is shared). Centring / Sinkhorn-Knopp stay on the host.
 * - encodeGraph: `images` -> `cls` [B, D] (eval mode); classifierGraph / dinoHeadGraph: `features`
 *   [rows, D] -> `logits`.
 * Every builder takes GraphBuildOptions (`plainMatMul`: no FusedMatMul, for the WebGPU provider).
 */
import { parameterShapes, type ViTConfig } from '@vitreg/registers';
import type { DinoHeadConfig } from '../heads.js';
import { TrainGraph, type GraphBuildOptions, type GraphIO, type Value } from './autodiff.js';
import { classifierHead, classifierShapes, dinoHead, dinoHeadShapes } from './heads-graph.js';
import { binaryCrossEntropy, dinoGlobalLocal, ibotMasked, koleo, softTargetCrossEntropy } from './losses-graph.js';
import { gatherRows } from './nn-ops.js';
import { vitForward, type ParamFn } from './vit-graph.js';

export type { GraphBuildOptions, GraphIO } from './autodiff.js';

/**
 * ONNX Runtime session options for these graphs (spread into InferenceSession.create's options). Without
 * the CPU arena and the memory pattern, ViT-S/16 batch 32 at 224 peaks at about 2.6 GB RSS; with
 * ONNX Runtime's defaults the arena keeps its high-water chunks and the pattern plans a second copy of the
 * whole peak (about 5 GB measured), with no measurable change in speed.
 */
export const TRAINING_SESSION_OPTIONS = {
  graphOptimizationLevel: 'all',
  executionMode: 'sequential',
  enableCpuMemArena: false,
  enableMemPattern: false,
} as const;

/** A built graph: the ModelProto's bytes and what an engine binds. */
export interface BuiltGraph {
  bytes: Uint8Array;
  inputs: GraphIO[];
  outputs: GraphIO[];
  /** The parameter inputs (ParameterInfo names), in the graph's order. */
  parameters: string[];
  /** The parameters with a gradient output `grad.<name>`. */
  gradients: string[];
  /** Nodes in the graph (before ONNX Runtime's fusions). */
  nodes: number;
}

/** Declares parameters as graph inputs on first use, with a gradient when trained. */
class ParamTable {
  private readonly values = new Map<string, Value>();

  constructor(
    private readonly t: TrainGraph,
    private readonly shapes: Map<string, number[]>,
    private readonly trained: Set<string>,
  ) {
    for (const name of trained)
      if (!shapes.has(name))
        throw new Error(`training graph: trained parameter "${name}" is not a parameter of this graph's model or heads`);
  }

  get(name: string): Value {
    const known = this.values.get(name);
    if (known) return known;
    const shape = this.shapes.get(name);
    if (!shape) throw new Error(`training graph: no parameter "${name}"`);
    const v = this.t.input(name, shape, { grad: this.trained.has(name) });
    this.values.set(name, v);
    return v;
  }

  has(name: string): boolean {
    return this.shapes.has(name);
  }

  /** Parameters under `prefix` by their names without it; optional ones give undefined when the config has none. */
  scope(prefix: string): { p: ParamFn; opt: (name: string) => Value | undefined } {
    return { p: (n) => this.get(prefix + n), opt: (n) => (this.has(prefix + n) ? this.get(prefix + n) : undefined) };
  }

  declared(): Value[] {
    return [...this.values.values()];
  }
}

function paramTable(
  t: TrainGraph,
  vit: ViTConfig,
  trained: readonly string[],
  heads: Record<string, Record<string, number[]>>,
): ParamTable {
  const shapes = new Map<string, number[]>();
  for (const [k, s] of Object.entries(parameterShapes(vit))) shapes.set(`backbone.${k}`, s);
  for (const [prefix, hs] of Object.entries(heads)) for (const [k, s] of Object.entries(hs)) shapes.set(`${prefix}.${k}`, s);
  return new ParamTable(t, shapes, new Set(trained));
}

function finish(t: TrainGraph, params: ParamTable, loss: Value | null, kind: string): BuiltGraph {
  return finishGraph(t, params.declared(), loss, kind);
}

/**
 * Appends the backward pass of `loss` with respect to the `declared` parameters that take a gradient, their
 * `grad.NAME` outputs, and encodes the graph (`kind` in its metadata). Also clip-graphs.ts's.
 */
export function finishGraph(t: TrainGraph, declared: Value[], loss: Value | null, kind: string): BuiltGraph {
  const gradients: string[] = [];
  if (loss) {
    const wrt = declared.filter((v) => v.grad);
    t.gradients(loss, wrt).forEach((g, i) => {
      if (!g) return;
      t.sinkToEnd(g);
      t.output(g, `grad.${wrt[i]!.name}`);
      gradients.push(wrt[i]!.name);
    });
  }
  const bytes = t.encode({ vitreg_graph: kind });
  return { bytes, inputs: t.inputs, outputs: t.outputs, parameters: declared.map((v) => v.name), gradients, nodes: t.nodeCount };
}

function checkSize(vit: ViTConfig, size: number, what: string): void {
  if (!(Number.isInteger(size) && size > 0 && size % vit.patch_size === 0)) {
    throw new Error(`training graph: ${what} ${size} must be a positive multiple of the patch size ${vit.patch_size}`);
  }
}

export interface SupervisedGraphOptions extends GraphBuildOptions {
  /** Images per run of the graph (the batch, or a micro-batch). */
  batch: number;
  /** Side of the square images. */
  size: number;
  numClasses: number;
  /** DeiT-III's BCE on the binarised targets instead of soft-target cross-entropy. */
  bce?: boolean;
  /** Parameters that get gradients (ParameterInfo names). */
  trained: readonly string[];
}

/** One supervised step (steps/supervised.ts): the student in training mode, the classifier on CLS, CE or BCE. */
export function supervisedStepGraph(vit: ViTConfig, o: SupervisedGraphOptions): BuiltGraph {
  checkSize(vit, o.size, 'image size');
  const t = new TrainGraph(o);
  const params = paramTable(t, vit, o.trained, { head: classifierShapes(vit.embed_dim, o.numClasses) });
  const B = o.batch;
  const images = t.input('images', [B, o.size, o.size, 3]);
  const targets = t.input('targets', [B, o.numClasses]);
  const scale = t.input('loss_scale', []);
  const dropPath = vit.drop_path_rate > 0 ? t.input('drop_path', [vit.depth, 2, B]) : undefined;
  const bb = params.scope('backbone.');
  const { cls } = vitForward(t, vit, bb.p, bb.opt, images, { dropPath });
  const logits = t.scope('head', () => classifierHead(t, params.scope('head.').p, cls));
  const perBatch = o.bce ? binaryCrossEntropy(t, logits, targets) : softTargetCrossEntropy(t, logits, targets);
  const loss = t.mul(perBatch, scale);
  t.output(loss, 'loss');
  t.output(loss, o.bce ? 'loss_bce' : 'loss_ce');
  return finish(t, params, loss, 'supervised');
}

/** The DINO head and, with `ibot: 'separate'`, the iBOT head (heads.ts DinoHeadConfig). */
export interface DinoHeads {
  dino: DinoHeadConfig;
  ibot?: DinoHeadConfig;
}

export type IbotHeadMode = 'none' | 'shared' | 'separate';

export interface DinoStepGraphOptions extends GraphBuildOptions {
  /** Images B (2B global crops, nLocal B local crops). */
  batch: number;
  globalSize: number;
  localSize: number;
  nLocal: number;
  /** Rows of the iBOT inputs (a bucket of maskRowBucket; 0: no iBOT term this step). */
  maskRows: number;
  ibot: IbotHeadMode;
  /** dino.loss_weight (0: no DINO or KoLeo term), dino.koleo_loss_weight, ibot.loss_weight. */
  dinoWeight: number;
  koleoWeight: number;
  ibotWeight: number;
  studentTemp: number;
  trained: readonly string[];
}

function headShapes(heads: DinoHeads, ibot: IbotHeadMode): Record<string, Record<string, number[]>> {
  const out: Record<string, Record<string, number[]>> = { dino_head: dinoHeadShapes(heads.dino) };
  if (ibot === 'separate') {
    if (!heads.ibot) throw new Error('training graph: ibot "separate" needs the iBOT head config');
    out.ibot_head = dinoHeadShapes(heads.ibot);
  }
  return out;
}

/** The student's side of one DINOv2 step (steps/dino.ts): DINO global + local, KoLeo, iBOT, and their gradients. */
export function dinoStudentStepGraph(vit: ViTConfig, heads: DinoHeads, o: DinoStepGraphOptions): BuiltGraph {
  checkSize(vit, o.globalSize, 'global crop size');
  if (o.nLocal > 0) checkSize(vit, o.localSize, 'local crop size');
  const t = new TrainGraph(o);
  const params = paramTable(t, vit, o.trained, headShapes(heads, o.ibot));
  const B = o.batch;
  const gP = (o.globalSize / vit.patch_size) ** 2;
  const K = heads.dino.outDim;
  const withIbot = o.ibot !== 'none' && o.maskRows > 0;
  const withDino = o.dinoWeight > 0;
  const drop = vit.drop_path_rate > 0;
  const globals = t.input('globals', [2 * B, o.globalSize, o.globalSize, 3]);
  // The local crops only enter the DINO term.
  const locals = o.nLocal > 0 && withDino ? t.input('locals', [o.nLocal * B, o.localSize, o.localSize, 3]) : null;
  const dropGlobal = drop ? t.input('drop_path_global', [vit.depth, 2, 2 * B]) : undefined;
  const dropLocal = drop && locals ? t.input('drop_path_local', [vit.depth, 2, o.nLocal * B]) : undefined;
  const dinoTargets = withDino ? t.input('dino_targets', [2 * B, K]) : null;
  const masks = withIbot ? t.input('masks', [2 * B, gP]) : undefined;
  const maskIndex = withIbot ? t.input('mask_index', [o.maskRows], { dtype: 'int64' }) : undefined;
  const maskWeight = withIbot ? t.input('mask_weight', [o.maskRows]) : undefined;
  const Ki = o.ibot === 'separate' ? heads.ibot!.outDim : K;
  const ibotTargets = withIbot ? t.input('ibot_targets', [o.maskRows, Ki]) : undefined;

  const bb = params.scope('backbone.');
  const g = t.scope('global', () => vitForward(t, vit, bb.p, bb.opt, globals, { dropPath: dropGlobal, masks, patches: withIbot }));
  const l = locals ? t.scope('local', () => vitForward(t, vit, bb.p, bb.opt, locals, { dropPath: dropLocal })) : null;
  const D = vit.embed_dim;
  const masked = withIbot ? gatherRows(t, t.reshape(g.patches!, [2 * B * gP, D]), maskIndex!) : null;
  // One pass of the DINO head over [local CLS, global CLS, masked patches (shared head)].
  const headIn = [...(l ? [l.cls] : []), g.cls, ...(masked && o.ibot === 'shared' ? [masked] : [])];
  const dinoP = params.scope('dino_head.').p;
  const headOut = t.scope('dino_head', () => dinoHead(t, heads.dino, dinoP, t.concat(headIn, 0)));
  const nL = l ? o.nLocal * B : 0;
  let total: Value | null = null;
  const addTerm = (v: Value, weight: number) => {
    const w = t.scale(v, weight);
    total = total ? t.add(total, w) : w;
  };
  if (dinoTargets) {
    const globalOut = t.slice(headOut, 0, nL, nL + 2 * B);
    const localOut = nL > 0 ? t.slice(headOut, 0, 0, nL) : null;
    const dl = dinoGlobalLocal(t, globalOut, dinoTargets, localOut, o.nLocal, o.studentTemp);
    t.output(dl.global, 'loss_dino_global');
    t.output(dl.local, 'loss_dino_local');
    addTerm(t.add(dl.global, dl.local), o.dinoWeight);
    if (o.koleoWeight > 0) {
      const k = t.add(koleo(t, t.slice(g.cls, 0, 0, B)), koleo(t, t.slice(g.cls, 0, B, 2 * B)));
      t.output(k, 'loss_koleo');
      addTerm(k, o.koleoWeight);
    }
  }
  if (masked) {
    const student =
      o.ibot === 'shared'
        ? t.slice(headOut, 0, nL + 2 * B, nL + 2 * B + o.maskRows)
        : t.scope('ibot_head', () => dinoHead(t, heads.ibot!, params.scope('ibot_head.').p, masked));
    const ib = ibotMasked(t, student, ibotTargets!, maskWeight!, 2 * B, o.studentTemp);
    t.output(ib, 'loss_ibot');
    addTerm(ib, o.ibotWeight);
  }
  const loss: Value = total ?? t.scalar(0);
  t.output(loss, 'loss');
  return finish(t, params, total, 'dino_student');
}

export interface TeacherGraphOptions extends GraphBuildOptions {
  batch: number;
  /** Global crop size. */
  size: number;
  maskRows: number;
  ibot: IbotHeadMode;
}

/** The teacher's forward (eval mode, unmasked globals) -> raw head outputs; see the module comment. */
export function teacherGraph(vit: ViTConfig, heads: DinoHeads, o: TeacherGraphOptions): BuiltGraph {
  checkSize(vit, o.size, 'global crop size');
  const t = new TrainGraph(o);
  const params = paramTable(t, vit, [], headShapes(heads, o.ibot));
  const B = o.batch;
  const P = (o.size / vit.patch_size) ** 2;
  const D = vit.embed_dim;
  const withIbot = o.ibot !== 'none' && o.maskRows > 0;
  const globals = t.input('globals', [2 * B, o.size, o.size, 3]);
  const maskIndex = withIbot ? t.input('mask_index', [o.maskRows], { dtype: 'int64' }) : undefined;
  const bb = params.scope('backbone.');
  const out = vitForward(t, vit, bb.p, bb.opt, globals, { patches: withIbot });
  const swapped = t.concat([t.slice(out.cls, 0, B, 2 * B), t.slice(out.cls, 0, 0, B)], 0);
  const patches = withIbot ? gatherRows(t, t.reshape(out.patches!, [2 * B * P, D]), maskIndex!) : null;
  const dinoP = params.scope('dino_head.').p;
  if (patches && o.ibot === 'shared') {
    const both = dinoHead(t, heads.dino, dinoP, t.concat([swapped, patches], 0));
    t.output(t.slice(both, 0, 0, 2 * B), 'dino_logits');
    t.output(t.slice(both, 0, 2 * B, 2 * B + o.maskRows), 'ibot_logits');
  } else {
    t.output(dinoHead(t, heads.dino, dinoP, swapped), 'dino_logits');
    if (patches) t.output(dinoHead(t, heads.ibot!, params.scope('ibot_head.').p, patches), 'ibot_logits');
  }
  return finish(t, params, null, 'teacher');
}

/** Evaluation: the CLS tokens [B, D] of NHWC `images` in eval mode. */
export function encodeGraph(vit: ViTConfig, o: { batch: number; size: number } & GraphBuildOptions): BuiltGraph {
  checkSize(vit, o.size, 'image size');
  const t = new TrainGraph(o);
  const params = paramTable(t, vit, [], {});
  const bb = params.scope('backbone.');
  const { cls } = vitForward(t, vit, bb.p, bb.opt, t.input('images', [o.batch, o.size, o.size, 3]));
  t.output(cls, 'cls');
  return finish(t, params, null, 'encode');
}

/** Evaluation: the classifier's logits [rows, C] on `features` [rows, D] (inputs `head.weight`, `head.bias`). */
export function classifierGraph(dim: number, numClasses: number, rows: number, build: GraphBuildOptions = {}): BuiltGraph {
  const t = new TrainGraph(build);
  const params = new ParamTable(t, new Map(Object.entries(classifierShapes(dim, numClasses)).map(([k, s]) => [`head.${k}`, s])), new Set());
  t.output(classifierHead(t, params.scope('head.').p, t.input('features', [rows, dim])), 'logits');
  return finish(t, params, null, 'classifier');
}

/** A DINO head's logits [rows, K] on `features` [rows, inDim] (inputs `<prefix>.<name>`; the teacher's DINO head for teacherProbs). */
export function dinoHeadGraph(cfg: DinoHeadConfig, rows: number, prefix = 'dino_head', build: GraphBuildOptions = {}): BuiltGraph {
  const t = new TrainGraph(build);
  const params = new ParamTable(t, new Map(Object.entries(dinoHeadShapes(cfg)).map(([k, s]) => [`${prefix}.${k}`, s])), new Set());
  t.output(dinoHead(t, cfg, params.scope(`${prefix}.`).p, t.input('features', [rows, cfg.inDim])), 'logits');
  return finish(t, params, null, 'dino_head');
}
