/**
 * The ONNX Runtime engine's applyStep stages (engine.ts): the clipping and optimiser a run uses
 * (`optimizerSpec`), applied by the host loops of engine-optim.ts or by engine-device.ts's graphs on the
 * WebGPU device, then the EMA teacher; and the gradient norms the step reports.
 */
import type { TrainConfig } from '../config.js';
import type { ComputedStep, StepSettings } from '../engine.js';
import { clipGroups, optimizerFeeds, type DeviceState, type OptimizerGraphSpec } from './engine-device.js';
import { clipGradients, clipPerModule, emaUpdate, learningRate, type FlatOptimizer } from './engine-optim.js';
import type { Feed } from './engine-sessions.js';
import type { HostBuffers } from './engine-state.js';

/** The norms of the clip groups (module, or 'all') before clipping, and LAMB's own norm. */
export interface Applied {
  groups: [string, number][];
  lamb?: number;
}

/** The clipping and optimiser of `applyStep` (the tfjs engine's: per module in DINO runs, none before LAMB without clip_grad, else global). */
export function optimizerSpec(c: TrainConfig, o: FlatOptimizer): OptimizerGraphSpec {
  const clip = c.objective === 'dino' ? 'module' : !(c.optim.clip_grad > 0) && o.kind === 'lamb' ? 'none' : 'global';
  return {
    kind: o.kind,
    clip,
    maxNorm: c.optim.clip_grad,
    beta1: o.beta1,
    beta2: o.beta2,
    eps: o.eps,
    maxGradNorm: o.maxGradNorm,
    gradAveraging: o.gradAveraging,
    trustClip: o.trustClip,
    alwaysAdapt: o.alwaysAdapt,
    biasCorrection: o.biasCorrection,
  };
}

/**
 * The host loops (engine-optim.ts): the tfjs engine's clipping (see TfjsEngine.clip: per student module in
 * DINO runs, else by the global norm), the optimiser, the EMA teacher. Returns the clip groups' norms and LAMB's.
 */
export function applyOnHost(
  h: HostBuffers,
  spec: OptimizerGraphSpec,
  step: ComputedStep,
  settings: StepSettings,
  momentum: number | null,
): Applied {
  // The loop hands back the views it was given; anything else is copied in.
  step.gradients.forEach((g, i) => {
    const own = h.gradViews[i]!;
    if (g.buffer !== own.buffer || g.byteOffset !== own.byteOffset) own.set(g);
  });
  const trained = h.layout.trained;
  const max = spec.maxNorm;
  const groups: [string, number][] =
    spec.clip === 'none'
      ? []
      : spec.clip === 'global'
        ? [['all', clipGradients(h.grads, trained, max)]]
        : Object.entries(clipPerModule(h.grads, trained, max));
  const lamb = h.optimizer.apply(h.student, h.grads, { lr: settings.lr, wd: settings.wd, lastLayerLr: settings.lastLayerLr });
  if (momentum !== null) emaUpdate(h.teacher!, h.student, momentum);
  return { groups, lamb };
}

/** The same on the device (engine-device.ts's optimiser and EMA graphs), with its gradients or the step's host ones. */
export async function applyOnDevice(
  h: HostBuffers,
  dev: DeviceState,
  spec: OptimizerGraphSpec,
  step: ComputedStep,
  settings: StepSettings,
  momentum: number | null,
): Promise<Applied> {
  const L = h.layout;
  let grads: Record<string, Feed>;
  if (step.gradients.length > 0) grads = Object.fromEntries(step.gradients.map((g, i) => [L.trained[i]!.name, g]));
  else if (dev.grads) grads = dev.grads;
  else throw new Error('onnxruntime engine: no gradients on the device for this step (computeStep first)');
  const hp = optimizerFeeds(
    L.trained,
    spec,
    h.optimizer.step + 1,
    (p) => learningRate(p, settings),
    (p) => settings.wd * p.wdMult,
  );
  const values = await dev.update(grads, hp, momentum);
  h.optimizer.step += 1;
  const groups = clipGroups(L.trained, spec.clip).map(([name], i): [string, number] => [name, values[i]!]);
  return { groups, lamb: spec.kind === 'lamb' ? values[groups.length] : undefined };
}

/**
 * The norms applyStep reports, as the tfjs engine reports them: each module's norm and their total, or the
 * global norm; LAMB's own norm where no clipping stage ran.
 */
export function reportedNorms(spec: OptimizerGraphSpec, groups: [string, number][], lamb: number | undefined): Record<string, number> {
  const norms: Record<string, number> = {};
  if (spec.clip === 'module') {
    let total = 0;
    for (const [m, n] of groups) {
      norms[`grad_norm_${m}`] = n;
      total += n * n;
    }
    norms.grad_norm = Math.sqrt(total);
  } else if (spec.clip === 'global') norms.grad_norm = groups[0]![1];
  else if (lamb !== undefined) norms.grad_norm = lamb;
  return norms;
}
