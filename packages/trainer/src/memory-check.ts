/**
 * The memory check a step engine makes before it allocates a model: the trained ViT, its gradients and
 * optimiser state, the DINO teacher and the activations of one forward/backward pass at the batch the
 * engine runs (crop groups from the config), against what the engine's memory holds (the tfjs backend's
 * budget, or the host's free memory for ONNX Runtime on the CPU), with what each engine holds beside the
 * backbone (its heads: tfjsHeadsNeed, onnxEngineExtraNeed); and the same for the
 * clip objective's two towers on ONNX Runtime (`checkClipTrainingFits`).
 */
import { activeBudget, parameterCount, textParameterShapes, vitMemoryNeed, type ClipConfig, type CropGroup } from '@vitreg/registers';
import { checkMemoryFit, numel, type MemoryNeed } from '@vitreg/core';
import type { EngineContext } from './engine.js';
import { classifierShapes, dinoHeadShapes } from './onnx/heads-graph.js';
import { headConfigs } from './onnx/engine-params.js';
import { maskRowBucket } from './onnx/feeds.js';
import { maxMaskedPatches } from './masking.js';

const F32 = 4;

/** What to do when a run does not fit the host on the ONNX Runtime engine (already native memory). */
const ORT_WAYS_OUT = [
  'a smaller batch (train.batch_size; supervised: train.micro_batch_size)',
  'smaller crops (crops.global_crops_size, crops.local_crops_size)',
  'a GPU (--device cuda or webgpu)',
  'a machine with more memory',
];

/** The images of one pass: the micro-batch (supervised) or the batch's global and local crops (DINO). */
export function trainingCropGroups(ctx: EngineContext): { pass: number; crops: CropGroup[] } {
  const c = ctx.config;
  const cr = c.crops;
  const pass = c.train.micro_batch_size > 0 && c.objective === 'supervised' ? c.train.micro_batch_size : c.train.batch_size;
  const crops =
    c.objective === 'dino'
      ? [
          { count: 2 * pass, size: cr.global_crops_size },
          { count: cr.local_crops_number * pass, size: cr.local_crops_size },
        ].filter((g) => g.count > 0)
      : [{ count: pass, size: cr.global_crops_size }];
  return { pass, crops };
}

/**
 * What the ONNX Runtime engine holds beyond the backbone's estimate (@vitreg/registers' vitMemoryNeed):
 * - its heads' parameters (classifier, DINO head, a separate iBOT head) in each flat buffer: the student,
 *   the EMA teacher, the gradients and AdamW's two moments;
 * - their logits, three row x prototype arrays per head and pass (the logits, the log-softmax or the
 *   Sinkhorn targets, the gradient or a temporary), at the most rows a step can have: every crop's CLS
 *   and the teacher's two global ones for the DINO head; for iBOT the student's and the teacher's masked
 *   patches, DINOv2's count of masked crops (2 x batch x mask_sample_probability) at the largest mask
 *   ratio, padded to the engine's row bucket (feeds.ts);
 * - the copy of every gradient that onnxruntime-node returns from a run beside the buffer it wrote them
 *   into (engine-sessions.ts; freed by the next garbage collection).
 */
/**
 * The heads of a run (heads.ts's configs), their parameter count, and for DINO the rows of one step's
 * heads: every crop's CLS and the teacher's two global ones; `patches` per global crop.
 */
function headsOfRun(ctx: EngineContext) {
  const c = ctx.config;
  const heads = headConfigs(c, ctx.vit.embed_dim, ctx.numClasses);
  const shapes: Record<string, number[]>[] = [];
  if (heads.classes !== undefined) shapes.push(classifierShapes(ctx.vit.embed_dim, heads.classes));
  if (heads.dino) shapes.push(dinoHeadShapes(heads.dino));
  if (heads.ibot) shapes.push(dinoHeadShapes(heads.ibot));
  let params = 0;
  for (const group of shapes) for (const shape of Object.values(group)) params += numel(shape);
  const { pass, crops } = trainingCropGroups(ctx);
  const cls = crops.reduce((a, g) => a + g.count, 0) + 2 * pass;
  const patches = Math.floor(c.crops.global_crops_size / ctx.vit.patch_size) ** 2;
  return { heads, params, pass, cls, patches, teacher: c.objective === 'dino' ? 2 : 1 };
}

