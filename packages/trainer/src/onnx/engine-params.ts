/**
 * The ONNX Runtime engine's parameters as flat Float32Array buffers: which tensors a run has (the same
 * names, shapes and order as the tfjs engine: `backbone.<name>` in @vitreg/registers' `parameterShapes`
 * order, then the heads in heads.ts's order), where each lives in the flat buffers, each trained
 * parameter's optimiser multipliers (param-groups.ts's `paramGroups`, the one source of them), and the
 * initial values drawn on the host from `initRng(config)` exactly as the tfjs engine draws them (the
 * backbone through @vitreg/registers' `initialParameters`), so both engines start a run from the same
 * weights without tfjs holding a copy.
 *
 * Layout: the student buffer holds every student tensor (`mask_token` included, trained or not), the
 * teacher buffer the same tensors in the same places; the gradient buffer (and the optimiser's two moment
 * buffers) hold the trained tensors only, in gradient order, so `ComputedStep.gradients` are views of it.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { initialParameters, parameterShapes, type ViTConfig } from '@vitreg/registers';
import { initRng } from '../batch.js';
import type { TrainConfig } from '../config.js';
import type { EngineContext } from '../engine.js';
import type { DinoHeadConfig } from '../heads.js';
import { paramGroups } from '../param-groups.js';
import { classifierShapes, dinoHeadShapes } from './heads-graph.js';

/** One tensor of the student (and teacher) buffer. */
export interface Segment {
  /** `backbone.<name>`, `head.<name>`, `dino_head.<name>` or `ibot_head.<name>`. */
  name: string;
  shape: number[];
  /** Start in the student / teacher buffer. */
  offset: number;
  size: number;
}

/** A trained tensor: where it and its gradient live, and its optimiser multipliers. */
export interface TrainedParam extends Segment {
  /** Start in the gradient and moment buffers. */
  gradOffset: number;
  lrMult: number;
  wdMult: number;
  /** The DINO heads' `last_layer.*` (learning rate `lastLayerLr`). */
  isLastLayer: boolean;
  /** The student module it belongs to (`backbone`, `head`, `dino_head`, `ibot_head`): per-module clipping. */
  module: string;
}

/** The heads of a run, as heads.ts configures them. */
export interface HeadConfigs {
  /** Supervised: the classifier's classes. */
  classes?: number;
  dino?: DinoHeadConfig;
  /** With `ibot.separate_head`. */
  ibot?: DinoHeadConfig;
  /** 'none' (no iBOT), 'shared' (through the DINO head) or 'separate'. */
  ibotMode: 'none' | 'shared' | 'separate';
}

/** The heads `TfjsEngine` builds for `config`. */
export function headConfigs(config: TrainConfig, dim: number, numClasses: number): HeadConfigs {
  if (config.objective === 'supervised') return { classes: numClasses, ibotMode: 'none' };
  const d = config.dino;
  const dino: DinoHeadConfig = {
    inDim: dim,
    outDim: d.head_n_prototypes,
    hiddenDim: d.head_hidden_dim,
    bottleneckDim: d.head_bottleneck_dim,
    nlayers: d.head_nlayers,
  };
  if (!(config.ibot.loss_weight > 0)) return { dino, ibotMode: 'none' };
  const b = config.ibot;
  if (!b.separate_head) return { dino, ibotMode: 'shared' };
  const ibot: DinoHeadConfig = {
    inDim: dim,
    outDim: b.head_n_prototypes,
    hiddenDim: b.head_hidden_dim,
    bottleneckDim: b.head_bottleneck_dim,
    nlayers: b.head_nlayers,
  };
  return { dino, ibot, ibotMode: 'separate' };
}

/** Every tensor of the student by name (backbone, then heads), in the tfjs engine's order. */
function studentShapes(vit: ViTConfig, heads: HeadConfigs): [string, number[]][] {
  const out: [string, number[]][] = Object.entries(parameterShapes(vit)).map(([k, s]) => [`backbone.${k}`, s]);
  const add = (prefix: string, shapes: Record<string, number[]>) => {
    for (const [k, s] of Object.entries(shapes)) out.push([`${prefix}.${k}`, s]);
  };
  if (heads.classes !== undefined) add('head', classifierShapes(vit.embed_dim, heads.classes));
  if (heads.dino) add('dino_head', dinoHeadShapes(heads.dino));
  if (heads.ibot) add('ibot_head', dinoHeadShapes(heads.ibot));
  return out;
}

const sizeOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** Where everything lives in the flat buffers of one engine. */
export class ParamLayout {
  /** Every student tensor (the teacher's are the same), in export order. */
  readonly segments: Segment[] = [];
  readonly byName = new Map<string, Segment>();
  /** The trained tensors, in gradient order. */
  readonly trained: TrainedParam[] = [];
  /** Values in the student (and teacher) buffer. */
  readonly total: number;
  /** Values in the gradient (and each moment) buffer. */
  readonly gradTotal: number;
  readonly heads: HeadConfigs;

