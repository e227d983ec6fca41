/**
 * Training configuration: one JSON object with sections `model`, `data`, `train`, `optim`,
 * `supervised`, `dino`, `ibot`, `crops`. A file or preset gives some fields; the rest come from
 * the defaults: DINOv2's `ssl_default_config.yaml` field by field (epochs counted in steps of its
 * OFFICIAL_EPOCH_LENGTH, 1250) and DeiT-III's ImageNet-1k recipe for the supervised fields (the table
 * in the trainer README maps every official field to its vitreg field). `validateTrainConfig` checks
 * every field, rejects unknown ones, and names the field and the allowed values in its error, before
 * any work starts.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CONFIG_FIELDS, MODEL_NAMES, getConfig, type ViTConfig } from '@vitreg/registers';
import { WEIGHT_DECAY_RULES, type WeightDecayRule } from './param-groups.js';

export type Objective = 'supervised' | 'dino';
export const OBJECTIVES: readonly Objective[] = ['supervised', 'dino'];

export interface TrainConfig {
  objective: Objective;
  /** `arch`: a named model of @vitreg/registers; any ViTConfig field overrides it. */
  model: { arch: string } & Partial<ViTConfig>;
  data: {
    /**
     * 'synthetic', a folder holding `train/<class>/...` and `val/<class>/...` (or only class folders),
     * or a file list; '' (the paper presets' and the defaults' value): not given, training refuses to start.
     */
    source: string;
    /** Synthetic data: classes (5-8), items per split, image side. */
    num_classes: number;
    train_size: number;
    val_size: number;
    synthetic_size: number;
    /** Seed of the synthetic images (independent of train.seed). */
    synthetic_seed: number;
    /** Image folder without a val/ sub-folder: fraction of the images held out for validation. */
    val_fraction: number;
  };
  train: {
    steps: number;
    /** Images per step on this process. */
    batch_size: number;
    /**
     * Supervised runs: images per forward / backward pass, gradients summed over the passes (0: the
     * whole batch at once). Bounds memory: the wasm backend has a 4 GiB heap.
     */
    micro_batch_size: number;
    seed: number;
    log_every: number;
    /** Steps between checkpoints (0: only the last one). */
    checkpoint_every: number;
    /** Steps between evaluations (val accuracy / k-NN) during training (0: only at the end). */
    eval_every: number;
    /** Training images used as the k-NN memory bank (self-supervised runs). */
    knn_train_size: number;
    knn_k: number;
    knn_temperature: number;
    /** Checkpoints kept on disk (older ones are deleted). */
    keep_checkpoints: number;
    /**
     * Teacher targets of a self-supervised run: 'centering' (softmax around an EMA centre) or
     * 'sinkhorn_knopp' (3 Sinkhorn-Knopp iterations over every rank's batch), DINOv2's `train.centering`.
     */
    centering: Centering;
    /** Repeated augmentation (DeiT's `--repeated-aug`, its RASampler): every image 3 times per epoch. */
    repeated_aug: boolean;
  };
  optim: {
    /** 'adamw' (DINOv2) or 'lamb' (DeiT-III's `--opt fusedlamb`, timm's Lamb). */
    optimizer: OptimizerName;
    /** Learning rate for the reference batch of `scaling_rule` (or the rate itself with 'none'). */
    base_lr: number;
    /**
     * How the rate follows the global batch (batch_size x world size, read at every step):
     * 'sqrt_wrt_1024' lr = base_lr sqrt(batch / 1024) (DINOv2), 'linear_wrt_512' lr = base_lr batch / 512
     * (DeiT without --unscale-lr), 'none' lr = base_lr (DeiT-III's --unscale-lr).
     */
    scaling_rule: ScalingRule;
    min_lr: number;
    /** Linear warm-up of the learning rate from warmup_lr (cut to train.steps when longer). */
    warmup_steps: number;
    /** Rate at the first warm-up step (DINOv2: 0; DeiT: --warmup-lr 1e-6). */
    warmup_lr: number;
    weight_decay: number;
    weight_decay_end: number;
    beta1: number;
    beta2: number;
    eps: number;
    /**
     * Gradient-norm clip (0: off): of each student module on its own (backbone, DINO head, iBOT head)
     * in a self-supervised run, as DINOv2's loop; of all parameters together in a supervised run.
     */
    clip_grad: number;
    /** Which parameters get no weight decay: 'dinov2' or 'timm' rules (see param-groups.ts). */
    weight_decay_rule: WeightDecayRule;
    layerwise_decay: number;
    patch_embed_lr_mult: number;
    /** Steps during which the DINO head's last layer does not move. */
    freeze_last_layer_steps: number;
  };
  supervised: {
    label_smoothing: number;
    /** DeiT-III augmentation: horizontal flip probability, 3-Augment on/off, colour jitter strength. */
    hflip: number;
    three_augment: boolean;
    color_jitter: number;
    /** Mixup / CutMix Beta(alpha, alpha) parameters (0: off); `mix_prob` of the batches are mixed. */
    mixup_alpha: number;
    cutmix_alpha: number;
    mix_prob: number;
    /** DeiT's `--bce-loss`: binary cross-entropy on the mixed targets binarised (> 0), else soft-target cross-entropy. */
    bce_loss: boolean;
    /** DeiT-III's `--src`: resize + reflect-pad 4 + random crop instead of the random resized crop. */
    simple_random_crop: boolean;
  };
  dino: {
    loss_weight: number;
    koleo_loss_weight: number;
    head_n_prototypes: number;
    head_hidden_dim: number;
    head_bottleneck_dim: number;
    head_nlayers: number;
    student_temp: number;
    teacher_temp: number;
    warmup_teacher_temp: number;
    warmup_teacher_temp_steps: number;
    center_momentum: number;
    momentum_teacher: number;
    final_momentum_teacher: number;
  };
  ibot: {
    loss_weight: number;
    /** false: the masked patches go through the DINO head and the head_* fields below are unused. */
    separate_head: boolean;
    head_n_prototypes: number;
    head_hidden_dim: number;
    head_bottleneck_dim: number;
    head_nlayers: number;
    mask_sample_probability: number;
    mask_ratio_min_max: [number, number];
  };
  crops: {
    /** Training resolution (the supervised crop, the DINO global crops), and its area range. */
    global_crops_size: number;
    global_crops_scale: [number, number];
    local_crops_number: number;
    local_crops_size: number;
    local_crops_scale: [number, number];
    /** Evaluation: resize to global_crops_size / eval_crop_ratio, centre crop (0.875; DeiT-III: 1.0). */
    eval_crop_ratio: number;
  };
}

