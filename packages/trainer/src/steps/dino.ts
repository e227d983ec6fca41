/**
 * The DINOv2 step on tfjs (DINOv2's `ssl_meta_arch.py`): the teacher's targets, the student's loss
 * assembly, and the post-commit update.
 * - Teacher (no gradient, eval mode, unmasked global crops, crops swapped): DINO head outputs of the CLS
 *   tokens and iBOT head outputs of the masked patches (through the DINO head when `ibot.separate_head`
 *   is false), turned into targets by the centred softmax at the teacher temperature, or by
 *   Sinkhorn-Knopp whose sums run over every rank (collectives of this step, before the loss).
 * - Student: masked global crops and local crops; DINO loss over every (student crop, teacher global
 *   crop) pair except the same view, KoLeo on each global crop's CLS, iBOT on the masked patches.
 * - After the commit (`applyTeacherUpdate`): the EMA teacher, and the centres from the batch means
 *   averaged over the ranks.
 */
import * as tf from '@tensorflow/tfjs-core';
import { matMul2d, type ViTConfig, type VisionTransformer } from '@vitreg/registers';
import type { DinoBatch } from '../batch.js';
import { reduceSumOf, sinkhornKnopp } from '../centering.js';
import type { TrainConfig } from '../config.js';
import type { StepSettings, StepUpdate } from '../engine.js';
import type { DinoHead } from '../heads.js';
import { type Center, dinoGlobalLocalLoss, entropies, ibotMaskedLoss, koleoLoss, rankMean, teacherSoftmaxCenter } from '../losses.js';
import type { GradientSync } from '../sync.js';
import type { StepRecord } from './record.js';

export interface DinoModels {
  vit: ViTConfig;
  student: VisionTransformer;
  teacher: VisionTransformer;
  /** The student's heads: `dino`, and `ibot` with `ibot.separate_head`. */
  heads: { dino?: DinoHead; ibot?: DinoHead };
  teacherHeads: { dino?: DinoHead; ibot?: DinoHead };
  /** `dino`, and `ibot` when iBOT is on. */
  centers: { dino?: Center; ibot?: Center };
}

/**
 * The teacher's side of a step: targets, and the batch means for the centres as `rankMean`s (absent with
 * Sinkhorn-Knopp; the iBOT one present whenever iBOT is on, masked patches or not).
 */
interface TeacherTargets {
  [key: string]: tf.Tensor | undefined;
  dinoProbs: tf.Tensor2D;
  dinoMean?: tf.Tensor;
  ibotProbs?: tf.Tensor2D;
  ibotMean?: tf.Tensor;
}

/** The iBOT inputs of a step with masked patches. */
interface MaskTensors {
  /** [2B, patches], 1 = masked (the student's mask tokens). */
  mask: tf.Tensor2D;
  /** One-hot rows [M, 2B x patches] picking the masked patches: a matMul whose gradient needs no gather kernel. */
  select: tf.Tensor2D;
  /** Flat indices of the masked patches [M] (the teacher's gather: no gradient there). */
  index: tf.Tensor1D;
  /** 1 / masked patches of each patch's crop [M]. */
  weights: tf.Tensor1D;
}

function maskTensors(batch: DinoBatch, P: number): MaskTensors | null {
  const masks = batch.masks;
  const M = masks ? masks.indices.length : 0;
  if (!masks || M === 0) return null;
  const rows = 2 * batch.size * P;
  const sel = new Float32Array(M * rows);
  masks.indices.forEach((idx, r) => {
    sel[r * rows + idx] = 1;
  });
  return {
    mask: tf.tensor2d(masks.masks, [2 * batch.size, P]),
    select: tf.tensor2d(sel, [M, rows]),
    index: tf.tensor1d(masks.indices, 'int32'),
    weights: tf.tensor1d(masks.weights),
  };
}

