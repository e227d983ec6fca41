/**
 * What a VisionTransformer needs on a TensorFlow.js backend, estimated before anything is allocated, and
 * the check against what the active backend has (@vitreg/core's memory-fit.ts): a model that cannot fit
 * is refused with the numbers and the ways out instead of dying in the middle ("memory access out of
 * bounds" on wasm).
 *
 * The estimate (float32 everywhere, as tfjs computes):
 * - weights: 2 x the parameters (tfjs holds a second copy: `tf.memory()` reads 2.0x the parameter bytes
 *   for dinov2_vits14_reg after construction);
 * - forward activations at batch B with N tokens, H heads, width D, MLP width F, the peak of one block:
 *   4 B H N^2 (scores, softmax and their per-head parts) + 6 B N F + 4 B N D floats. Checked on wasm:
 *   dinov2_vits14_reg at 518 px, batch 2 is estimated at 626 MiB, the wasm heap grew to 714 MiB;
 * - training: optimiser state 2x the parameters (AdamW's and LAMB's two moments), a DINO teacher's
 *   weights, and the activations kept for the backward per block, for each kind of crop at its size:
 *   - tfjs: gradients 3x the parameters (the backward's tensors, the update's made from the host copy and
 *     the clipped ones) and 4 B H N^2 + (8 F + 10 D) B N floats per block (every intermediate of the
 *     forward lives until the backward ends). Calibrated on wasm by the heap after one step (the heap only
 *     grows; `npm run bench -- tfjs-memory`), against this estimate plus the trainer's heads
 *     (@vitreg/trainer's tfjsHeadsNeed):
 *     deit3_small_patch16_reg4 supervised at 224, batch 4 / 8 / 16: 1.27 / 2.02 / 3.47 GiB measured, 1.37 /
 *     2.17 / 3.76 estimated (batch 24, 5.36: out of memory); deit3_base_patch16_reg4 batch 2: 2.89, 3.04;
 *     dinov2_vits14_reg DINO at 224 with 8 local crops at 98 (small heads), batch 2 / 3: 2.52 / 3.32
 *     measured, 2.52 / 3.42 estimated (batch 4, 4.31: out of memory); without local crops, batch 2 / 4:
 *     1.65 / 2.62 measured, 1.85 / 2.96 estimated;
 *   - onnxruntime: gradients 1x and 3 B H N^2 + 4 B N F + 10 B N D floats per block.
 */
import * as tf from '@tensorflow/tfjs-core';
import {
  backendBudget,
  checkMemoryFit,
  getBackendName,
  MEMORY_WAYS_OUT,
  totalNeed,
  type MemoryBudget,
  type MemoryNeed,
} from '@vitreg/core';
import { ffnHiddenDim, type ViTConfig } from './config.js';
import { parameterShapes } from './model.js';

/** Images of one size in a batch: `count` images of `size` px (square) or [height, width]. */
export interface CropGroup {
  count: number;
  size: number | [number, number];
}

export interface VitMemoryOptions {
  /** The engine that holds the weights: tfjs keeps 2 copies, ONNX Runtime 1 (default 'tfjs'). */
  engine?: 'tfjs' | 'onnxruntime';
  /** Images per forward (default 1) at `imageSize` (default the config's img_size). */
  batch?: number;
  imageSize?: number | [number, number];
  /**
   * A forward's outputs beyond the last block's tokens, held with the activations: attention maps (the
   * last block's or every block's, B H N^2 floats each) and every block's tokens (B N D floats each).
   */
  outputs?: { attention?: 'none' | 'last' | 'all'; layers?: boolean };
  /** Training: gradients, optimiser state and the activations kept for the backward. */
  training?: {
    /** The crops of one forward / backward pass (default `batch` images at `imageSize`). */
    crops?: CropGroup[];
    /** Moments per parameter (AdamW and LAMB: 2). */
    optimizerSlots?: number;
    /** A teacher copy of the backbone (DINO), run forward on the first crop group. */
    teacher?: boolean;
  };
}

const F32 = 4;

function tokens(c: ViTConfig, size: number | [number, number]): number {
  const [h, w] = typeof size === 'number' ? [size, size] : size;
  return 1 + c.num_register_tokens + Math.ceil(h / c.patch_size) * Math.ceil(w / c.patch_size);
}

