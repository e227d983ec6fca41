/**
 * The `clip` objective's step on ONNX Runtime, a `ClipStepEngine` (clip-engine.ts; clip-setup.ts's
 * `clipStepEngine` builds it for `--engine onnxruntime` and clip-loop.ts runs it): the weights of both
 * towers, logit_scale and logit_bias in one flat Float32Array (clip-train.ts's
 * `clipParamSpecs` order and names), their gradients and AdamW's two moments in flat buffers of the same
 * layout (engine-optim.ts's `FlatOptimizer`, with clipParamSpecs' weight-decay multipliers: open_clip's
 * rule, as the tfjs clip loop), and the graphs of clip-graphs.ts in sessions cached by shape
 * (engine-sessions.ts). Parameters go to the graphs as views of the flat buffer; gradients are written by
 * ONNX Runtime into views of the gradient buffer.
 *
 * A step: with one rank, `clipLossStepGraph` (the loss in the graph: one forward and one backward pass);
 * across ranks, `clipFeaturesGraph` -> clip-loss.ts's `contrastiveStep` on the host (the features of every
 * rank gathered through the GradientSync, this rank's loss, the feature gradients) -> `clipTowersGraph`
 * (forward + backward of the towers given those), as steps/clip.ts does on tfjs. Text rows are cut after
 * the batch's last end-of-text token (as the tfjs tower's `encode`), rounded up to a multiple of 8, so a
 * run builds a few sessions. After AdamW, logit_scale is clamped to [0, log 100].
 *
 * The ClipModel (tfjs variables) stays the run's record for checkpoints (saveClip / loadClip) and the
 * zero-shot evaluation: `pull` writes the flat weights into it, `push` reads them back after a restore.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '@vitreg/core';
import { eotPositions, forwardDropPathFactors, LOGIT_SCALE_MAX, type ClipModel } from '@vitreg/registers';
import { clipParamSpecs } from '../clip-train.js';
import { contrastiveStep, type ContrastiveLoss } from '../clip-loss.js';
import type { AdamWState, StepHyperparams } from '../optim.js';
import type { ClipStepEngine } from '../clip-engine.js';
import type { ClipBatch } from '../steps/clip.js';
import type { GradientSync } from '../sync.js';
import { clipFeaturesGraph, clipLossStepGraph, clipTowersGraph, type ClipGraphOptions } from './clip-graphs.js';
import type { TrainedParam } from './engine-params.js';
import { FlatOptimizer } from './engine-optim.js';
import { GraphSessions, type Feed, type SessionSettings } from './engine-sessions.js';
import { textFeeds } from './text-graph.js';

export interface OnnxClipOptions extends SessionSettings {
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Run the host-loss path (features graph, contrastiveStep, towers graph) even with one rank (tests, benches). */
  hostLoss?: boolean;
}

/** Text rows after the batch's last end-of-text token, rounded up to a multiple of 8 (at most the ids' length). */
export function textLength(ids: Int32Array, batch: number): number {
  const L = ids.length / batch;
  const last = Math.max(...eotPositions(ids, batch, L)) + 1;
  return Math.min(L, Math.ceil(last / 8) * 8);
}

/** The clip step on ONNX Runtime (see the module comment). */
export class OnnxClipEngine implements ClipStepEngine {
  /** Every tensor, trained in this order (the gradient and moment buffers have the same layout). */
  readonly params: TrainedParam[];
  readonly weights: Float32Array;
  readonly grads: Float32Array;
  readonly optimizer: FlatOptimizer;
  readonly sessions: GraphSessions;
  private readonly byName = new Map<string, TrainedParam>();

  constructor(
    readonly model: ClipModel,
    private readonly opts: OnnxClipOptions = {},
  ) {
    const specs = clipParamSpecs(model);
    const frozen = specs.find((s) => !s.variable.trainable);
    if (frozen) throw new Error(`onnxruntime clip engine: parameter ${frozen.name} is not trainable (every parameter trains here)`);
    let offset = 0;
    this.params = specs.map((s) => {
      const size = s.variable.size;
      const p: TrainedParam = {
        name: s.name,
        shape: [...s.variable.shape],
        offset,
        size,
        gradOffset: offset,
        lrMult: s.lrMult,
        wdMult: s.wdMult,
        isLastLayer: false,
        module: s.name.split('.')[0]!,
      };
      offset += size;
      this.byName.set(s.name, p);
      return p;
    });
    this.weights = new Float32Array(offset);
    this.grads = new Float32Array(offset);
    this.optimizer = new FlatOptimizer('adamw', this.params, offset, {
      beta1: opts.beta1 ?? 0.9,
      beta2: opts.beta2 ?? 0.98,
      eps: opts.eps ?? 1e-6,
    });
    this.sessions = new GraphSessions(opts);
    this.push();
  }

  private view(buf: Float32Array, name: string): Float32Array {
    const p = this.byName.get(name);
    if (!p) throw new Error(`onnxruntime clip engine: no parameter "${name}"`);
    return buf.subarray(p.offset, p.offset + p.size);
  }

  /** The model's variables -> the flat weights (at the start, after a restore or a broadcast). */
  push(): void {
    for (const s of clipParamSpecs(this.model)) this.view(this.weights, s.name).set(s.variable.dataSync() as Float32Array);
  }

  /** The flat weights -> the model's variables (before a checkpoint, an evaluation or a checksum). */
  pull(): void {
    for (const s of clipParamSpecs(this.model)) {
      const t = tf.tensor(this.view(this.weights, s.name).slice(), s.variable.shape, 'float32');
      s.variable.assign(t);
      t.dispose();
    }
  }

