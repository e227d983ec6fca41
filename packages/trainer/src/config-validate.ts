/**
 * Checking a training config: `validateTrainConfig` merges a parsed JSON object (a `preset` name
 * and/or any fields) over the preset or the defaults and checks every field, rejects unknown ones, and
 * names the field and the allowed values in its error, before any work starts; `resolveTrainConfig`
 * builds a run's config from the command line's sources (preset, file, run folder, single fields).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CONFIG_FIELDS, MODEL_NAMES } from '@vitreg/registers';
import {
  DEFAULT_CONFIG,
  mergeTrainConfig,
  modelConfig,
  OBJECTIVES,
  type Centering,
  type OptimizerName,
  type PartialTrainConfig,
  type ScalingRule,
  type TrainConfig,
  type TrainConfigSection,
} from './config.js';
import { isPaperPreset, PRESET_CHOICES, presetBase } from './config-presets.js';
import { WEIGHT_DECAY_RULES } from './param-groups.js';

type Section = TrainConfigSection;
const merge = mergeTrainConfig;
const CENTERINGS: readonly Centering[] = ['centering', 'sinkhorn_knopp'];
const OPTIMIZERS: readonly OptimizerName[] = ['adamw', 'lamb'];
const SCALING_RULES: readonly ScalingRule[] = ['sqrt_wrt_1024', 'linear_wrt_512', 'none'];

/** A preset's full config. */
export function presetConfig(name: string): TrainConfig {
  if (!PRESET_CHOICES.includes(name)) throw new Error(`unknown preset "${name}"; expected one of ${PRESET_CHOICES.join(', ')}`);
  return validateTrainConfig({ preset: name }, `preset ${name}`);
}

type Rule =
  | { kind: 'int'; min: number; max?: number }
  | { kind: 'number'; min?: number; max?: number; exclusiveMin?: boolean }
  | { kind: 'bool' }
  | { kind: 'range'; min: number; max: number }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'source' }
  | { kind: 'text' }
  | { kind: 'numberOrNull' };

const int = (min: number, max?: number): Rule => ({ kind: 'int', min, max });
const num = (min?: number, max?: number, exclusiveMin = false): Rule => ({ kind: 'number', min, max, exclusiveMin });
const pos = num(0, undefined, true);
const unit: Rule = num(0, 1);
const bool: Rule = { kind: 'bool' };
const range = (min: number, max: number): Rule => ({ kind: 'range', min, max });
const oneOf = (values: readonly string[]): Rule => ({ kind: 'enum', values });
/** data.source: a string, '' meaning "not given yet" (a paper preset before --data). */
const source: Rule = { kind: 'source' };
/** Any string, '' included (clip.tokenizer, clip.csv_separator). */
const text: Rule = { kind: 'text' };

