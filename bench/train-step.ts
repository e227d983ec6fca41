/**
 * `npm run bench -- train-step [--engine tfjs|onnxruntime|auto[,...]] [--threads N[,M]] [--objective supervised|dinov2]
 *   [--preset NAME] [--batch N] [--model NAME] [--patch N] [--size 224] [--local-size 96] [--local-crops 8] [--prototypes 65536] [--steps N] [--warmup N] [--micro-batch N]
 *   [--precision fp32|bf16|fp16] [--device cpu|cuda|webgpu] [--backend wasm] [--torch auto|off|only]
 *   [--torch-mode alternate|after] [--torch-drop-path full|subset] [--count-flops] [--ort-options JSON]
 *   [--keep-on-device on|off]`
 *
 * One training step of vitreg's trainer as `vitreg train` runs it (synthetic data, augmentation, the step
 * engine's forward + backward, clipping, the optimiser, the EMA teacher), and beside it in the same run
 * PyTorch's step of the same model (bench/reference: torch_vit.py for supervised, torch_dinov2_step.py for
 * DINOv2, started with the same model, heads, losses and optimiser: _torch.ts). One JSON line per
 * (engine, threads) case.
 *
 * - supervised (default): ViT-S/16 with 4 registers (deit3_small_patch16_reg4: LayerScale 1e-5, qkv bias,
 *   drop path 0.1 per image) at 224 px, batch 32, cross-entropy with label smoothing 0.1, global clipping
 *   at 3, AdamW with layer-wise lr decay.
 * - dinov2: ViT-S/16 reg4 in DINOv2's layout (dinov2_vits14_reg at patch 16), DINOv2's default recipe:
 *   2 global crops of 224 + 8 local of 96, DINO head (65536 prototypes) shared with iBOT, KoLeo, softmax
 *   centering, drop path 0.3 (batch-subset rule), per-module clipping, AdamW, EMA teacher; batch 8 by
 *   default (vitreg's and PyTorch's processes are alive together: ~5 GB each at batch 8).
 * - `--preset NAME`: a preset's model and recipe instead (e.g. dinov2-l14-reg4; batch 2 by default), on
 *   the synthetic shapes at its crop size.
 *
 * Timing: `--warmup` untimed steps (graph building, first allocations), then `--steps` timed ones. With
 * `--torch-mode alternate` (default) the reference runs as a second process that takes one step after
 * each of vitreg's (`vs_torch` is the median of the per-pair ratios, so drift on a shared machine cancels);
 * `after` runs it once vitreg is done (the two peaks never overlap: the ViT-L case). `images_per_s` is
 * the engine's time (computeStep + applyStep: what PyTorch's step does; `apply_seconds_all`: applyStep's
 * part of each step, the clipping, optimiser and EMA); `step_images_per_s` adds the
 * loop's host work (decoding, augmentation, masks), which the reference does not do. `--threads` is ONNX
 * Runtime's intra-op threads; for tfjs (one wasm thread) it is the number of worker threads of
 * `trainThreads`, with the batch split between them (PyTorch then runs before and after). Peak RSS:
 * VmHWM of this process and of the reference's. `--precision bf16|fp16`: PyTorch's CPU autocast (only on
 * CPUs with AVX-512 BF16; the line says so otherwise) and the engine's mixed precision where it offers it.
 * `cpu_seconds_all` / `sys_seconds_all`: each timed step's CPU-seconds (all threads) and, of them, the
 * kernel's. `--ort-options '{"enableCpuMemArena":true}'`: ONNX Runtime session options over the engine's.
 * `--keep-on-device off` (webgpu): the state on the host, copied in and out each run, to measure what the
 * copies cost against the default (`on`: parameters, optimiser state and gradients stay on the device);
 * `host_transfer_mb_per_step` is what crossed between host and device per timed step.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend, type BackendName } from '@vitreg/core';
import { modelConfig, Trainer, trainThreads, validateTrainConfig, type TrainConfig } from '@vitreg/trainer';
import { loadEngine, timedEngine, type EngineTimes } from './_engines.js';
import { dinoStepFlops, supervisedStepFlops } from './_flops.js';
import { load1, machineInfo, mean, median, peakRssMb, round } from './_machine.js';
import { dinoCase, supervisedCase, torchMissing, TorchStepper, type TorchCase, type TorchStepTime } from './_torch.js';

type Values = Record<string, string | boolean | undefined>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The step's config: the objective's bench recipe (see the header) or a preset, on synthetic data. */
function benchConfig(v: Values, batch: number, total: number, micro: number): TrainConfig {
  const size = Number(v.size);
  const data = { source: 'synthetic', train_size: batch * (total + 1), val_size: 1, synthetic_size: size };
  const train = { steps: total, batch_size: batch, micro_batch_size: micro, eval_every: 0, checkpoint_every: 0 };
  if (v.preset) {
    const c = validateTrainConfig({ preset: v.preset as string }, `preset ${v.preset}`);
    const gs = c.crops.global_crops_size;
    return validateTrainConfig({
      preset: v.preset as string,
      data: { ...data, synthetic_size: gs },
      train: { ...train, micro_batch_size: c.objective === 'supervised' ? micro : 0 },
    });
  }
  const patch = v.patch ? { patch_size: Number(v.patch) } : {};
  if (v.objective === 'dinov2') {
    return validateTrainConfig({
      objective: 'dino',
      model: { arch: (v.model as string) ?? 'dinov2_vits14_reg', patch_size: 16, ...patch, img_size: size, drop_path_rate: 0.3 },
      data,
      train: { ...train, micro_batch_size: 0 },
      optim: { warmup_steps: 1, freeze_last_layer_steps: 0 },
      // --prototypes: a smaller DINO / iBOT head (gpu-check.sh's dry run on SwiftShader's CPU Vulkan).
      ...(v.prototypes ? { dino: { head_n_prototypes: Number(v.prototypes) }, ibot: { head_n_prototypes: Number(v.prototypes) } } : {}),
      crops: {
        global_crops_size: size,
        ...(v['local-size'] ? { local_crops_size: Number(v['local-size']) } : {}),
        ...(v['local-crops'] ? { local_crops_number: Number(v['local-crops']) } : {}),
      },
    });
  }
  return validateTrainConfig({
    objective: 'supervised',
    model: {
      arch: (v.model as string) ?? 'deit3_small_patch16_reg4',
      ...patch,
      img_size: size,
      drop_path_rate: 0.1,
      layerscale_init: 1e-5,
    },
    data,
    train,
    optim: { warmup_steps: 1 },
    supervised: { bce_loss: false, mixup_alpha: 0, cutmix_alpha: 0, label_smoothing: 0.1 },
    crops: { global_crops_size: size },
  });
}