export type Centering = 'centering' | 'sinkhorn_knopp';
export type OptimizerName = 'adamw' | 'lamb';
export type ScalingRule = 'sqrt_wrt_1024' | 'linear_wrt_512' | 'none';
const CENTERINGS: readonly Centering[] = ['centering', 'sinkhorn_knopp'];
const OPTIMIZERS: readonly OptimizerName[] = ['adamw', 'lamb'];
const SCALING_RULES: readonly ScalingRule[] = ['sqrt_wrt_1024', 'linear_wrt_512', 'none'];

/** The learning rate of `cfg` for a world of `worldSize` processes (optim.scaling_rule on the global batch). */
export function scaledLr(cfg: TrainConfig, worldSize: number): number {
  const batch = cfg.train.batch_size * worldSize;
  const o = cfg.optim;
  if (o.scaling_rule === 'sqrt_wrt_1024') return o.base_lr * Math.sqrt(batch / 1024);
  if (o.scaling_rule === 'linear_wrt_512') return (o.base_lr * batch) / 512;
  return o.base_lr;
}

/** DINOv2 counts in epochs of OFFICIAL_EPOCH_LENGTH iterations; vitreg in steps. */
const EPOCH = 1250;

type Section = Exclude<keyof TrainConfig, 'objective' | 'model'>;

/**
 * Defaults: DINOv2's ssl_default_config.yaml (ViT-L/16, no registers, ImageNet at 224) field by field,
 * and DeiT-III's ImageNet-1k ViT-B recipe (README_revenge.md) for the supervised fields. No data source:
 * a run names its data (`--data`).
 */