const RULES: { [S in Section]: Record<keyof TrainConfig[S], Rule | 'string'> } = {
  data: {
    source,
    num_classes: int(5, 8),
    train_size: int(1),
    val_size: int(1),
    synthetic_size: int(16),
    synthetic_seed: int(0),
    synthetic_background: oneOf(['textured', 'flat']),
    synthetic_object_side: range(0.05, 0.8),
    val_fraction: num(0, 1, true),
  },
  train: {
    steps: int(1),
    batch_size: int(2),
    micro_batch_size: int(0),
    seed: int(0),
    log_every: int(1),
    checkpoint_every: int(0),
    eval_every: int(0),
    knn_train_size: int(1),
    knn_k: int(1),
    knn_temperature: pos,
    keep_checkpoints: int(1),
    centering: oneOf(CENTERINGS),
    repeated_aug: bool,
  },
  optim: {
    optimizer: oneOf(OPTIMIZERS),
    base_lr: num(0),
    scaling_rule: oneOf(SCALING_RULES),
    min_lr: num(0),
    warmup_steps: int(0),
    warmup_lr: num(0),
    weight_decay: num(0),
    weight_decay_end: num(0),
    beta1: num(0, 1),
    beta2: num(0, 1),
    eps: pos,
    clip_grad: num(0),
    weight_decay_rule: oneOf(WEIGHT_DECAY_RULES),
    layerwise_decay: num(0, 1, true),
    patch_embed_lr_mult: num(0),
    freeze_last_layer_steps: int(0),
  },
  supervised: {
    label_smoothing: num(0, 1),
    hflip: unit,
    three_augment: bool,
    color_jitter: num(0, 1),
    mixup_alpha: num(0),
    cutmix_alpha: num(0),
    mix_prob: unit,
    bce_loss: bool,
    simple_random_crop: bool,
  },
  dino: {
    loss_weight: num(0),
    koleo_loss_weight: num(0),
    head_n_prototypes: int(2),
    head_hidden_dim: int(1),
    head_bottleneck_dim: int(1),
    head_nlayers: int(1, 8),
    student_temp: pos,
    teacher_temp: pos,
    warmup_teacher_temp: pos,
    warmup_teacher_temp_steps: int(0),
    center_momentum: unit,
    momentum_teacher: unit,
    final_momentum_teacher: unit,
  },
  ibot: {
    loss_weight: num(0),
    separate_head: bool,
    head_n_prototypes: int(2),
    head_hidden_dim: int(1),
    head_bottleneck_dim: int(1),
    head_nlayers: int(1, 8),
    mask_sample_probability: unit,
    mask_ratio_min_max: range(0, 1),
  },
  crops: {
    global_crops_size: int(8),
    global_crops_scale: range(0, 1),
    local_crops_number: int(0),
    local_crops_size: int(8),
    local_crops_scale: range(0, 1),
    eval_crop_ratio: num(0, 1, true),
  },
  clip: {
    loss: oneOf(['clip', 'siglip']),
    proj_dim: int(1),
    text_context_length: int(2),
    text_vocab_size: int(0),
    text_width: int(1),
    text_heads: int(1),
    text_layers: int(1),
    text_mlp_ratio: pos,
    text_act_layer: oneOf(['gelu', 'quick_gelu']),
    tokenizer: text,
    csv_img_key: 'string',
    csv_caption_key: 'string',
    csv_separator: text,
    init_logit_scale: num(),
    init_logit_bias: { kind: 'numberOrNull' },
  },
};

