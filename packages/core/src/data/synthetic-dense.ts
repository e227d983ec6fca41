/**
 * The built-in dense dataset: the synthetic shapes images (SyntheticDataset, same options, same pixels)
 * with a class map and a depth map per image, so the dense probes run without downloads.
 *
 * - Segmentation: class 0 is the background, class k + 1 is shape k (SYNTHETIC_SHAPES order). A pixel
 *   takes the layer with the largest visible weight in it (SyntheticDataset.masks: each shape's
 *   anti-aliased coverage times what the shapes drawn over it leave; the background gets the rest);
 *   ties go to the shape listed first (the main shape), the background last. No pixel is ignored.
 * - Depth (metres, inside NYU's 0.001-10 m range): the background is a plane receding upwards, from
 *   `nearBackground` at the bottom row to `far` at the top row (linear in the row centre); the main shape
 *   is a fronto-parallel plate at `mainScale / side` metres, `side` its frame as a fraction of the image
 *   side (larger shapes are nearer); a distractor sits at `distractorFactor` times the background's depth
 *   at its centre row. A pixel takes the depth of the layer its class came from.
 */
import { checkIndex, type DatasetItem } from './types.js';
import type { DenseDataset, DenseItem, DenseTarget, DenseTask } from './dense.js';
import { SYNTHETIC_SHAPES, SyntheticDataset, type SyntheticOptions, type SyntheticScene } from './synthetic.js';

/** The depth model of the synthetic dense set (see the module comment). */
export const SYNTHETIC_DEPTH = {
  /** Background depth at the top row and at the bottom row, metres. */
  far: 8,
  nearBackground: 4,
  /** Main shape depth = mainScale / (frame side / image side). */
  mainScale: 1.2,
  /** Distractor depth = distractorFactor x background depth at its centre row. */
  distractorFactor: 0.9,
} as const;

/** Depth range of the synthetic set's evaluation, as NYU's. */
export const SYNTHETIC_DEPTH_RANGE: [number, number] = [1e-3, 10];

export class SyntheticDenseDataset implements DenseDataset {
  readonly shapes: SyntheticDataset;
  readonly classNames: string[];
  readonly tasks: readonly DenseTask[] = ['segmentation', 'depth'];
  readonly depthRange: [number, number] = [...SYNTHETIC_DEPTH_RANGE];

  constructor(opts: SyntheticOptions) {
    this.shapes = new SyntheticDataset(opts);
    this.classNames = ['background', ...SYNTHETIC_SHAPES.slice(0, this.shapes.numClasses)];
  }

  get length(): number {
    return this.shapes.length;
  }

  /** Background plus the shapes. */
  get numClasses(): number {
    return this.classNames.length;
  }

  /** Background depth of pixel row `y` (centre of the row) in an image of side `size`. */
  static backgroundDepth(y: number, size: number): number {
    const { far, nearBackground } = SYNTHETIC_DEPTH;
    return far - ((far - nearBackground) * (y + 0.5)) / size;
  }

  /** Depth of each shape of a scene, in scene order (main first). */
  static objectDepths(scene: SyntheticScene, size: number): number[] {
    return scene.objects.map((o, k) =>
      k === 0
        ? SYNTHETIC_DEPTH.mainScale / ((2 * o.radius) / size)
        : SYNTHETIC_DEPTH.distractorFactor * SyntheticDenseDataset.backgroundDepth(Math.min(size - 1, Math.max(0, Math.floor(o.cy))), size),
    );
  }

  async target(index: number): Promise<DenseTarget> {
    checkIndex('SyntheticDenseDataset', index, this.length);
    const size = this.shapes.size;
    const scene = this.shapes.scene(index);
    // SyntheticDataset.masks (visible coverage per shape, scene order) arrived with the prominent-shapes
    // generator; typed loosely so this file also builds against a synthetic.ts without it.
    const withMasks = this.shapes as SyntheticDataset & { masks?: (i: number) => Float32Array[] };
    if (typeof withMasks.masks !== 'function')
      throw new Error('SyntheticDenseDataset: this SyntheticDataset has no masks(index) (update @vitreg/core)');
    const masks = withMasks.masks(index);
    const depths = SyntheticDenseDataset.objectDepths(scene, size);
    const n = size * size;
    const segmentation = new Uint8Array(n);
    const depth = new Float32Array(n);
    for (let p = 0; p < n; p++) {
      let best = -1;
      let weight = 0;
      let rest = 1;
      for (let k = 0; k < masks.length; k++) {
        const w = masks[k][p];
        rest -= w;
        if (w > weight) {
          weight = w;
          best = k;
        }
      }
      if (best < 0 || rest > weight) {
        segmentation[p] = 0;
        depth[p] = SyntheticDenseDataset.backgroundDepth(Math.floor(p / size), size);
      } else {
        segmentation[p] = scene.objects[best].label + 1;
        depth[p] = depths[best];
      }
    }
    return { width: size, height: size, segmentation, depth };
  }

  async get(index: number): Promise<DenseItem> {
    const item: DatasetItem = this.shapes.generate(index);
    return { ...item, target: await this.target(index) };
  }
}
