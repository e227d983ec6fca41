/**
 * The ONNX Runtime engine's host state and its names (engine.ts's `stateLayout`, `exportState`,
 * `importState`, `stateTargets`): the flat buffers it allocates (student, EMA teacher, the gradients with
 * the centres' batch means after them, the optimiser's moments, the centres) and the names and layouts
 * of the tfjs engine's state (`student.*`, `teacher.*`, `center.*`, `optimizer.<name>.exp_avg[_sq]`), so
 * that a checkpoint of one engine loads into the other; on WebGPU the same buffers kept on the device.
 */
import type { EngineContext, EngineState, ParameterInfo, StateLayout, StateTargets } from '../engine.js';
import { Center } from '../losses.js';
import { DeviceState, type OptimizerGraphSpec } from './engine-device.js';
import { FlatOptimizer } from './engine-optim.js';
import { initialStudent, type ParamLayout } from './engine-params.js';
import type { GraphSessions } from './engine-sessions.js';

/** What the named state reads and writes: the engine's host buffers. */
export interface HostBuffers {
  readonly layout: ParamLayout;
  /** Every student tensor, laid out as `layout.segments`. */
  readonly student: Float32Array;
  /** The EMA teacher (DINO), laid out as the student; null in supervised runs. */
  readonly teacher: Float32Array | null;
  /** The head of one buffer whose tail holds the teacher's batch means (see OnnxRuntimeEngine.grads). */
  readonly grads: Float32Array;
  /** The batch means of the DINO / iBOT centres, after `grads` in the same buffer. */
  readonly meanViews: { dino?: Float32Array; ibot?: Float32Array };
  /** Views of `student` (and `teacher`) by tensor name: a graph's feeds. */
  readonly studentFeeds: Record<string, Float32Array>;
  readonly teacherFeeds: Record<string, Float32Array>;
  /** Views of `grads`, one per trained tensor (`layout.trained`). */
  readonly gradViews: Float32Array[];
  readonly parameters: ParameterInfo[];
  readonly centers: { dino?: Center; ibot?: Center };
  readonly optimizer: FlatOptimizer;
}

/** Allocates a run's host buffers (the student's initial weights drawn as the tfjs engine draws them). */
export function hostBuffers(ctx: EngineContext, L: ParamLayout): HostBuffers {
  const c = ctx.config;
  const student = new Float32Array(L.total);
  initialStudent(L, c, student);
  const teacher = c.objective === 'dino' ? new Float32Array(L.total) : null;
  const dinoK = L.heads.dino?.outDim ?? 0;
  const ibotK = L.heads.ibotMode !== 'none' ? (L.heads.ibot ?? L.heads.dino!).outDim : 0;
  // The means are rankMeans: each centre's values and a share.
  const store = new Float32Array(L.gradTotal + (dinoK ? dinoK + 1 : 0) + (ibotK ? ibotK + 1 : 0));
  const grads = store.subarray(0, L.gradTotal);
  const meanViews: HostBuffers['meanViews'] = {};
  if (dinoK) meanViews.dino = store.subarray(L.gradTotal, L.gradTotal + dinoK + 1);
  if (ibotK) meanViews.ibot = store.subarray(L.gradTotal + dinoK + 1);
  const studentFeeds: Record<string, Float32Array> = {};
  const teacherFeeds: Record<string, Float32Array> = {};
  for (const s of L.segments) {
    studentFeeds[s.name] = L.view(student, s.name);
    if (teacher) teacherFeeds[s.name] = L.view(teacher, s.name);
  }
  const centers: HostBuffers['centers'] = {};
  if (L.heads.dino) centers.dino = new Center(L.heads.dino.outDim, c.dino.center_momentum);
  if (L.heads.ibotMode !== 'none') centers.ibot = new Center((L.heads.ibot ?? L.heads.dino!).outDim, c.dino.center_momentum);
  const o = c.optim;
  const optimizer = new FlatOptimizer(o.optimizer === 'lamb' ? 'lamb' : 'adamw', L.trained, L.gradTotal, {
    beta1: o.beta1,
    beta2: o.beta2,
    eps: o.eps,
  });
  return {
    layout: L,
    student,
    teacher,
    grads,
    meanViews,
    studentFeeds,
    teacherFeeds,
    gradViews: L.trained.map((p) => L.gradView(grads, p)),
    parameters: L.trained.map((p) => ({ name: p.name, shape: [...p.shape], size: p.size })),
    centers,
    optimizer,
  };
}

