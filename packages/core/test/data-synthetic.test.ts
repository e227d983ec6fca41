import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SyntheticDataset, SYNTHETIC_SHAPES, type Box } from '../src/data/index.js';

function iou(a: Box, b: Box): number {
  const iw = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const ih = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = iw * ih;
  const area = (r: Box): number => (r[2] - r[0]) * (r[3] - r[1]);
  return inter / (area(a) + area(b) - inter);
}

/** Luminance with the ITU-R BT.601 weights (PIL's convert('L') before rounding). */
function lumaAt(img: Uint8Array, p: number): number {
  return 0.299 * img[3 * p] + 0.587 * img[3 * p + 1] + 0.114 * img[3 * p + 2];
}

/**
 * Area of each shape in units of radius^2, from its geometry (independent of the rasteriser):
 * square of half-side 0.85; triangle of base 2 and height 1.85; cross of two 0.6 x 2 bars sharing a
 * 0.6 x 0.6 square; ring between radii 0.5 and 1; star of 10 triangles between radii 1 and 0.45
 * (36 degrees apart); diamond of diagonals 2 and 1.24; regular hexagon of circumradius 1.
 */
const AREA: Record<string, number> = {
  circle: Math.PI,
  square: 1.7 * 1.7,
  triangle: (2 * 1.85) / 2,
  cross: 2 * 0.6 * 2 - 0.6 * 0.6,
  ring: Math.PI * (1 - 0.25),
  star: 10 * 0.5 * 1 * 0.45 * Math.sin(Math.PI / 5),
  diamond: (2 * 1.24) / 2,
  hexagon: ((3 * Math.sqrt(3)) / 2) * 1,
};

const sum = (m: Float32Array): number => m.reduce((a, v) => a + v, 0);

test('synthetic items are deterministic and depend only on seed, split and index', async () => {
  const a = new SyntheticDataset({ seed: 7, count: 20 });
  const b = new SyntheticDataset({ seed: 7, count: 500 });
  // generated in a different order and from a dataset of another length: same items
  const fromB = [await b.get(13), await b.get(3)];
  assert.deepEqual(await a.get(3), fromB[1]);
  assert.deepEqual(await a.get(13), fromB[0]);
  const other = new SyntheticDataset({ seed: 8, count: 20 });
  assert.notDeepEqual((await other.get(3)).image, (await a.get(3)).image);
  assert.notDeepEqual((await a.get(4)).image, (await a.get(3)).image);
});

test('rendered items are kept, and each call gets its own copy', () => {
  const ds = new SyntheticDataset({ seed: 2, count: 5, size: 32 });
  const first = ds.generate(1);
  const kept = first.image.slice();
  first.image.fill(0);
  first.boxes[0]![0] = -1;
  const again = ds.generate(1);
  assert.deepEqual(again.image, kept, 'a caller writing into its image changed the next one');
  assert.ok(again.boxes[0]![0] >= 0);
  // the kept copy equals a fresh rendering by another dataset object
  assert.deepEqual(again, new SyntheticDataset({ seed: 2, count: 5, size: 32 }).generate(1));
});

test('train and val splits share no item', () => {
  const train = new SyntheticDataset({ seed: 1, count: 200, size: 32, split: 'train' });
  const val = new SyntheticDataset({ seed: 1, count: 200, size: 32, split: 'val' });
  const key = (img: Uint8Array): string => Buffer.from(img).toString('base64');
  const seen = new Set(Array.from({ length: train.length }, (_, i) => key(train.generate(i).image)));
  assert.equal(seen.size, train.length, 'train items are distinct');
  for (let i = 0; i < val.length; i++) assert.ok(!seen.has(key(val.generate(i).image)), `val item ${i} is in train`);
});