  constructor(readonly ctx: EngineContext) {
    const c = ctx.config;
    this.heads = headConfigs(c, ctx.vit.embed_dim, ctx.numClasses);
    let offset = 0;
    for (const [name, shape] of studentShapes(ctx.vit, this.heads)) {
      const seg = { name, shape, offset, size: sizeOf(shape) };
      this.segments.push(seg);
      this.byName.set(name, seg);
      offset += seg.size;
    }
    this.total = offset;
    // The multipliers come from paramGroups, which reads only each tensor's shape.
    const o = c.optim;
    const groupOpts = { layerDecay: o.layerwise_decay, patchEmbedLrMult: o.patch_embed_lr_mult, weightDecayRule: o.weight_decay_rule };
    const shapesOf = (prefix: string) =>
      Object.fromEntries(
        this.segments.filter((s) => s.name.startsWith(`${prefix}.`)).map((s) => [s.name.slice(prefix.length + 1), { shape: s.shape }]),
      ) as unknown as Record<string, tf.Variable>;
    const backbone = shapesOf('backbone');
    // The mask token trains with iBOT only (as the tfjs engine).
    if (this.heads.ibotMode === 'none') delete backbone.mask_token;
    const specs = [...paramGroups('backbone', backbone, ctx.vit.depth, groupOpts)];
    for (const prefix of ['head', 'dino_head', 'ibot_head']) {
      const shapes = shapesOf(prefix);
      if (Object.keys(shapes).length > 0) specs.push(...paramGroups(prefix, shapes, 0, groupOpts));
    }
    let gradOffset = 0;
    for (const spec of specs) {
      const seg = this.byName.get(spec.name)!;
      const module = spec.name.slice(0, spec.name.indexOf('.'));
      this.trained.push({ ...seg, gradOffset, lrMult: spec.lrMult, wdMult: spec.wdMult, isLastLayer: spec.isLastLayer, module });
      gradOffset += seg.size;
    }
    this.gradTotal = gradOffset;
  }

  /** The values of tensor `name` in a student / teacher buffer (a view, no copy). */
  view(buffer: Float32Array, name: string): Float32Array {
    const s = this.byName.get(name);
    if (!s) throw new Error(`onnxruntime engine: no parameter "${name}"`);
    return buffer.subarray(s.offset, s.offset + s.size);
  }

  /** The gradient (or moment) of trained parameter `p` in a gradient-sized buffer (a view). */
  gradView(buffer: Float32Array, p: TrainedParam): Float32Array {
    return buffer.subarray(p.gradOffset, p.gradOffset + p.size);
  }
}

/** heads.ts's trunc_normal_(std) draws (absolute bounds ±2). */
function truncNormal(out: Float32Array, std: number, rng: Rng): void {
  for (let i = 0; i < out.length; i++) {
    let v: number;
    do v = rng.normal() * std;
    while (v < -2 || v > 2);
    out[i] = v;
  }
}

/** A DINO head's initial values (heads.ts's DinoHead constructor) into the `prefix.*` tensors of `buf`. */
function initDinoHead(layout: ParamLayout, buf: Float32Array, prefix: string, cfg: DinoHeadConfig, rng: Rng): void {
  const layers = cfg.nlayers === 1 ? ['mlp'] : Array.from({ length: cfg.nlayers }, (_, i) => `mlp.${2 * i}`);
  for (const name of layers) truncNormal(layout.view(buf, `${prefix}.${name}.weight`), 0.02, rng);
  layout.view(buf, `${prefix}.last_layer.weight_g`).fill(1);
  const v = layout.view(buf, `${prefix}.last_layer.weight_v`);
  const bound = 1 / Math.sqrt(cfg.bottleneckDim);
  for (let i = 0; i < v.length; i++) v[i] = (rng.float() * 2 - 1) * bound;
}

/**
 * The initial student of a run into `buf` (the layout's student buffer), as the tfjs engine draws it from
 * `initRng(config)`: the backbone from the generator seeded by its first uint32, the heads from fork(1)
 * (the DINO head and the classifier) and fork(2) (a separate iBOT head).
 */
export function initialStudent(layout: ParamLayout, config: TrainConfig, buf: Float32Array): void {
  const init = initRng(config);
  const vit = layout.ctx.vit;
  for (const [name, values] of Object.entries(initialParameters(vit, init.uint32()))) layout.view(buf, `backbone.${name}`).set(values);
  const h = layout.heads;
  if (h.classes !== undefined) {
    truncNormal(layout.view(buf, 'head.weight'), 0.02, init.fork(1));
    layout.view(buf, 'head.bias').fill(0);
  }
  if (h.dino) initDinoHead(layout, buf, 'dino_head', h.dino, init.fork(1));
  if (h.ibot) initDinoHead(layout, buf, 'ibot_head', h.ibot, init.fork(2));
}
