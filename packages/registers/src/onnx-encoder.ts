/**
 * The ONNX Runtime engine (onnxruntime-node, an optional dependency): a forward-only Encoder that runs the
 * graph of onnx-export.ts. Built from weights, it exports one size-independent graph per output set
 * (images of any size, plus the positional embedding of their size as a second input, resampled on the
 * host exactly as the tfjs model does and cached per size), so images of many sizes (LOST at native
 * resolution) share one session; nothing is written to disk unless the weights pass 1.8 GiB, which need
 * ONNX's external data and so a file. Built from an exported .onnx file, it runs that file's one size
 * and outputs.
 *
 * Devices: 'cpu' (the library inside the npm package), 'cuda' (ONNX Runtime's CUDA 12 provider, which
 * onnxruntime-node's install script downloads on Linux x64 when allowed), 'webgpu' (bundled on Linux x64,
 * Windows and macOS; needs a GPU driver that Dawn finds).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { checkMemoryFit } from '@vitreg/core';
import { validateConfig, type ViTConfig } from './config.js';
import { checkImageBatch, type EncodeOptions, type Encoder, type EncoderOutput, type HostArray, type ImageBatch } from './encoder.js';
import {
  checkExportable,
  exportOnnx,
  onnxModelBytes,
  ONNX_METADATA,
  ONNX_OUTPUTS,
  resampledPatchPositions,
  type OnnxOutput,
} from './onnx-export.js';
import { activeBudget, largestFittingBatch, parameterCount, vitMemoryNeed } from './memory-need.js';
import { ttrNeuronsByLayer } from './model.js';
import { readOnnxInfo } from './onnx-proto.js';
import { modelFingerprint } from './test-time-registers.js';
import { modelFromStateDict } from './weights.js';
import { checkStateDict } from './torch-layout.js';
import { type StateDict } from './state-dict.js';

type Ort = typeof import('onnxruntime-node');

export const ONNX_DEVICES = ['cpu', 'cuda', 'webgpu'] as const;
export type OnnxDevice = (typeof ONNX_DEVICES)[number];

export interface OnnxEncoderOptions {
  /** Execution provider (default cpu). */
  device?: OnnxDevice;
  /** Intra-op threads (default: ONNX Runtime's, one per physical core). */
  threads?: number;
  /** Weight storage of graphs built from weights (default float32). */
  weightType?: 'float32' | 'float16';
  /**
   * Test-time registers (graphs built from weights; onnx-export.ts's option of the same name): the
   * encoder's `config` then counts the extra token in num_register_tokens (R + 1), as
   * withTestTimeRegisters' view does on tfjs, and `registers` has R + 1 rows.
   */
  testTimeRegisters?: { neurons: ReadonlyArray<{ layer: number; neuron: number }> };
}

/** The config an encoder reports: with a test-time register, num_register_tokens counts it (R + 1). */
function publicConfig(c: ViTConfig, ttr: boolean): ViTConfig {
  return ttr ? Object.freeze({ ...c, num_register_tokens: c.num_register_tokens + 1 }) : c;
}

let ortPromise: Promise<Ort> | undefined;

/**
 * Loads onnxruntime-node. Throws one line saying how to install it when it is missing or its native
 * library does not load on this machine.
 */
export async function loadOnnxRuntime(): Promise<Ort> {
  ortPromise ??= (async () => {
    const name = 'onnxruntime-node'; // a variable: bundlers leave the optional dependency out
    try {
      const mod = (await import(name)) as Ort & { default?: Ort };
      const ort = (mod.InferenceSession ? mod : mod.default) as Ort;
      if (!ort?.InferenceSession) throw new Error('no InferenceSession export');
      ort.env.logLevel = 'fatal'; // its errors reach the caller as exceptions, worded by onnxSessionError
      return ort;
    } catch (err) {
      ortPromise = undefined;
      throw new Error(
        `ONNX Runtime is not available: onnxruntime-node could not be loaded (${firstErrorLine(err)}); install it with npm install onnxruntime-node (its install script is not needed for the CPU)`,
        { cause: err },
      );
    }
  })();
  return ortPromise;
}