/** Teacher forward and targets (see the module comment); Sinkhorn-Knopp's collectives run through `sync`. */
async function teacherTargets(
  m: DinoModels,
  globals: tf.Tensor4D,
  masks: MaskTensors | null,
  B: number,
  P: number,
  temp: number,
  c: TrainConfig,
  sync: GradientSync,
): Promise<TeacherTargets> {
  const sharedIbot = !c.ibot.separate_head;
  const sinkhorn = c.train.centering === 'sinkhorn_knopp';
  const raw = tf.tidy((): TeacherTargets => {
    const out = m.teacher.forward(globals);
    const D = m.vit.embed_dim;
    const cls = out.cls;
    const swapped = tf.concat([tf.slice(cls, [B, 0], [B, D]), tf.slice(cls, [0, 0], [B, D])]) as tf.Tensor2D;
    const patches = masks ? (tf.gather(tf.reshape(out.patches, [2 * B * P, D]), masks.index) as tf.Tensor2D) : undefined;
    let dinoOut: tf.Tensor2D;
    let ibotOut: tf.Tensor2D | undefined;
    if (patches && sharedIbot) {
      const both = m.teacherHeads.dino!.forward(tf.concat([swapped, patches]) as tf.Tensor2D);
      dinoOut = tf.slice(both, [0, 0], [2 * B, -1]);
      ibotOut = tf.slice(both, [2 * B, 0], [patches.shape[0], -1]);
    } else {
      dinoOut = m.teacherHeads.dino!.forward(swapped);
      if (patches) ibotOut = m.teacherHeads.ibot!.forward(patches);
    }
    // Sinkhorn-Knopp: the raw outputs here, the targets below (they need every rank's sums). Every rank
    // runs the same collectives: the iBOT outputs are included (empty) even where this rank masked nothing.
    if (sinkhorn) {
      const empty = m.centers.ibot ? (tf.zeros([0, m.centers.ibot.dim]) as tf.Tensor2D) : undefined;
      return { dinoProbs: dinoOut, ibotProbs: ibotOut ?? empty };
    }
    const dinoProbs = teacherSoftmaxCenter(dinoOut, m.centers.dino!.tensor(), temp) as tf.Tensor2D;
    const ibotProbs = ibotOut ? (teacherSoftmaxCenter(ibotOut, m.centers.ibot!.tensor(), temp) as tf.Tensor2D) : undefined;
    const ibotMean = m.centers.ibot ? rankMean(ibotOut, m.centers.ibot.dim) : undefined;
    return { dinoProbs, ibotProbs, dinoMean: rankMean(dinoOut, m.centers.dino!.dim), ibotMean };
  });
  if (!sinkhorn) return raw;
  const logits = [raw.dinoProbs, ...(raw.ibotProbs ? [raw.ibotProbs] : [])];
  let targets: tf.Tensor2D[];
  try {
    targets = await sinkhornKnopp(
      logits.map((l) => ({ logits: l, temperature: temp })),
      reduceSumOf(sync),
    );
  } finally {
    tf.dispose(logits);
  }
  if (!masks && targets[1]) targets[1].dispose();
  // No centre to update: no means.
  return { dinoProbs: targets[0]!, ibotProbs: masks ? targets[1] : undefined };
}

/**
 * The record of a DINO step on `batch`: the loss function (DINO + KoLeo + iBOT), the teacher's targets,
 * the teacher's batch means for the centres and the update to apply after the commit. With
 * Sinkhorn-Knopp centering this runs the step's collectives through `sync` (a membership change there
 * drops the step like any other; nothing is left allocated).
 */
