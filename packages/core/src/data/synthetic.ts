/**
 * A built-in dataset generated from a seed, so classification, self-supervision and object
 * discovery run without downloads. Each image has one to three shapes on a smooth (gradient) or
 * textured (noise, stripes, checker) background, in random colours kept apart (RGB distance >= 110
 * when possible). The main object (40-60% of the side, rotated by up to 20 degrees, fully inside the
 * image, drawn last so it is never occluded) gives the class label: its shape. Half the images add
 * one or two distractors of 10-22% of the side. Every shape has a ground-truth box, the main one
 * first.
 *
 * Item `i` depends only on (seed, split, i): its generator is `Rng(seed).fork(split).fork(i)`, so
 * items can be generated in any order, and the train and val splits use different streams.
 * Rasterisation is plain JS with 3x3 supersampled (anti-aliased) edges.
 */
import { Rng } from '../rng.js';
import { checkIndex, type Box, type Dataset, type DatasetItem } from './types.js';

/** Shape names in label order; `numClasses` takes the first n. */
export const SYNTHETIC_SHAPES = ['circle', 'square', 'triangle', 'cross', 'ring', 'star', 'diamond', 'hexagon'] as const;
export type SyntheticShape = (typeof SYNTHETIC_SHAPES)[number];
export type SyntheticBackground = 'gradient' | 'noise' | 'stripes' | 'checker';

export interface SyntheticOptions {
  seed: number;
  /** Number of items. */
  count: number;
  /** Side of the square images in pixels (default 64, at least 16). */
  size?: number;
  /** Number of classes, 5 to 8 (default 5). */
  numClasses?: number;
  split?: 'train' | 'val';
}

/** One shape of a scene: where it is, how it looks, and its box in pixels. */
export interface SyntheticObject {
  shape: SyntheticShape;
  label: number;
  /** Centre in pixels. */
  cx: number;
  cy: number;
  /** Half the side of the shape's square frame, in pixels. */
  radius: number;
  /** Rotation in radians. */
  angle: number;
  color: [number, number, number];
  /** Tight box of the pixels the shape covers by at least half. */
  box: Box;
}

export interface SyntheticScene {
  background: SyntheticBackground;
  /** Background colours (the texture alternates / blends between them). */
  colors: [[number, number, number], [number, number, number]];
  /** Main object first; drawn in reverse order, so the main object is on top. */
  objects: SyntheticObject[];
}

const SPLIT_STREAM = { train: 1, val: 2 } as const;
const SUPERSAMPLE = 3;

type Rgb = [number, number, number];
type Inside = (u: number, v: number) => boolean;