/** Whether onnxruntime-node loads here (what engine 'auto' asks). */
export async function onnxRuntimeAvailable(): Promise<boolean> {
  return loadOnnxRuntime().then(
    () => true,
    () => false,
  );
}

/** The first line of an error's message (ONNX Runtime's run on over several lines of native detail). */
export function firstErrorLine(err: unknown): string {
  return String((err as Error)?.message ?? err)
    .split('\n')[0]!
    .trim();
}

/** Session options for a device and thread count. */
function sessionOptions(device: OnnxDevice, threads: number | undefined): InferenceSession.SessionOptions {
  return {
    executionProviders: [device],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    interOpNumThreads: 1,
    ...(threads ? { intraOpNumThreads: threads } : {}),
    logSeverityLevel: 3,
  };
}

/**
 * Turns an ONNX Runtime session error into one line: on cuda / webgpu a missing provider or adapter names
 * the device and what to install; anything else is `<context>: <ONNX Runtime's first line>`. The
 * encoder's and @vitreg/trainer's ONNX engine's sessions both word their errors so.
 */
export function onnxSessionError(err: unknown, device: OnnxDevice, context: string): Error {
  const msg = firstErrorLine(err);
  if (device !== 'cpu' && /provider|cuda|webgpu|dawn|adapter|libcu|\.so/i.test(msg)) {
    const how =
      device === 'cuda'
        ? "ONNX Runtime's CUDA 12 provider is not installed or finds no GPU (reinstall onnxruntime-node with its install script allowed: ONNXRUNTIME_NODE_INSTALL=cuda12)"
        : 'no WebGPU adapter was found (a GPU driver Dawn can use, e.g. Vulkan, is needed)';
    return new Error(`--device ${device}: not available here: ${how} (${msg})`, { cause: err });
  }
  return new Error(`${context}: ${msg}`, { cause: err });
}

/** Requested outputs of an encode call, in the exporter's names. */
function wantedOutputs(opts: EncodeOptions, config: ViTConfig): OnnxOutput[] {
  const out: OnnxOutput[] = ['cls', 'registers', 'patches', 'prenorm'];
  if ((config as unknown as { proj_dim?: number | null }).proj_dim) out.push('pooled');
  if (opts.embeddings) out.push('embeddings');
  if (opts.attention === 'last') out.push('attention');
  if (opts.attention === 'all') out.push('attention:all');
  if (opts.keys) out.push('keys');
  if (opts.values) out.push('values');
  if (opts.layers) out.push('layers');
  return out;
}

interface SessionEntry {
  session: InferenceSession;
  outputs: Set<OnnxOutput>;
  size: [number, number];
}

export class OnnxEncoder implements Encoder {
  readonly engine = 'onnxruntime' as const;
  readonly description: string;
  private sessions = new Map<string, Promise<SessionEntry>>();
  /** Resampled patch positions by input size (graphs built from weights take them as an input). */
  private positions = new Map<string, Float32Array>();
  private tempDirs: string[] = [];
  /** The config as exported (without the test-time register); `config` is what encode returns. */
  readonly config: ViTConfig;
  /** The batch shape and outputs last checked against the memory budget. */
  private fitted = '';

  private constructor(
    private ort: Ort,
    private base: ViTConfig,
    private source: { stateDict: StateDict } | { file: string; entry: Promise<SessionEntry> },
    private opts: OnnxEncoderOptions,
    ttrNeurons?: number,
  ) {
    this.config = publicConfig(base, ttrNeurons !== undefined);
    const threads = opts.threads ? `${opts.threads} thread${opts.threads === 1 ? '' : 's'}` : 'default threads';
    const ttr = ttrNeurons !== undefined ? `, test-time register (${ttrNeurons} neurons)` : '';
    this.description = `onnxruntime ${ort.env.versions?.common ?? ''} ${opts.device ?? 'cpu'}, ${threads}${ttr}`.replace('  ', ' ');
  }