test('labels cover all classes, sizes and boxes are valid', () => {
  for (const numClasses of [5, 8]) {
    const ds = new SyntheticDataset({ seed: 3, count: 300, size: 48, numClasses });
    assert.equal(ds.numClasses, numClasses);
    assert.deepEqual(ds.classNames, SYNTHETIC_SHAPES.slice(0, numClasses));
    const counts = new Array(numClasses).fill(0);
    const objectsPerImage = new Set<number>();
    for (let i = 0; i < ds.length; i++) {
      const item = ds.generate(i);
      assert.equal(item.width, 48);
      assert.equal(item.height, 48);
      assert.equal(item.image.length, 48 * 48 * 3);
      assert.ok(Number.isInteger(item.label) && item.label >= 0 && item.label < numClasses);
      counts[item.label]++;
      assert.ok(item.boxes.length >= 1 && item.boxes.length <= 3);
      objectsPerImage.add(item.boxes.length);
      for (const [x0, y0, x1, y1] of item.boxes) {
        assert.ok(x0 >= 0 && y0 >= 0 && x1 <= 48 && y1 <= 48 && x0 < x1 && y0 < y1, `box ${[x0, y0, x1, y1]} of item ${i}`);
      }
      // the main object spans 55-80% of the side (its tight box: a little less for the square, whose
      // half-side is 0.85 of the frame, a little more when rotated)
      const [x0, y0, x1, y1] = item.boxes[0]!;
      const side = Math.max(x1 - x0, y1 - y0) / 48;
      assert.ok(side >= 0.45 && side <= 0.95, `main box side ${side} of item ${i}`);
      for (const b of item.boxes.slice(1)) assert.ok((b[2] - b[0]) * (b[3] - b[1]) < 0.25 * (x1 - x0) * (y1 - y0));
    }
    for (let c = 0; c < numClasses; c++) assert.ok(counts[c] > ds.length / numClasses / 2, `class ${c}: ${counts[c]} items`);
    assert.deepEqual([...objectsPerImage].sort(), [1, 2, 3]);
  }
});

test('the labelled shape dominates: whole, by far the largest area, and high contrast', () => {
  const size = 64;
  const ds = new SyntheticDataset({ seed: 11, count: 120, size, numClasses: 8 });
  let distractorsSeen = 0;
  for (let i = 0; i < ds.length; i++) {
    const scene = ds.scene(i);
    const item = ds.generate(i);
    const masks = ds.masks(i);
    assert.equal(masks.length, scene.objects.length);
    const main = scene.objects[0]!;
    // Whole (never cut by the border, never occluded): its mask holds the shape's geometric area.
    const expected = AREA[main.shape]! * main.radius ** 2;
    const area = sum(masks[0]!);
    assert.ok(
      Math.abs(area - expected) <= 0.02 * expected,
      `item ${i} (${main.shape}): main area ${area.toFixed(1)} px, geometry ${expected.toFixed(1)} px`,
    );
    // the thinnest shape (diamond, 1.24 r^2) at the smallest side (0.55): 9.4% of the image
    assert.ok(area >= 0.09 * size * size, `item ${i}: main shape covers ${(area / size ** 2).toFixed(3)} of the image`);
    // Every distractor shows under a third of the main shape's area (the worst case: a circle of 18% of the
    // side under a diamond of 55%, 0.0254 / 0.094 = 0.27).
    for (let k = 1; k < masks.length; k++) {
      distractorsSeen++;
      const a = sum(masks[k]!);
      assert.ok(a <= 0.3 * area, `item ${i}: distractor ${k} shows ${a.toFixed(1)} px against the main shape's ${area.toFixed(1)}`);
      assert.ok(a <= AREA[scene.objects[k]!.shape]! * scene.objects[k]!.radius ** 2 * 1.02 + 1);
    }
    // Contrast, measured on the rendered pixels: the darkest pixel fully inside the main shape is at least
    // 90 luminance levels (of 255) above the brightest pure-background pixel (100 minus the pixel noise).
    const total = new Float32Array(size * size);
    for (const m of masks)
      m.forEach((v, p) => {
        total[p] += v;
      });
    let mainMin = Infinity,
      bgMax = -Infinity,
      bgSum = 0,
      bgCount = 0;
    for (let p = 0; p < size * size; p++) {
      const y = lumaAt(item.image, p);
      if (masks[0]![p] === 1) mainMin = Math.min(mainMin, y);
      if (total[p] === 0) {
        bgMax = Math.max(bgMax, y);
        bgSum += y;
        bgCount++;
      }
    }
    assert.ok(mainMin - bgMax >= 90, `item ${i}: main shape luminance >= ${mainMin.toFixed(1)}, background <= ${bgMax.toFixed(1)}`);
    // Distractors are faint: their fully visible pixels sit nearer the background than the main shape does.
    const bgMean = bgSum / bgCount;
    for (let k = 1; k < masks.length; k++) {
      const inside: number[] = [];
      masks[k]!.forEach((v, p) => {
        if (v === 1) inside.push(lumaAt(item.image, p));
      });
      if (inside.length < 4) continue;
      const contrast = Math.abs(inside.reduce((a, v) => a + v, 0) / inside.length - bgMean);
      assert.ok(
        contrast <= 0.75 * (mainMin - bgMean),
        `item ${i}: distractor ${k} contrast ${contrast.toFixed(1)}, main ${(mainMin - bgMean).toFixed(1)}`,
      );
    }
  }
  assert.ok(distractorsSeen >= 20, `only ${distractorsSeen} distractors in ${ds.length} images`);
});

