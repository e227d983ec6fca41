/**
 * A built-in dataset generated from a seed, so classification, self-supervision and object
 * discovery run without downloads. Each image holds one labelled shape that clearly dominates it:
 * large (its square frame 55-80% of the side), high contrast (light on a dark background, its
 * luminance at least 100 of 255 above each background colour), rotated by up to 20 degrees either
 * way, fully inside the image at a random position, drawn last so it is never occluded. Its shape
 * is the class label. The background is a low-contrast gradient, smooth noise, stripes or checker
 * with pixel noise. A third of the images add one or two distractors: small (10-18% of the side)
 * and faint (their colour a quarter of the way from the background's to a random one), beneath the
 * main shape. Colours are greys of random luminance unless `saturation` keeps some of their hue.
 * Every shape has a ground-truth box, the main one first, and a visible-coverage mask (`masks`).
 *
 * `background: 'flat'` paints every background pixel in one colour (the dark first background colour,
 * no texture, no pixel noise, no distractors), and `objectSide` sets the main shape's side range: with a
 * small object (e.g. [0.2, 0.3]) most patches are then identical, information-free background, the
 * redundant patches on which the paper's high-norm tokens sit. The textured default is unchanged.
 *
 * Item `i` depends only on (seed, split, i): its generator is `Rng(seed).fork(split).fork(i)`, so
 * items can be generated in any order, and the train and val splits use different streams.
 * Rasterisation is plain JS with 3x3 supersampled (anti-aliased) edges.
 *
 * Over 450 lines: one job, the generator; the scene draw, the shape geometry and the painters share the
 * scene's types and layout constants, and each part is small.
 */
import { Rng } from '../rng.js';
import { checkIndex, type Box, type Dataset, type DatasetItem } from './types.js';

/** Shape names in label order; `numClasses` takes the first n. */
export const SYNTHETIC_SHAPES = ['circle', 'square', 'triangle', 'cross', 'ring', 'star', 'diamond', 'hexagon'] as const;
export type SyntheticShape = (typeof SYNTHETIC_SHAPES)[number];
export type SyntheticBackground = 'gradient' | 'noise' | 'stripes' | 'checker' | 'flat';
/** What a dataset's backgrounds look like: 'textured' (the four textures, the default) or 'flat'. */
export type SyntheticBackgroundMode = 'textured' | 'flat';
export const SYNTHETIC_BACKGROUND_MODES: readonly SyntheticBackgroundMode[] = ['textured', 'flat'];

