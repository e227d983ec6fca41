/**
 * The PyTorch side of the train-step bench: the arguments that make bench/reference's scripts build the
 * same model, heads, losses and optimiser as a vitreg TrainConfig, and a driver that keeps the script
 * running (`--serve`) so that its steps alternate with vitreg's in the same run. Debian's python3-torch
 * (`/usr/bin/python3`, or VITREG_PYTHON) with OpenBLAS pinned to the thread count. A `_` file: not a case.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ViTConfig } from '@vitreg/registers';
import type { TrainConfig } from '@vitreg/trainer';

export const referenceDir = join(dirname(fileURLToPath(import.meta.url)), 'reference');
export const python = (): string => process.env.VITREG_PYTHON ?? '/usr/bin/python3';

/** Null when python has torch, else the line to print instead of a PyTorch figure. */
export function torchMissing(): string | null {
  const probe = spawnSync(python(), ['-c', 'import torch'], { encoding: 'utf8' });
  return probe.status === 0 ? null : `${python()} has no torch: apt-get install -y python3-torch libopenblas0-pthread`;
}

/**
 * PyTorch's thread count does not bind Debian's OpenBLAS: pin both. PyTorch runs with glibc's malloc as
 * it comes (the GLIBC_TUNABLES that vitreg's commands start with are not passed on; VITREG_TORCH_ENV_TUNABLES=1
 * passes them, to measure what they do for PyTorch).
 */
export function torchEnv(threads: number): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  if (process.env.VITREG_TORCH_ENV_TUNABLES !== '1') delete env.GLIBC_TUNABLES;
  return env;
}

/** The model flags of torch_vit.py's `model_args` for a vitreg ViTConfig. */
export function modelArgs(vit: ViTConfig): string[] {
  const a = [
    ['--dim', vit.embed_dim],
    ['--depth', vit.depth],
    ['--heads', vit.num_heads],
    ['--patch', vit.patch_size],
    ['--registers', vit.num_register_tokens],
    ['--mlp-ratio', vit.mlp_ratio],
    ['--ffn', vit.ffn_layer],
    ['--layerscale', vit.layerscale_init ?? 0],
    ['--drop-path', vit.drop_path_rate],
    ['--interp-offset', vit.interpolate_offset],
    ['--img', vit.img_size],
  ].flatMap(([k, v]) => [String(k), String(v)]);
  if (!vit.qkv_bias) a.push('--no-qkv-bias');
  if (!vit.drop_path_uniform) a.push('--drop-path-linear');
  if (!vit.drop_path_batch_subset) a.push('--no-batch-subset');
  if (!vit.pos_embed_cls) a.push('--no-pos-cls');
  if (vit.interpolate_antialias) a.push('--interp-antialias');
  return a;
}

export interface TorchCase {
  script: string;
  args: string[];
}

/** torch_vit.py --case train-step: the supervised step of `config` (CE with label smoothing or BCE, clipping, AdamW). */
export function supervisedCase(
  config: TrainConfig,
  vit: ViTConfig,
  o: { batch: number; classes: number; precision: string; device?: string },
): TorchCase {
  const s = config.supervised;
  const opt = config.optim;
  const args = [
    ...['--case', 'train-step', '--batch', o.batch, '--size', config.crops.global_crops_size, '--classes', o.classes],
    ...['--label-smoothing', s.label_smoothing, '--clip-grad', opt.clip_grad, '--weight-decay', opt.weight_decay],
    ...['--layer-decay', opt.layerwise_decay, '--patch-lr-mult', opt.patch_embed_lr_mult, '--precision', o.precision],
    ...['--device', o.device ?? 'cpu'],
  ].map(String);
  if (s.bce_loss) args.push('--bce');
  return { script: join(referenceDir, 'torch_vit.py'), args: [...args, ...modelArgs(vit)] };
}