test('the masks add up to the rendered picture', () => {
  // pixel = sum_k mask_k colour_k + (1 - sum_k mask_k) background: where the masks cover everything, the
  // pixel is their colour mixture (up to the rounding of each layer's blend, 1 level per layer)
  const size = 32;
  const ds = new SyntheticDataset({ seed: 4, count: 60, size, saturation: 1 });
  for (let i = 0; i < ds.length; i++) {
    const { objects } = ds.scene(i);
    const item = ds.generate(i);
    const masks = ds.masks(i);
    for (let p = 0; p < size * size; p++) {
      const covered = masks.reduce((a, m) => a + m[p]!, 0);
      assert.ok(covered <= 1 + 1e-5, `item ${i} pixel ${p}: masks sum to ${covered}`);
      if (covered < 1 - 1e-6) continue;
      for (let c = 0; c < 3; c++) {
        const mix = masks.reduce((a, m, k) => a + m[p]! * objects[k]!.color[c]!, 0);
        assert.ok(
          Math.abs(item.image[3 * p + c]! - mix) <= objects.length,
          `item ${i} pixel ${p} channel ${c}: ${item.image[3 * p + c]} vs ${mix.toFixed(2)}`,
        );
      }
    }
  }
});

test('variety: positions, scales, rotations, backgrounds, luminances and distractor counts vary', () => {
  const size = 64;
  const ds = new SyntheticDataset({ seed: 5, count: 300, size });
  const cx: number[] = [],
    sides: number[] = [],
    angles: number[] = [],
    lumas: number[] = [];
  const backgrounds = new Set<string>();
  const distractors = [0, 0, 0];
  for (let i = 0; i < ds.length; i++) {
    const s = ds.scene(i);
    const [x0, , x1] = s.objects[0]!.box;
    cx.push((x0 + x1) / 2);
    sides.push((2 * s.objects[0]!.radius) / size);
    angles.push((s.objects[0]!.angle * 180) / Math.PI);
    lumas.push(0.299 * s.objects[0]!.color[0] + 0.587 * s.objects[0]!.color[1] + 0.114 * s.objects[0]!.color[2]);
    backgrounds.add(s.background);
    distractors[s.objects.length - 1]++;
  }
  const range = (xs: number[]): [number, number] => [Math.min(...xs), Math.max(...xs)];
  const [cxLo, cxHi] = range(cx);
  assert.ok(cxHi - cxLo >= 10, `main box centres span only ${cxLo}-${cxHi} px`);
  const [sLo, sHi] = range(sides);
  assert.ok(sLo >= 0.55 && sLo < 0.58 && sHi <= 0.8 && sHi > 0.77, `main sides span ${sLo}-${sHi}`);
  const [aLo, aHi] = range(angles);
  assert.ok(aLo >= -20 && aLo < -17 && aHi <= 20 && aHi > 17, `rotations span ${aLo}-${aHi} degrees`);
  const [yLo, yHi] = range(lumas);
  assert.ok(yHi - yLo >= 60, `main luminances span only ${yLo}-${yHi}`);
  assert.deepEqual([...backgrounds].sort(), ['checker', 'gradient', 'noise', 'stripes']);
  // a third of the images hold distractors (300 images: 100 expected, standard deviation 8)
  assert.ok(distractors[0]! > 160 && distractors[0]! < 240, `distractor counts ${distractors}`);
  assert.ok(distractors[1]! > 0 && distractors[2]! > 0, `distractor counts ${distractors}`);
});