function describe(rule: Rule | 'string'): string {
  if (rule === 'string') return 'a string';
  if (rule.kind === 'bool') return 'true or false';
  if (rule.kind === 'range') return `a pair [min, max] with ${rule.min} <= min <= max <= ${rule.max}`;
  if (rule.kind === 'enum') return `one of ${rule.values.map((v) => JSON.stringify(v)).join(', ')}`;
  if (rule.kind === 'source') return '"synthetic", a folder or a file list (a string)';
  if (rule.kind === 'text') return 'a string';
  if (rule.kind === 'numberOrNull') return 'a number or null';
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
  if (rule.kind === 'source' || rule.kind === 'text') return typeof v === 'string';
  if (rule.kind === 'numberOrNull') return v === null || (typeof v === 'number' && Number.isFinite(v));
  if (rule.kind === 'range') {
    return (
      Array.isArray(v) &&
      v.length === 2 &&
      v.every((x) => typeof x === 'number' && Number.isFinite(x)) &&
      v[0] >= rule.min &&
      v[0] <= v[1] &&
      v[1] <= rule.max
    );
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
        throw new Error(
          `${source}: field "optim.lr" is now optim.base_lr, the rate for the reference batch of optim.scaling_rule ("none": the rate itself)`,
        );
      }
      if (!(key in rules)) {
        throw new Error(
          `${source}: unknown field "${section}.${key}"; expected one of ${Object.keys(rules)
            .map((k) => `${section}.${k}`)
            .join(', ')}`,
        );
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
      throw new Error(
        `${source}: unknown field "model.${key}"; expected model.arch or one of ${CONFIG_FIELDS.map((k) => `model.${k}`).join(', ')}`,
      );
    }
  }
  if (typeof model.arch !== 'string' || !MODEL_NAMES.includes(model.arch)) {
    throw new Error(`${source}: field "model.arch" must be one of ${MODEL_NAMES.join(', ')}, got ${JSON.stringify(model.arch)}`);
  }
  const vit = modelConfig(cfg, source);
  const relations: [boolean, string][] = [
    [
      cfg.optim.min_lr <= cfg.optim.base_lr || cfg.optim.base_lr === 0,
      `field "optim.min_lr" (${cfg.optim.min_lr}) must not exceed optim.base_lr (${cfg.optim.base_lr})`,
    ],
    [
      cfg.crops.global_crops_size % vit.patch_size === 0,
      `field "crops.global_crops_size" (${cfg.crops.global_crops_size}) must be a multiple of the patch size ${vit.patch_size}`,
    ],
  ];
  if (cfg.objective === 'dino') {
    relations.push(
      [
        cfg.train.micro_batch_size === 0,
        `field "train.micro_batch_size" must be 0 for objective dino (its losses and centres are per batch), got ${cfg.train.micro_batch_size}`,
      ],
      [
        cfg.crops.local_crops_size % vit.patch_size === 0,
        `field "crops.local_crops_size" (${cfg.crops.local_crops_size}) must be a multiple of the patch size ${vit.patch_size}`,
      ],
      [cfg.dino.loss_weight > 0 || cfg.ibot.loss_weight > 0, 'fields "dino.loss_weight" and "ibot.loss_weight" cannot both be 0'],
      [
        cfg.ibot.loss_weight === 0 || (cfg.ibot.mask_sample_probability > 0 && cfg.ibot.mask_ratio_min_max[1] > 0),
        'fields "ibot.mask_sample_probability" and "ibot.mask_ratio_min_max" must be positive when ibot.loss_weight > 0',
      ],
    );
  }
  if (cfg.objective === 'clip') {
    const k = cfg.clip;
    relations.push(
      [
        cfg.optim.optimizer === 'adamw',
        `field "optim.optimizer" must be "adamw" for objective clip (open_clip's), got "${cfg.optim.optimizer}"`,
      ],
      [cfg.train.micro_batch_size === 0, `field "train.micro_batch_size" must be 0 for objective clip, got ${cfg.train.micro_batch_size}`],
      [
        k.text_width % k.text_heads === 0,
        `field "clip.text_width" (${k.text_width}) must be a multiple of clip.text_heads (${k.text_heads})`,
      ],
      [
        k.loss !== 'siglip' || k.init_logit_bias !== null,
        'field "clip.init_logit_bias" must be a number for clip.loss "siglip" (SigLIP learns a bias; open_clip starts it at -10)',
      ],
      [
        k.tokenizer !== '' || cfg.data.source === 'synthetic' || cfg.data.source === '',
        `field "clip.tokenizer" must name CLIP's BPE vocabulary (--tokenizer FILE, bpe_simple_vocab_16e6.txt.gz) for data "${cfg.data.source}"; only the synthetic captions have a built-in word vocabulary`,
      ],
    );
  }
  for (const [ok, message] of relations) if (!ok) throw new Error(`${source}: ${message}`);
  return cfg;
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
  /** Objective clip: clip.tokenizer, clip.csv_img_key, clip.csv_caption_key, clip.csv_separator. */
  tokenizer?: string;
  csvImgKey?: string;
  csvCaptionKey?: string;
  csvSeparator?: string;
  /** Told when a paper recipe is set to train on the synthetic shapes. */
  warn?: (message: string) => void;
}

function readJsonObject(path: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`${what}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new Error(`${what}: ${path} is not valid JSON (${(err as Error).message})`, { cause: err });
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
  if (src.preset !== undefined && !PRESET_CHOICES.includes(src.preset))
    throw new Error(`--preset: expected one of ${PRESET_CHOICES.join(', ')}, got "${src.preset}"`);
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
    throw new Error(
      'expected --preset NAME or --config FILE.json (or --resume with an existing --out run folder); see vitreg train --list-presets',
    );
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
  const clip: Record<string, unknown> = section('clip');
  if (src.tokenizer !== undefined) clip.tokenizer = src.tokenizer;
  if (src.csvImgKey !== undefined) clip.csv_img_key = src.csvImgKey;
  if (src.csvCaptionKey !== undefined) clip.csv_caption_key = src.csvCaptionKey;
  if (src.csvSeparator !== undefined) clip.csv_separator = src.csvSeparator;
  if (Object.keys(clip).length > 0) patched.clip = clip;
  const cfg = validateTrainConfig(patched, source);
  const preset = typeof raw.preset === 'string' ? raw.preset : undefined;
  if (preset && isPaperPreset(preset) && cfg.data.source === 'synthetic') {
    src.warn?.(
      `preset ${preset} is a paper recipe for ImageNet on a GPU cluster; it now trains on the built-in synthetic shapes (${cfg.data.num_classes} classes at ${cfg.data.synthetic_size} px), which says nothing about the paper's numbers`,
    );
  }
  return cfg;
}