export interface SyntheticOptions {
  seed: number;
  /** Number of items. */
  count: number;
  /** Side of the square images in pixels (default 64, at least 16). */
  size?: number;
  /** Number of classes, 5 to 8 (default 5). */
  numClasses?: number;
  split?: 'train' | 'val';
  /**
   * Fraction of their chroma the random colours keep, in [0, 1] (default 0: greys of random
   * luminance, the contrast rules unchanged). Hue is otherwise the easiest cue for self-supervised
   * learning: the two crops of an image match on colour alone. Measured while tuning tiny-dino (200
   * steps, k-NN over 500 training images): 0.66 with greys, 0.57 with every colour at 0.15, 0.55
   * with grey backgrounds under shapes at 0.35.
   */
  saturation?: number;
  /**
   * 'textured' (default): gradient, noise, stripes or checker with pixel noise, and distractors; 'flat':
   * one colour per image (its first background colour), no noise, no distractors.
   */
  background?: SyntheticBackgroundMode;
  /**
   * Range of the main shape's side (of its square frame) as a fraction of the image side, within
   * [0.05, 0.8] (default SYNTHETIC_LAYOUT.mainSide, [0.55, 0.8]).
   */
  objectSide?: readonly [number, number];
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
/** Pixels of rendered items a dataset keeps (32 MiB: 10,000 images of 32x32, 2,700 of 64x64). */
export const SYNTHETIC_CACHE_BYTES = 32 * 2 ** 20;
const SUPERSAMPLE = 3;

/** The scene generator's ranges (documented in the module comment and the core README). */
export const SYNTHETIC_LAYOUT = {
  /** Main shape: side of its square frame as a fraction of the image side. */
  mainSide: [0.55, 0.8],
  /** Main shape: rotation range in degrees (either way). */
  maxRotationDeg: 20,
  /** The main shape is lighter than each background colour by at least this luminance (0-255, BT.601). */
  minLumaContrast: 100,
  /** Background: the luminance of its first colour is at most this. */
  darkBackground: 60,
  /** Background: the second colour is the first moved by at most this much per channel. */
  backgroundSpread: 24,
  /** Background: uniform pixel noise of at most this much per channel, on every texture. */
  pixelNoise: 6,
  /** Probability of distractors; given some, two with probability 1/3, else one. */
  distractorProbability: 1 / 3,
  /** Distractor side as a fraction of the image side. */
  distractorSide: [0.1, 0.18],
  /** A distractor's colour: this fraction of the way from the first background colour to a random colour. */
  distractorStrength: 0.25,
} as const;

type Rgb = [number, number, number];
type Inside = (u: number, v: number) => boolean;

/** Point-in-polygon (even-odd rule) for vertices `[x0, y0, x1, y1, ...]`. */
function polygon(points: number[]): Inside {
  const n = points.length / 2;
  return (u, v) => {
    let inside = false;
    for (let i = 0, j = n - 1; i < n; j = i++) {
      const xi = points[2 * i],
        yi = points[2 * i + 1];
      const xj = points[2 * j],
        yj = points[2 * j + 1];
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

const CIRCLE_OUTLINE = regularPolygon(90, [1], 0);

/** Points of each shape's outline in its frame (the circle's sampled every 4 degrees), for its extent. */
const OUTLINE: Record<SyntheticShape, number[]> = {
  circle: CIRCLE_OUTLINE,
  square: [-0.85, -0.85, 0.85, -0.85, 0.85, 0.85, -0.85, 0.85],
  triangle: [0, -1, 1, 0.85, -1, 0.85],
  cross: [-0.3, -1, 0.3, -1, 0.3, -0.3, 1, -0.3, 1, 0.3, 0.3, 0.3, 0.3, 1, -0.3, 1, -0.3, 0.3, -1, 0.3, -1, -0.3, -0.3, -0.3],
  ring: CIRCLE_OUTLINE,
  star: regularPolygon(10, [1, 0.45], -Math.PI / 2),
  diamond: [0, -1, 0.62, 0, 0, 1, -0.62, 0],
  hexagon: regularPolygon(6, [1], 0),
};

/**
 * Half-width and half-height in pixels of a shape of `radius` rotated by `angle`: the frame point
 * (u, v) lands at offset (cos u - sin v, sin u + cos v) x radius from the centre (see `coverage`).
 */
function extent(shape: SyntheticShape, radius: number, angle: number): [number, number] {
  const pts = OUTLINE[shape];
  const cos = Math.cos(angle),
    sin = Math.sin(angle);
  let hx = 0,
    hy = 0;
  for (let k = 0; k < pts.length; k += 2) {
    hx = Math.max(hx, Math.abs(cos * pts[k] - sin * pts[k + 1]));
    hy = Math.max(hy, Math.abs(sin * pts[k] + cos * pts[k + 1]));
  }
  // the circle's outline is sampled: its true extent is up to 1 / cos(2 degrees) further
  const slack = pts === CIRCLE_OUTLINE ? 1 / Math.cos(Math.PI / 90) : 1;
  return [hx * radius * slack, hy * radius * slack];
}

/** Coverage in [0, 1] of object `o` at pixel (x, y), by 3x3 supersampling. */
function coverage(o: SyntheticObject, inside: Inside, x: number, y: number): number {
  const cos = Math.cos(o.angle),
    sin = Math.sin(o.angle);
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
    Math.max(0, Math.floor(o.cx - r)),
    Math.max(0, Math.floor(o.cy - r)),
    Math.min(size, Math.ceil(o.cx + r)),
    Math.min(size, Math.ceil(o.cy + r)),
  ];
}

function tightBox(o: SyntheticObject, size: number): Box {
  const inside = INSIDE[o.shape];
  const [x0, y0, x1, y1] = frame(o, size);
  let bx0 = size,
    by0 = size,
    bx1 = 0,
    by1 = 0;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      if (coverage(o, inside, x, y) >= 0.5) {
        bx0 = Math.min(bx0, x);
        by0 = Math.min(by0, y);
        bx1 = Math.max(bx1, x + 1);
        by1 = Math.max(by1, y + 1);
      }
    }
  }
  return [bx0, by0, bx1, by1];
}

function randomColor(rng: Rng): Rgb {
  return [rng.int(256), rng.int(256), rng.int(256)];
}

/** Luminance of an RGB colour, 0-255 (ITU-R BT.601 weights, as PIL's convert('L')). */
function luma(c: readonly number[]): number {
  return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
}

/** `c` moved towards the grey of its own luminance, keeping `saturation` of its chroma (luminance kept up to rounding). */
function muted(c: Rgb, saturation: number): Rgb {
  const y = luma(c);
  return c.map((v) => Math.min(255, Math.max(0, Math.round(y + (v - y) * saturation)))) as Rgb;
}

/**
 * A random colour whose luminance lies in [lo, hi]: the first of up to 200 draws that does, else the
 * last draw scaled into the range (grey-free fallback, practically never used).
 */
function colorInLuma(rng: Rng, lo: number, hi: number): Rgb {
  let c = randomColor(rng);
  for (let attempt = 0; attempt < 200; attempt++) {
    const y = luma(c);
    if (y >= lo && y <= hi) return c;
    c = randomColor(rng);
  }
  const y = Math.max(luma(c), 1);
  const target = (lo + hi) / 2;
  const scaled = c.map((v) => Math.min(255, Math.round((v * target) / y))) as Rgb;
  return luma(scaled) >= lo && luma(scaled) <= hi ? scaled : [Math.round(target), Math.round(target), Math.round(target)];
}

export class SyntheticDataset implements Dataset {
  readonly seed: number;
  readonly length: number;
  readonly size: number;
  readonly numClasses: number;
  readonly split: 'train' | 'val';
  readonly saturation: number;
  readonly background: SyntheticBackgroundMode;
  readonly objectSide: readonly [number, number];
  readonly classNames: string[];
  private readonly cache = new Map<number, DatasetItem>();
  private cacheBytes = 0;