/** The reference of `config` (same model, heads, losses, optimiser) for one rank's batch. */
function referenceCase(config: TrainConfig, v: Values, batch: number): TorchCase {
  const vit = modelConfig(config);
  const precision = v.precision as string;
  // PyTorch on the GPU beside a GPU engine, unless --torch-device says otherwise (it has no WebGPU).
  const device = (v['torch-device'] as string | undefined) ?? (v.device === 'cuda' || v.device === 'webgpu' ? 'cuda' : 'cpu');
  if (config.objective === 'supervised') return supervisedCase(config, vit, { batch, classes: config.data.num_classes, precision, device });
  return dinoCase(config, vit, { batch, precision, dropPathCompute: v['torch-drop-path'] as 'full' | 'subset', device });
}

/** Analytic matrix-product GFLOPs of one step (bench/_flops.ts); `masked` = iBOT rows of the step. */
function stepGflops(config: TrainConfig, batch: number, masked: number): number {
  const vit = modelConfig(config);
  if (config.objective === 'supervised')
    return supervisedStepFlops(vit, batch, config.crops.global_crops_size, config.data.num_classes) / 1e9;
  const d = config.dino;
  const b = config.ibot;
  const head = (h: { head_n_prototypes: number; head_hidden_dim: number; head_bottleneck_dim: number; head_nlayers: number }) => ({
    inDim: vit.embed_dim,
    outDim: h.head_n_prototypes,
    hiddenDim: h.head_hidden_dim,
    bottleneckDim: h.head_bottleneck_dim,
    nlayers: h.head_nlayers,
  });
  const c = config.crops;
  return (
    dinoStepFlops(vit, {
      batch,
      globalSize: c.global_crops_size,
      localSize: c.local_crops_size,
      nLocal: c.local_crops_number,
      masked,
      dino: head(d),
      ibot: b.loss_weight > 0 && b.separate_head ? head({ ...b, head_nlayers: d.head_nlayers }) : null,
      ibotOn: b.loss_weight > 0,
    }) / 1e9
  );
}

