/**
 * The ONNX Runtime engine's state kept on a WebGPU device between runs (`--device webgpu`): the graphs
 * that replace engine-optim.ts's host loops there, and the copies between the host buffers and the device.
 *
 * onnxruntime-node 1.30 can keep a graph's outputs on a WebGPU device (`preferredOutputLocation:
 * 'gpu-buffer'`) and take them back as inputs of the next run, but it cannot write into an existing device
 * buffer or read one back with `getData()` (that aborts the process). So the state lives as one device
 * tensor per parameter (student, EMA teacher, and the optimiser's two moments per trained parameter),
 * replaced by each update's outputs, and comes back to the host through a copy graph whose outputs ONNX
 * Runtime writes into the flat host buffers:
 * - `optimizerGraph`: the clipping of engine-optim.ts (by the global norm, or per student module) and AdamW
 *   or LAMB, as ONNX operators over every trained tensor, with the same operations in the same order as the
 *   host loops; per-tensor learning rates and decays come in one small `hp` input, the bias corrections in
 *   `bc`, so one graph serves the whole run. The norms before clipping come back to the host (a few floats).
 * - `emaGraph`: the EMA teacher t <- m t + (1 - m) s over every tensor.
 * - `copyGraph`: Identity over a list of tensors, to the device (upload) or into host buffers (download).
 * Only Identity, Mul, Add, Sub, Div, Sqrt, ReduceSumSquare, Greater, Where, Max, Min, Gather, Unsqueeze and
 * Concat: ONNX Runtime 1.30 places every node of these graphs on its WebGPU provider (its verbose session
 * log), and runs them on the CPU too, where the tests check them against engine-optim.ts.
 */
import type { Tensor } from 'onnxruntime-node';
import { GraphBuilder } from '@vitreg/registers';
import type { ParamLayout, Segment, TrainedParam } from './engine-params.js';
import { onDevice, type Feed, type GraphSessions } from './engine-sessions.js';
import type { BuiltGraph } from './graphs.js';

type GraphValue = Parameters<GraphBuilder['encode']>[0][number];

/** A graph of this file as the sessions run it (every value float32; no parameters, no gradients). */
function built(g: GraphBuilder, inputs: GraphValue[], outputs: GraphValue[], kind: string): BuiltGraph {
  const io = (v: GraphValue) => ({ name: v.name, shape: v.dims as number[], dtype: 'float32' as const });
  return {
    bytes: g.encode(inputs, outputs, { vitreg_graph: kind }),
    inputs: inputs.map(io),
    outputs: outputs.map(io),
    parameters: [],
    gradients: [],
    nodes: g.nodes.length,
  };
}