export const DEFAULT_CONFIG: TrainConfig = {
  objective: 'dino',
  model: { arch: 'dinov2_vitl14', patch_size: 16, img_size: 224, drop_path_rate: 0.3, layerscale_init: 1e-5, drop_path_uniform: true },
  data: { source: '', num_classes: 5, train_size: 2000, val_size: 500, synthetic_size: 256, synthetic_seed: 0, val_fraction: 0.1 },
  train: {
    steps: 100 * EPOCH, batch_size: 64, micro_batch_size: 0, seed: 0, log_every: 1, checkpoint_every: 20 * EPOCH, eval_every: 12_500,
    knn_train_size: 1000, knn_k: 20, knn_temperature: 0.07, keep_checkpoints: 3, centering: 'centering', repeated_aug: false,
  },
  optim: {
    optimizer: 'adamw', base_lr: 0.004, scaling_rule: 'sqrt_wrt_1024', min_lr: 1e-6, warmup_steps: 10 * EPOCH, warmup_lr: 0,
    weight_decay: 0.04, weight_decay_end: 0.4, beta1: 0.9, beta2: 0.999, eps: 1e-8, clip_grad: 3.0, weight_decay_rule: 'dinov2',
    layerwise_decay: 0.9, patch_embed_lr_mult: 0.2, freeze_last_layer_steps: 1 * EPOCH,
  },
  supervised: {
    label_smoothing: 0, hflip: 0.5, three_augment: true, color_jitter: 0.3, mixup_alpha: 0.8, cutmix_alpha: 1.0, mix_prob: 1.0,
    bce_loss: true, simple_random_crop: false,
  },
  dino: {
    loss_weight: 1.0, koleo_loss_weight: 0.1, head_n_prototypes: 65536, head_hidden_dim: 2048, head_bottleneck_dim: 256,
    head_nlayers: 3, student_temp: 0.1, teacher_temp: 0.07, warmup_teacher_temp: 0.04, warmup_teacher_temp_steps: 30 * EPOCH,
    center_momentum: 0.9, momentum_teacher: 0.992, final_momentum_teacher: 1.0,
  },
  ibot: {
    loss_weight: 1.0, separate_head: false, head_n_prototypes: 65536, head_hidden_dim: 2048, head_bottleneck_dim: 256,
    head_nlayers: 3, mask_sample_probability: 0.5, mask_ratio_min_max: [0.1, 0.5],
  },
  crops: {
    global_crops_size: 224, global_crops_scale: [0.32, 1.0], local_crops_number: 8, local_crops_size: 96,
    local_crops_scale: [0.05, 0.32], eval_crop_ratio: 0.875,
  },
};

/** A partial config: any subset of the fields, sections merged field by field over a base. */
export type PartialTrainConfig = {
  objective?: Objective;
  model?: Partial<TrainConfig['model']>;
  preset?: string;
} & { [S in Section]?: Partial<TrainConfig[S]> };

/**
 * `over` merged into `base` section by section, field by field. A `model` section that names an `arch`
 * replaces the base's model section: the base's overrides belong to another architecture.
 */
function merge(base: TrainConfig, over: PartialTrainConfig): TrainConfig {
  const out = structuredClone(base) as unknown as Record<string, Record<string, unknown> | string>;
  for (const [key, value] of Object.entries(over)) {
    if (key === 'preset') continue;
    const cur = out[key];
    const replace = key === 'model' && value !== null && typeof value === 'object' && 'arch' in value;
    if (!replace && cur !== null && typeof cur === 'object' && value !== null && typeof value === 'object' && !Array.isArray(value)) {
      out[key] = { ...cur, ...(value as Record<string, unknown>) };
    } else out[key] = structuredClone(value) as string;
  }
  return out as unknown as TrainConfig;
}

interface PresetDef {
  summary: string;
  config: PartialTrainConfig;
  /** CPU-sized: merged over CPU_BASE (synthetic data, ViT-micro, 32 px) rather than the paper defaults. */
  cpu?: boolean;
  /** A paper recipe: it needs --data (or an explicit --data synthetic, which warns). */
  paper?: boolean;
}

/** What the CPU presets share: the built-in synthetic shapes at 32 px, ViT-micro/8, no batch scaling. */
const CPU_BASE: PartialTrainConfig = {
  model: { arch: 'vit_micro_patch8_reg4' },
  data: { source: 'synthetic', synthetic_size: 32 },
  train: { steps: 1000, batch_size: 32, checkpoint_every: 0, eval_every: 0, keep_checkpoints: 2 },
  optim: {
    base_lr: 1e-3, scaling_rule: 'none', warmup_steps: 100, weight_decay_end: 0.2, layerwise_decay: 1.0, patch_embed_lr_mult: 1.0,
    freeze_last_layer_steps: 0,
  },
  supervised: { label_smoothing: 0.1, mixup_alpha: 0, cutmix_alpha: 0, bce_loss: false },
  dino: { warmup_teacher_temp_steps: 0 },
  crops: { global_crops_size: 32, local_crops_size: 16 },
};

/** ImageNet-1k: 1,281,167 images, 625 steps per epoch at a global batch of 2048 (DeiT drops the last). */
const IN1K_EPOCH = 625;
/** ImageNet-22k (fall 2011): 14,197,122 images, 6932 steps per epoch at 2048. */
const IN22K_EPOCH = 6932;

/**
 * The CPU runs on synthetic data, and the paper's recipes (for GPU clusters; batch sizes are per
 * process: the global batch is batch_size x world size, and the learning rate follows it).
 */
