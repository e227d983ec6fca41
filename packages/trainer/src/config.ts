/**
 * Training configuration, the schema: one JSON object with sections `model`, `data`, `train`, `optim`,
 * `supervised`, `dino`, `ibot`, `crops` (`TrainConfig`). A file or preset gives some fields; the rest
 * come from the defaults (`DEFAULT_CONFIG`): DINOv2's `ssl_default_config.yaml` field by field (epochs
 * counted in steps of its OFFICIAL_EPOCH_LENGTH, 1250) and DeiT-III's ImageNet-1k recipe for the
 * supervised fields (the table in the trainer README maps every official field to its vitreg field).
 * The presets are in config-presets.ts; `validateTrainConfig` and `resolveTrainConfig`, which check
 * every field before any work starts, in config-validate.ts.
 */
import { getConfig, type ViTConfig } from '@vitreg/registers';
import type { WeightDecayRule } from './param-groups.js';

export type Objective = 'supervised' | 'dino' | 'clip';
export const OBJECTIVES: readonly Objective[] = ['supervised', 'dino', 'clip'];

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
    /**
     * Synthetic backgrounds: 'textured' (the default) or 'flat' (one colour, no noise, no distractors: the
     * information-free background the paper's high-norm tokens sit on); with `synthetic_object_side`
     * (the main shape's side range as a fraction of the image side, within [0.05, 0.8]; default
     * [0.55, 0.8]) small objects leave most patches empty.
     */
    synthetic_background: 'textured' | 'flat';
    synthetic_object_side: [number, number];
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
  /**
   * Text-supervised training (objective 'clip', open_clip's recipe; clip-loop.ts): the loss, the text tower
   * (open_clip's CLIPTextCfg; the image tower is `model` with `proj_dim`), the tokenizer and the caption
   * table's columns (open_clip's --csv-img-key / --csv-caption-key / --csv-separator), logit_scale / bias.
   */
  clip: {
    /** 'clip' (open_clip's ClipLoss) or 'siglip' (SigLipLoss; needs init_logit_bias). */
    loss: 'clip' | 'siglip';
    /** Joint embedding width: both towers' projection. */
    proj_dim: number;
    text_context_length: number;
    /** Rows of the token embedding; 0: the tokenizer's vocabulary size. */
    text_vocab_size: number;
    text_width: number;
    text_heads: number;
    text_layers: number;
    text_mlp_ratio: number;
    text_act_layer: 'gelu' | 'quick_gelu';
    /** CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); '': the synthetic captions' word vocabulary (synthetic data only). */
    tokenizer: string;
    csv_img_key: string;
    csv_caption_key: string;
    /** '': tab, or ',' for a file ending in .csv. */
    csv_separator: string;
    init_logit_scale: number;
    /** SigLIP's initial logit_bias (-10), or null (CLIP: none). */
    init_logit_bias: number | null;
  };
}

export type Centering = 'centering' | 'sinkhorn_knopp';
export type OptimizerName = 'adamw' | 'lamb';
export type ScalingRule = 'sqrt_wrt_1024' | 'linear_wrt_512' | 'none';

/** The learning rate of `cfg` for a world of `worldSize` processes (optim.scaling_rule on the global batch). */
export function scaledLr(cfg: TrainConfig, worldSize: number): number {
  const batch = cfg.train.batch_size * worldSize;
  const o = cfg.optim;
  if (o.scaling_rule === 'sqrt_wrt_1024') return o.base_lr * Math.sqrt(batch / 1024);
  if (o.scaling_rule === 'linear_wrt_512') return (o.base_lr * batch) / 512;
  return o.base_lr;
}

/** DINOv2 counts in epochs of OFFICIAL_EPOCH_LENGTH iterations; vitreg in steps. */
export const DINOV2_EPOCH = 1250;
const EPOCH = DINOV2_EPOCH;

/** The sections of a TrainConfig that hold plain fields (all but `objective` and `model`). */
export type TrainConfigSection = Exclude<keyof TrainConfig, 'objective' | 'model'>;
type Section = TrainConfigSection;

/**
 * Defaults: DINOv2's ssl_default_config.yaml (ViT-L/16, no registers, ImageNet at 224) field by field,
 * and DeiT-III's ImageNet-1k ViT-B recipe (README_revenge.md) for the supervised fields. No data source:
 * a run names its data (`--data`).
 */