  /** This rank's loss and gradients (views of `grads`, clipParamSpecs order) of one step. */
  async compute(batch: ClipBatch, kind: ContrastiveLoss, sync: GradientSync): Promise<{ loss: number; grads: Float32Array[] }> {
    const cfg = this.model.config;
    if (kind === 'siglip' && cfg.init_logit_bias === null)
      throw new Error('clip step: the SigLIP loss needs a model with logit_bias (init_logit_bias)');
    const B = batch.size;
    const S = batch.imageSize;
    const L0 = batch.ids.length / B;
    const V = cfg.text.vocab_size;
    for (const id of batch.ids)
      if (!(id >= 0 && id < V)) throw new Error(`text ids: token id ${id} is outside the vocabulary [0, ${V - 1}]`);
    const L = textLength(batch.ids, B);
    const ids = new Int32Array(B * L);
    for (let b = 0; b < B; b++) ids.set(batch.ids.subarray(b * L0, b * L0 + L), b * L);
    const text = textFeeds(ids, B);
    const feeds: Record<string, Feed> = { images: batch.images, ids: text.ids, eot: text.eot };
    const vit = cfg.vision;
    if (vit.drop_path_rate > 0) {
      if (batch.dropPathSeed === undefined) throw new Error('clip step: the image tower has drop path: the batch needs a dropPathSeed');
      feeds.drop_path = forwardDropPathFactors(vit, new Rng(batch.dropPathSeed), B);
    }
    for (const p of this.params) feeds[p.name] = this.view(this.weights, p.name);
    // WebGPU's provider has no FusedMatMul or Sum kernel (graphs.ts's GraphBuildOptions).
    const plain = this.sessions.device === 'webgpu';
    const go: ClipGraphOptions = { batch: B, imageSize: S, textLength: L, plainMatMul: plain, plainSum: plain };
    const into: Record<string, Float32Array> = {};
    this.grads.fill(0);
    const key = `${B}x${S}/${L}`;
    let loss: number;
    if (sync.worldSize === 1 && !this.opts.hostLoss) {
      const build = () => clipLossStepGraph(cfg, { ...go, loss: kind });
      const { graph } = await this.sessions.get(`clip ${kind} step ${key}`, build);
      for (const n of graph.gradients) into[`grad.${n}`] = this.view(this.grads, n);
      const r = await this.sessions.run(`clip ${kind} step ${key}`, build, feeds, into);
      loss = r.outputs.loss![0]!;
    } else {
      const f = await this.sessions.run(`clip features ${key}`, () => clipFeaturesGraph(cfg, go), feeds);
      const E = vit.proj_dim!;
      const logScale = this.view(this.weights, 'logit_scale')[0]!;
      const bias = cfg.init_logit_bias !== null ? this.view(this.weights, 'logit_bias')[0]! : 0;
      const c = await contrastiveStep(kind, f.outputs.image_features!, f.outputs.text_features!, E, logScale, bias, sync);
      const build = () => clipTowersGraph(cfg, go);
      const { graph } = await this.sessions.get(`clip towers ${key}`, build);
      for (const n of graph.gradients) into[`grad.${n}`] = this.view(this.grads, n);
      await this.sessions.run(
        `clip towers ${key}`,
        build,
        { ...feeds, grad_image_features: c.gradImage, grad_text_features: c.gradText },
        into,
      );
      this.view(this.grads, 'logit_scale')[0] = c.gradLogScale;
      if (cfg.init_logit_bias !== null) this.view(this.grads, 'logit_bias')[0] = c.gradBias;
      loss = c.loss;
    }
    return { loss, grads: this.params.map((p) => this.view(this.grads, p.name)) };
  }

  /** AdamW on `grads` (copied in unless they are this engine's views), then logit_scale clamped to [0, log 100]. */
  apply(grads: Float32Array[], hp: StepHyperparams): void {
    grads.forEach((g, i) => {
      const own = this.view(this.grads, this.params[i]!.name);
      if (g !== own) own.set(g);
    });
    this.optimizer.apply(this.weights, this.grads, hp);
    const s = this.view(this.weights, 'logit_scale');
    s[0] = Math.min(Math.max(s[0]!, 0), Math.fround(LOGIT_SCALE_MAX));
  }

  /** AdamW's steps taken. */
  get step(): number {
    return this.optimizer.step;
  }

  /** The current logit_scale (the log). */
  logitScale(): number {
    return this.view(this.weights, 'logit_scale')[0]!;
  }

  /** AdamW's state in optim.ts's names (`<name>.exp_avg`, `<name>.exp_avg_sq`). */
  getState(): AdamWState {
    const moments: AdamWState['moments'] = {};
    for (const p of this.params) {
      moments[`${p.name}.exp_avg`] = { shape: p.shape, data: this.view(this.optimizer.m, p.name).slice() };
      moments[`${p.name}.exp_avg_sq`] = { shape: p.shape, data: this.view(this.optimizer.v, p.name).slice() };
    }
    return { step: this.optimizer.step, moments };
  }

  setState(state: AdamWState): void {
    for (const p of this.params) {
      for (const [suffix, buf] of [
        ['exp_avg', this.optimizer.m],
        ['exp_avg_sq', this.optimizer.v],
      ] as const) {
        const t = state.moments[`${p.name}.${suffix}`];
        if (!t || t.data.length !== p.size)
          throw new Error(`optimizer state: ${p.name}.${suffix} ${t ? `has ${t.data.length} values, expected ${p.size}` : 'is missing'}`);
        this.view(buf, p.name).set(t.data);
      }
    }
    this.optimizer.step = state.step;
  }

  async dispose(): Promise<void> {
    await this.sessions.release();
  }
}