/** Parameters of the backbone (the sum of `parameterShapes`). */
export function parameterCount(c: ViTConfig): number {
  let n = 0;
  for (const shape of Object.values(parameterShapes(c))) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

/** Estimated bytes a model needs on a tfjs backend (see the module comment for the terms). */
export function vitMemoryNeed(c: ViTConfig, opts: VitMemoryOptions = {}): MemoryNeed {
  const batch = opts.batch ?? 1;
  const size = opts.imageSize ?? c.img_size;
  const P = parameterCount(c);
  const D = c.embed_dim;
  const H = c.num_heads;
  const F = ffnHiddenDim(c);
  const forwardPeak = (b: number, n: number) => (4 * b * H * n * n + 6 * b * n * F + 4 * b * n * D) * F32;
  const largest = (b: number, n: number) => Math.max(b * H * n * n, b * n * F, F * D, b * n * D) * F32;
  const copies = opts.engine === 'onnxruntime' ? 1 : 2;
  let weights = copies * P * F32;
  let largestTensor = 0;
  if (!opts.training) {
    const n = tokens(c, size);
    const o = opts.outputs ?? {};
    const maps = o.attention === 'all' ? c.depth : o.attention === 'last' ? 1 : 0;
    const outputs = (maps * batch * H * n * n + (o.layers ? c.depth * batch * n * D : 0)) * F32;
    return { weights, gradients: 0, optimizer: 0, activations: forwardPeak(batch, n) + outputs, largestTensor: largest(batch, n) };
  }
  const t = opts.training;
  const crops = t.crops ?? [{ count: batch, size }];
  let activations = 0;
  let peak = 0;
  const tfjs = opts.engine !== 'onnxruntime';
  for (const g of crops) {
    const n = tokens(c, g.size);
    const kept = tfjs ? 4 * H * n * n + (8 * F + 10 * D) * n : 3 * H * n * n + (4 * F + 10 * D) * n;
    activations += c.depth * g.count * kept * F32;
    peak = Math.max(peak, forwardPeak(g.count, n));
    largestTensor = Math.max(largestTensor, largest(g.count, n));
  }
  if (t.teacher) weights += copies * P * F32;
  const gradients = (tfjs ? 3 : 1) * P * F32;
  return { weights, gradients, optimizer: (t.optimizerSlots ?? 2) * P * F32, activations: activations + peak, largestTensor };
}

/**
 * The largest batch whose forward fits `budgetBytes` (the need grows linearly with the batch past the
 * weights), at least 0: for "a smaller batch (--batch-size N)" in a refusal.
 */
export function largestFittingBatch(c: ViTConfig, budgetBytes: number, opts: Omit<VitMemoryOptions, 'batch' | 'training'> = {}): number {
  const one = vitMemoryNeed(c, { ...opts, batch: 1, training: undefined });
  const two = vitMemoryNeed(c, { ...opts, batch: 2, training: undefined });
  const perImage = two.activations - one.activations;
  const fixed = one.weights + one.activations - perImage;
  return perImage > 0 ? Math.max(0, Math.floor((budgetBytes - fixed) / perImage)) : 0;
}

/** The active tfjs backend's budget: vitreg's backend name (or tfjs's), WebGPU's device limits. */
export function activeBudget(backend?: string): MemoryBudget {
  const name = backend ?? getBackendName() ?? tf.getBackend();
  const override = Number(process.env.VITREG_MEMORY_LIMIT);
  if (override > 0) return { backend: name, total: override, totalSource: 'VITREG_MEMORY_LIMIT' };
  // ONNX Runtime on the CPU: the host's free memory (as tfjs-node's).
  if (name === 'onnxruntime') return { ...backendBudget('cpu'), backend: name };
  let webgpuLimits: { maxBufferSize?: number; maxStorageBufferBindingSize?: number } | undefined;
  if (name === 'webgpu') {
    const device = (tf.backend() as unknown as { device?: { limits?: { maxBufferSize: number; maxStorageBufferBindingSize: number } } })
      .device;
    webgpuLimits = device?.limits;
  }
  return backendBudget(name, { webgpuLimits });
}

/**
 * Refuses, with an InputError naming `what`, the estimate's parts, the backend's limit and the ways out,
 * a model that cannot fit the active backend (or `backend`). `VITREG_MEMORY_LIMIT` (bytes) replaces the
 * backend's figure. ONNX Runtime on the CPU: `{ backend: 'onnxruntime', engine: 'onnxruntime' }` checks
 * the host's free memory with one copy of the weights. Returns the estimated bytes.
 */
export function checkVitFits(
  c: ViTConfig,
  opts: VitMemoryOptions & { what?: string; backend?: string; waysOut?: readonly string[] } = {},
): number {
  const need = vitMemoryNeed(c, opts);
  const what = `${opts.what ?? 'the model'} (${(parameterCount(c) / 1e6).toFixed(1)}M parameters, batch ${opts.batch ?? 1}${
    opts.training ? ', training' : ''
  })`;
  const budget = activeBudget(opts.backend);
  let waysOut = opts.waysOut;
  // A forward at a batch size: name the largest batch that fits in place of the general "a smaller batch".
  if (!waysOut && !opts.training && opts.batch !== undefined && budget.total !== undefined && totalNeed(need) > budget.total) {
    const fits = largestFittingBatch(c, budget.total, opts);
    if (fits >= 1)
      waysOut = MEMORY_WAYS_OUT.map((w) =>
        w === 'a smaller batch or image size' ? `a smaller batch (--batch-size ${fits} fits) or image size` : w,
      );
  }
  return checkMemoryFit(what, need, budget, waysOut);
}
