/**
 * Sinkhorn-Knopp centering wired into a DINO step, checked on any step engine (an EngineFactory passed
 * in): one step of a 2-rank job (two Trainers in this process, their collectives through an in-memory
 * 2-rank GradientSync) against one step of a single process on the global batch. Sinkhorn-Knopp sums
 * over every rank's teacher outputs, so each rank's targets are those of the global batch: the mean over
 * the ranks of the teacher target entropy (a per-row mean) and of the gradients equals the single
 * process's. A rank-local Sinkhorn-Knopp (its sums over this rank's rows only) gives other targets and
 * fails both checks. KoLeo (per rank in DINOv2 too), iBOT masks (drawn per rank) and drop path (DINOv2's
 * batch-subset rule) are off, so that nothing else differs between the two runs.
 *
 * Used by sinkhorn-step.test.ts (tfjs engine) and sinkhorn-step-onnx.test.ts (onnxruntime engine).
 */
import assert from 'node:assert/strict';
import { Rng } from '@vitreg/core';
import type { ComputedStep, EngineFactory, StepEngine } from '../src/engine.js';
import { validateTrainConfig } from '../src/config-validate.js';
import { Trainer } from '../src/loop.js';
import type { GradientSync } from '../src/sync.js';

/** `worldSize` in-memory ranks of one process: each collective waits for every rank, then reduces in rank order. */
export function inMemoryRanks(worldSize: number): GradientSync[] {
  type Pending<T> = { input: T; resolve: (v: unknown) => void }[];
  const pools = new Map<string, Pending<unknown>>();
  const meet = <T, R>(key: string, rank: number, input: T, reduce: (inputs: T[]) => R[]): Promise<R> =>
    new Promise((resolve) => {
      const pool = (pools.get(key) ?? []) as Pending<T>;
      pools.set(key, pool as Pending<unknown>);
      pool[rank] = { input, resolve: resolve as (v: unknown) => void };
      if (pool.filter(Boolean).length < worldSize) return;
      pools.delete(key);
      const out = reduce(pool.map((p) => p.input));
      pool.forEach((p, r) => p.resolve(out[r]));
    });
  // The n-th call of an operation on each rank meets the n-th call of the others.
  const calls = Array.from({ length: worldSize }, () => new Map<string, number>());
  const next = (rank: number, op: string) => {
    const n = calls[rank]!.get(op) ?? 0;
    calls[rank]!.set(op, n + 1);
    return `${op} ${n}`;
  };
  return Array.from({ length: worldSize }, (_, rank) => ({
    rank,
    worldSize,
    allReduce: async (buffers: Float32Array[]) => {
      const means = await meet(next(rank, 'allReduce'), rank, buffers, (all) => {
        const mean = all[0]!.map((b, i) => b.map((_, j) => Math.fround(all.reduce((s, bufs) => s + bufs[i]![j]!, 0) / worldSize)));
        return all.map(() => mean);
      });
      buffers.forEach((b, i) => b.set(means[i]!));
    },
    broadcast: (state: Record<string, Float32Array>, meta?: unknown) =>
      meet(next(rank, 'broadcast'), rank, { state, meta }, (all) => all.map(() => all[0]!)),
    commitStep: (step: number, values: Record<string, number>) =>
      meet(`${next(rank, 'commit')} step ${step}`, rank, values, (all) => all.map(() => all)),
  }));
}

/** The computed steps an engine handed to applyStep (their gradients and means already all-reduced). */
function capturing(factory: EngineFactory, steps: ComputedStep[]): EngineFactory {
  return (ctx) => {
    const inner = factory(ctx);
    return new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'applyStep') {
          return (step: ComputedStep, settings: Parameters<StepEngine['applyStep']>[1]) => {
            steps.push({ ...step, gradients: step.gradients.map((g) => Float32Array.from(g)) });
            return target.applyStep(step, settings);
          };
        }
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
  };
}

