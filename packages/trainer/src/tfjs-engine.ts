/**
 * The tfjs step engine (see engine.ts): the student, teacher and heads are tf.Variables of
 * @vitreg/registers' VisionTransformer and of heads.ts, gradients come from tf.variableGrads over
 * the step modules' loss functions (steps/supervised.ts, steps/dino.ts), the optimiser is optim.ts's
 * AdamW or Lamb over param-groups.ts's ParamSpecs. Runs on any tfjs backend (tfjs-node(-gpu), wasm,
 * webgpu, cpu).
 */
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients } from '@vitreg/core';
import { VisionTransformer } from '@vitreg/registers';
import { initRng, type PreparedBatch } from './batch.js';
import type {
  AppliedStep,
  ComputedStep,
  EngineContext,
  EngineFactory,
  EngineState,
  ParameterInfo,
  StateLayout,
  StepEngine,
  StepSettings,
} from './engine.js';
import { ClassifierHead, DinoHead } from './heads.js';
import { Center, teacherSoftmaxCenter } from './losses.js';
import { checkTrainingFits } from './memory-check.js';
import { AdamW, clipByGlobalNorm, clipPerModule, Lamb } from './optim.js';
import { paramGroups, type ParamSpec } from './param-groups.js';
import { weightsChecksum } from './state.js';
import { applyTeacherUpdate, dinoStep } from './steps/dino.js';
import type { LossFn, StepRecord } from './steps/record.js';
import { supervisedStep } from './steps/supervised.js';
import type { GradientSync } from './sync.js';

type Heads = { cls?: ClassifierHead; dino?: DinoHead; ibot?: DinoHead };

/** Head parameters by state name: `head.*` (classifier), `dino_head.*`, `ibot_head.*`. */
function headParams(heads: Heads): Record<string, tf.Variable> {
  const out: Record<string, tf.Variable> = {};
  for (const [name, head] of Object.entries(heads) as [string, ClassifierHead | DinoHead | undefined][]) {
    if (!head) continue;
    const prefix = name === 'cls' ? 'head' : `${name}_head`;
    for (const [k, v] of Object.entries(head.params)) out[`${prefix}.${k}`] = v;
  }
  return out;
}

/** Each tensor's values in an array the caller owns (the cpu backend hands out a tensor's own storage, shared by clones). */
function ownedValues(tensors: tf.Tensor[]): Float32Array[] {
  const shared = tf.getBackend() === 'cpu';
  const seen = new Set<Float32Array>();
  return tensors.map((t) => {
    const d = t.dataSync() as Float32Array;
    const out = shared || seen.has(d) || !(d instanceof Float32Array) ? Float32Array.from(d) : d;
    seen.add(out);
    return out;
  });
}

export class TfjsEngine implements StepEngine {
  readonly name = 'tfjs';
  readonly student: VisionTransformer;
  readonly teacher?: VisionTransformer;
  readonly heads: Heads = {};
  readonly teacherHeads: Heads = {};
  readonly centers: { dino?: Center; ibot?: Center } = {};
  readonly optimizer: AdamW | Lamb;
  /** The trained parameters with their multipliers, in gradient order. */
  readonly params: ParamSpec[];
  readonly parameters: ParameterInfo[];