export function onnxEngineExtraNeed(ctx: EngineContext): MemoryNeed {
  const c = ctx.config;
  const { heads, params: headParams, pass, cls, patches, teacher } = headsOfRun(ctx);
  let logits = 0;
  if (heads.dino) {
    const b = c.ibot;
    const maskedCrops = Math.ceil(2 * pass * b.mask_sample_probability);
    const masked = heads.ibotMode === 'none' ? 0 : maskRowBucket(maskedCrops * Math.ceil(patches * b.mask_ratio_min_max[1]));
    const ibotK = heads.ibot ? heads.ibot.outDim : heads.dino.outDim;
    logits = 3 * (cls * heads.dino.outDim + 2 * masked * ibotK);
  } else if (heads.classes !== undefined) logits = 3 * pass * heads.classes;
  const backboneParams = parameterCount(ctx.vit);
  return {
    weights: teacher * headParams * F32,
    gradients: headParams * F32,
    optimizer: 2 * headParams * F32,
    activations: (logits + backboneParams + headParams) * F32,
    largestTensor: 0,
  };
}

/**
 * What the tfjs engine's heads hold beside the backbone's estimate (vitMemoryNeed with engine 'tfjs'):
 * - their parameters as the backbone's: 2 copies of the weights (and of the EMA teacher's in DINO runs),
 *   3 of the gradients, AdamW's two moments;
 * - per DINO / iBOT head: 12 copies of its last layer (bottleneck x K: the weight-normalised weights of
 *   each forward and their gradients, the update's temporaries of the largest tensor);
 * - 16 floats per row and prototype of every row the heads see in a step (every crop's CLS and the
 *   teacher's two global ones, the student's and the teacher's masked patches at the most
 *   `collateMasks` can mask: `maxMaskedPatches`), and 10 per row and hidden unit (the MLP).
 * Calibrated on wasm by the heap after one step (`npm run bench -- tfjs-memory`; backbone and heads
 * estimated together) of
 * vit_micro_patch8_reg4 (depth 1) at 32 px with 8 local crops and DINOv2's head sizes (hidden 2048,
 * bottleneck 256): K = 65536, one head shared with iBOT, batch 4 / 8 / 16: 1.88 / 2.17 / 2.88 GiB
 * measured, 1.85 / 2.19 / 2.86 estimated; K = 16384, batch 8: 0.75, 0.69; K = 65536 with a separate
 * iBOT head, batch 8: 3.46, 3.66. dinov2_vits14_reg at 224 with 8 local crops at 98: K = 16384, batch 2
 * trains (3.15 GiB of heap, 3.48 estimated), batch 3 runs out of the 4 GiB heap (4.54); K = 65536, batch 2 runs out
 * (5.73). Before the heads were counted, all three passed the check and then died with "Aborted()".
 */
export function tfjsHeadsNeed(ctx: EngineContext): MemoryNeed {
  const c = ctx.config;
  const { heads, params: headParams, pass, cls, patches, teacher } = headsOfRun(ctx);
  let activations = 0;
  if (heads.dino) {
    const b = c.ibot;
    const masked = heads.ibotMode === 'none' ? 0 : maxMaskedPatches(2 * pass, patches, b.mask_ratio_min_max, b.mask_sample_probability);
    const ibot = heads.ibot ?? heads.dino;
    activations += 16 * (cls * heads.dino.outDim + 2 * masked * ibot.outDim);
    activations += 10 * (cls * heads.dino.hiddenDim + 2 * masked * ibot.hiddenDim);
    for (const h of [heads.dino, ...(heads.ibot ? [heads.ibot] : [])]) activations += 12 * h.bottleneckDim * h.outDim;
  } else if (heads.classes !== undefined) activations += 16 * pass * heads.classes;
  return {
    weights: 2 * teacher * headParams * F32,
    gradients: 3 * headParams * F32,
    optimizer: 2 * headParams * F32,
    activations: activations * F32,
    largestTensor: 0,
  };
}

/**
 * Refuses (an InputError with the estimate, the limit and the ways out) a training run that cannot fit:
 * `engine` 'tfjs' against the active tfjs backend (the backbone's estimate and tfjsHeadsNeed),
 * 'onnxruntime' against the host's free memory (the backbone's estimate and onnxEngineExtraNeed; on
 * `--device cpu`: a GPU's memory is not known before its session exists, so nothing is checked there).
 * Returns the estimate (bytes; 0 when not checked).
 */