  constructor(opts: SyntheticOptions) {
    const { seed, count } = opts;
    this.size = opts.size ?? 64;
    this.numClasses = opts.numClasses ?? 5;
    this.split = opts.split ?? 'train';
    this.saturation = opts.saturation ?? 0;
    this.background = opts.background ?? 'textured';
    this.objectSide = opts.objectSide ?? SYNTHETIC_LAYOUT.mainSide;
    if (!Number.isSafeInteger(seed)) throw new Error(`SyntheticDataset: seed must be a safe integer, got ${seed}`);
    if (!Number.isInteger(count) || count < 1) throw new Error(`SyntheticDataset: count must be a positive integer, got ${count}`);
    if (!Number.isInteger(this.size) || this.size < 16) {
      throw new Error(`SyntheticDataset: size must be an integer >= 16, got ${this.size}`);
    }
    if (!Number.isInteger(this.numClasses) || this.numClasses < 5 || this.numClasses > SYNTHETIC_SHAPES.length) {
      throw new Error(`SyntheticDataset: numClasses must be an integer in [5, ${SYNTHETIC_SHAPES.length}], got ${this.numClasses}`);
    }
    if (!(typeof this.saturation === 'number' && this.saturation >= 0 && this.saturation <= 1)) {
      throw new Error(`SyntheticDataset: saturation must be a number in [0, 1], got ${this.saturation}`);
    }
    if (!SYNTHETIC_BACKGROUND_MODES.includes(this.background)) {
      throw new Error(`SyntheticDataset: background must be 'textured' or 'flat', got ${JSON.stringify(this.background)}`);
    }
    const side = this.objectSide;
    if (
      !(Array.isArray(side) && side.length === 2 && side.every((x) => typeof x === 'number' && Number.isFinite(x))) ||
      !(side[0] >= 0.05 && side[0] <= side[1] && side[1] <= 0.8)
    ) {
      throw new Error(`SyntheticDataset: objectSide must be [min, max] with 0.05 <= min <= max <= 0.8, got ${JSON.stringify(side)}`);
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
    const L = SYNTHETIC_LAYOUT;
    const backgrounds: SyntheticBackground[] = ['gradient', 'noise', 'stripes', 'checker'];
    const flat = this.background === 'flat';
    // drawn in both modes, so a flat dataset's objects follow the same stream as a textured one's
    const drawn = backgrounds[rng.int(backgrounds.length)];
    const background: SyntheticBackground = flat ? 'flat' : drawn;
    const c0 = muted(colorInLuma(rng, 0, L.darkBackground - 1), this.saturation);
    // textures stay low-contrast: the second colour is near the first
    const spread = muted(
      c0.map((c) => Math.min(255, Math.max(0, c + rng.int(2 * L.backgroundSpread + 1) - L.backgroundSpread))) as Rgb,
      this.saturation,
    );
    const c1: Rgb = flat ? [...c0] : spread;
    const objects: SyntheticObject[] = [];

    const place = (label: number, sideFraction: number, color: Rgb): SyntheticObject => {
      const radius = (sideFraction * size) / 2;
      const angle = ((rng.float() * 2 - 1) * L.maxRotationDeg * Math.PI) / 180;
      // the whole rotated shape (and its anti-aliased edge) stays inside the image
      const [hx, hy] = extent(SYNTHETIC_SHAPES[label], radius, angle);
      const at = (h: number): number => {
        const lo = h + 0.5,
          hi = size - h - 0.5;
        return hi > lo ? lo + rng.float() * (hi - lo) : size / 2;
      };
      const cx = at(hx);
      const cy = at(hy);
      const o: SyntheticObject = { shape: SYNTHETIC_SHAPES[label], label, cx, cy, radius, angle, color, box: [0, 0, 0, 0] };
      o.box = tightBox(o, size);
      return o;
    };

    const label = rng.int(this.numClasses);
    // muting moves the luminance by at most 0.5 (rounding): draw with a margin of 1
    const mainColor = muted(colorInLuma(rng, Math.max(luma(c0), luma(c1)) + L.minLumaContrast + 1, 255), this.saturation);
    const [lo, hi] = this.objectSide;
    const sideFrac = lo + (hi - lo) * rng.float();
    objects.push(place(label, sideFrac, mainColor));
    // distractors: small and faint, beneath the main shape (none on a flat background)
    const count = flat ? 0 : rng.float() < L.distractorProbability ? (rng.float() < 1 / 3 ? 2 : 1) : 0;
    for (let k = 0; k < count; k++) {
      const target = muted(randomColor(rng), this.saturation);
      const color = c0.map((c, j) => Math.round(c + (target[j] - c) * L.distractorStrength)) as Rgb;
      const side = L.distractorSide[0] + (L.distractorSide[1] - L.distractorSide[0]) * rng.float();
      objects.push(place(rng.int(this.numClasses), side, color));
    }
    return { background, colors: [c0, c1], objects };
  }

  /**
   * Renders item `index` synchronously. Rendered items are kept (up to SYNTHETIC_CACHE_BYTES of
   * pixels, the oldest dropped first), so later epochs do not draw them again; each call returns
   * its own copy.
   */
  generate(index: number): DatasetItem {
    const hit = this.cache.get(index);
    if (hit) return copyItem(hit);
    const item = this.render(index);
    this.cache.set(index, item);
    this.cacheBytes += item.image.length;
    for (const [key, old] of this.cache) {
      if (this.cacheBytes <= SYNTHETIC_CACHE_BYTES) break;
      this.cache.delete(key);
      this.cacheBytes -= old.image.length;
    }
    return copyItem(item);
  }

  private render(index: number): DatasetItem {
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

  /**
   * What each shape of item `index` contributes to each pixel, in `scene(index).objects` order (main
   * first): `size * size` values in [0, 1], its anti-aliased coverage times what the shapes drawn over
   * it leave visible (the weight of its colour in the rendered pixel).
   */
  masks(index: number): Float32Array[] {
    const scene = this.scene(index);
    const size = this.size;
    const above = new Float32Array(size * size).fill(1);
    return scene.objects.map((o) => {
      const m = new Float32Array(size * size);
      const inside = INSIDE[o.shape];
      const [x0, y0, x1, y1] = frame(o, size);
      for (let y = y0; y < y1; y++) {
        for (let x = x0; x < x1; x++) {
          const a = coverage(o, inside, x, y);
          m[y * size + x] = a * above[y * size + x];
          above[y * size + x] *= 1 - a;
        }
      }
      return m;
    });
  }

  async get(index: number): Promise<DatasetItem> {
    return this.generate(index);
  }
}

function copyItem(it: DatasetItem): DatasetItem {
  return { ...it, image: it.image.slice(), boxes: it.boxes.map((b) => [...b] as Box) };
}

function paintBackground(image: Uint8Array, size: number, scene: SyntheticScene, rng: Rng): void {
  const [c0, c1] = scene.colors;
  if (scene.background === 'flat') {
    for (let p = 0; p < size * size * 3; p += 3) image.set(c0, p);
    return;
  }
  const angle = rng.float() * Math.PI;
  const ca = Math.cos(angle),
    sa = Math.sin(angle);
  const period = 4 + rng.int(9);
  // coarse grid of random values for the smooth noise texture
  const grid = 5;
  const coarse = Float64Array.from({ length: (grid + 1) * (grid + 1) }, () => rng.float());
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let t = 0;
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
          const gx = (x / size) * grid,
            gy = (y / size) * grid;
          const ix = Math.floor(gx),
            iy = Math.floor(gy);
          const fx = gx - ix,
            fy = gy - iy;
          const at = (i: number, j: number): number => coarse[j * (grid + 1) + i];
          const smooth =
            (1 - fy) * ((1 - fx) * at(ix, iy) + fx * at(ix + 1, iy)) + fy * ((1 - fx) * at(ix, iy + 1) + fx * at(ix + 1, iy + 1));
          t = Math.min(1, Math.max(0, smooth + (rng.float() - 0.5) * 0.3));
          break;
        }
      }
      const p = (y * size + x) * 3;
      for (let c = 0; c < 3; c++) {
        const noise = rng.int(2 * SYNTHETIC_LAYOUT.pixelNoise + 1) - SYNTHETIC_LAYOUT.pixelNoise;
        image[p + c] = Math.min(255, Math.max(0, Math.round(c0[c] + (c1[c] - c0[c]) * t) + noise));
      }
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
