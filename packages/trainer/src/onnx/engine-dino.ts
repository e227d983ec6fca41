/**
 * The DINOv2 step's host side on the ONNX Runtime engine: from the teacher graph's raw head outputs to
 * the student graph's targets, with the SAME code as the tfjs step (steps/dino.ts's teacherTargets):
 * the centred softmax (`teacherSoftmaxCenter`) with the centres' batch means (`rankMean` of the raw outputs),
 * or Sinkhorn-Knopp (`sinkhornKnopp` with its sums over every rank through the GradientSync), and the
 * teacher entropies. These are small tensors ([2B, K] and [masked patches, K']) on the current tfjs backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import { reduceSumOf, sinkhornKnopp } from '../centering.js';
import type { TrainConfig } from '../config.js';
import { type Center, entropies, rankMean, teacherSoftmaxCenter } from '../losses.js';
import type { GradientSync } from '../sync.js';

export interface TeacherOutputs {
  /** [2B, K]: the DINO head on the teacher's CLS tokens, crops swapped. */
  dino: Float32Array;
  /** [M, K']: the iBOT outputs of this rank's M masked patches (no padding rows); null without iBOT. */
  ibot: Float32Array | null;
  rows: number;
  K: number;
  Ki: number;
}

export interface HostTargets {
  /** The student graph's `dino_targets` [2B, K]. */
  dino: Float32Array;
  /** `ibot_targets` of the M masked patches [M, K'] (null when this rank masked none). */
  ibot: Float32Array | null;
  /** The teacher's batch means for the centres (`rankMean`s: the mean, then 1 or 0), in `centres` order. */
  means: Float32Array[];
  centres: string[];
  /** Mean row entropy of the DINO targets and entropy of their mean (nats). */
  entropy: { rows: number; batch: number };
}

/** Owned host copies of tensors' values (the wasm / cpu backends may hand out shared storage). */
function values(t: tf.Tensor): Float32Array {
  return Float32Array.from(t.dataSync() as Float32Array);
}

/**
 * The targets of one DINO step from the teacher's outputs (see the module comment). `centers.ibot` exists
 * when iBOT is on. With Sinkhorn-Knopp this runs the step's collectives through `sync` (the same calls on
 * every rank, an empty iBOT input where this rank masked nothing); a MembershipChanged thrown there leaves
 * nothing allocated.
 */
export async function dinoTargets(
  out: TeacherOutputs,
  centers: { dino?: Center; ibot?: Center },
  temp: number,
  config: TrainConfig,
  sync: GradientSync,
): Promise<HostTargets> {
  const dinoOut = tf.tensor2d(out.dino, [out.rows, out.K]);
  const ibotOut = out.ibot ? tf.tensor2d(out.ibot, [out.ibot.length / out.Ki, out.Ki]) : null;
  try {
    if (config.train.centering === 'sinkhorn_knopp') {
      const ibotIn = ibotOut ?? (centers.ibot ? (tf.zeros([0, centers.ibot.dim]) as tf.Tensor2D) : null);
      const logits = [dinoOut, ...(ibotIn ? [ibotIn] : [])];
      let targets: tf.Tensor2D[];
      try {
        targets = await sinkhornKnopp(
          logits.map((l) => ({ logits: l, temperature: temp })),
          reduceSumOf(sync),
        );
      } finally {
        if (ibotIn && ibotIn !== ibotOut) ibotIn.dispose();
      }
      try {
        const ent = entropies(targets[0]!);
        return { dino: values(targets[0]!), ibot: ibotOut ? values(targets[1]!) : null, means: [], centres: [], entropy: ent };
      } finally {
        tf.dispose(targets);
      }
    }
    const probs = tf.tidy(() => teacherSoftmaxCenter(dinoOut, centers.dino!.tensor(), temp)) as tf.Tensor2D;
    const ibotProbs = ibotOut ? tf.tidy(() => teacherSoftmaxCenter(ibotOut, centers.ibot!.tensor(), temp)) : null;
    // Every rank sends the iBOT centre's part, masked patches or not (rankMean: zeros and a share of 0).
    const means = [rankMean(dinoOut, out.K), ...(centers.ibot ? [rankMean(ibotOut, centers.ibot.dim)] : [])];
    try {
      return {
        dino: values(probs),
        ibot: ibotProbs ? values(ibotProbs) : null,
        means: means.map(values),
        centres: centers.ibot ? ['dino', 'ibot'] : ['dino'],
        entropy: entropies(probs),
      };
    } finally {
      tf.dispose([probs, ...(ibotProbs ? [ibotProbs] : []), ...means]);
    }
  } finally {
    tf.dispose([dinoOut, ...(ibotOut ? [ibotOut] : [])]);
  }
}

/** softmax((logits - the DINO centre) / temp) of the teacher head's logits [rows, K] (evaluation's teacherProbs). */
export function centredProbs(logits: Float32Array, rows: number, center: Center, temp: number): Float32Array {
  const p = tf.tidy(() => teacherSoftmaxCenter(tf.tensor2d(logits, [rows, center.dim]), center.tensor(), temp));
  try {
    return values(p);
  } finally {
    p.dispose();
  }
}