test('colours: greys by default, the drawn colours with saturation 1', () => {
  const size = 32;
  const grey = new SyntheticDataset({ seed: 6, count: 30, size });
  const colour = new SyntheticDataset({ seed: 6, count: 30, size, saturation: 1 });
  let chroma = 0;
  for (let i = 0; i < grey.length; i++) {
    const s = grey.scene(i);
    for (const c of [...s.colors, ...s.objects.map((o) => o.color)])
      assert.ok(c[0] === c[1] && c[1] === c[2], `item ${i}: colour ${c} is not grey`);
    // only the background's pixel noise (6 levels either way, per channel) separates the channels
    const img = grey.generate(i).image;
    for (let p = 0; p < size * size; p++) {
      const spread = Math.max(img[3 * p]!, img[3 * p + 1]!, img[3 * p + 2]!) - Math.min(img[3 * p]!, img[3 * p + 1]!, img[3 * p + 2]!);
      assert.ok(spread <= 12, `item ${i} pixel ${p}: channels ${img.slice(3 * p, 3 * p + 3)}`);
    }
    const c = colour.scene(i).objects[0]!.color;
    chroma = Math.max(chroma, Math.max(...c) - Math.min(...c));
  }
  assert.ok(chroma > 60, `saturation 1: the most colourful main shape has a channel spread of ${chroma}`);
});

test('the main box matches the pixels painted in the main colour', () => {
  const size = 64;
  const ds = new SyntheticDataset({ seed: 11, count: 40, size });
  for (let i = 0; i < ds.length; i++) {
    const scene = ds.scene(i);
    const item = ds.generate(i);
    const main = scene.objects[0]!;
    assert.equal(item.label, main.label);
    assert.deepEqual(item.boxes[0], main.box);
    // fully covered pixels carry exactly the main colour: their extent is the main box
    let bx0 = size,
      by0 = size,
      bx1 = 0,
      by1 = 0,
      n = 0;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const p = (y * size + x) * 3;
        if (item.image[p] === main.color[0] && item.image[p + 1] === main.color[1] && item.image[p + 2] === main.color[2]) {
          bx0 = Math.min(bx0, x);
          by0 = Math.min(by0, y);
          bx1 = Math.max(bx1, x + 1);
          by1 = Math.max(by1, y + 1);
          n++;
        }
      }
    }
    assert.ok(n > 0.1 * size * size, `item ${i}: main object covers ${n} pixels`);
    const overlap = iou([bx0, by0, bx1, by1], item.boxes[0]!);
    assert.ok(overlap > 0.85, `item ${i}: IoU ${overlap.toFixed(3)} between painted pixels and main box`);
  }
});

test('bad options are rejected with the field named', () => {
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, numClasses: 4 }), /numClasses/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 0 }), /count/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, size: 8 }), /size/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, split: 'test' as 'val' }), /split/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, saturation: 1.5 }), /saturation/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, saturation: Number.NaN }), /saturation/);
  const ds = new SyntheticDataset({ seed: 1, count: 10 });
  assert.throws(() => ds.generate(10), /index 10/);
  assert.throws(() => ds.masks(10), /index 10/);
});