  /** An encoder that exports a graph per input size from a config and a DINOv2-named state dict. */
  static async fromWeights(config: ViTConfig, stateDict: StateDict, opts: OnnxEncoderOptions = {}): Promise<OnnxEncoder> {
    const ort = await loadOnnxRuntime();
    // Fail now, not at the first batch, on a config the exporter cannot express or weights that do not fit.
    checkExportable(config);
    checkStateDict(stateDict, config, 'ONNX encoder');
    if (opts.testTimeRegisters) ttrNeuronsByLayer(config, opts.testTimeRegisters.neurons);
    const enc = new OnnxEncoder(ort, config, { stateDict }, opts, opts.testTimeRegisters?.neurons.length);
    await enc.probeDevice();
    return enc;
  }

  /** An encoder on an .onnx file written by `exportOnnx` / `vitreg export` (one input size). */
  static async fromFile(path: string, opts: OnnxEncoderOptions = {}): Promise<OnnxEncoder> {
    const ort = await loadOnnxRuntime();
    const info = await readOnnxInfo(path);
    const meta = info.metadata;
    if (!meta[ONNX_METADATA.config] || !meta[ONNX_METADATA.input] || !meta[ONNX_METADATA.outputs]) {
      throw new Error(
        `${path}: not a vitreg ONNX export (producer "${info.producer}", no ${ONNX_METADATA.config} in its metadata); export one with vitreg export`,
      );
    }
    let config: ViTConfig;
    let size: [number, number];
    let outputs: OnnxOutput[];
    let ttr: unknown[] | undefined;
    try {
      config = validateConfig(JSON.parse(meta[ONNX_METADATA.config]!), `${path}: metadata ${ONNX_METADATA.config}`);
      size = JSON.parse(meta[ONNX_METADATA.input]!);
      outputs = JSON.parse(meta[ONNX_METADATA.outputs]!);
      if (meta[ONNX_METADATA.testTimeRegisters]) ttr = JSON.parse(meta[ONNX_METADATA.testTimeRegisters]!);
    } catch (err) {
      throw new Error(`${path}: bad vitreg metadata: ${firstErrorLine(err)}`, { cause: err });
    }
    const device = opts.device ?? 'cpu';
    const entry = ort.InferenceSession.create(path, sessionOptions(device, opts.threads)).then(
      (session) => ({ session, outputs: new Set(outputs), size }),
      (err) => {
        throw onnxSessionError(err, device, `${path}: ONNX Runtime cannot load it`);
      },
    );
    if (opts.testTimeRegisters)
      throw new Error(
        `${path}: test-time registers are part of an exported graph (exportOnnx's testTimeRegisters option); give the weights file to add them here`,
      );
    const enc = new OnnxEncoder(ort, config, { file: path, entry }, opts, ttr?.length);
    await entry;
    return enc;
  }

  /**
   * A second encoder on the same weights (shared, not copied) and options whose graphs add test-time
   * registers with `neurons` (as withTestTimeRegisters on tfjs). Only for encoders built from weights.
   */
  async withTestTimeRegisters(neurons: ReadonlyArray<{ layer: number; neuron: number }>): Promise<OnnxEncoder> {
    if ('file' in this.source)
      throw new Error(
        `${this.source.file}: test-time registers are part of an exported graph (exportOnnx's testTimeRegisters option); give the weights file to add them here`,
      );
    return OnnxEncoder.fromWeights(this.base, this.source.stateDict, {
      ...this.opts,
      testTimeRegisters: { neurons: neurons.map((n) => ({ layer: n.layer, neuron: n.neuron })) },
    });
  }

  /**
   * modelFingerprint of the weights (encoders built from weights), as the tfjs model of the same weights
   * computes it: what test-time register files are checked against. Builds that model for a moment.
   */
  async fingerprint(): Promise<string> {
    if ('file' in this.source) throw new Error(`${this.source.file}: an exported graph has no model fingerprint; give the weights file`);
    const model = modelFromStateDict(this.source.stateDict, this.base);
    try {
      return await modelFingerprint(model);
    } finally {
      model.dispose();
    }
  }

  /** The final LayerNorm's weight and bias (encoders built from weights; undefined for .onnx files). */
  async finalNorm(): Promise<{ weight: Float32Array; bias: Float32Array } | undefined> {
    if ('file' in this.source) return undefined;
    return { weight: this.source.stateDict['norm.weight']!.data, bias: this.source.stateDict['norm.bias']!.data };
  }