export interface OptimizerGraphSpec {
  kind: 'adamw' | 'lamb';
  /** Clipping before the optimiser (engine.ts's `clip`): none, by the norm of all gradients, or per student module. */
  clip: 'none' | 'global' | 'module';
  /** The clipping threshold (`optim.clip_grad`); <= 0: norms only, no clipping. */
  maxNorm: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** LAMB (engine-optim.ts's FlatOptimizer fields). */
  maxGradNorm?: number | null;
  gradAveraging?: boolean;
  trustClip?: boolean;
  /** LAMB: the trust ratio also where the weight decay is 0. */
  alwaysAdapt?: boolean;
  /** LAMB: Adam's bias corrections (default true; AdamW always has them). */
  biasCorrection?: boolean;
}

/** The names of the optimiser graph's inputs and outputs for trained tensor `name`. */
export const optimizerNames = (name: string) => ({
  w: `w.${name}`,
  g: `grad.${name}`,
  m: `m.${name}`,
  v: `v.${name}`,
  newW: `new_w.${name}`,
  newM: `new_m.${name}`,
  newV: `new_v.${name}`,
});

/** The groups of the clipping stage, in engine-optim.ts's order (per module: first appearance in gradient order). */
export function clipGroups(params: readonly TrainedParam[], clip: OptimizerGraphSpec['clip']): [string, TrainedParam[]][] {
  if (clip === 'none') return [];
  if (clip === 'global') return [['all', [...params]]];
  const modules = new Map<string, TrainedParam[]>();
  for (const p of params) modules.set(p.module, [...(modules.get(p.module) ?? []), p]);
  return [...modules];
}

/** Column of `hp` per kind: AdamW (decay, step size), LAMB (lr, wd, adapt). */
export const HP_COLUMNS = 3;

/**
 * The optimiser step as a graph. Inputs: `w.<p>`, `grad.<p>`, `m.<p>`, `v.<p>` per trained tensor, `hp`
 * [n, 3] and `bc` [2] (see `optimizerFeeds`). Outputs: `new_w.<p>`, `new_m.<p>`, `new_v.<p>`, then
 * `norms` [groups (+1 for LAMB's global norm)], the norms before clipping in `clipGroups` order.
 */
export function optimizerGraph(params: readonly TrainedParam[], spec: OptimizerGraphSpec): BuiltGraph {
  const g = new GraphBuilder();
  const scalar = (name: string, v: number) => g.floats(name, Float32Array.of(v), []);
  const one = scalar('one', 1);
  const inputs: GraphValue[] = [];
  const outputs: GraphValue[] = [];
  const names = params.map((p) => optimizerNames(p.name));
  params.forEach((p, i) => {
    for (const k of ['w', 'g', 'm', 'v'] as const) inputs.push({ name: names[i]![k], dims: p.shape });
  });
  inputs.push({ name: 'hp', dims: [params.length, HP_COLUMNS] }, { name: 'bc', dims: [2] });
  const rows = new Map<number, string>();
  const hp = (i: number, col: number) => {
    let row = rows.get(i);
    if (!row) rows.set(i, (row = g.op('Gather', ['hp', g.int64([i], [])], `hp_${i}`, { axis: 0 })));
    return g.op('Gather', [row, g.int64([col], [])], `hp_${i}_${col}`, { axis: 0 });
  };
  const bcAt = (col: number) => g.op('Gather', ['bc', g.int64([col], [])], `bc_${col}`, { axis: 0 });
  const sumSq = (x: string) => g.op('ReduceSumSquare', [x], `${x}_sq`, { keepdims: 0 });
  const addAll = (xs: string[], name: string) => xs.reduce((a, b) => g.op('Add', [a, b], name));
  const grads = names.map((n) => n.g);
  const normNames: string[] = [];

  // Clipping: each group's norm; above maxNorm its gradients times maxNorm / (norm + 1e-6).
  const index = new Map(params.map((p, i) => [p.name, i]));
  for (const [group, ps] of clipGroups(params, spec.clip)) {
    const norm = g.op(
      'Sqrt',
      [
        addAll(
          ps.map((p) => sumSq(names[index.get(p.name)!]!.g)),
          `sq_${group}`,
        ),
      ],
      `norm_${group}`,
    );
    normNames.push(norm);
    if (!(spec.maxNorm > 0)) continue;
    const max = scalar(`max_${group}`, spec.maxNorm);
    const coef = g.op(
      'Where',
      [
        g.op('Greater', [norm, max], `over_${group}`),
        g.op('Div', [max, g.op('Add', [norm, scalar('tiny', 1e-6)], `den_${group}`)], `c_${group}`),
        one,
      ],
      `coef_${group}`,
    );
    for (const p of ps) {
      const i = index.get(p.name)!;
      grads[i] = g.op('Mul', [grads[i]!, coef], `clipped.${p.name}`);
    }
  }

  const b1 = scalar('b1', spec.beta1);
  const b2 = scalar('b2', spec.beta2);
  const ob2 = scalar('ob2', 1 - spec.beta2);
  const eps = scalar('eps', spec.eps);
  const bc2Sqrt = bcAt(spec.kind === 'adamw' ? 0 : 1);
  const moments = (i: number, gi: string, gScale: string) => {
    const n = names[i]!;
    const m = g.node('Add', [g.op('Mul', [n.m, b1], `mb1_${i}`), g.op('Mul', [gi, gScale], `gb1_${i}`)], `=${n.newM}`)[0]!;
    const v = g.node(
      'Add',
      [g.op('Mul', [n.v, b2], `vb2_${i}`), g.op('Mul', [g.op('Mul', [gi, gi], `gg_${i}`), ob2], `ggb2_${i}`)],
      `=${n.newV}`,
    )[0]!;
    const denom = g.op('Add', [g.op('Div', [g.op('Sqrt', [v], `sv_${i}`), bc2Sqrt], `svb_${i}`), eps], `den_${i}`);
    return { m, denom };
  };

  if (spec.kind === 'adamw') {
    // m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; w <- w decay - (m / (sqrt(v) / bc2 + eps)) step
    const ob1 = scalar('ob1', 1 - spec.beta1);
    params.forEach((_, i) => {
      const n = names[i]!;
      const { m, denom } = moments(i, grads[i]!, ob1);
      const w = g.op('Mul', [n.w, hp(i, 0)], `wd_${i}`);
      g.node('Sub', [w, g.op('Mul', [g.op('Div', [m, denom], `md_${i}`), hp(i, 1)], `upd_${i}`)], `=${n.newW}`);
    });
  } else {
    // timm's Lamb: global clip, Adam moments, u = m / bc1 / denom + wd w, trust ratio |w| / |u|.
    const all = g.op(
      'Sqrt',
      [
        addAll(
          grads.map((x) => sumSq(x)),
          'lamb_sq',
        ),
      ],
      'lamb_norm',
    );
    normNames.push(all);
    let clipDiv: string | null = null;
    if (spec.maxGradNorm !== null && spec.maxGradNorm !== undefined) {
      clipDiv = g.op('Max', [g.op('Div', [all, scalar('lamb_max', spec.maxGradNorm)], 'lamb_ratio'), one], 'lamb_clip');
    }
    const beta3 = scalar('beta3', spec.gradAveraging === false ? 1 : 1 - spec.beta1);
    const bc1 = bcAt(0);
    const zero = scalar('zero', 0);
    params.forEach((_, i) => {
      const n = names[i]!;
      const gi = clipDiv ? g.op('Div', [grads[i]!, clipDiv], `lg_${i}`) : grads[i]!;
      const { m, denom } = moments(i, gi, beta3);
      const u0 = g.op('Div', [g.op('Div', [m, bc1], `mc_${i}`), denom], `u0_${i}`);
      const u = g.op('Add', [u0, g.op('Mul', [n.w, hp(i, 1)], `uw_${i}`)], `u_${i}`);
      const wNorm = g.op('Sqrt', [sumSq(n.w)], `wn_${i}`);
      const uNorm = g.op('Sqrt', [sumSq(u)], `un_${i}`);
      // ratio = |w| / |u| where the tensor adapts (hp col 2 > 0) and both norms are > 0, else 1: the three are
      // never negative, so their minimum is > 0 exactly when each is.
      const adapts = g.op('Greater', [g.op('Min', [hp(i, 2), wNorm, uNorm], `ad_${i}`), zero], `adapts_${i}`);
      let ratio = g.op('Where', [adapts, g.op('Div', [wNorm, uNorm], `tr_${i}`), one], `ratio_${i}`);
      if (spec.trustClip) ratio = g.op('Min', [ratio, one], `rc_${i}`);
      const step = g.op('Mul', [g.op('Mul', [u, ratio], `ur_${i}`), hp(i, 0)], `ul_${i}`);
      g.node('Sub', [n.w, step], `=${n.newW}`);
    });
  }
  params.forEach((p, i) => {
    const n = names[i]!;
    outputs.push({ name: n.newW, dims: p.shape }, { name: n.newM, dims: p.shape }, { name: n.newV, dims: p.shape });
  });
  if (normNames.length > 0) {
    g.node(
      'Concat',
      normNames.map((x) => g.op('Unsqueeze', [x, g.int64([0])], `${x}_1`)),
      '=norms',
      { axis: 0 },
    );
    outputs.push({ name: 'norms', dims: [normNames.length] });
  }
  return built(g, inputs, outputs, `optimizer_${spec.kind}`);
}

/**
 * The rows of `hp` and the `bc` of optimiser step `t` (1-based), as engine-optim.ts's loops compute them.
 * `lrOf` and `wdOf` give a tensor's learning rate and weight decay at this step.
 */
export function optimizerFeeds(
  params: readonly TrainedParam[],
  spec: OptimizerGraphSpec,
  t: number,
  lrOf: (p: TrainedParam) => number,
  wdOf: (p: TrainedParam) => number,
): { hp: Float32Array; bc: Float32Array } {
  const hp = new Float32Array(params.length * HP_COLUMNS);
  const corrected = spec.kind === 'adamw' || spec.biasCorrection !== false;
  const bc1 = corrected ? 1 - spec.beta1 ** t : 1;
  const bc2Sqrt = corrected ? Math.sqrt(1 - spec.beta2 ** t) : 1;
  params.forEach((p, i) => {
    const lr = lrOf(p);
    const wd = wdOf(p);
    if (spec.kind === 'adamw') {
      hp[i * HP_COLUMNS] = lr * wd !== 0 ? 1 - lr * wd : 1;
      hp[i * HP_COLUMNS + 1] = lr / bc1;
    } else {
      hp[i * HP_COLUMNS] = lr;
      hp[i * HP_COLUMNS + 1] = wd;
      hp[i * HP_COLUMNS + 2] = wd !== 0 || spec.alwaysAdapt ? 1 : 0;
    }
  });
  return { hp, bc: spec.kind === 'adamw' ? Float32Array.of(bc2Sqrt, 0) : Float32Array.of(bc1, bc2Sqrt) };
}

/** The EMA teacher over `segments`: inputs `t.<s>`, `s.<s>`, `ema` [2] (m, 1 - m); outputs `new_t.<s>`. */
export function emaGraph(segments: readonly Segment[]): BuiltGraph {
  const g = new GraphBuilder();
  const m = g.op('Gather', ['ema', g.int64([0], [])], 'm', { axis: 0 });
  const om = g.op('Gather', ['ema', g.int64([1], [])], 'om', { axis: 0 });
  const inputs: GraphValue[] = [{ name: 'ema', dims: [2] }];
  const outputs: GraphValue[] = [];
  for (const s of segments) {
    inputs.push({ name: `t.${s.name}`, dims: s.shape }, { name: `s.${s.name}`, dims: s.shape });
    g.node('Add', [g.op('Mul', [`t.${s.name}`, m], `tm.${s.name}`), g.op('Mul', [`s.${s.name}`, om], `so.${s.name}`)], `=new_t.${s.name}`);
    outputs.push({ name: `new_t.${s.name}`, dims: s.shape });
  }
  return built(g, inputs, outputs, 'ema');
}

/** Identity from `in.<name>` to `out.<name>` for each tensor (an upload or a download by where its outputs go). */
export function copyGraph(tensors: readonly { name: string; shape: number[] }[]): BuiltGraph {
  const g = new GraphBuilder();
  for (const t of tensors) g.node('Identity', [`in.${t.name}`], `=out.${t.name}`);
  return built(
    g,
    tensors.map((t) => ({ name: `in.${t.name}`, dims: t.shape })),
    tensors.map((t) => ({ name: `out.${t.name}`, dims: t.shape })),
    'copy',
  );
}

/** The host side of the state that DeviceState mirrors: every tensor's host view by name. */
export interface HostState {
  student: Record<string, Float32Array>;
  /** Null in supervised runs. */
  teacher: Record<string, Float32Array> | null;
  /** exp_avg and exp_avg_sq per trained tensor. */
  m: Record<string, Float32Array>;
  v: Record<string, Float32Array>;
}

/**
 * The state on the device: one tensor per student, teacher and moment tensor, kept coherent with the host
 * buffers (`hostStale`: the device is newer, after an update; `deviceStale`: the host is newer, at the start
 * and after a load), and the step's gradients when they stayed on the device.
 */
export class DeviceState {
  student: Record<string, Tensor> = {};
  teacher: Record<string, Tensor> = {};
  m: Record<string, Tensor> = {};
  v: Record<string, Tensor> = {};
  /** A step's gradients left on the device (world size 1), by trained tensor; host zeros for those the graph did not reach. */
  grads: Record<string, Feed> | null = null;
  hostStale = false;
  deviceStale = true;
  private readonly tensors: { name: string; shape: number[]; host: Float32Array; group: 'student' | 'teacher' | 'm' | 'v'; key: string }[] =
    [];

