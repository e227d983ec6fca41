/**
 * The memory check a step engine makes before it allocates a model: the trained ViT, its gradients and
 * optimiser state, the DINO teacher and the activations of one forward/backward pass at the batch the
 * engine runs (crop groups from the config), against what the engine's memory holds (@vitreg/registers'
 * checkVitFits: the tfjs backend's budget, or the host's free memory for ONNX Runtime on the CPU); and
 * the same for the clip objective's two towers on ONNX Runtime (`checkClipTrainingFits`).
 */
import { activeBudget, checkVitFits, textParameterShapes, vitMemoryNeed, type ClipConfig, type CropGroup } from '@vitreg/registers';
import { checkMemoryFit, type MemoryNeed } from '@vitreg/core';
import type { EngineContext } from './engine.js';

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
 * Refuses (an InputError with the estimate, the limit and the ways out) a training run that cannot fit:
 * `engine` 'tfjs' against the active tfjs backend, 'onnxruntime' against the host's free memory (on
 * `--device cpu`; a GPU's memory is not known before its session exists, so nothing is checked there).
 */
export function checkTrainingFits(ctx: EngineContext, engine: 'tfjs' | 'onnxruntime', device = 'cpu'): void {
  if (engine === 'onnxruntime' && device !== 'cpu') return;
  const { pass, crops } = trainingCropGroups(ctx);
  const dino = ctx.config.objective === 'dino';
  checkVitFits(ctx.vit, {
    batch: pass,
    training: { crops, teacher: dino },
    what: `training ${ctx.config.model.arch} on ${engine === 'tfjs' ? 'tfjs' : 'ONNX Runtime'}`,
    ...(engine === 'onnxruntime' ? { engine: 'onnxruntime' as const, backend: 'onnxruntime', waysOut: ORT_WAYS_OUT } : {}),
  });
}

/** What to do when a clip run does not fit the host on the ONNX Runtime engine. */
const CLIP_ORT_WAYS_OUT = [
  'a smaller batch (train.batch_size; the contrastive logits also grow with the global batch)',
  'smaller images (crops.global_crops_size) or a shorter text context (clip.text_context_length)',
  'a GPU (--device cuda or webgpu)',
  'a machine with more memory',
];

const F32 = 4;

/**
 * What a clip run needs on the ONNX Runtime engine at `batch` pairs per rank over `worldSize` ranks:
 * - the image tower: @vitreg/registers' `vitMemoryNeed` (one copy of the weights, gradients, AdamW's two
 *   moments, the activations kept for the backward at the batch's images and a forward's peak);
 * - the text tower: the same terms for its parameters (`textParameterShapes`, plus logit_scale and
 *   logit_bias), with its activations at the full context (the engine cuts the rows after the batch's
 *   last end-of-text token: this is the bound) and the vit estimate's per-block formula;
 * - the contrastive loss: logits, probabilities and their gradient, B x (world size x B) each;
 * - the ClipModel's tfjs variables (the run's record for checkpoints and the zero-shot evaluation) hold
 *   the weights twice more (tf.memory() reads 2.0x the parameter bytes after `new ClipModel`).
 */
export function clipTrainingNeed(clip: ClipConfig, batch: number, worldSize = 1): MemoryNeed {
  const image = vitMemoryNeed(clip.vision, {
    engine: 'onnxruntime',
    batch,
    training: { crops: [{ count: batch, size: clip.vision.img_size }] },
  });
  const t = clip.text;
  let textParams = 1 + (clip.init_logit_bias === null ? 0 : 1);
  for (const shape of Object.values(textParameterShapes(t))) textParams += shape.reduce((a, b) => a * b, 1);
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
    activations: image.activations + (kept + peak + logits) * F32,
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