export const DEFAULT_CONFIG: TrainConfig = {
  objective: 'dino',
  model: { arch: 'dinov2_vitl14', patch_size: 16, img_size: 224, drop_path_rate: 0.3, layerscale_init: 1e-5, drop_path_uniform: true },
  data: {
    source: '',
    num_classes: 5,
    train_size: 2000,
    val_size: 500,
    synthetic_size: 256,
    synthetic_seed: 0,
    synthetic_background: 'textured',
    synthetic_object_side: [0.55, 0.8],
    val_fraction: 0.1,
  },
  train: {
    steps: 100 * EPOCH,
    batch_size: 64,
    micro_batch_size: 0,
    seed: 0,
    log_every: 1,
    checkpoint_every: 20 * EPOCH,
    eval_every: 12_500,
    knn_train_size: 1000,
    knn_k: 20,
    knn_temperature: 0.07,
    keep_checkpoints: 3,
    centering: 'centering',
    repeated_aug: false,
  },
  optim: {
    optimizer: 'adamw',
    base_lr: 0.004,
    scaling_rule: 'sqrt_wrt_1024',
    min_lr: 1e-6,
    warmup_steps: 10 * EPOCH,
    warmup_lr: 0,
    weight_decay: 0.04,
    weight_decay_end: 0.4,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    clip_grad: 3.0,
    weight_decay_rule: 'dinov2',
    layerwise_decay: 0.9,
    patch_embed_lr_mult: 0.2,
    freeze_last_layer_steps: 1 * EPOCH,
  },
  supervised: {
    label_smoothing: 0,
    hflip: 0.5,
    three_augment: true,
    color_jitter: 0.3,
    mixup_alpha: 0.8,
    cutmix_alpha: 1.0,
    mix_prob: 1.0,
    bce_loss: true,
    simple_random_crop: false,
  },
  dino: {
    loss_weight: 1.0,
    koleo_loss_weight: 0.1,
    head_n_prototypes: 65536,
    head_hidden_dim: 2048,
    head_bottleneck_dim: 256,
    head_nlayers: 3,
    student_temp: 0.1,
    teacher_temp: 0.07,
    warmup_teacher_temp: 0.04,
    warmup_teacher_temp_steps: 30 * EPOCH,
    center_momentum: 0.9,
    momentum_teacher: 0.992,
    final_momentum_teacher: 1.0,
  },
  ibot: {
    loss_weight: 1.0,
    separate_head: false,
    head_n_prototypes: 65536,
    head_hidden_dim: 2048,
    head_bottleneck_dim: 256,
    head_nlayers: 3,
    mask_sample_probability: 0.5,
    mask_ratio_min_max: [0.1, 0.5],
  },
  crops: {
    global_crops_size: 224,
    global_crops_scale: [0.32, 1.0],
    local_crops_number: 8,
    local_crops_size: 96,
    local_crops_scale: [0.05, 0.32],
    eval_crop_ratio: 0.875,
  },
  // open_clip's ViT-B-16 text tower (CLIPTextCfg) and CLIP's initial temperature log(1 / 0.07).
  clip: {
    loss: 'clip',
    proj_dim: 512,
    text_context_length: 77,
    text_vocab_size: 49408,
    text_width: 512,
    text_heads: 8,
    text_layers: 12,
    text_mlp_ratio: 4,
    text_act_layer: 'gelu',
    tokenizer: '',
    csv_img_key: 'filepath',
    csv_caption_key: 'title',
    csv_separator: '',
    init_logit_scale: Math.log(1 / 0.07),
    init_logit_bias: null,
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
export function mergeTrainConfig(base: TrainConfig, over: PartialTrainConfig): TrainConfig {
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

/**
 * The config a checkpoint or a run folder saved, completed with today's defaults for the sections and
 * fields added since it was written (a run saved before the `clip` section existed has none), so that
 * resuming compares what the run really set: a field it lacks counts as its default. The `model`
 * section is left as saved (its fields depend on the architecture). Anything not an object is returned
 * as it is.
 */
export function completeSavedConfig(saved: unknown): unknown {
  if (saved === null || typeof saved !== 'object' || Array.isArray(saved)) return saved;
  const out: Record<string, unknown> = { ...(saved as Record<string, unknown>) };
  for (const [key, def] of Object.entries(DEFAULT_CONFIG as unknown as Record<string, unknown>)) {
    if (key === 'model') continue;
    const cur = out[key];
    if (cur === undefined) out[key] = structuredClone(def);
    else if (
      def !== null &&
      typeof def === 'object' &&
      !Array.isArray(def) &&
      cur !== null &&
      typeof cur === 'object' &&
      !Array.isArray(cur)
    ) {
      out[key] = { ...structuredClone(def as Record<string, unknown>), ...(cur as Record<string, unknown>) };
    }
  }
  return out;
}

/**
 * Throws unless the config names its data: the defaults and the paper presets leave data.source empty,
 * so that a recipe for ImageNet never trains on the built-in shapes by accident.
 */
export function assertDataSource(cfg: TrainConfig): void {
  if (cfg.data.source === '') {
    throw new Error(
      'data: no data source; give --data FOLDER or a file list (data.source in a config file), or --data synthetic for the built-in shapes',
    );
  }
}

/** The backbone config of a training config (arch + overrides), with the field named on error. */
export function modelConfig(cfg: TrainConfig, source = 'config'): ViTConfig {
  const { arch, ...overrides } = cfg.model;
  try {
    return getConfig(arch, overrides);
  } catch (err) {
    throw new Error(`${source}: model: ${(err as Error).message}`, { cause: err });
  }
}