function describe(config: TrainConfig, batch: number): Record<string, unknown> {
  const vit = modelConfig(config);
  const c = config.crops;
  const base = {
    objective: config.objective === 'dino' ? 'dinov2' : 'supervised',
    model: config.model.arch,
    patch: vit.patch_size,
    dim: vit.embed_dim,
    depth: vit.depth,
    ffn: vit.ffn_layer,
    registers: vit.num_register_tokens,
    batch,
  };
  if (config.objective === 'supervised') return { ...base, size: c.global_crops_size };
  return {
    ...base,
    crops: `2x${c.global_crops_size} + ${c.local_crops_number}x${c.local_crops_size}`,
    prototypes: config.dino.head_n_prototypes,
    ibot: config.ibot.loss_weight > 0 ? (config.ibot.separate_head ? 'separate' : 'shared') : 'off',
    centering: config.train.centering,
  };
}

const rate = (images: number, seconds: number[]) => round(images / mean(seconds));

/** The reference's timings and ratio, from the paired steps. */
function torchFields(
  torch: TorchStepper,
  times: TorchStepTime[],
  ours: number[],
  batch: number,
  peak: { peak_rss_mb: number; peak_gpu_mb?: number },
  flops?: number,
) {
  const ratios = times.map((t, i) => (ours[i] !== undefined ? t.seconds / ours[i]! : NaN)).filter((x) => Number.isFinite(x));
  return {
    torch: {
      engine: torch.info.engine,
      images_per_s: rate(
        batch,
        times.map((t) => t.seconds),
      ),
      cpu_images_per_s: rate(
        batch,
        times.map((t) => t.cpu_seconds),
      ),
      step_seconds_all: times.map((t) => round(t.seconds)),
      cpu_seconds_all: times.map((t) => round(t.cpu_seconds)),
      ...peak,
      ...(flops !== undefined ? { matmul_gflops_per_step: round(flops, 1) } : {}),
      ...(torch.info.drop_path_compute ? { drop_path_compute: torch.info.drop_path_compute } : {}),
    },
    ...(ratios.length ? { vs_torch: round(median(ratios)), vs_torch_all: ratios.map((r) => round(r)) } : {}),
  };
}

interface RunCase {
  engine: string;
  threads: number;
}