export const PRESETS: Record<string, PresetDef> = {
  'tiny-supervised': {
    summary: 'ViT-micro/8 with 4 registers, supervised on 32 px synthetic shapes (about 2.5 CPU minutes, ~0.97 val accuracy)',
    cpu: true,
    config: {
      objective: 'supervised',
      model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0 },
      train: { steps: 1200, batch_size: 32, eval_every: 400, checkpoint_every: 400 },
      optim: { base_lr: 1e-3, min_lr: 1e-5, warmup_steps: 50, weight_decay: 0.05, weight_decay_end: 0.05, clip_grad: 0 },
      // Light augmentation: a CPU-sized run sees each image ~20 times, not hundreds.
      supervised: { label_smoothing: 0, three_augment: false, color_jitter: 0 },
      // Crops down to 60% of the area: their zoom covers the evaluation's (centre crop 0.875, 77% of the area).
      crops: { global_crops_scale: [0.6, 1] },
    },
  },
  'tiny-dino': {
    summary: 'ViT-micro/8 with 4 registers, DINO + iBOT + KoLeo on 32 px synthetic shapes (about 2 CPU minutes, ~0.73 k-NN accuracy)',
    cpu: true,
    config: {
      objective: 'dino',
      // LayerScale 1 rather than 1e-5: a run of a few hundred steps cannot wait for the gammas to grow.
      model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0, layerscale_init: 1.0 },
      train: { steps: 300, batch_size: 32, eval_every: 100, checkpoint_every: 100, knn_train_size: 1000 },
      optim: { base_lr: 1e-3, min_lr: 1e-5, warmup_steps: 30, weight_decay: 0.04, weight_decay_end: 0.2, freeze_last_layer_steps: 10 },
      // The teacher stays at 0.04: with 64 prototypes, 0.07 lets its outputs drift to nearly uniform.
      dino: {
        head_n_prototypes: 64, head_hidden_dim: 256, head_bottleneck_dim: 64, warmup_teacher_temp: 0.04, teacher_temp: 0.04,
        warmup_teacher_temp_steps: 0, momentum_teacher: 0.95,
      },
      ibot: { head_n_prototypes: 64, head_hidden_dim: 256, head_bottleneck_dim: 64 },
      // At 32 px the DINOv2 scales (0.32-1, 0.05-0.32) cut the shape away; these keep most of it in view.
      crops: {
        global_crops_size: 32, global_crops_scale: [0.5, 1], local_crops_number: 2, local_crops_size: 16, local_crops_scale: [0.15, 0.5],
      },
    },
  },
  'dinov2-l14-reg4': {
    summary: 'DINOv2 ViT-L/14 with 4 registers (dinov2/configs/train/vitl14.yaml): DINO + iBOT (separate heads, Sinkhorn-Knopp) + KoLeo, ImageNet-22k at 224',
    paper: true,
    config: {
      objective: 'dino',
      // vitl14.yaml: swiglufused FFN, drop path 0.4 in every block; the training configs interpolate the
      // positional embedding the legacy way (offset 0.1, no antialias), unlike the released register models.
      model: {
        arch: 'dinov2_vitl14_reg', img_size: 224, ffn_layer: 'swiglu', drop_path_rate: 0.4, drop_path_uniform: true, layerscale_init: 1e-5,
        interpolate_antialias: false, interpolate_offset: 0.1,
      },
      train: { steps: 500 * EPOCH, batch_size: 32, centering: 'sinkhorn_knopp' },
      optim: { base_lr: 2e-4, warmup_steps: 80 * EPOCH, weight_decay_end: 0.2, layerwise_decay: 1.0 },
      dino: { head_n_prototypes: 131072, head_bottleneck_dim: 384, momentum_teacher: 0.994 },
      ibot: { separate_head: true, head_n_prototypes: 131072 },
      crops: { local_crops_size: 98 },
    },
  },
  'deit3-b16-in1k-reg4': {
    summary: 'DeiT-III ViT-B/16 with 4 registers, ImageNet-1k at 192 for 800 epochs (README_revenge.md): LAMB, BCE, 3-Augment, repeated augmentation',
    paper: true,
    config: {
      objective: 'supervised',
      model: { arch: 'deit3_base_patch16_reg4', img_size: 192, drop_path_rate: 0.2, layerscale_init: 1e-4 },
      train: { steps: 800 * IN1K_EPOCH, batch_size: 256, repeated_aug: true, eval_every: 10 * IN1K_EPOCH, checkpoint_every: IN1K_EPOCH },
      optim: {
        optimizer: 'lamb', base_lr: 3e-3, scaling_rule: 'none', min_lr: 1e-5, warmup_steps: 5 * IN1K_EPOCH, warmup_lr: 1e-6,
        weight_decay: 0.05, weight_decay_end: 0.05, clip_grad: 0, weight_decay_rule: 'timm', layerwise_decay: 1.0, patch_embed_lr_mult: 1.0,
        freeze_last_layer_steps: 0,
      },
      supervised: { label_smoothing: 0, three_augment: true, color_jitter: 0.3, mixup_alpha: 0.8, cutmix_alpha: 1.0, bce_loss: true },
      crops: { global_crops_size: 192, global_crops_scale: [0.08, 1.0], eval_crop_ratio: 1.0 },
    },
  },
  'deit3-b16-in22k-reg4': {
    summary: 'DeiT-III ViT-B/16 with 4 registers, ImageNet-22k at 224 for 240 epochs (README_revenge.md): LAMB, cross-entropy, CutMix, 3-Augment',
    paper: true,
    config: {
      objective: 'supervised',
      model: { arch: 'deit3_base_patch16_reg4', img_size: 224, drop_path_rate: 0.1, layerscale_init: 1e-4 },
      train: { steps: 240 * IN22K_EPOCH, batch_size: 64, repeated_aug: false, eval_every: 10 * IN22K_EPOCH, checkpoint_every: IN22K_EPOCH / 4 },
      optim: {
        optimizer: 'lamb', base_lr: 1e-3, scaling_rule: 'none', min_lr: 1e-5, warmup_steps: 5 * IN22K_EPOCH, warmup_lr: 1e-6,
        weight_decay: 0.02, weight_decay_end: 0.02, clip_grad: 0, weight_decay_rule: 'timm', layerwise_decay: 1.0, patch_embed_lr_mult: 1.0,
        freeze_last_layer_steps: 0,
      },
      supervised: { label_smoothing: 0.1, three_augment: true, color_jitter: 0.3, mixup_alpha: 0, cutmix_alpha: 1.0, bce_loss: false, simple_random_crop: true },
      crops: { global_crops_size: 224, global_crops_scale: [0.08, 1.0], eval_crop_ratio: 1.0 },
    },
  },
};
/** The same recipe without registers (`num_register_tokens: 0`). */
function withoutRegisters(name: string, summary: string): PresetDef {
  const p = PRESETS[name]!;
  return { ...p, summary, config: { ...p.config, model: { ...p.config.model, num_register_tokens: 0 } } };
}
PRESETS['dinov2-l14'] = withoutRegisters('dinov2-l14-reg4', 'The same DINOv2 ViT-L/14 recipe without registers');
PRESETS['deit3-b16-in1k'] = withoutRegisters('deit3-b16-in1k-reg4', 'The same DeiT-III ViT-B/16 ImageNet-1k recipe without registers');
PRESETS['deit3-b16-in22k'] = withoutRegisters('deit3-b16-in22k-reg4', 'The same DeiT-III ViT-B/16 ImageNet-22k recipe without registers');
/** Earlier names, kept: the ImageNet-1k recipe. */
export const PRESET_ALIASES: Record<string, string> = { 'deit3-b16-reg4': 'deit3-b16-in1k-reg4', 'deit3-b16': 'deit3-b16-in1k' };