test('flat background: every pixel off the shape is the one flat colour; small shapes leave most patches empty', () => {
  const size = 48;
  const ds = new SyntheticDataset({ seed: 3, count: 40, size, background: 'flat', objectSide: [0.2, 0.3] });
  let emptyPatches = 0;
  for (let i = 0; i < ds.length; i++) {
    const scene = ds.scene(i);
    const item = ds.generate(i);
    assert.equal(scene.background, 'flat');
    assert.equal(scene.objects.length, 1, `item ${i}: no distractors on a flat background`);
    const o = scene.objects[0];
    const side = (2 * o.radius) / size;
    assert.ok(side >= 0.2 - 1e-9 && side <= 0.3 + 1e-9, `item ${i}: side ${side} outside [0.2, 0.3]`);
    const flat = scene.colors[0];
    const isFlat = (p: number): boolean =>
      item.image[3 * p] === flat[0] && item.image[3 * p + 1] === flat[1] && item.image[3 * p + 2] === flat[2];
    let off = 0;
    for (let p = 0; p < size * size; p++) if (!isFlat(p)) off++;
    // independent of the rasteriser: the pixels that differ from the flat colour are the shape's area
    // (its geometry, in units of radius^2) up to its anti-aliased rim (at most its perimeter ~ 8 radius)
    const area = AREA[o.shape] * o.radius * o.radius;
    assert.ok(Math.abs(off - area) <= 8 * o.radius + 4, `item ${i} (${o.shape}): ${off} non-flat pixels, shape area ${area.toFixed(1)}`);
    // and all of them lie within one pixel of the shape's box
    const [x0, y0, x1, y1] = item.boxes[0];
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        if (x < x0 - 1 || x > x1 || y < y0 - 1 || y > y1)
          assert.ok(isFlat(y * size + x), `item ${i}: pixel (${x}, ${y}) off the box is not flat`);
      }
    }
    for (let py = 0; py < size; py += 8) {
      for (let px = 0; px < size; px += 8) {
        let all = true;
        for (let y = py; y < py + 8 && all; y++) for (let x = px; x < px + 8 && all; x++) all = isFlat(y * size + x);
        if (all) emptyPatches++;
      }
    }
  }
  // a shape of at most 0.3 x 48 = 14.4 px (its rotated frame under 20 px) touches at most 4 x 4 of the 36 patches
  const share = emptyPatches / (ds.length * 36);
  assert.ok(share >= 0.6, `share of 8 x 8 patches that are all background: ${share.toFixed(3)}`);
});

test('the textured default is unchanged by the new options, and objectSide alone keeps the textures', () => {
  const a = new SyntheticDataset({ seed: 5, count: 8, size: 32 });
  const b = new SyntheticDataset({ seed: 5, count: 8, size: 32, background: 'textured', objectSide: [0.55, 0.8] });
  for (let i = 0; i < 8; i++) assert.deepEqual(b.generate(i), a.generate(i));
  const small = new SyntheticDataset({ seed: 5, count: 30, size: 32, objectSide: [0.3, 0.3] });
  for (let i = 0; i < 30; i++) {
    const s = small.scene(i);
    assert.notEqual(s.background, 'flat');
    assert.ok(Math.abs((2 * s.objects[0].radius) / 32 - 0.3) < 1e-9);
  }
});

test('bad background and objectSide options are rejected with the field named', () => {
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, background: 'plain' as 'flat' }), /background/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, objectSide: [0.3, 0.2] }), /objectSide/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, objectSide: [0.01, 0.2] }), /objectSide/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, objectSide: [0.2, 0.9] }), /objectSide/);
  assert.throws(() => new SyntheticDataset({ seed: 1, count: 10, objectSide: [0.2] as unknown as [number, number] }), /objectSide/);
});
