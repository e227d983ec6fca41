import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bestIou, boxIou, corloc, isHit, scaleBox } from '../src/index.js';
import { area } from '../src/corloc.js';
import { type Box } from '../src/lost.js';

test('boxIou on constructed boxes (continuous coordinates, no +1)', () => {
  assert.equal(boxIou([0, 0, 10, 10], [0, 0, 10, 10]), 1);
  assert.equal(boxIou([0, 0, 10, 10], [10, 0, 20, 10]), 0); // touching edges
  assert.equal(boxIou([0, 0, 10, 10], [5, 0, 15, 10]), 50 / 150);
  assert.equal(boxIou([0, 0, 10, 10], [2, 2, 7, 7]), 25 / 100);
  assert.equal(boxIou([0, 0, 0, 0], [0, 0, 0, 0]), 0);
  assert.equal(area([5, 5, 2, 9]), 0);
});

test('CorLoc counts images with IoU >= 0.5 against any ground-truth box', () => {
  const gt: Box[][] = [
    [
      [0, 0, 10, 10],
      [20, 20, 40, 40],
    ],
    [[0, 0, 10, 10]],
    [[0, 0, 10, 10]],
    [],
  ];
  const preds: Box[] = [
    [21, 21, 40, 40], // second gt box, IoU 361/400
    [0, 0, 10, 20], // IoU exactly 0.5: a hit
    [0, 0, 10, 21], // IoU 100/210 < 0.5
    [0, 0, 5, 5], // no gt: never a hit
  ];
  const hits = preds.map((p, i) => isHit(p, gt[i]));
  assert.deepEqual(hits, [true, true, false, false]);
  assert.equal(bestIou(preds[0], gt[0]), 361 / 400);
  assert.deepEqual(corloc(hits), { corloc: 0.5, hits: 2, images: 4 });
  assert.deepEqual(corloc([]), { corloc: 0, hits: 0, images: 0 });
  // boxes scaled into a resized input keep their IoU
  const [a, b] = [
    [0, 0, 10, 10],
    [5, 0, 15, 10],
  ] as Box[];
  assert.ok(Math.abs(boxIou(scaleBox(a, 2.24, 1.5), scaleBox(b, 2.24, 1.5)) - boxIou(a, b)) < 1e-12);
  // each coordinate by its own axis' factor (x0, x1 by sx; y0, y1 by sy)
  assert.deepEqual(scaleBox([10, 20, 30, 40], 2, 0.5), [20, 10, 60, 20]);
});
