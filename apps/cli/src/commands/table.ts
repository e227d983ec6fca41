/**
 * The subcommands as the vitreg executable (main.ts) sees them before running one: each name's one-line
 * summary for `vitreg --help`, and its module, imported only when that command runs (a command's module
 * imports its packages: loading all of them cost every `vitreg` start about a CPU-second). The order is
 * the order of `commands` (./index.ts, every module loaded), and each summary is its module's own
 * (apps/cli/test/command-table.test.ts checks both).
 */
import type { Command } from '../cli.js';

/** One subcommand before its module is loaded. */
export interface CommandEntry {
  /** One line for `vitreg --help` (the module's `summary`). */
  summary: string;
  /** Imports the command's module: its Command. */
  load(): Promise<Command>;
}

/** Every vitreg subcommand, in the order `vitreg --help` lists them. */
export const commandTable: Record<string, CommandEntry> = {
  features: {
    summary: 'run a backbone on images and write CLS, register, patch tokens (and attention) as safetensors',
    load: async () => (await import('./features.js')).features,
  },
  convert: {
    summary: 'convert weights between the DINOv2, timm, Hugging Face, DINO, DeiT-III and CLIP namings and F32/F16/BF16',
    load: async () => (await import('./convert.js')).convert,
  },
  export: {
    summary: 'export a checkpoint to ONNX (one input size) for onnxruntime and other runtimes',
    load: async () => (await import('./export.js')).exportCommand,
  },
  analyze: {
    summary: 'find and show high-norm artifact tokens: norm maps, attention, PCA, HTML report',
    load: async () => (await import('./analyze.js')).analyze,
  },
  train: {
    summary: 'train a ViT with registers (supervised or DINOv2 self-supervised) with exact resume',
    load: async () => (await import('./train.js')).trainCommand,
  },
  probe: {
    summary: 'linear probes (class, position, pixels, segmentation, depth) and k-NN on frozen features',
    load: async () => (await import('./probe.js')).probe,
  },
  discover: {
    summary: 'LOST object discovery and CorLoc on VOC, COCO, synthetic data or image files',
    load: async () => (await import('./discover.js')).discover,
  },
  registers: {
    summary: 'test-time registers: find the register neurons of a model trained without registers',
    load: async () => (await import('./registers.js')).registersCommand,
  },
  sweep: {
    summary: 'register sweeps: plan (Slurm array, Kubernetes Indexed Job), run here, status, collect (table + figures)',
    load: async () => (await import('./sweep.js')).sweepCommand,
  },
  demo: {
    summary: 'train tiny ViTs with and without registers on built-in data, then analyse and run LOST',
    load: async () => (await import('./demo.js')).demo,
  },
};