/** True for a paper recipe (it needs --data). */
export function isPaperPreset(name: string): boolean {
  return PRESETS[PRESET_ALIASES[name] ?? name]?.paper === true;
}

/** The base a preset is merged over, then the preset. */
function presetBase(name: string): TrainConfig {
  const p = PRESETS[PRESET_ALIASES[name] ?? name]!;
  return merge(p.cpu ? merge(DEFAULT_CONFIG, CPU_BASE) : DEFAULT_CONFIG, p.config);
}

export const PRESET_NAMES = Object.keys(PRESETS);
/** Names a --preset accepts: the presets and their aliases. */
const PRESET_CHOICES = [...PRESET_NAMES, ...Object.keys(PRESET_ALIASES)];

/** A preset's full config. */
export function presetConfig(name: string): TrainConfig {
  if (!PRESET_CHOICES.includes(name)) throw new Error(`unknown preset "${name}"; expected one of ${PRESET_CHOICES.join(', ')}`);
  return validateTrainConfig({ preset: name }, `preset ${name}`);
}

// ---------------------------------------------------------------------------------------------------
// Validation

type Rule =
  | { kind: 'int'; min: number; max?: number }
  | { kind: 'number'; min?: number; max?: number; exclusiveMin?: boolean }
  | { kind: 'bool' }
  | { kind: 'range'; min: number; max: number }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'source' };