  constructor(
    private readonly sessions: GraphSessions,
    private readonly layout: ParamLayout,
    host: HostState,
    private readonly spec: OptimizerGraphSpec,
  ) {
    for (const s of layout.segments) {
      this.tensors.push({ name: `student.${s.name}`, shape: s.shape, host: host.student[s.name]!, group: 'student', key: s.name });
      if (host.teacher)
        this.tensors.push({ name: `teacher.${s.name}`, shape: s.shape, host: host.teacher[s.name]!, group: 'teacher', key: s.name });
    }
    for (const p of layout.trained) {
      this.tensors.push({ name: `m.${p.name}`, shape: p.shape, host: host.m[p.name]!, group: 'm', key: p.name });
      this.tensors.push({ name: `v.${p.name}`, shape: p.shape, host: host.v[p.name]!, group: 'v', key: p.name });
    }
  }

  private copy = () => copyGraph(this.tensors);

  /** Copies the host state to the device when the host is newer. */
  async upload(): Promise<void> {
    if (!this.deviceStale) return;
    if (this.hostStale) throw new Error('onnxruntime engine: the host and the device both hold newer state (internal error)');
    const feeds: Record<string, Feed> = {};
    for (const t of this.tensors) feeds[`in.${t.name}`] = t.host;
    const { device } = await this.sessions.run('upload', this.copy, feeds, {}, (g) => g.outputs.map((o) => o.name));
    this.disposeState();
    for (const t of this.tensors) this[t.group][t.key] = device[`out.${t.name}`]!;
    this.deviceStale = false;
  }