  /** Starts a session on a one-patch graph so that an unavailable device fails at once, in one line. */
  private async probeDevice(): Promise<void> {
    if ((this.opts.device ?? 'cpu') === 'cpu') return;
    const p = this.config.patch_size;
    const entry = await this.sessionFor(p, p, ['cls']);
    this.sessions.clear();
    await entry.session.release();
  }

  private async sessionFor(h: number, w: number, outputs: OnnxOutput[]): Promise<SessionEntry> {
    const src = this.source;
    if ('file' in src) {
      const entry = await src.entry;
      if (entry.size[0] !== h || entry.size[1] !== w) {
        throw new Error(
          `${src.file} was exported for ${entry.size[0]}x${entry.size[1]} images, got ${h}x${w}: export one for this size (vitreg export --size ${h}x${w}) or give the weights file`,
        );
      }
      const optional = (o: OnnxOutput) => o === 'pooled' || (o === 'registers' && this.config.num_register_tokens === 0);
      const missing = outputs.filter((o) => !entry.outputs.has(o) && !optional(o));
      const implied = missing.filter((o) => !(o === 'attention' && entry.outputs.has('attention:all')));
      if (implied.length > 0) {
        throw new Error(
          `${src.file} has no output ${implied.map((o) => `"${o}"`).join(', ')} (it has ${[...entry.outputs].join(', ')}); export it with --outputs ${[...new Set([...entry.outputs, ...implied])].join(',')}`,
        );
      }
      return entry;
    }
    const key = [...outputs].sort().join(',');
    let entry = this.sessions.get(key);
    if (!entry) {
      entry = this.createSession(src.stateDict, outputs);
      this.sessions.set(key, entry);
      entry.catch(() => this.sessions.delete(key));
    }
    return entry;
  }

  private async createSession(sd: StateDict, outputs: OnnxOutput[]): Promise<SessionEntry> {
    const device = this.opts.device ?? 'cpu';
    const p = this.config.patch_size;
    const [h, w] = [p, p]; // a dynamic-size graph: the size only checks the config
    const exportOpts = {
      height: h,
      width: w,
      outputs,
      weightType: this.opts.weightType,
      contribAttention: device !== 'webgpu',
      dynamicSize: true,
      testTimeRegisters: this.opts.testTimeRegisters,
    };
    const options = sessionOptions(device, this.opts.threads);
    let session: InferenceSession;
    const bytes = Object.values(sd).reduce((s, t) => s + t.data.length * (this.opts.weightType === 'float16' ? 2 : 4), 0);
    try {
      if (bytes < 1.8 * 2 ** 30) session = await this.ort.InferenceSession.create(onnxModelBytes(this.base, sd, exportOpts), options);
      else {
        const dir = await mkdtemp(join(tmpdir(), 'vitreg-onnx-'));
        this.tempDirs.push(dir);
        const file = join(dir, `model-${this.sessions.size}.onnx`);
        await exportOnnx(file, this.base, sd, { ...exportOpts, externalData: true });
        session = await this.ort.InferenceSession.create(file, options);
      }
    } catch (err) {
      throw onnxSessionError(err, device, 'ONNX graph: ONNX Runtime cannot load it');
    }
    return { session, outputs: new Set(outputs), size: [h, w] };
  }