const int = (min: number, max?: number): Rule => ({ kind: 'int', min, max });
const num = (min?: number, max?: number, exclusiveMin = false): Rule => ({ kind: 'number', min, max, exclusiveMin });
const pos = num(0, undefined, true);
const unit: Rule = num(0, 1);
const bool: Rule = { kind: 'bool' };
const range = (min: number, max: number): Rule => ({ kind: 'range', min, max });
const oneOf = (values: readonly string[]): Rule => ({ kind: 'enum', values });
/** data.source: a string, '' meaning "not given yet" (a paper preset before --data). */
const source: Rule = { kind: 'source' };

const RULES: { [S in Section]: Record<keyof TrainConfig[S], Rule | 'string'> } = {
  data: {
    source, num_classes: int(5, 8), train_size: int(1), val_size: int(1), synthetic_size: int(16),
    synthetic_seed: int(0), val_fraction: num(0, 1, true),
  },
  train: {
    steps: int(1), batch_size: int(2), micro_batch_size: int(0), seed: int(0), log_every: int(1), checkpoint_every: int(0), eval_every: int(0),
    knn_train_size: int(1), knn_k: int(1), knn_temperature: pos, keep_checkpoints: int(1), centering: oneOf(CENTERINGS),
    repeated_aug: bool,
  },
  optim: {
    optimizer: oneOf(OPTIMIZERS), base_lr: num(0), scaling_rule: oneOf(SCALING_RULES), min_lr: num(0), warmup_steps: int(0),
    warmup_lr: num(0), weight_decay: num(0), weight_decay_end: num(0), beta1: num(0, 1), beta2: num(0, 1), eps: pos, clip_grad: num(0),
    weight_decay_rule: oneOf(WEIGHT_DECAY_RULES), layerwise_decay: num(0, 1, true), patch_embed_lr_mult: num(0), freeze_last_layer_steps: int(0),
  },
  supervised: {
    label_smoothing: num(0, 1), hflip: unit, three_augment: bool, color_jitter: num(0, 1), mixup_alpha: num(0), cutmix_alpha: num(0),
    mix_prob: unit, bce_loss: bool, simple_random_crop: bool,
  },
  dino: {
    loss_weight: num(0), koleo_loss_weight: num(0), head_n_prototypes: int(2), head_hidden_dim: int(1),
    head_bottleneck_dim: int(1), head_nlayers: int(1, 8), student_temp: pos, teacher_temp: pos, warmup_teacher_temp: pos,
    warmup_teacher_temp_steps: int(0), center_momentum: unit, momentum_teacher: unit, final_momentum_teacher: unit,
  },
  ibot: {
    loss_weight: num(0), separate_head: bool, head_n_prototypes: int(2), head_hidden_dim: int(1), head_bottleneck_dim: int(1),
    head_nlayers: int(1, 8), mask_sample_probability: unit, mask_ratio_min_max: range(0, 1),
  },
  crops: {
    global_crops_size: int(8), global_crops_scale: range(0, 1), local_crops_number: int(0), local_crops_size: int(8),
    local_crops_scale: range(0, 1), eval_crop_ratio: num(0, 1, true),
  },
};

function describe(rule: Rule | 'string'): string {
  if (rule === 'string') return 'a string';
  if (rule.kind === 'bool') return 'true or false';
  if (rule.kind === 'range') return `a pair [min, max] with ${rule.min} <= min <= max <= ${rule.max}`;
  if (rule.kind === 'enum') return `one of ${rule.values.map((v) => JSON.stringify(v)).join(', ')}`;
  if (rule.kind === 'source') return '"synthetic", a folder or a file list (a string)';
  const what = rule.kind === 'int' ? 'an integer' : 'a number';
  const lo = rule.min === undefined ? '' : `${rule.kind === 'number' && rule.exclusiveMin ? '>' : '>='} ${rule.min}`;
  const hi = rule.max === undefined ? '' : `<= ${rule.max}`;
  const bounds = [lo, hi].filter(Boolean).join(' and ');
  return bounds ? `${what} ${bounds}` : what;
}

