/**
 * Box overlap and CorLoc, the object-discovery score: the share of images whose predicted box has
 * IoU >= 0.5 with at least one ground-truth box.
 *
 * Boxes are [x0, y0, x1, y1] in continuous pixel coordinates (x1, y1 exclusive), the convention of
 * LOST's bbox_iou: area = (x1 - x0) * (y1 - y0), no "+1". Predicted and ground-truth boxes must be in
 * the same frame; `scaleBox` maps a box from the original image to a resized model input.
 */
import type { Box } from './lost.js';

/** Intersection over union of two boxes; 0 when the union is empty. */
export function boxIou(a: Box, b: Box): number {
  const iw = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const ih = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = iw * ih;
  const union = area(a) + area(b) - inter;
  return union > 0 ? inter / union : 0;
}

/** Area of a box (0 for an inverted one). */
export function area(b: Box): number {
  return Math.max(0, b[2] - b[0]) * Math.max(0, b[3] - b[1]);
}

/** Highest IoU of `pred` with any of `truths` (0 when there are none). */
export function bestIou(pred: Box, truths: readonly Box[]): number {
  let best = 0;
  for (const t of truths) best = Math.max(best, boxIou(pred, t));
  return best;
}

/** CorLoc's per-image test: IoU >= threshold (0.5) with any ground-truth box. */
export function isHit(pred: Box, truths: readonly Box[], threshold = 0.5): boolean {
  return truths.some((t) => boxIou(pred, t) >= threshold);
}

export interface CorLoc {
  /** Fraction of images hit, in [0, 1]. */
  corloc: number;
  hits: number;
  images: number;
}

/** CorLoc over per-image hit flags. */
export function corloc(hits: readonly boolean[]): CorLoc {
  const n = hits.filter(Boolean).length;
  return { corloc: hits.length > 0 ? n / hits.length : 0, hits: n, images: hits.length };
}

/** Scale a box by independent x and y factors (original image -> resized model input). */
export function scaleBox(b: Box, sx: number, sy: number): Box {
  return [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
}