async function runOne(v: Values, rc: RunCase): Promise<Record<string, unknown>> {
  const batch = Number(v.batch ?? (v.preset ? 2 : v.objective === 'dinov2' ? 8 : 32));
  const steps = Number(v.steps);
  const warmup = Number(v.warmup);
  const tfjs = rc.engine === 'tfjs';
  const workers = tfjs ? rc.threads : 1;
  if (batch % workers !== 0) throw new Error(`--batch ${batch} does not split over ${workers} tfjs worker threads`);
  const micro = tfjs ? Number(v['micro-batch'] ?? 2) : Number(v['micro-batch'] ?? 0);
  const config = benchConfig(v, batch / workers, warmup + steps, micro);
  const head: Record<string, unknown> = {
    case: 'train-step',
    ...describe(config, batch),
    threads: rc.threads,
    precision: v.precision,
    steps,
    machine: machineInfo(),
    load_1m_before: load1(),
  };
  const torchWanted = v.torch !== 'off';
  const missing = torchWanted ? torchMissing() : null;
  const mode = tfjs && workers > 1 ? 'around' : (v['torch-mode'] as string);
  let torch: TorchStepper | undefined;
  const torchTimes: TorchStepTime[] = [];
  const torchStep = async () => {
    await sleep(150); // let the other side's spinning threads settle
    torchTimes.push(await torch!.step());
  };
  const startTorch = async () => {
    torch = await TorchStepper.start(referenceCase(config, v, batch), rc.threads);
    if (torch.info.skipped) {
      head.torch = `skipped: ${torch.info.skipped}`;
      torch = undefined;
      return;
    }
    for (let i = 0; i < warmup; i++) await torch.step();
  };
  const endTorch = async (ours: number[], masked: number) => {
    if (!torch) return {};
    const flops = v['count-flops'] ? await torch.flops() : undefined;
    const peak = await torch.end();
    return { ...torchFields(torch, torchTimes, ours, batch, peak, flops), flops_check: flopsCheck(config, batch, masked, flops) };
  };
  try {
    if (torchWanted && missing) head.torch = `skipped: ${missing}`;
    if (v.torch === 'only') {
      if (missing) return head;
      await startTorch();
      for (let i = 0; i < steps && torch; i++) await torchStep();
      return { ...head, engine: 'pytorch only', ...(await endTorch([], Number(torch?.info.masked_patches ?? 0))), load_1m_after: load1() };
    }
    if (torchWanted && !missing && (mode === 'alternate' || mode === 'around')) await startTorch();
    if (mode === 'around' && torch) for (let i = 0; i < Math.ceil(steps / 2); i++) await torchStep();
    const ours =
      tfjs && workers > 1
        ? await runThreads(config, v, workers, steps, warmup)
        : await runTrainer(config, v, rc, steps, warmup, torch && mode === 'alternate' ? torchStep : undefined);
    if (mode === 'around' && torch) for (let i = 0; i < Math.floor(steps / 2); i++) await torchStep();
    if (torchWanted && !missing && mode === 'after') {
      await startTorch();
      for (let i = 0; i < steps && torch; i++) await torchStep();
    }
    const masked = ours.masked;
    const out = {
      ...head,
      engine: ours.engine,
      ...ours.fields,
      images_per_s: rate(batch, ours.engineSeconds),
      ...(ours.engineCpu.length
        ? {
            cpu_images_per_s: rate(batch, ours.engineCpu),
            cpu_seconds_all: ours.engineCpu.map((s) => round(s)),
            sys_seconds_all: ours.engineSys.map((s) => round(s)),
          }
        : {}),
      ...(ortOptionsOf(v) ? { ort_options: ortOptionsOf(v) } : {}),
      step_images_per_s: rate(batch, ours.stepSeconds),
      engine_seconds_all: ours.engineSeconds.map((s) => round(s)),
      ...(ours.applySeconds.length ? { apply_seconds_all: ours.applySeconds.map((s) => round(s)) } : {}),
      peak_rss_mb: peakRssMb(),
      gflops_per_step: round(stepGflops(config, batch, masked), 1),
      gflops_per_s: round(stepGflops(config, batch, masked) / mean(ours.engineSeconds), 1),
    };
    // alternate: pairs step by step; around / after: the ratio of the means.
    const pairs = mode === 'alternate' ? ours.engineSeconds : ours.engineSeconds.map(() => mean(ours.engineSeconds));
    return { ...out, ...(await endTorch(pairs, masked)), load_1m_after: load1(), node: process.version };
  } finally {
    torch?.kill();
  }
}

function flopsCheck(config: TrainConfig, batch: number, masked: number, torchGflops?: number): unknown {
  if (torchGflops === undefined) return undefined;
  const ours = stepGflops(config, batch, masked);
  return { analytic_gflops: round(ours, 1), torch_profiler_gflops: round(torchGflops, 1), torch_over_analytic: round(torchGflops / ours) };
}

/** `--ort-options` as given (ONNX Runtime session options over the engine's own). */
function ortOptionsOf(v: Values): string | undefined {
  return v['ort-options'] as string | undefined;
}

interface OurTimes {
  engine: string;
  engineSeconds: number[];
  engineCpu: number[];
  /** Of engineCpu, the kernel's seconds. */
  engineSys: number[];
  /** Of engineSeconds, applyStep's (clipping, optimiser, EMA). */
  applySeconds: number[];
  stepSeconds: number[];
  masked: number;
  fields: Record<string, unknown>;
}

