/**
 * The demo's summary numbers recomputed independently of the commands that printed them: the validation
 * accuracy from the trained checkpoint (backbone + linear head) on the val split, and CorLoc from LOST's
 * boxes with valeoai/LOST's bbox_iou (IoU >= 0.5 with any ground-truth box).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readSafetensors, SyntheticDataset, toFloat32 } from '@vitreg/core';
import { loadWeights } from '@vitreg/registers';
import { evalTransform, listCheckpoints } from '@vitreg/trainer';

/** LOST's datasets.bbox_iou of two [x1, y1, x2, y2] boxes (its eps terms are below 1e-6 here). */
export function bboxIou(a: number[], b: number[]): number {
  const inter = Math.max(0, Math.min(a[2]!, b[2]!) - Math.max(a[0]!, b[0]!)) * Math.max(0, Math.min(a[3]!, b[3]!) - Math.max(a[1]!, b[1]!));
  const area = (x: number[]) => (x[2]! - x[0]!) * (x[3]! - x[1]!);
  return inter / (area(a) + area(b) - inter);
}

/** CorLoc of a discover folder's results.jsonl: the share of images whose box has IoU >= 0.5 with a ground-truth box. */
export async function corlocOf(dir: string): Promise<number> {
  const rows = (await readFile(join(dir, 'results.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { box: number[]; gt: number[][] });
  return rows.filter((r) => r.gt.some((g) => bboxIou(r.box, g) >= 0.5)).length / rows.length;
}

/** Validation accuracy of a supervised run folder's last checkpoint: its config's val split, eval transform, CLS -> head -> argmax. */
export async function valAccuracyOf(runDir: string): Promise<number> {
  const cfg = JSON.parse(await readFile(join(runDir, 'config.json'), 'utf8'));
  const last = (await listCheckpoints(runDir)).at(-1)!;
  const model = await loadWeights(join(last.dir, 'model.safetensors'));
  const { tensors } = await readSafetensors(join(last.dir, 'heads.safetensors'));
  const d = cfg.data;
  const val = new SyntheticDataset({
    seed: d.synthetic_seed,
    size: d.synthetic_size,
    numClasses: d.num_classes,
    count: d.val_size,
    split: 'val',
  });
  const S = cfg.crops.global_crops_size;
  const w = tf.tensor2d(toFloat32(tensors['student.head.weight']!), tensors['student.head.weight']!.shape as [number, number]);
  const b = tf.tensor1d(toFloat32(tensors['student.head.bias']!));
  let right = 0;
  for (let i = 0; i < val.length; i++) {
    const it = await val.get(i);
    const x = tf.tensor4d(evalTransform(it.image, it.width, it.height, { cropRatio: cfg.crops.eval_crop_ratio, crop: S }), [1, S, S, 3]);
    const logits = tf.tidy(() => tf.add(tf.matMul(model.forward(x).cls, w), b));
    const scores = Array.from(logits.dataSync());
    if (scores.indexOf(Math.max(...scores)) === it.label) right++;
    tf.dispose([x, logits]);
  }
  tf.dispose([w, b]);
  model.dispose();
  return right / val.length;
}