export async function dinoStep(m: DinoModels, batch: DinoBatch, s: StepSettings, c: TrainConfig, sync: GradientSync): Promise<StepRecord> {
  const B = batch.size;
  const nLocal = batch.localCrops;
  const inputs: tf.Tensor[] = [];
  try {
    const globals = tf.tensor4d(batch.globals, [2 * B, batch.globalSize, batch.globalSize, 3]);
    inputs.push(globals);
    const locals = batch.locals ? tf.tensor4d(batch.locals, [nLocal * B, batch.localSize, batch.localSize, 3]) : null;
    if (locals) inputs.push(locals);
    const grid = batch.globalSize / m.vit.patch_size;
    const P = grid * grid;
    const masks = maskTensors(batch, P);
    if (masks) inputs.push(masks.mask, masks.select, masks.index, masks.weights);
    const M = masks ? masks.index.shape[0] : 0;
    const temp = s.teacherTemp;
    const teacher = await teacherTargets(m, globals, masks, B, P, temp, c, sync);
    inputs.push(teacher.dinoProbs);
    if (teacher.ibotProbs) inputs.push(teacher.ibotProbs);
    const means = [teacher.dinoMean, teacher.ibotMean].filter((t): t is tf.Tensor => t !== undefined);
    const ent = entropies(teacher.dinoProbs);
    const doDino = c.dino.loss_weight > 0;
    const sharedIbot = !c.ibot.separate_head;

    const loss = () => {
      const parts: Record<string, tf.Scalar> = {};
      // Each crop's drop path from its image's generator: global crops 0 and 1, then the local crops.
      const crop = (k: number) => batch.dropPath.map((r) => r.fork(k));
      const g = m.student.forward(globals, { training: true, rng: [...crop(0), ...crop(1)], masks: masks?.mask });
      const localRng = () => Array.from({ length: nLocal }, (_, k) => crop(2 + k)).flat();
      const l = locals ? m.student.forward(locals, { training: true, rng: localRng() }) : null;
      const D = m.vit.embed_dim;
      // One pass of the DINO head over [local CLS, global CLS, masked patches (shared head)].
      const headIn: tf.Tensor2D[] = [];
      if (l) headIn.push(l.cls);
      headIn.push(g.cls);
      const maskedPatches = masks ? matMul2d(masks.select, tf.reshape(g.patches, [2 * B * P, D]) as tf.Tensor2D) : null;
      if (maskedPatches && sharedIbot) headIn.push(maskedPatches);
      const headOut = m.heads.dino!.forward(tf.concat(headIn) as tf.Tensor2D);
      const nL = l ? l.cls.shape[0] : 0;
      const localOut = nL > 0 ? (tf.split(tf.slice(headOut, [0, 0], [nL, -1]), nLocal) as tf.Tensor2D[]) : [];
      const globalOut = tf.slice(headOut, [nL, 0], [2 * B, -1]) as tf.Tensor2D;
      let total: tf.Scalar = tf.scalar(0);
      if (doDino) {
        const { global, local } = dinoGlobalLocalLoss(globalOut, teacher.dinoProbs, localOut, c.dino.student_temp);
        parts.loss_dino_global = global;
        parts.loss_dino_local = local;
        total = tf.add(total, tf.mul(tf.add(global, local), c.dino.loss_weight));
        if (c.dino.koleo_loss_weight > 0) {
          const [c1, c2] = tf.split(g.cls, 2) as [tf.Tensor2D, tf.Tensor2D];
          const koleo = tf.add(koleoLoss(c1), koleoLoss(c2)) as tf.Scalar;
          parts.loss_koleo = koleo;
          total = tf.add(total, tf.mul(koleo, c.dino.koleo_loss_weight));
        }
      }
      if (maskedPatches) {
        const studentMasked = sharedIbot
          ? (tf.slice(headOut, [nL + 2 * B, 0], [M, -1]) as tf.Tensor2D)
          : m.heads.ibot!.forward(maskedPatches);
        const ibot = ibotMaskedLoss(studentMasked, teacher.ibotProbs!, masks!.weights, 2 * B, c.dino.student_temp);
        parts.loss_ibot = ibot;
        total = tf.add(total, tf.mul(ibot, c.ibot.loss_weight));
      } else if (c.ibot.loss_weight > 0) {
        // No masked patch on this rank: its iBOT loss is 0 (an empty sum), reported as every rank reports it.
        parts.loss_ibot = tf.scalar(0);
      }
      return { total, parts };
    };

    return {
      losses: [loss],
      inputs,
      targets: { dino: teacher.dinoProbs, ibot: teacher.ibotProbs },
      means,
      metrics: { teacher_temp: temp, teacher_entropy: ent.rows, teacher_batch_entropy: ent.batch },
      update: { teacherMomentum: s.momentum, centres: teacher.ibotMean ? ['dino', 'ibot'] : teacher.dinoMean ? ['dino'] : [] },
    };
  } catch (err) {
    tf.dispose(inputs);
    throw err;
  }
}

/**
 * The post-commit part of a DINO step: the EMA teacher t <- m t + (1 - m) s over the backbone and
 * heads (`student` and `teacher` named alike), then each centre of `update.centres` folds in its
 * `rankMean` `means[i]` (already averaged over the ranks: `Center.updateFromRanks`).
 */
export function applyTeacherUpdate(
  student: Record<string, tf.Variable>,
  teacher: Record<string, tf.Variable>,
  centers: Record<string, Center | undefined>,
  update: StepUpdate,
  means: Float32Array[],
): void {
  if (update.teacherMomentum === null) return;
  const mom = update.teacherMomentum;
  // One tidy per tensor: the temporaries of one at a time.
  for (const [k, tv] of Object.entries(teacher)) tf.tidy(() => tv.assign(tf.add(tf.mul(tv, mom), tf.mul(student[k]!, 1 - mom))));
  update.centres.forEach((name, i) => {
    const ctr = centers[name];
    if (!ctr) throw new Error(`DINO update: no centre "${name}"`);
    ctr.updateFromRanks(means[i]!);
  });
}