/** One Trainer in this thread: warm-up, then timed steps (each followed by a reference step when given). */
async function runTrainer(
  config: TrainConfig,
  v: Values,
  rc: RunCase,
  steps: number,
  warmup: number,
  between?: () => Promise<void>,
): Promise<OurTimes> {
  const times: EngineTimes = { seconds: 0, cpuSeconds: 0, sysSeconds: 0 };
  const ortOptions = v['ort-options'] as string | undefined;
  let sessionOptions: Record<string, unknown> | undefined;
  try {
    sessionOptions = ortOptions ? (JSON.parse(ortOptions) as Record<string, unknown>) : undefined;
  } catch {
    throw new Error(`--ort-options: not JSON: ${ortOptions}`);
  }
  const loaded = await loadEngine(rc.engine, {
    threads: rc.threads,
    device: v.device as string | undefined,
    precision: v.precision as string,
    backend: v.backend as BackendName,
    sessionOptions,
    ...keepOnDevice(v),
  });
  if ('skipped' in loaded) throw new SkipCase(loaded.skipped);
  const trainer = new Trainer(config, { engine: timedEngine(loaded.factory, times) });
  const out: OurTimes = {
    engine: '',
    engineSeconds: [],
    engineCpu: [],
    engineSys: [],
    applySeconds: [],
    stepSeconds: [],
    masked: 0,
    fields: {},
  };
  try {
    trainer.initTeacher();
    const w0 = performance.now();
    for (let i = 0; i < warmup; i++) await trainer.trainStep();
    const warm = (performance.now() - w0) / 1000;
    const ort = trainer.engine as unknown as {
      description?: string;
      sessions?: { count: number; transfers: { bytesIn: number; bytesOut: number } };
    };
    const sessions0 = ort.sessions?.count ?? 0;
    const bytes0 = ort.sessions ? ort.sessions.transfers.bytesIn + ort.sessions.transfers.bytesOut : 0;
    let last: Record<string, number> = {};
    const masked: number[] = [];
    for (let i = 0; i < steps; i++) {
      times.seconds = 0;
      times.cpuSeconds = 0;
      times.sysSeconds = 0;
      times.applySeconds = 0;
      const t0 = performance.now();
      last = await trainer.trainStep();
      out.stepSeconds.push((performance.now() - t0) / 1000);
      out.engineSeconds.push(times.seconds);
      out.engineCpu.push(times.cpuSeconds);
      out.engineSys.push(times.sysSeconds ?? 0);
      out.applySeconds.push(times.applySeconds ?? 0);
      if (last.masked_patches !== undefined) masked.push(last.masked_patches);
      if (between) await between();
    }
    out.masked = masked.length ? mean(masked) : 0;
    out.engine = ort.description ?? trainer.engine.name;
    const ortFields = ort.sessions
      ? {
          // Sessions built inside the timed steps (a new iBOT row bucket): their build time is in the step.
          sessions_built_in_timed_steps: ort.sessions.count - sessions0,
          host_transfer_mb_per_step: round(
            (ort.sessions.transfers.bytesIn + ort.sessions.transfers.bytesOut - bytes0) / steps / 2 ** 20,
            1,
          ),
        }
      : {};
    out.fields = {
      ...loaded.describe,
      ...ortFields,
      warmup_seconds: round(warm, 1),
      loss: round(last.loss!, 4),
      ...(masked.length ? { masked_patches: round(out.masked, 1) } : {}),
    };
    return out;
  } finally {
    trainer.engine.dispose();
  }
}

