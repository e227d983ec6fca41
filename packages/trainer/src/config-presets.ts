/**
 * The training presets: the CPU runs on the built-in synthetic shapes (`tiny-supervised`, `tiny-dino`)
 * and the paper's recipes (DINOv2 ViT-L/14, DeiT-III ViT-B/16 on ImageNet-1k and -22k, each with and
 * without registers), as partial configs merged over the defaults. `presetConfig` (config-validate.ts)
 * gives a preset's validated config.
 */
import { DEFAULT_CONFIG, DINOV2_EPOCH, mergeTrainConfig, type PartialTrainConfig, type TrainConfig } from './config.js';

const EPOCH = DINOV2_EPOCH;
const merge = mergeTrainConfig;

export interface PresetDef {
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
    base_lr: 1e-3,
    scaling_rule: 'none',
    warmup_steps: 100,
    weight_decay_end: 0.2,
    layerwise_decay: 1.0,
    patch_embed_lr_mult: 1.0,
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
        head_n_prototypes: 64,
        head_hidden_dim: 256,
        head_bottleneck_dim: 64,
        warmup_teacher_temp: 0.04,
        teacher_temp: 0.04,
        warmup_teacher_temp_steps: 0,
        momentum_teacher: 0.95,
      },
      ibot: { head_n_prototypes: 64, head_hidden_dim: 256, head_bottleneck_dim: 64 },
      // At 32 px the DINOv2 scales (0.32-1, 0.05-0.32) cut the shape away; these keep most of it in view.
      crops: {
        global_crops_size: 32,
        global_crops_scale: [0.5, 1],
        local_crops_number: 2,
        local_crops_size: 16,
        local_crops_scale: [0.15, 0.5],
      },
    },
  },
  'dinov2-l14-reg4': {
    summary:
      'DINOv2 ViT-L/14 with 4 registers (dinov2/configs/train/vitl14.yaml): DINO + iBOT (separate heads, Sinkhorn-Knopp) + KoLeo, ImageNet-22k at 224',
    paper: true,
    config: {
      objective: 'dino',
      // vitl14.yaml: swiglufused FFN, drop path 0.4 in every block; the training configs interpolate the
      // positional embedding the legacy way (offset 0.1, no antialias), unlike the released register models.
      model: {
        arch: 'dinov2_vitl14_reg',
        img_size: 224,
        ffn_layer: 'swiglu',
        drop_path_rate: 0.4,
        drop_path_uniform: true,
        layerscale_init: 1e-5,
        interpolate_antialias: false,
        interpolate_offset: 0.1,
      },
      train: { steps: 500 * EPOCH, batch_size: 32, centering: 'sinkhorn_knopp' },
      optim: { base_lr: 2e-4, warmup_steps: 80 * EPOCH, weight_decay_end: 0.2, layerwise_decay: 1.0 },
      dino: { head_n_prototypes: 131072, head_bottleneck_dim: 384, momentum_teacher: 0.994 },
      ibot: { separate_head: true, head_n_prototypes: 131072 },
      crops: { local_crops_size: 98 },
    },
  },
  'deit3-b16-in1k-reg4': {
    summary:
      'DeiT-III ViT-B/16 with 4 registers, ImageNet-1k at 192 for 800 epochs (README_revenge.md): LAMB, BCE, 3-Augment, repeated augmentation',
    paper: true,
    config: {
      objective: 'supervised',
      model: { arch: 'deit3_base_patch16_reg4', img_size: 192, drop_path_rate: 0.2, layerscale_init: 1e-4 },
      train: { steps: 800 * IN1K_EPOCH, batch_size: 256, repeated_aug: true, eval_every: 10 * IN1K_EPOCH, checkpoint_every: IN1K_EPOCH },
      optim: {
        optimizer: 'lamb',
        base_lr: 3e-3,
        scaling_rule: 'none',
        min_lr: 1e-5,
        warmup_steps: 5 * IN1K_EPOCH,
        warmup_lr: 1e-6,
        weight_decay: 0.05,
        weight_decay_end: 0.05,
        clip_grad: 0,
        weight_decay_rule: 'timm',
        layerwise_decay: 1.0,
        patch_embed_lr_mult: 1.0,
        freeze_last_layer_steps: 0,
      },
      supervised: { label_smoothing: 0, three_augment: true, color_jitter: 0.3, mixup_alpha: 0.8, cutmix_alpha: 1.0, bce_loss: true },
      crops: { global_crops_size: 192, global_crops_scale: [0.08, 1.0], eval_crop_ratio: 1.0 },
    },
  },
  'deit3-b16-in22k-reg4': {
    summary:
      'DeiT-III ViT-B/16 with 4 registers, ImageNet-22k at 224 for 240 epochs (README_revenge.md): LAMB, cross-entropy, CutMix, 3-Augment',
    paper: true,
    config: {
      objective: 'supervised',
      model: { arch: 'deit3_base_patch16_reg4', img_size: 224, drop_path_rate: 0.1, layerscale_init: 1e-4 },
      train: {
        steps: 240 * IN22K_EPOCH,
        batch_size: 64,
        repeated_aug: false,
        eval_every: 10 * IN22K_EPOCH,
        checkpoint_every: IN22K_EPOCH / 4,
      },
      optim: {
        optimizer: 'lamb',
        base_lr: 1e-3,
        scaling_rule: 'none',
        min_lr: 1e-5,
        warmup_steps: 5 * IN22K_EPOCH,
        warmup_lr: 1e-6,
        weight_decay: 0.02,
        weight_decay_end: 0.02,
        clip_grad: 0,
        weight_decay_rule: 'timm',
        layerwise_decay: 1.0,
        patch_embed_lr_mult: 1.0,
        freeze_last_layer_steps: 0,
      },
      supervised: {
        label_smoothing: 0.1,
        three_augment: true,
        color_jitter: 0.3,
        mixup_alpha: 0,
        cutmix_alpha: 1.0,
        bce_loss: false,
        simple_random_crop: true,
      },
      crops: { global_crops_size: 224, global_crops_scale: [0.08, 1.0], eval_crop_ratio: 1.0 },
    },
  },
  'tiny-clip': {
    summary:
      'ViT-micro/8 with 4 registers + a 1-block text tower, CLIP loss on 32 px synthetic shapes with generated captions (0.90 zero-shot top-1 in 111 CPU-seconds on onnxruntime, one thread)',
    cpu: true,
    config: {
      objective: 'clip',
      model: { arch: 'vit_micro_patch8_reg4', drop_path_rate: 0 },
      // 80 distinct captions, so a large batch holds many false negatives (the same caption on other images):
      // batch 8 for 9000 steps beat 16 x 2500 (0.784 in 100 CPU-s), 16 x 3500 (0.786), 8 x 5000 (0.774) and
      // 8 x 2000 (0.712) (trainer README, "Objective clip"). This preset: 0.900 in 111 CPU-s, `npm run bench --
      // tiny-runs --preset tiny-clip --engine onnxruntime --threads 1`, 2026-12-05, open_clip's decay rule.
      train: { steps: 9000, batch_size: 8, eval_every: 0, checkpoint_every: 1000 },
      optim: {
        base_lr: 2e-3,
        min_lr: 0,
        warmup_steps: 200,
        weight_decay: 0.05,
        weight_decay_end: 0.05,
        beta2: 0.98,
        eps: 1e-6,
        clip_grad: 0,
      },
      clip: {
        proj_dim: 32,
        text_context_length: 16,
        text_vocab_size: 0,
        text_width: 64,
        text_heads: 2,
        text_layers: 1,
        tokenizer: '',
      },
      // open_clip's RandomResizedCrop(scale=(0.9, 1.0)).
      crops: { global_crops_size: 32, global_crops_scale: [0.9, 1] },
    },
  },
  'openclip-b16-reg4': {
    summary:
      "OpenCLIP ViT-B/16 with 4 registers (open_clip's ViT-B-16 config, params.py defaults: AdamW beta2 0.98, eps 1e-6, wd 0.2, warm-up, cosine); image-caption pairs from --data TABLE.csv|.tsv or a folder of WebDataset .tar shards (.jpg + .txt)",
    paper: true,
    config: {
      objective: 'clip',
      // open_clip's VisionTransformer: ln_pre, no LayerScale, no drop path, projection to 512.
      model: { arch: 'openclip_vitb16', img_size: 224, num_register_tokens: 4, drop_path_rate: 0 },
      // params.py: batch 64 per GPU, 32 epochs (steps here: set --steps to epochs x pairs / global batch), warmup 10000.
      train: { steps: 100_000, batch_size: 64, eval_every: 0, checkpoint_every: 5000 },
      optim: {
        optimizer: 'adamw',
        base_lr: 5e-4,
        scaling_rule: 'none',
        min_lr: 0,
        warmup_steps: 10_000,
        warmup_lr: 0,
        weight_decay: 0.2,
        weight_decay_end: 0.2,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-6,
        clip_grad: 0,
        layerwise_decay: 1.0,
        patch_embed_lr_mult: 1.0,
        freeze_last_layer_steps: 0,
      },
      clip: { loss: 'clip', proj_dim: 512 },
      crops: { global_crops_size: 224, global_crops_scale: [0.9, 1.0], eval_crop_ratio: 1.0 },
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
PRESETS['openclip-b16'] = withoutRegisters('openclip-b16-reg4', 'The same OpenCLIP ViT-B/16 recipe without registers');
PRESETS['deit3-b16-in22k'] = withoutRegisters('deit3-b16-in22k-reg4', 'The same DeiT-III ViT-B/16 ImageNet-22k recipe without registers');
/** Earlier names, kept: the ImageNet-1k recipe. */
export const PRESET_ALIASES: Record<string, string> = { 'deit3-b16-reg4': 'deit3-b16-in1k-reg4', 'deit3-b16': 'deit3-b16-in1k' };

/** True for a paper recipe (it needs --data). */
export function isPaperPreset(name: string): boolean {
  return PRESETS[PRESET_ALIASES[name] ?? name]?.paper === true;
}

/** The base a preset is merged over, then the preset. */
export function presetBase(name: string): TrainConfig {
  const p = PRESETS[PRESET_ALIASES[name] ?? name]!;
  return merge(p.cpu ? merge(DEFAULT_CONFIG, CPU_BASE) : DEFAULT_CONFIG, p.config);
}

export const PRESET_NAMES = Object.keys(PRESETS);
/** Names a --preset accepts: the presets and their aliases. */
export const PRESET_CHOICES = [...PRESET_NAMES, ...Object.keys(PRESET_ALIASES)];
