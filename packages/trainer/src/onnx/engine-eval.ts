/**
 * The ONNX Runtime engine's evaluation hooks (StepEngine's `encode`, `classify`, `teacherProbs`, which
 * evaluate.ts and the k-NN call between steps): forward graphs run on the engine's sessions with the
 * student's or the teacher's current tensors.
 */
import type { ViTConfig } from '@vitreg/registers';
import type { Center } from '../losses.js';
import { centredProbs } from './engine-dino.js';
import type { HeadConfigs } from './engine-params.js';
import type { Feed, GraphSessions } from './engine-sessions.js';
import { classifierGraph, dinoHeadGraph, encodeGraph, type GraphBuildOptions } from './graphs.js';

/** What the hooks run on: the engine's sessions, its graphs' build options and its current tensors. */
export interface EvalGraphs {
  readonly sessions: GraphSessions;
  readonly vit: ViTConfig;
  readonly heads: HeadConfigs;
  readonly build: GraphBuildOptions;
  /** The student's (or teacher's) tensors to feed a graph. */
  params(model: 'student' | 'teacher'): Promise<Record<string, Feed>>;
}

/** CLS features of `count` images of `size` pixels (NHWC floats) through the student or the teacher backbone. */
export async function encodeImages(
  g: EvalGraphs,
  model: 'student' | 'teacher',
  images: Float32Array,
  count: number,
  size: number,
): Promise<Float32Array> {
  const build = () => encodeGraph(g.vit, { ...g.build, batch: count, size });
  return (await g.sessions.run(`encode:${count}x${size}`, build, { ...(await g.params(model)), images })).outputs.cls!;
}

/** The student classifier's arg-max class of each of `count` feature rows. */
export async function classifyFeatures(g: EvalGraphs, features: Float32Array, count: number): Promise<Int32Array> {
  const C = g.heads.classes!;
  const build = () => classifierGraph(g.vit.embed_dim, C, count, g.build);
  const logits = (await g.sessions.run(`classify:${count}`, build, { ...(await g.params('student')), features })).outputs.logits!;
  const out = new Int32Array(count);
  for (let r = 0; r < count; r++) {
    let best = 0;
    for (let k = 1; k < C; k++) if (logits[r * C + k]! > logits[r * C + best]!) best = k;
    out[r] = best;
  }
  return out;
}

/** The teacher DINO head's centred, sharpened probabilities of `count` feature rows. */
export async function teacherProbabilities(
  g: EvalGraphs,
  features: Float32Array,
  count: number,
  center: Center,
  temp: number,
): Promise<Float32Array> {
  const build = () => dinoHeadGraph(g.heads.dino!, count, 'dino_head', g.build);
  const logits = (await g.sessions.run(`teacher_head:${count}`, build, { ...(await g.params('teacher')), features })).outputs.logits!;
  return centredProbs(logits, count, center, temp);
}
