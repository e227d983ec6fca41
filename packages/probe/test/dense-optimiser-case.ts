/**
 * A small, fixed dense-head training problem (features, labels, depth maps, options) on which the
 * heads were trained once with the probe's own AdamW / clipping / mmcv schedules, before they moved to
 * @vitreg/trainer (fixtures/dense/optimiser-before.json); dense-heads.test.ts trains them again.
 */
import { Rng } from '@vitreg/core';
import type { DenseFeatures, DepthTrainOptions, SegmentationTrainOptions } from '../src/dense.js';

export function optimiserCase() {
  const rng = new Rng(17);
  const n = 6,
    grid: [number, number] = [3, 3],
    dim = 8;
  const H = 6,
    W = 6;
  const x = Float32Array.from({ length: n * grid[0] * grid[1] * dim }, () => rng.normal());
  const features: DenseFeatures = { n, grid, dim, x };
  const depthFeatures: DenseFeatures = { ...features, cls: Float32Array.from({ length: n * dim }, () => rng.normal()) };
  const labels = Uint8Array.from({ length: n * H * W }, () => (rng.float() < 0.1 ? 255 : rng.int(3)));
  const depths = Float32Array.from({ length: n * H * W }, () => (rng.float() < 0.1 ? 0 : 0.5 + 4 * rng.float()));
  const segLosses: number[] = [];
  const depthLosses: number[] = [];
  const segOpts: SegmentationTrainOptions = {
    numClasses: 3,
    steps: 12,
    batchSize: 2,
    warmupFraction: 0.25,
    seed: 3,
    onStep: (_s, l) => segLosses.push(l),
  };
  // A clip of 0.05 scales most steps' gradients; 16 bins keep the head small.
  const depthOpts: DepthTrainOptions = {
    steps: 12,
    batchSize: 2,
    clip: 0.05,
    nBins: 16,
    maxDepth: 5,
    seed: 4,
    onStep: (_s, l) => depthLosses.push(l),
  };
  return { features, depthFeatures, labels, depths, labelSize: [H, W] as [number, number], segOpts, depthOpts, segLosses, depthLosses };
}