/** torch_dinov2_step.py: the DINOv2 step of `config` (heads, iBOT mode, centering, crops, clipping, EMA). */
export function dinoCase(
  config: TrainConfig,
  vit: ViTConfig,
  o: { batch: number; precision: string; dropPathCompute?: 'full' | 'subset'; device?: string },
): TorchCase {
  const d = config.dino;
  const b = config.ibot;
  const c = config.crops;
  const ibot = b.loss_weight > 0 ? (b.separate_head ? 'separate' : 'shared') : 'none';
  const args = [
    ...['--batch', o.batch, '--size', c.global_crops_size, '--local-size', c.local_crops_size, '--local-crops', c.local_crops_number],
    ...['--prototypes', d.head_n_prototypes, '--head-hidden', d.head_hidden_dim, '--head-bottleneck', d.head_bottleneck_dim],
    ...['--head-layers', d.head_nlayers, '--ibot', ibot, '--ibot-prototypes', b.head_n_prototypes, '--ibot-hidden', b.head_hidden_dim],
    ...['--ibot-bottleneck', b.head_bottleneck_dim, '--centering', config.train.centering, '--koleo', d.koleo_loss_weight],
    ...['--student-temp', d.student_temp, '--mask-probability', b.mask_sample_probability],
    ...['--mask-ratio', b.mask_ratio_min_max[0], b.mask_ratio_min_max[1], '--clip-grad', config.optim.clip_grad],
    ...['--weight-decay', config.optim.weight_decay, '--layer-decay', config.optim.layerwise_decay],
    ...['--patch-lr-mult', config.optim.patch_embed_lr_mult, '--momentum', d.momentum_teacher, '--precision', o.precision],
    ...['--drop-path-compute', o.dropPathCompute ?? 'full', '--device', o.device ?? 'cpu'],
  ].map(String);
  return { script: join(referenceDir, 'torch_dinov2_step.py'), args: [...args, ...modelArgs(vit)] };
}

export interface TorchStepTime {
  seconds: number;
  cpu_seconds: number;
}

/** A reference script in `--serve` mode: `step()` runs one step there and returns its times. */
export class TorchStepper {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: Interface;
  private readonly pending: ((line: string) => void)[] = [];
  private readonly queued: string[] = [];
  private stderr = '';
  private exited: string | null = null;
  /** The ready line: what the script built (or `skipped`). */
  info: Record<string, unknown> = {};

  private constructor(c: TorchCase, threads: number) {
    this.child = spawn(python(), [c.script, ...c.args, '--threads', String(threads), '--serve'], {
      env: torchEnv(threads),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    this.lines = createInterface({ input: this.child.stdout });
    this.lines.on('line', (l) => {
      const next = this.pending.shift();
      if (next) next(l);
      else this.queued.push(l);
    });
    this.child.on('exit', (code, signal) => {
      this.exited = `${python()} ${c.script.split('/').pop()} exited (${signal ?? code}): ${this.stderr.trim().split('\n').slice(-3).join(' | ')}`;
      for (const p of this.pending.splice(0)) p('');
    });
  }

  static async start(c: TorchCase, threads: number): Promise<TorchStepper> {
    const s = new TorchStepper(c, threads);
    s.info = await s.read();
    return s;
  }

  private async read(): Promise<Record<string, unknown>> {
    const line = this.queued.shift() ?? (this.exited ? '' : await new Promise<string>((r) => this.pending.push(r)));
    if (!line) throw new Error(this.exited ?? 'the PyTorch reference closed its output');
    return JSON.parse(line) as Record<string, unknown>;
  }

  private async ask(cmd: string): Promise<Record<string, unknown>> {
    if (this.exited) throw new Error(this.exited);
    this.child.stdin.write(`${cmd}\n`);
    return this.read();
  }

  async step(): Promise<TorchStepTime> {
    return (await this.ask('step')) as unknown as TorchStepTime;
  }

  /** One profiled step's matrix-product GFLOPs (torch.profiler). */
  async flops(): Promise<number> {
    return (await this.ask('flops')).matmul_gflops as number;
  }

  /** Ends the script: its peak RSS (`peak_rss_mb`) and on CUDA its peak device memory (`peak_gpu_mb`), MB. */
  async end(): Promise<{ peak_rss_mb: number; peak_gpu_mb?: number }> {
    const r = await this.ask('end');
    this.lines.close();
    return r as { peak_rss_mb: number; peak_gpu_mb?: number };
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}