function check(rule: Rule | 'string', v: unknown): boolean {
  if (rule === 'string') return typeof v === 'string' && v.length > 0;
  if (rule.kind === 'bool') return typeof v === 'boolean';
  if (rule.kind === 'enum') return typeof v === 'string' && rule.values.includes(v);
  if (rule.kind === 'source') return typeof v === 'string';
  if (rule.kind === 'range') {
    return Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === 'number' && Number.isFinite(x)) &&
      v[0] >= rule.min && v[0] <= v[1] && v[1] <= rule.max;
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) return false;
  if (rule.kind === 'int' && !Number.isInteger(v)) return false;
  if (rule.min !== undefined && (rule.kind === 'number' && rule.exclusiveMin ? v <= rule.min : v < rule.min)) return false;
  if (rule.max !== undefined && v > rule.max) return false;
  return true;
}

/**
 * Merges `raw` (a parsed JSON object: a `preset` name and/or any fields) over the preset or the
 * defaults and checks every field. Errors read `<source>: field "optim.lr" must be ..., got ...`.
 */
export function validateTrainConfig(raw: unknown, source = 'config'): TrainConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${source}: expected a JSON object`);
  const obj = raw as Record<string, unknown>;
  const sections = ['objective', 'model', 'preset', ...Object.keys(RULES)];
  for (const key of Object.keys(obj)) {
    if (!sections.includes(key)) throw new Error(`${source}: unknown field "${key}"; expected one of ${sections.join(', ')}`);
  }
  let base = DEFAULT_CONFIG;
  if (obj.preset !== undefined) {
    if (typeof obj.preset !== 'string' || !PRESET_CHOICES.includes(obj.preset)) {
      throw new Error(`${source}: field "preset" must be one of ${PRESET_CHOICES.join(', ')}, got ${JSON.stringify(obj.preset)}`);
    }
    base = presetBase(obj.preset);
  }
  for (const key of ['model', ...Object.keys(RULES)]) {
    const v = obj[key];
    if (v !== undefined && (v === null || typeof v !== 'object' || Array.isArray(v))) {
      throw new Error(`${source}: field "${key}" must be an object, got ${JSON.stringify(v)}`);
    }
  }
  const cfg = merge(base, obj as PartialTrainConfig);
  if (!OBJECTIVES.includes(cfg.objective)) {
    throw new Error(`${source}: field "objective" must be one of ${OBJECTIVES.join(', ')}, got ${JSON.stringify(cfg.objective)}`);
  }
  for (const [section, rules] of Object.entries(RULES) as [Section, Record<string, Rule | 'string'>][]) {
    const values = cfg[section] as unknown as Record<string, unknown>;
    for (const key of Object.keys(values)) {
      if (section === 'optim' && key === 'lr') {
        throw new Error(`${source}: field "optim.lr" is now optim.base_lr, the rate for the reference batch of optim.scaling_rule ("none": the rate itself)`);
      }
      if (!(key in rules)) {
        throw new Error(`${source}: unknown field "${section}.${key}"; expected one of ${Object.keys(rules).map((k) => `${section}.${k}`).join(', ')}`);
      }
    }
    for (const [key, rule] of Object.entries(rules)) {
      if (!check(rule, values[key])) {
        throw new Error(`${source}: field "${section}.${key}" must be ${describe(rule)}, got ${JSON.stringify(values[key])}`);
      }
    }
  }
  const model = cfg.model as Record<string, unknown>;
  for (const key of Object.keys(model)) {
    if (key !== 'arch' && !(CONFIG_FIELDS as string[]).includes(key)) {
      throw new Error(`${source}: unknown field "model.${key}"; expected model.arch or one of ${CONFIG_FIELDS.map((k) => `model.${k}`).join(', ')}`);
    }
  }
  if (typeof model.arch !== 'string' || !MODEL_NAMES.includes(model.arch)) {
    throw new Error(`${source}: field "model.arch" must be one of ${MODEL_NAMES.join(', ')}, got ${JSON.stringify(model.arch)}`);
  }
  const vit = modelConfig(cfg, source);
  const relations: [boolean, string][] = [
    [cfg.optim.min_lr <= cfg.optim.base_lr || cfg.optim.base_lr === 0, `field "optim.min_lr" (${cfg.optim.min_lr}) must not exceed optim.base_lr (${cfg.optim.base_lr})`],
    [cfg.crops.global_crops_size % vit.patch_size === 0, `field "crops.global_crops_size" (${cfg.crops.global_crops_size}) must be a multiple of the patch size ${vit.patch_size}`],
  ];
  if (cfg.objective === 'dino') {
    relations.push(
      [cfg.train.micro_batch_size === 0, `field "train.micro_batch_size" must be 0 for objective dino (its losses and centres are per batch), got ${cfg.train.micro_batch_size}`],
      [cfg.crops.local_crops_size % vit.patch_size === 0, `field "crops.local_crops_size" (${cfg.crops.local_crops_size}) must be a multiple of the patch size ${vit.patch_size}`],
      [cfg.dino.loss_weight > 0 || cfg.ibot.loss_weight > 0, 'fields "dino.loss_weight" and "ibot.loss_weight" cannot both be 0'],
      [cfg.ibot.loss_weight === 0 || (cfg.ibot.mask_sample_probability > 0 && cfg.ibot.mask_ratio_min_max[1] > 0), 'fields "ibot.mask_sample_probability" and "ibot.mask_ratio_min_max" must be positive when ibot.loss_weight > 0'],
    );
  }
  for (const [ok, message] of relations) if (!ok) throw new Error(`${source}: ${message}`);
  return cfg;
}

/**
 * Throws unless the config names its data: the defaults and the paper presets leave data.source empty,
 * so that a recipe for ImageNet never trains on the built-in shapes by accident.
 */
export function assertDataSource(cfg: TrainConfig): void {
  if (cfg.data.source === '') {
    throw new Error('data: no data source; give --data FOLDER or a file list (data.source in a config file), or --data synthetic for the built-in shapes');
  }
}

/** The backbone config of a training config (arch + overrides), with the field named on error. */
export function modelConfig(cfg: TrainConfig, source = 'config'): ViTConfig {
  const { arch, ...overrides } = cfg.model;
  try {
    return getConfig(arch, overrides);
  } catch (err) {
    throw new Error(`${source}: model: ${(err as Error).message}`);
  }
}

/** What the command line says about a run's config (`vitreg train` and `vitreg-worker` share it). */
export interface ConfigSources {
  /** A JSON file with any of the sections (and optionally "preset"). */
  configFile?: string;
  preset?: string;
  /** With neither: the run folder's config.json when resuming. */
  resumeDir?: string;
  /** Overrides of single fields. */
  data?: string;
  registers?: number;
  steps?: number;
  seed?: number;
  batchSize?: number;
  /** Told when a paper recipe is set to train on the synthetic shapes. */
  warn?: (message: string) => void;
}

function readJsonObject(path: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`${what}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new Error(`${what}: ${path} is not valid JSON (${(err as Error).message})`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error(`${what}: ${path}: expected a JSON object`);
  return parsed as Record<string, unknown>;
}

