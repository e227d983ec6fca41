/**
 * The trainer's losses (losses.ts: DINOv2's DINOLoss, iBOTPatchLoss.forward_masked, KoLeoLoss, and the
 * supervised soft-target cross-entropy and BCE) as training-graph ops, formula for formula.
 */
import type { TrainGraph, Value } from './autodiff.js';
import { asFloat, gatherRows, l2Normalize, logSoftmax, productNode } from './nn-ops.js';

/** Soft-target cross-entropy: -mean_rows(sum(t log_softmax(z))). */
export function softTargetCrossEntropy(t: TrainGraph, logits: Value, targets: Value): Value {
  return t.neg(t.reduceMean(t.reduceSum(t.mul(logSoftmax(t, logits), targets), [-1]), [0]));
}

/**
 * DeiT-III's --bce-loss: targets binarised (> 0), then BCEWithLogitsLoss (mean):
 * mean(max(z, 0) - z t + log(1 + exp(-|z|))).
 */
export function binaryCrossEntropy(t: TrainGraph, logits: Value, targets: Value): Value {
  const bin = asFloat(t, t.emit('Greater', [targets, t.scalar(0)], targets.shape));
  const soft = t.log(t.add(t.scalar(1), t.exp(t.neg(t.abs(logits)))));
  const all = logits.shape.map((_, i) => i);
  return t.reduceMean(t.add(t.sub(t.relu(logits), t.mul(logits, bin)), soft), all);
}

/** log_softmax(s / temp) along the last axis. */
function studentLogProbs(t: TrainGraph, s: Value, temp: number): Value {
  return logSoftmax(t, t.div(s, t.scalar(temp)));
}

/**
 * The DINO terms for 2 global crops (losses.ts dinoGlobalLocalLoss): `global` [2B, K] student head outputs
 * of crop 1 then 2, `teacher` [2B, K] the teacher's targets in swapped order, `local` [nLocal * B, K] the
 * local crops' outputs (crop k of every image, then crop k + 1) or null. Both terms are divided by the
 * number of pairs, 2 + max(2 nLocal, 1); the global one counts its 2 pairs.
 */
export function dinoGlobalLocal(
  t: TrainGraph,
  global: Value,
  teacher: Value,
  local: Value | null,
  nLocal: number,
  studentTemp: number,
): { global: Value; local: Value } {
  const B2 = global.shape[0]!;
  if (B2 % 2 !== 0 || teacher.shape[0] !== B2)
    throw new Error(`dinoGlobalLocal: global [${global.shape}] and teacher [${teacher.shape}] must have the same even rows`);
  const B = B2 / 2;
  const K = global.shape[1]!;
  const terms = t.scalar(2 + Math.max(nLocal * 2, 1));
  const ce = t.neg(t.reduceMean(t.reduceSum(t.mul(teacher, studentLogProbs(t, global, studentTemp)), [-1]), [0]));
  const globalLoss = t.div(t.scale(ce, 2), terms);
  if (!local || nLocal === 0) return { global: globalLoss, local: t.scalar(0) };
  // Every local crop against both teacher views: sum over crops and rows of sum(lsm (t0 + t1)) / B.
  const views = t.add(t.slice(teacher, 0, 0, B), t.slice(teacher, 0, B, B2));
  const lsm = t.reshape(studentLogProbs(t, local, studentTemp), [nLocal, B, K]);
  const sum = t.reduceSum(t.mul(lsm, views), [0, 1, 2]);
  return { global: globalLoss, local: t.div(t.neg(t.scale(sum, 1 / B)), terms) };
}

/**
 * iBOTPatchLoss.forward_masked: -sum(w sum(t log_softmax(s / temp))) / nImages over the masked rows
 * (student [M, K], teacher [M, K], weights [M]; padding rows have weight 0 and change nothing).
 */
export function ibotMasked(t: TrainGraph, student: Value, teacher: Value, weights: Value, nImages: number, studentTemp: number): Value {
  const perPatch = t.reduceSum(t.mul(teacher, studentLogProbs(t, student, studentTemp)), [-1]);
  return t.div(t.neg(t.reduceSum(t.mul(perPatch, weights), [0])), t.scalar(nImages));
}

/**
 * KoLeoLoss on x [n, D]: F.normalize (eps 1e-8), each row's nearest other row by inner product (the
 * diagonal set to -1; ArgMax, no gradient), PairwiseDistance(eps 1e-8) ||x - x_nn + eps||, then
 * -mean(log(d + eps)). The neighbour rows are gathered, so the gradient reaches them too (as torch's indexing).
 */
export function koleo(t: TrainGraph, x: Value, eps = 1e-8): Value {
  const n = x.shape[0]!;
  if (n < 2) throw new Error(`koleo: expected at least 2 rows, got ${n}`);
  const xn = l2Normalize(t, x, eps);
  const dots = productNode(t, xn, xn, { transB: true }, [n, n]);
  const eye = new Float32Array(n * n);
  for (let i = 0; i < n; i++) eye[i * n + i] = 1;
  const e = t.constant('koleo_eye', eye, [n, n]);
  const masked = t.emit('Sub', [t.emit('Mul', [dots, t.emit('Sub', [t.scalar(1), e], [n, n])], [n, n]), e], [n, n]);
  const nearest = t.emit('ArgMax', [masked], [n], { axis: 1, keepdims: 0 }, { dtype: 'int64' });
  const diff = t.add(t.sub(xn, gatherRows(t, xn, nearest)), t.scalar(eps));
  const dist = t.sqrt(t.reduceSum(t.mul(diff, diff), [-1]));
  return t.neg(t.reduceMean(t.log(t.add(dist, t.scalar(eps))), [0]));
}