/** tfjs over `workers` threads (`trainThreads`): step times from rank 0's metrics, warm-up steps left out. */
async function runThreads(config: TrainConfig, v: Values, workers: number, steps: number, warmup: number): Promise<OurTimes> {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-bench-threads-'));
  try {
    await trainThreads(config, { outDir: dir, progress: false, workers, backend: v.backend as BackendName });
    const lines = (await readFile(join(dir, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>)
      .filter((m) => m.step !== undefined && m.step > warmup && m.step_seconds !== undefined);
    const s = lines.map((m) => m.step_seconds!);
    return {
      engine: `tfjs ${v.backend} x ${workers} threads`,
      engineSeconds: s,
      engineCpu: [],
      engineSys: [],
      applySeconds: [],
      stepSeconds: s,
      masked: lines.length && lines[0]!.masked_patches !== undefined ? mean(lines.map((m) => m.masked_patches!)) : 0,
      fields: { workers, loss: round(lines[lines.length - 1]!.loss!, 4), note: 'tfjs worker threads: step times are whole steps (rank 0)' },
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

class SkipCase extends Error {}

/** `--keep-on-device on|off` (webgpu only). */
function keepOnDevice(v: Values): { keepOnDevice?: boolean } {
  const k = v['keep-on-device'] as string | undefined;
  if (k === undefined) return {};
  if (k !== 'on' && k !== 'off') throw new Error(`--keep-on-device: expected on or off, got "${k}"`);
  if (v.device !== 'webgpu')
    throw new Error(`--keep-on-device: only with --device webgpu (onnxruntime-node keeps no tensor on ${String(v.device ?? 'cpu')})`);
  return { keepOnDevice: k === 'on' };
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      engine: { type: 'string', default: 'auto' },
      threads: { type: 'string', default: '1' },
      objective: { type: 'string', default: 'supervised' },
      preset: { type: 'string' },
      batch: { type: 'string' },
      'micro-batch': { type: 'string' },
      steps: { type: 'string', default: '2' },
      warmup: { type: 'string', default: '1' },
      model: { type: 'string' },
      patch: { type: 'string' },
      size: { type: 'string', default: '224' },
      'local-size': { type: 'string' },
      'local-crops': { type: 'string' },
      prototypes: { type: 'string' },
      precision: { type: 'string', default: 'fp32' },
      device: { type: 'string' },
      'ort-options': { type: 'string' },
      'keep-on-device': { type: 'string' },
      backend: { type: 'string', default: 'wasm' },
      gpu: { type: 'string' },
      torch: { type: 'string', default: 'auto' },
      'torch-mode': { type: 'string', default: 'alternate' },
      'torch-drop-path': { type: 'string', default: 'full' },
      'torch-device': { type: 'string' },
      'count-flops': { type: 'boolean', default: false },
    },
  });
  const v = values as Values;
  if (!['supervised', 'dinov2'].includes(v.objective as string))
    throw new Error(`--objective: expected supervised or dinov2, got "${v.objective}"`);
  if (!['fp32', 'bf16', 'fp16'].includes(v.precision as string))
    throw new Error(`--precision: expected fp32, bf16 or fp16, got "${v.precision}"`);
  if (!['auto', 'off', 'only'].includes(v.torch as string)) throw new Error(`--torch: expected auto, off or only, got "${v.torch}"`);
  if (!['alternate', 'after'].includes(v['torch-mode'] as string))
    throw new Error(`--torch-mode: expected alternate or after, got "${v['torch-mode']}"`);
  if (v.gpu !== undefined) process.env.VITREG_GPU = v.gpu as string; // the training threads read it
  const engines = (v.engine as string).split(',');
  const threads = (v.threads as string).split(',').map(Number);
  for (const t of threads) if (!(Number.isInteger(t) && t >= 1)) throw new Error(`--threads: expected integers >= 1, got "${v.threads}"`);
  // tfjs: the tfjs engine, and the ONNX Runtime engine's host-side DINO targets (engine-dino.ts).
  if (v.torch !== 'only')
    await initBackend(v.backend as BackendName, { log: () => {}, gpu: v.gpu === undefined ? undefined : Number(v.gpu) });
  for (const engine of v.torch === 'only' ? ['pytorch'] : engines) {
    for (const t of threads) {
      let line: Record<string, unknown>;
      try {
        line = await runOne(v, { engine, threads: t });
      } catch (err) {
        if (!(err instanceof SkipCase)) throw err;
        line = { case: 'train-step', engine, threads: t, objective: v.objective, precision: v.precision, skipped: err.message };
      }
      process.stdout.write(`${JSON.stringify(line)}\n`);
    }
  }
}