/**
 * The validated config of a run from a preset, a JSON file, or (resuming) the run folder's
 * config.json, with single fields overridden. Errors name the flag or the field.
 */
export function resolveTrainConfig(src: ConfigSources): TrainConfig {
  if (src.configFile !== undefined && src.preset !== undefined) throw new Error('give --config or --preset, not both');
  if (src.preset !== undefined && !PRESET_CHOICES.includes(src.preset)) throw new Error(`--preset: expected one of ${PRESET_CHOICES.join(', ')}, got "${src.preset}"`);
  let raw: Record<string, unknown>;
  let source: string;
  if (src.configFile !== undefined) {
    raw = readJsonObject(src.configFile, '--config');
    source = src.configFile;
  } else if (src.preset !== undefined) {
    raw = { preset: src.preset };
    source = `preset ${src.preset}`;
  } else if (src.resumeDir !== undefined && existsSync(join(src.resumeDir, 'config.json'))) {
    source = join(src.resumeDir, 'config.json');
    raw = readJsonObject(source, '--resume');
  } else {
    throw new Error('expected --preset NAME or --config FILE.json (or --resume with an existing --out run folder); see vitreg train --list-presets');
  }
  const section = (k: string) => ({ ...((raw[k] as Record<string, unknown> | undefined) ?? {}) });
  const patched: Record<string, unknown> = { ...raw };
  if (src.data !== undefined) patched.data = { ...section('data'), source: src.data };
  if (src.registers !== undefined) patched.model = { ...section('model'), num_register_tokens: src.registers };
  const train: Record<string, unknown> = section('train');
  if (src.steps !== undefined) train.steps = src.steps;
  if (src.seed !== undefined) train.seed = src.seed;
  if (src.batchSize !== undefined) train.batch_size = src.batchSize;
  if (Object.keys(train).length > 0) patched.train = train;
  const cfg = validateTrainConfig(patched, source);
  const preset = typeof raw.preset === 'string' ? raw.preset : undefined;
  if (preset && isPaperPreset(preset) && cfg.data.source === 'synthetic') {
    src.warn?.(`preset ${preset} is a paper recipe for ImageNet on a GPU cluster; it now trains on the built-in synthetic shapes (${cfg.data.num_classes} classes at ${cfg.data.synthetic_size} px), which says nothing about the paper's numbers`);
  }
  return cfg;
}
