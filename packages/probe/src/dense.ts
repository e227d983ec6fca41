/**
 * DINOv2's linear dense heads, trained with tfjs on frozen features (the backbone never runs here: the
 * features are extracted once, see dense-run.ts), with @vitreg/trainer's AdamW, clipping and mmcv
 * schedules: the features and their batches (dense-features.ts), the segmentation head
 * (dense-segmentation.ts: BatchNorm + 1x1 convolution, cross-entropy, mIoU) and the depth head
 * (dense-depth.ts: 1x1 convolution on patch + CLS tokens, bins or regression, SigLoss, the depth
 * toolbox's metrics). This module gathers their exports.
 */
export * from './dense-features.js';
export * from './dense-segmentation.js';
export * from './dense-depth.js';