/** The tiny DINO run of the case: Sinkhorn-Knopp, DINO loss only (no KoLeo, no iBOT), no drop path. */
export function sinkhornCaseConfig(batchSize: number) {
  return validateTrainConfig({
    preset: 'tiny-dino',
    model: { arch: 'vit_micro_patch8_reg4', depth: 1, drop_path_rate: 0 },
    data: { source: 'synthetic', train_size: 16, val_size: 4 },
    train: { steps: 1, batch_size: batchSize, eval_every: 0, checkpoint_every: 0, knn_train_size: 4, centering: 'sinkhorn_knopp' },
    dino: { koleo_loss_weight: 0, head_n_prototypes: 32, head_hidden_dim: 32, head_bottleneck_dim: 16 },
    ibot: { loss_weight: 0 },
    crops: { local_crops_number: 2 },
  });
}

export interface SinkhornStepResult {
  /** Largest |2-rank mean gradient - single-process gradient|, over the largest |single-process gradient|. */
  gradientError: number;
  /** Mean over the ranks of teacher_entropy, and the single process's. */
  entropy: { ranks: number; single: number };
}

/**
 * One step of 2 ranks x `batch` images against 1 rank x 2 `batch` images, on `factory`'s engine; asserts
 * the targets and gradients agree and returns the measured differences.
 */
export async function sinkhornStepCase(factory: EngineFactory, batch = 4): Promise<SinkhornStepResult> {
  const single: ComputedStep[] = [];
  const ranks: ComputedStep[] = [];
  const one = new Trainer(sinkhornCaseConfig(2 * batch), { engine: capturing(factory, single) });
  const syncs = inMemoryRanks(2);
  const two = syncs.map((sync) => new Trainer(sinkhornCaseConfig(batch), { engine: capturing(factory, ranks), sync }));
  try {
    // Fresh weights give every image nearly the same CLS, and Sinkhorn-Knopp of equal rows is uniform
    // whichever rows it sums over: spread the weights (student and teacher alike) so the rows differ.
    one.initTeacher();
    const state = one.engine.exportState();
    const rng = new Rng(11);
    const noise = new Map<string, Float32Array>();
    for (const [name, values] of Object.entries(state.tensors)) {
      const model = /^(student|teacher)\.(.*)$/.exec(name)?.[2];
      if (!model) continue;
      if (!noise.has(model))
        noise.set(
          model,
          Float32Array.from(values, () => rng.normal() * 0.3),
        );
      const n = noise.get(model)!;
      state.tensors[name] = Float32Array.from(values, (v, i) => v + n[i]!);
    }
    for (const t of [one, ...two]) t.engine.importState({ tensors: { ...state.tensors }, optimizerStep: state.optimizerStep });
    assert.equal(await two[1]!.checksum(), await one.checksum(), 'every run starts from the same weights');
    await Promise.all(two.map((t) => t.syncState()));
    await one.trainStep();
    await Promise.all(two.map((t) => t.trainStep()));
    assert.equal(single.length, 1);
    assert.equal(ranks.length, 2);
    const s = single[0]!;
    // All-reduced: both ranks hold the same mean gradients.
    let scale = 0;
    let err = 0;
    s.gradients.forEach((g, i) => {
      const r = ranks[0]!.gradients[i]!;
      assert.equal(r.length, g.length);
      for (let j = 0; j < g.length; j++) {
        scale = Math.max(scale, Math.abs(g[j]!));
        err = Math.max(err, Math.abs(r[j]! - g[j]!));
      }
    });
    const entropy = {
      ranks: (ranks[0]!.metrics.teacher_entropy! + ranks[1]!.metrics.teacher_entropy!) / 2,
      single: s.metrics.teacher_entropy!,
    };
    const gradientError = err / scale;
    // Targets: a rank's rows of the global Sinkhorn-Knopp assignment, so their mean entropy is the global one.
    assert.ok(
      Math.abs(entropy.ranks - entropy.single) <= 1e-4 * Math.max(1, entropy.single),
      `teacher target entropy: mean over 2 ranks ${entropy.ranks}, single process on the global batch ${entropy.single}`,
    );
    assert.ok(gradientError <= 1e-3, `mean gradient of 2 ranks vs the single process: max difference ${gradientError} of the largest`);
    return { gradientError, entropy };
  } finally {
    one.dispose();
    for (const t of two) t.dispose();
  }
}