/** Point-in-polygon (even-odd rule) for vertices `[x0, y0, x1, y1, ...]`. */
function polygon(points: number[]): Inside {
  const n = points.length / 2;
  return (u, v) => {
    let inside = false;
    for (let i = 0, j = n - 1; i < n; j = i++) {
      const xi = points[2 * i], yi = points[2 * i + 1];
      const xj = points[2 * j], yj = points[2 * j + 1];
      if (yi > v !== yj > v && u < ((xj - xi) * (v - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  };
}

function regularPolygon(sides: number, radii: number[], phase: number): number[] {
  const pts: number[] = [];
  for (let k = 0; k < sides; k++) {
    const t = phase + (2 * Math.PI * k) / sides;
    const r = radii[k % radii.length];
    pts.push(r * Math.cos(t), r * Math.sin(t));
  }
  return pts;
}

/** Each shape in its own frame: u, v in [-1, 1], y pointing down. */
const INSIDE: Record<SyntheticShape, Inside> = {
  circle: (u, v) => u * u + v * v <= 1,
  square: (u, v) => Math.abs(u) <= 0.85 && Math.abs(v) <= 0.85,
  triangle: polygon([0, -1, 1, 0.85, -1, 0.85]),
  cross: (u, v) => (Math.abs(u) <= 0.3 && Math.abs(v) <= 1) || (Math.abs(v) <= 0.3 && Math.abs(u) <= 1),
  ring: (u, v) => {
    const r2 = u * u + v * v;
    return r2 <= 1 && r2 >= 0.5 * 0.5;
  },
  star: polygon(regularPolygon(10, [1, 0.45], -Math.PI / 2)),
  diamond: polygon([0, -1, 0.62, 0, 0, 1, -0.62, 0]),
  hexagon: polygon(regularPolygon(6, [1], 0)),
};

/** Coverage in [0, 1] of object `o` at pixel (x, y), by 3x3 supersampling. */
function coverage(o: SyntheticObject, inside: Inside, x: number, y: number): number {
  const cos = Math.cos(o.angle), sin = Math.sin(o.angle);
  let hits = 0;
  for (let sy = 0; sy < SUPERSAMPLE; sy++) {
    for (let sx = 0; sx < SUPERSAMPLE; sx++) {
      const dx = (x + (sx + 0.5) / SUPERSAMPLE - o.cx) / o.radius;
      const dy = (y + (sy + 0.5) / SUPERSAMPLE - o.cy) / o.radius;
      // rotate the sample point into the shape's frame
      if (inside(cos * dx + sin * dy, -sin * dx + cos * dy)) hits++;
    }
  }
  return hits / (SUPERSAMPLE * SUPERSAMPLE);
}

/** Pixel range [lo, hi) that can hold object `o`, clipped to the image. */
function frame(o: Pick<SyntheticObject, 'cx' | 'cy' | 'radius'>, size: number): [number, number, number, number] {
  const r = o.radius * Math.SQRT2 + 1;
  return [
    Math.max(0, Math.floor(o.cx - r)), Math.max(0, Math.floor(o.cy - r)),
    Math.min(size, Math.ceil(o.cx + r)), Math.min(size, Math.ceil(o.cy + r)),
  ];
}

function tightBox(o: SyntheticObject, size: number): Box {
  const inside = INSIDE[o.shape];
  const [x0, y0, x1, y1] = frame(o, size);
  let bx0 = size, by0 = size, bx1 = 0, by1 = 0;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      if (coverage(o, inside, x, y) >= 0.5) {
        bx0 = Math.min(bx0, x); by0 = Math.min(by0, y);
        bx1 = Math.max(bx1, x + 1); by1 = Math.max(by1, y + 1);
      }
    }
  }
  return [bx0, by0, bx1, by1];
}

function randomColor(rng: Rng): Rgb {
  return [rng.int(256), rng.int(256), rng.int(256)];
}

function distance(a: Rgb, b: Rgb): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/** A colour at least `minDistance` from each of `avoid` (best of 50 draws if none is). */
function contrastingColor(rng: Rng, avoid: Rgb[], minDistance: number): Rgb {
  let best = randomColor(rng);
  let bestScore = Math.min(...avoid.map((c) => distance(best, c)));
  for (let attempt = 0; attempt < 50 && bestScore < minDistance; attempt++) {
    const c = randomColor(rng);
    const score = Math.min(...avoid.map((a) => distance(c, a)));
    if (score > bestScore) {
      best = c;
      bestScore = score;
    }
  }
  return best;
}

export class SyntheticDataset implements Dataset {
  readonly seed: number;
  readonly length: number;
  readonly size: number;
  readonly numClasses: number;
  readonly split: 'train' | 'val';
  readonly classNames: string[];

  constructor(opts: SyntheticOptions) {
    const { seed, count } = opts;
    this.size = opts.size ?? 64;
    this.numClasses = opts.numClasses ?? 5;
    this.split = opts.split ?? 'train';
    if (!Number.isSafeInteger(seed)) throw new Error(`SyntheticDataset: seed must be a safe integer, got ${seed}`);
    if (!Number.isInteger(count) || count < 1) throw new Error(`SyntheticDataset: count must be a positive integer, got ${count}`);
    if (!Number.isInteger(this.size) || this.size < 16) {
      throw new Error(`SyntheticDataset: size must be an integer >= 16, got ${this.size}`);
    }
    if (!Number.isInteger(this.numClasses) || this.numClasses < 5 || this.numClasses > SYNTHETIC_SHAPES.length) {
      throw new Error(`SyntheticDataset: numClasses must be an integer in [5, ${SYNTHETIC_SHAPES.length}], got ${this.numClasses}`);
    }
    if (!(this.split in SPLIT_STREAM)) throw new Error(`SyntheticDataset: split must be 'train' or 'val', got '${this.split}'`);
    this.seed = seed;
    this.length = count;
    this.classNames = SYNTHETIC_SHAPES.slice(0, this.numClasses);
  }

  /** The scene of item `index` (shapes, colours, boxes) without rendering it. */
  scene(index: number): SyntheticScene {
    checkIndex('SyntheticDataset', index, this.length);
    const rng = new Rng(this.seed).fork(SPLIT_STREAM[this.split]).fork(index);
    const size = this.size;
    const backgrounds: SyntheticBackground[] = ['gradient', 'noise', 'stripes', 'checker'];
    const background = backgrounds[rng.int(backgrounds.length)];
    const c0 = randomColor(rng);
    // textures stay low-contrast next to the objects: the second colour is near the first
    const c1 = c0.map((c) => Math.min(255, Math.max(0, c + rng.int(81) - 40))) as Rgb;
    const objects: SyntheticObject[] = [];

    const place = (label: number, sideFraction: number, avoid: Rgb[]): SyntheticObject => {
      const radius = (sideFraction * size) / 2;
      // keep the rotated frame inside the image: the shape is fully visible
      const margin = Math.min(radius * 1.2 + 1, size / 2);
      const o: SyntheticObject = {
        shape: SYNTHETIC_SHAPES[label],
        label,
        cx: margin + rng.float() * (size - 2 * margin),
        cy: margin + rng.float() * (size - 2 * margin),
        radius,
        angle: ((rng.float() - 0.5) * 40 * Math.PI) / 180,
        color: contrastingColor(rng, avoid, 110),
        box: [0, 0, 0, 0],
      };
      o.box = tightBox(o, size);
      return o;
    };

    const label = rng.int(this.numClasses);
    const main = place(label, 0.4 + 0.2 * rng.float(), [c0, c1]);
    objects.push(main);
    // 0, 1 or 2 smaller distractors (probabilities 1/2, 3/10, 1/5), so the main object dominates
    const r = rng.float();
    const distractors = r < 0.5 ? 0 : r < 0.8 ? 1 : 2;
    for (let k = 0; k < distractors; k++) {
      objects.push(place(rng.int(this.numClasses), 0.1 + 0.12 * rng.float(), [c0, c1, main.color]));
    }
    return { background, colors: [c0, c1], objects };
  }

  /** Renders item `index` synchronously. */
  generate(index: number): DatasetItem {
    const scene = this.scene(index);
    const size = this.size;
    const image = new Uint8Array(size * size * 3);
    // the background draws come from their own stream, after the scene's
    const rng = new Rng(this.seed).fork(SPLIT_STREAM[this.split]).fork(index).fork(0);
    paintBackground(image, size, scene, rng);
    for (let k = scene.objects.length - 1; k >= 0; k--) paintObject(image, size, scene.objects[k]);
    return {
      image,
      width: size,
      height: size,
      label: scene.objects[0].label,
      boxes: scene.objects.map((o) => [...o.box] as Box),
      id: `synthetic-${this.split}-${index}`,
    };
  }

  async get(index: number): Promise<DatasetItem> {
    return this.generate(index);
  }
}

function paintBackground(image: Uint8Array, size: number, scene: SyntheticScene, rng: Rng): void {
  const [c0, c1] = scene.colors;
  const angle = rng.float() * Math.PI;
  const ca = Math.cos(angle), sa = Math.sin(angle);
  const period = 4 + rng.int(9);
  // coarse grid of random values for the smooth noise texture
  const grid = 5;
  const coarse = Float64Array.from({ length: (grid + 1) * (grid + 1) }, () => rng.float());
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let t: number;
      switch (scene.background) {
        case 'gradient':
          t = ((x - size / 2) * ca + (y - size / 2) * sa) / (size * Math.SQRT2) + 0.5;
          break;
        case 'stripes':
          t = Math.floor((x * ca + y * sa) / period) % 2 === 0 ? 0 : 1;
          break;
        case 'checker':
          t = (Math.floor(x / period) + Math.floor(y / period)) % 2;
          break;
        case 'noise': {
          const gx = (x / size) * grid, gy = (y / size) * grid;
          const ix = Math.floor(gx), iy = Math.floor(gy);
          const fx = gx - ix, fy = gy - iy;
          const at = (i: number, j: number): number => coarse[j * (grid + 1) + i];
          const smooth = (1 - fy) * ((1 - fx) * at(ix, iy) + fx * at(ix + 1, iy)) + fy * ((1 - fx) * at(ix, iy + 1) + fx * at(ix + 1, iy + 1));
          t = Math.min(1, Math.max(0, smooth + (rng.float() - 0.5) * 0.3));
          break;
        }
      }
      const p = (y * size + x) * 3;
      for (let c = 0; c < 3; c++) image[p + c] = Math.round(c0[c] + (c1[c] - c0[c]) * t);
    }
  }
}

function paintObject(image: Uint8Array, size: number, o: SyntheticObject): void {
  const inside = INSIDE[o.shape];
  const [x0, y0, x1, y1] = frame(o, size);
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const a = coverage(o, inside, x, y);
      if (a === 0) continue;
      const p = (y * size + x) * 3;
      for (let c = 0; c < 3; c++) image[p + c] = Math.round(image[p + c] * (1 - a) + o.color[c] * a);
    }
  }
}