export function checkTrainingFits(ctx: EngineContext, engine: 'tfjs' | 'onnxruntime', device = 'cpu'): number {
  if (engine === 'onnxruntime' && device !== 'cpu') return 0;
  const { pass, crops } = trainingCropGroups(ctx);
  const dino = ctx.config.objective === 'dino';
  const training = { crops, teacher: dino };
  const what = `training ${ctx.config.model.arch} on ${engine === 'tfjs' ? 'tfjs' : 'ONNX Runtime'}`;
  const backbone = vitMemoryNeed(ctx.vit, { engine, batch: pass, training });
  const extra = engine === 'tfjs' ? tfjsHeadsNeed(ctx) : onnxEngineExtraNeed(ctx);
  const need: MemoryNeed = {
    weights: backbone.weights + extra.weights,
    gradients: backbone.gradients + extra.gradients,
    optimizer: backbone.optimizer + extra.optimizer,
    activations: backbone.activations + extra.activations,
    largestTensor: backbone.largestTensor,
  };
  const params = (((backbone.gradients + extra.gradients) / F32 / (engine === 'tfjs' ? 3 : 1)) * 1e-6).toFixed(1);
  const label = `${what} (${params}M parameters, batch ${pass}, training)`;
  if (engine === 'tfjs') return checkMemoryFit(label, need, activeBudget());
  return checkMemoryFit(label, need, activeBudget('onnxruntime'), ORT_WAYS_OUT);
}

/** What to do when a clip run does not fit the host on the ONNX Runtime engine. */
const CLIP_ORT_WAYS_OUT = [
  'a smaller batch (train.batch_size; the contrastive logits also grow with the global batch)',
  'smaller images (crops.global_crops_size) or a shorter text context (clip.text_context_length)',
  'a GPU (--device cuda or webgpu)',
  'a machine with more memory',
];

/**
 * What a clip run needs on the ONNX Runtime engine at `batch` pairs per rank over `worldSize` ranks:
 * - the image tower: @vitreg/registers' `vitMemoryNeed` (one copy of the weights, gradients, AdamW's two
 *   moments, the activations kept for the backward at the batch's images and a forward's peak);
 * - the text tower: the same terms for its parameters (`textParameterShapes`, plus logit_scale and
 *   logit_bias), with its activations at the full context (the engine cuts the rows after the batch's
 *   last end-of-text token: this is the bound) and the vit estimate's per-block formula;
 * - the contrastive loss: logits, probabilities and their gradient, B x (world size x B) each;
 * - the ClipModel's tfjs variables (the run's record for checkpoints and the zero-shot evaluation) hold
 *   the weights twice more (tf.memory() reads 2.0x the parameter bytes after `new ClipModel`);
 * - the copy of every gradient that onnxruntime-node returns from a run (as onnxEngineExtraNeed).
 */
export function clipTrainingNeed(clip: ClipConfig, batch: number, worldSize = 1): MemoryNeed {
  const image = vitMemoryNeed(clip.vision, {
    engine: 'onnxruntime',
    batch,
    training: { crops: [{ count: batch, size: clip.vision.img_size }] },
  });
  const t = clip.text;
  let textParams = 1 + (clip.init_logit_bias === null ? 0 : 1);
  for (const shape of Object.values(textParameterShapes(t))) textParams += numel(shape);
  const imageParams = image.gradients / F32;
  const [B, L, D, H, F] = [batch, t.context_length, t.width, t.heads, Math.floor(t.width * t.mlp_ratio)];
  const kept = t.layers * (3 * B * H * L * L + 4 * B * L * F + 10 * B * L * D);
  const peak = 4 * B * H * L * L + 6 * B * L * F + 4 * B * L * D;
  const logits = 3 * B * worldSize * B;
  const params = imageParams + textParams;
  return {
    weights: 3 * params * F32,
    gradients: params * F32,
    optimizer: 2 * params * F32,
    activations: image.activations + (kept + peak + logits + params) * F32,
    largestTensor: Math.max(image.largestTensor, B * H * L * L * F32, t.vocab_size * D * F32),
  };
}

/**
 * Refuses (an InputError with the estimate's parts, the host's limit and the ways out) a clip run on the
 * ONNX Runtime engine that cannot fit the host's free memory (cgroup limits and VITREG_MEMORY_LIMIT
 * included) on `--device cpu`; a GPU's memory is not known before its session exists, so nothing is
 * checked there. Called before the model is built. Returns the estimate (bytes; 0 when not checked).
 */
export function checkClipTrainingFits(
  clip: ClipConfig,
  batch: number,
  opts: { worldSize?: number; device?: string; arch?: string } = {},
): number {
  if ((opts.device ?? 'cpu') !== 'cpu') return 0;
  const need = clipTrainingNeed(clip, batch, opts.worldSize ?? 1);
  const params = (need.gradients / F32 / 1e6).toFixed(1);
  const what = `training clip (${opts.arch ?? 'image tower'} + a ${clip.text.layers}-block text tower) on ONNX Runtime (${params}M parameters, batch ${batch}, training)`;
  return checkMemoryFit(what, need, activeBudget('onnxruntime'), CLIP_ORT_WAYS_OUT);
}