  constructor(readonly ctx: EngineContext) {
    const c = ctx.config;
    const init = initRng(c);
    // Refuse a run that cannot fit the backend before allocating anything (wasm: 4 GiB in all).
    checkTrainingFits(ctx, 'tfjs');
    this.student = new VisionTransformer(ctx.vit, { seed: init.uint32() });
    const D = ctx.vit.embed_dim;
    const ibot = c.objective === 'dino' && c.ibot.loss_weight > 0;
    if (c.objective === 'supervised') {
      this.heads.cls = new ClassifierHead(D, ctx.numClasses, init.fork(1));
    } else {
      const d = c.dino;
      const dinoCfg = {
        inDim: D,
        outDim: d.head_n_prototypes,
        hiddenDim: d.head_hidden_dim,
        bottleneckDim: d.head_bottleneck_dim,
        nlayers: d.head_nlayers,
      };
      this.heads.dino = new DinoHead(dinoCfg, init.fork(1));
      this.teacherHeads.dino = new DinoHead(dinoCfg, init.fork(1));
      this.centers.dino = new Center(d.head_n_prototypes, d.center_momentum);
      if (ibot) {
        const b = c.ibot;
        const ibotCfg = b.separate_head
          ? {
              inDim: D,
              outDim: b.head_n_prototypes,
              hiddenDim: b.head_hidden_dim,
              bottleneckDim: b.head_bottleneck_dim,
              nlayers: b.head_nlayers,
            }
          : dinoCfg;
        if (b.separate_head) {
          this.heads.ibot = new DinoHead(ibotCfg, init.fork(2));
          this.teacherHeads.ibot = new DinoHead(ibotCfg, init.fork(2));
        }
        this.centers.ibot = new Center(ibotCfg.outDim, d.center_momentum);
      }
      this.teacher = new VisionTransformer(ctx.vit, { seed: 0, trainable: false });
    }
    // Parameters the objective never uses get no optimiser state (the mask token outside iBOT).
    const backbone = { ...this.student.params };
    if (!ibot) delete backbone.mask_token;
    const o = c.optim;
    const groupOpts = { layerDecay: o.layerwise_decay, patchEmbedLrMult: o.patch_embed_lr_mult, weightDecayRule: o.weight_decay_rule };
    this.params = [...paramGroups('backbone', backbone, ctx.vit.depth, groupOpts)];
    for (const [name, head] of Object.entries(this.heads) as [string, ClassifierHead | DinoHead][]) {
      this.params.push(...paramGroups(name === 'cls' ? 'head' : `${name}_head`, head.params, 0, groupOpts));
    }
    this.parameters = this.params.map((p) => ({ name: p.name, shape: [...p.variable.shape], size: p.variable.size }));
    const betas = { beta1: c.optim.beta1, beta2: c.optim.beta2, eps: c.optim.eps };
    this.optimizer = c.optim.optimizer === 'lamb' ? new Lamb(this.params, betas) : new AdamW(this.params, betas);
  }