  async encode(images: ImageBatch, opts: EncodeOptions = {}): Promise<EncoderOutput> {
    const c = this.config;
    checkImageBatch(images, c.patch_size);
    const [B, H, W] = images.shape;
    this.checkBatchFits(B, H, W, opts);
    const wanted = wantedOutputs(opts, c);
    const entry = await this.sessionFor(H, W, wanted);
    const feeds: Record<string, Tensor> = { images: new this.ort.Tensor('float32', images.data, images.shape) };
    if ('stateDict' in this.source) {
      const gh = H / c.patch_size;
      const gw = W / c.patch_size;
      let pos = this.positions.get(`${gh}x${gw}`);
      if (!pos) {
        pos = resampledPatchPositions(c, this.source.stateDict.pos_embed!.data, gh, gw);
        this.positions.set(`${gh}x${gw}`, pos);
      }
      feeds.patch_pos = new this.ort.Tensor('float32', pos, [1, gh * gw, c.embed_dim]);
    }
    let res: Record<string, Tensor>;
    try {
      res = await entry.session.run(feeds);
    } catch (err) {
      throw new Error(`ONNX Runtime failed on a ${B}x${H}x${W} batch: ${firstErrorLine(err)}`, { cause: err });
    }
    const get = (name: string): HostArray => {
      const t = res[name];
      if (!t) throw new Error(`ONNX graph returned no output "${name}"`);
      return { data: t.data as Float32Array, shape: t.dims.map(Number) };
    };
    const gh = H / c.patch_size;
    const gw = W / c.patch_size;
    const R = c.num_register_tokens;
    const out: EncoderOutput = {
      cls: get('cls'),
      registers: R > 0 ? get('registers') : { data: new Float32Array(0), shape: [B, 0, c.embed_dim] },
      patches: get('patches'),
      prenorm: get('prenorm'),
      grid: [gh, gw],
    };
    if (res.pooled) out.pooled = get('pooled');
    if (opts.embeddings) out.embeddings = get('embeddings');
    if (opts.attention === 'last') out.attention = [get(`attention.${c.depth - 1}`)];
    if (opts.attention === 'all') out.attention = Array.from({ length: c.depth }, (_, i) => get(`attention.${i}`));
    if (opts.layers) out.layers = Array.from({ length: c.depth }, (_, i) => get(`layers.${i}`));
    if (opts.keys) out.keys = get('keys');
    if (opts.values) out.values = get('values');
    return out;
  }

  /**
   * Refuses, before ONNX Runtime allocates anything for it, a batch whose forward (one copy of the
   * weights, the activations at this batch size and image size, the outputs asked for) is more than the
   * process can have: the host's free memory or cgroup limit on the CPU (VITREG_MEMORY_LIMIT, in bytes,
   * replaces it); not checked on cuda or webgpu, whose memory is the device's. The error names the
   * largest batch that fits. Checked once per batch shape and outputs.
   */
  private checkBatchFits(B: number, H: number, W: number, opts: EncodeOptions): void {
    const key = `${B}x${H}x${W}/${opts.attention ?? 'none'}/${opts.layers ? 'layers' : ''}`;
    if (key === this.fitted) return;
    const device = this.opts.device ?? 'cpu';
    const budget = activeBudget(device === 'cpu' ? 'onnxruntime' : `onnxruntime-${device}`);
    const mem = {
      engine: 'onnxruntime' as const,
      imageSize: [H, W] as [number, number],
      outputs: { attention: opts.attention, layers: opts.layers },
    };
    const need = vitMemoryNeed(this.base, { ...mem, batch: B });
    const fits = budget.total === undefined ? B : largestFittingBatch(this.base, budget.total, mem);
    const waysOut = [
      fits >= 1
        ? `a smaller batch (--batch-size ${fits} fits)`
        : budget.total !== undefined && need.weights >= budget.total
          ? 'fp16 weights (vitreg export --dtype fp16: half the weight memory)'
          : `smaller images (not one ${H}x${W} image fits)`,
      ...(opts.attention === 'all' ? ["the last block's attention only (--attention last)"] : []),
      'a machine (or cgroup) with more memory',
    ];
    const what = `the ONNX Runtime forward (${(parameterCount(this.base) / 1e6).toFixed(1)}M parameters, batch ${B} of ${H}x${W} images)`;
    checkMemoryFit(what, need, budget, waysOut);
    this.fitted = key;
  }

  async dispose(): Promise<void> {
    const entries = 'file' in this.source ? [this.source.entry] : [...this.sessions.values()];
    this.sessions.clear();
    for (const e of entries)
      await e.then(
        (s) => s.session.release(),
        () => {},
      );
    for (const d of this.tempDirs) await rm(d, { recursive: true, force: true });
  }
}

/** Output names an exported file may hold (for --outputs help and errors). */
export const ONNX_OUTPUT_CHOICES: readonly OnnxOutput[] = ONNX_OUTPUTS;