  /** Copies the device state into the host buffers when the device is newer. */
  async download(): Promise<void> {
    if (!this.hostStale) return;
    const feeds: Record<string, Feed> = {};
    const into: Record<string, Float32Array> = {};
    for (const t of this.tensors) {
      feeds[`in.${t.name}`] = this[t.group][t.key]!;
      into[`out.${t.name}`] = t.host;
    }
    await this.sessions.run('download', this.copy, feeds, into);
    this.hostStale = false;
  }

  /** The host buffers were replaced (a load, the teacher's start): the device copy is out of date. */
  hostChanged(): void {
    this.hostStale = false;
    this.deviceStale = true;
  }

  /** Replaces the step's device gradients (disposing the last ones). */
  setGradients(grads: Record<string, Feed> | null): void {
    if (this.grads) for (const g of Object.values(this.grads)) if (onDevice(g)) g.dispose();
    this.grads = grads;
  }

  /**
   * One optimiser step on the device (clipping, AdamW / LAMB), then the EMA teacher with `momentum`
   * (DINO). `grads`: by trained tensor, device tensors or host arrays. Returns the norms before clipping
   * (`clipGroups` order, then LAMB's).
   */
  async update(grads: Record<string, Feed>, hp: { hp: Float32Array; bc: Float32Array }, momentum: number | null): Promise<Float32Array> {
    await this.upload();
    const L = this.layout;
    const feeds: Record<string, Feed> = { hp: hp.hp, bc: hp.bc };
    for (const p of L.trained) {
      const n = optimizerNames(p.name);
      feeds[n.w] = this.student[p.name]!;
      feeds[n.g] = grads[p.name]!;
      feeds[n.m] = this.m[p.name]!;
      feeds[n.v] = this.v[p.name]!;
    }
    const kind = `optimizer:${this.spec.kind}:${this.spec.clip}`;
    const build = () => optimizerGraph(L.trained, this.spec);
    const run = await this.sessions.run(kind, build, feeds, {}, (g) => g.outputs.map((o) => o.name).filter((n) => n !== 'norms'));
    for (const p of L.trained) {
      const n = optimizerNames(p.name);
      this.student[p.name]!.dispose();
      this.m[p.name]!.dispose();
      this.v[p.name]!.dispose();
      this.student[p.name] = run.device[n.newW]!;
      this.m[p.name] = run.device[n.newM]!;
      this.v[p.name] = run.device[n.newV]!;
    }
    this.setGradients(null);
    this.hostStale = true;
    if (momentum !== null) {
      const ema: Record<string, Feed> = { ema: Float32Array.of(momentum, 1 - momentum) };
      for (const s of L.segments) {
        ema[`t.${s.name}`] = this.teacher[s.name]!;
        ema[`s.${s.name}`] = this.student[s.name]!;
      }
      const out = await this.sessions.run(
        'ema',
        () => emaGraph(L.segments),
        ema,
        {},
        (g) => g.outputs.map((o) => o.name),
      );
      for (const s of L.segments) {
        this.teacher[s.name]!.dispose();
        this.teacher[s.name] = out.device[`new_t.${s.name}`]!;
      }
    }
    return run.outputs.norms ?? new Float32Array(0);
  }

  private disposeState(): void {
    for (const group of [this.student, this.teacher, this.m, this.v]) {
      for (const t of Object.values(group)) t.dispose();
      for (const k of Object.keys(group)) delete group[k];
    }
  }

  /** Frees the device tensors (the host buffers keep whatever they held: flush first to keep the latest). */
  dispose(): void {
    this.disposeState();
    this.setGradients(null);
  }
}