  /** Student backbone + heads as named variables (`backbone.*`, `head.*`, `dino_head.*`, `ibot_head.*`). */
  studentVariables(): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {};
    for (const [k, v] of Object.entries(this.student.params)) out[`backbone.${k}`] = v;
    return { ...out, ...headParams(this.heads) };
  }

  /** The teacher's variables, named as the student's (none in a supervised run). */
  teacherVariables(): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {};
    if (this.teacher) for (const [k, v] of Object.entries(this.teacher.params)) out[`backbone.${k}`] = v;
    return { ...out, ...headParams(this.teacherHeads) };
  }

  initTeacher(): void {
    const vars = this.studentVariables();
    for (const [k, v] of Object.entries(this.teacherVariables())) v.assign(vars[k]!);
  }

  async computeStep(batch: PreparedBatch, settings: StepSettings, sync: GradientSync): Promise<ComputedStep> {
    await ensureGradients();
    const c = this.ctx.config;
    const dino = { vit: this.ctx.vit, student: this.student, teacher: this.teacher!, heads: this.heads, teacherHeads: this.teacherHeads };
    const record: StepRecord =
      batch.objective === 'supervised'
        ? supervisedStep({ student: this.student, head: this.heads.cls! }, batch, c)
        : await dinoStep({ ...dino, centers: this.centers }, batch, settings, c, sync);
    try {
      const { loss, parts, gradients } = this.gradients(record.losses);
      return { loss, parts, gradients, means: ownedValues(record.means), metrics: record.metrics, update: record.update };
    } finally {
      tf.dispose([...record.inputs, ...record.means]);
    }
  }

  /** The summed gradients of `lossFns` (zeros for a parameter none reached), the summed loss and parts, on the host. */
  private gradients(lossFns: LossFn[]): { loss: number; parts: Record<string, number>; gradients: Float32Array[] } {
    const varList = this.params.map((p) => p.variable);
    const parts: Record<string, tf.Scalar> = {};
    let value: tf.Scalar | null = null;
    let sums: (tf.Tensor | null)[] = this.params.map(() => null);
    try {
      for (const fn of lossFns) {
        const r = tf.variableGrads(() => {
          const out = fn();
          for (const [k, t] of Object.entries(out.parts)) {
            const prev = parts[k];
            parts[k] = tf.keep(prev ? tf.add(prev, t) : tf.clone(t)) as tf.Scalar;
            prev?.dispose();
          }
          return out.total;
        }, varList);
        const next = this.params.map((p, i) => {
          const g = r.grads[p.variable.name];
          const prev = sums[i]!;
          return g && prev ? tf.add(prev, g) : (g ?? prev);
        });
        const total: tf.Scalar = value ? (tf.add(value, r.value) as tf.Scalar) : r.value;
        const spent = [...sums, ...Object.values(r.grads), value, r.value];
        tf.dispose(spent.filter((t): t is tf.Tensor => !!t && !next.includes(t) && t !== total));
        sums = next;
        value = total;
      }
      sums = sums.map((g, i) => g ?? tf.zerosLike(this.params[i]!.variable));
      const host: Record<string, number> = {};
      for (const [k, t] of Object.entries(parts)) host[k] = t.dataSync()[0]!;
      return { loss: value!.dataSync()[0]!, parts: host, gradients: ownedValues(sums as tf.Tensor[]) };
    } finally {
      tf.dispose([...sums.filter((t): t is tf.Tensor => !!t), ...Object.values(parts)]);
      value?.dispose();
    }
  }

  async applyStep(step: ComputedStep, settings: StepSettings): Promise<AppliedStep> {
    if (step.gradients.length !== this.params.length) {
      throw new Error(`tfjs engine: ${step.gradients.length} gradients for ${this.params.length} parameters`);
    }
    const grads = this.params.map((p, i) => tf.tensor(step.gradients[i]!, p.variable.shape, 'float32'));
    try {
      const { grads: clipped, norms } = this.clip(grads);
      const lambNorm = this.optimizer.apply(clipped, { lr: settings.lr, wd: settings.wd, lastLayerLr: settings.lastLayerLr });
      tf.dispose(clipped.filter((t) => !grads.includes(t)));
      applyTeacherUpdate(this.studentVariables(), this.teacherVariables(), this.centers, step.update, step.means);
      return { norms: typeof lambNorm === 'number' && !('grad_norm' in norms) ? { ...norms, grad_norm: lambNorm } : norms };
    } finally {
      tf.dispose(grads);
    }
  }

  /**
   * Gradient clipping to optim.clip_grad: each student module (`backbone`, `dino_head`, `ibot_head`) by
   * its own norm in a self-supervised run, as DINOv2's loop calls clip_grad_norm_ per module; all
   * parameters by their global norm in a supervised run, as DeiT / timm. Returns the norms before
   * clipping: `grad_norm` (all parameters) and `grad_norm_<module>` per module.
   */
  private clip(grads: tf.Tensor[]): { grads: tf.Tensor[]; norms: Record<string, number> } {
    const o = this.ctx.config.optim;
    if (this.ctx.config.objective !== 'dino') {
      if (!(o.clip_grad > 0) && o.optimizer === 'lamb') return { grads, norms: {} };
      const { grads: out, norm } = clipByGlobalNorm(grads, o.clip_grad);
      return { grads: out, norms: { grad_norm: norm } };
    }
    const r = clipPerModule(
      this.params.map((p) => p.name),
      grads,
      o.clip_grad,
    );
    const norms: Record<string, number> = {};
    let total = 0;
    for (const [m, n] of Object.entries(r.norms)) {
      norms[`grad_norm_${m}`] = n;
      total += n * n;
    }
    norms.grad_norm = Math.sqrt(total);
    return { grads: r.grads, norms };
  }

  async encode(model: 'student' | 'teacher', images: Float32Array, count: number, size: number): Promise<Float32Array> {
    const m = model === 'teacher' ? this.teacher : this.student;
    if (!m) throw new Error('tfjs engine: a supervised run has no teacher');
    const x = tf.tensor4d(images, [count, size, size, 3]);
    const cls = tf.tidy(() => m.forward(x).cls);
    const out = Float32Array.from(cls.dataSync());
    tf.dispose([x, cls]);
    return out;
  }

  async classify(features: Float32Array, count: number): Promise<Int32Array> {
    const pred = tf.tidy(() => tf.argMax(this.heads.cls!.forward(tf.tensor2d(features, [count, this.ctx.vit.embed_dim])), 1));
    const out = Int32Array.from(pred.dataSync());
    pred.dispose();
    return out;
  }

  async teacherProbs(features: Float32Array, count: number): Promise<Float32Array> {
    const probs = tf.tidy(() => {
      const out = this.teacherHeads.dino!.forward(tf.tensor2d(features, [count, this.ctx.vit.embed_dim]));
      return teacherSoftmaxCenter(out, this.centers.dino!.tensor(), this.ctx.config.dino.teacher_temp);
    });
    const out = Float32Array.from(probs.dataSync());
    probs.dispose();
    return out;
  }

  stateLayout(): StateLayout {
    const out: StateLayout = {};
    for (const [k, v] of Object.entries(this.studentVariables())) out[`student.${k}`] = [...v.shape];
    for (const [k, v] of Object.entries(this.teacherVariables())) out[`teacher.${k}`] = [...v.shape];
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) out[`center.${k}`] = [ctr.dim];
    for (const p of this.params) {
      out[`optimizer.${p.name}.exp_avg`] = [...p.variable.shape];
      out[`optimizer.${p.name}.exp_avg_sq`] = [...p.variable.shape];
    }
    return out;
  }

  exportState(): EngineState {
    const tensors: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(this.studentVariables())) tensors[`student.${k}`] = v.dataSync() as Float32Array;
    for (const [k, v] of Object.entries(this.teacherVariables())) tensors[`teacher.${k}`] = v.dataSync() as Float32Array;
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) tensors[`center.${k}`] = ctr.value;
    const opt = this.optimizer.getState();
    for (const [k, m] of Object.entries(opt.moments)) tensors[`optimizer.${k}`] = m.data;
    return { tensors, optimizerStep: opt.step };
  }

  importState(state: EngineState): void {
    const take = (name: string, size: number): Float32Array => {
      const v = state.tensors[name];
      if (!v || v.length !== size) {
        throw new Error(`tfjs engine state: missing or mis-sized tensor "${name}" (expected ${size} values, got ${v?.length ?? 'none'})`);
      }
      return v;
    };
    const setVars = (prefix: string, vars: Record<string, tf.Variable>) => {
      for (const [k, v] of Object.entries(vars)) tf.tidy(() => v.assign(tf.tensor(take(`${prefix}.${k}`, v.size), v.shape, 'float32')));
    };
    setVars('student', this.studentVariables());
    setVars('teacher', this.teacherVariables());
    for (const [k, ctr] of Object.entries(this.centers)) if (ctr) ctr.value = Float32Array.from(take(`center.${k}`, ctr.dim));
    const moments: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const p of this.params) {
      for (const suffix of ['exp_avg', 'exp_avg_sq']) {
        const key = `${p.name}.${suffix}`;
        moments[key] = { shape: [...p.variable.shape], data: take(`optimizer.${key}`, p.variable.size) };
      }
    }
    this.optimizer.setState({ step: state.optimizerStep, moments });
  }

  checksum(): string {
    const host: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(this.studentVariables())) host[k] = v.dataSync() as Float32Array;
    return weightsChecksum(host);
  }

  memory(): { tensors: number; bytes: number } {
    const mem = tf.memory();
    return { tensors: mem.numTensors, bytes: mem.numBytes };
  }

  dispose(): void {
    this.student.dispose();
    this.teacher?.dispose();
    for (const h of [...Object.values(this.heads), ...Object.values(this.teacherHeads)]) h?.dispose();
    this.optimizer.dispose();
  }
}

/** The default EngineFactory: a TfjsEngine on the current tfjs backend. */
export const tfjsEngine: EngineFactory = (ctx) => new TfjsEngine(ctx);
