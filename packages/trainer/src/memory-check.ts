/**
 * The memory check a step engine makes before it allocates a model: the trained ViT, its gradients and
 * optimiser state, the DINO teacher and the activations of one forward/backward pass at the batch the
 * engine runs (crop groups from the config), against what the engine's memory holds (@vitreg/registers'
 * checkVitFits: the tfjs backend's budget, or the host's free memory for ONNX Runtime on the CPU).
 */
import { checkVitFits, type CropGroup } from '@vitreg/registers';
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