/** The buffers kept on the WebGPU device between runs (`keepOnDevice`), the host ones then a copy. */
export function deviceState(sessions: GraphSessions, h: HostBuffers, spec: OptimizerGraphSpec): DeviceState {
  const L = h.layout;
  const moments = (buf: Float32Array) => Object.fromEntries(L.trained.map((p) => [p.name, L.gradView(buf, p)]));
  const tensors = {
    student: h.studentFeeds,
    teacher: h.teacher ? h.teacherFeeds : null,
    m: moments(h.optimizer.m),
    v: moments(h.optimizer.v),
  };
  return new DeviceState(sessions, L, tensors, spec);
}

/** The names and shapes of the state (the tfjs engine's). */
export function stateLayout(h: HostBuffers): StateLayout {
  const out: StateLayout = {};
  for (const s of h.layout.segments) out[`student.${s.name}`] = [...s.shape];
  if (h.teacher) for (const s of h.layout.segments) out[`teacher.${s.name}`] = [...s.shape];
  for (const [k, ctr] of Object.entries(h.centers)) if (ctr) out[`center.${k}`] = [ctr.dim];
  for (const p of h.layout.trained) {
    out[`optimizer.${p.name}.exp_avg`] = [...p.shape];
    out[`optimizer.${p.name}.exp_avg_sq`] = [...p.shape];
  }
  return out;
}

/** The state as views of the host buffers (current or not: see OnnxRuntimeEngine.flush). */
export function hostState(h: HostBuffers): EngineState {
  const L = h.layout;
  const tensors: Record<string, Float32Array> = {};
  for (const s of L.segments) tensors[`student.${s.name}`] = h.studentFeeds[s.name]!;
  if (h.teacher) for (const s of L.segments) tensors[`teacher.${s.name}`] = h.teacherFeeds[s.name]!;
  for (const [k, ctr] of Object.entries(h.centers)) if (ctr) tensors[`center.${k}`] = ctr.value;
  for (const p of L.trained) {
    tensors[`optimizer.${p.name}.exp_avg`] = L.gradView(h.optimizer.m, p);
    tensors[`optimizer.${p.name}.exp_avg_sq`] = L.gradView(h.optimizer.v, p);
  }
  return { tensors, optimizerStep: h.optimizer.step };
}

function checkOptimizerStep(step: number): void {
  if (!Number.isInteger(step) || step < 0) throw new Error(`optimizer state: step must be a non-negative integer, got ${step}`);
}

/** Copies a named state into the host buffers, every tensor checked before anything is replaced; then `changed()`. */
export function importState(h: HostBuffers, state: EngineState, changed: () => void): void {
  const take = (name: string, size: number): Float32Array => {
    const v = state.tensors[name];
    if (!v || v.length !== size) {
      throw new Error(
        `onnxruntime engine state: missing or mis-sized tensor "${name}" (expected ${size} values, got ${v?.length ?? 'none'})`,
      );
    }
    return v;
  };
  checkOptimizerStep(state.optimizerStep);
  // Every tensor is checked before anything is replaced.
  const L = h.layout;
  const writes: [Float32Array, Float32Array][] = [];
  for (const s of L.segments) writes.push([h.studentFeeds[s.name]!, take(`student.${s.name}`, s.size)]);
  if (h.teacher) for (const s of L.segments) writes.push([h.teacherFeeds[s.name]!, take(`teacher.${s.name}`, s.size)]);
  for (const p of L.trained) {
    writes.push([L.gradView(h.optimizer.m, p), take(`optimizer.${p.name}.exp_avg`, p.size)]);
    writes.push([L.gradView(h.optimizer.v, p), take(`optimizer.${p.name}.exp_avg_sq`, p.size)]);
  }
  const centres = Object.entries(h.centers).map(([k, ctr]) => [ctr!, take(`center.${k}`, ctr!.dim)] as const);
  for (const [dst, src] of writes) if (dst !== src) dst.set(src);
  for (const [ctr, v] of centres) ctr.value = Float32Array.from(v);
  h.optimizer.step = state.optimizerStep;
  changed();
}

/** hostState's views for a checkpoint load to fill in place; the centres in new arrays taken at commit, then `changed()`. */
export function stateTargets(h: HostBuffers, changed: () => void): StateTargets {
  // The loader overwrites every value (or none): a device newer than the host does not matter here.
  const { tensors } = hostState(h);
  const centres = Object.entries(h.centers).map(([k, ctr]) => [ctr!, (tensors[`center.${k}`] = new Float32Array(ctr!.dim))] as const);
  return {
    tensors,
    commit: (optimizerStep) => {
      checkOptimizerStep(optimizerStep);
      for (const [ctr, v] of centres) ctr.value = v;
      h.optimizer.step = optimizerStep;
      changed();
    },
  };
}
