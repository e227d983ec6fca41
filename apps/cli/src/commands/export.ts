/**
 * `vitreg export`: write a checkpoint as an ONNX model (opset 17) for one input size, built in TypeScript
 * by @vitreg/registers' exportOnnx; runs on onnxruntime (vitreg's --engine onnxruntime) and elsewhere.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { exportOnnx, ONNX_OUTPUTS, readWeights, type OnnxOutput } from '@vitreg/registers';
import { CliError, parseFlags, type Command } from '../cli.js';
import { configFlag, MODEL_FLAGS } from '../inputs.js';

const usage = `
Usage: vitreg export --weights FILE [--model NAME] [--config JSON|FILE.json] --out MODEL.onnx
                     [--format onnx] [--size HxW|N] [--outputs NAME,...] [--dtype fp32|fp16]
                     [--external-data auto|yes|no] [--portable]

Writes the model as ONNX (opset 17) for one input size: input "images" [batch, H, W, 3], normalised
NHWC float32 as vitreg feeds it, batch dynamic. The positional embedding is resampled for that size
when exporting (exactly as the model does), so each size is its own file. The file's metadata holds
the config, the size and the outputs; vitreg features / analyze / probe / discover run it with
--weights MODEL.onnx.

  --weights FILE    .safetensors or .pth (DINOv2, timm, HF, DINO, DeiT-III or CLIP names; OpenAI
                    CLIP: --model clip_vitb16 or --config '{"act_layer":"quick_gelu"}')
  --model NAME      a named config instead of the inferred one
  --config JSON     config fields overriding the inferred ones, e.g. '{"num_heads": 3}'
  --size HxW|N      input size in pixels, multiples of the patch size (default 224x224)
  --outputs LIST    comma-separated, of: ${ONNX_OUTPUTS.join(', ')}
                    (default cls,registers,patches,prenorm; attention is the last block's,
                    attention:all every block's as attention.K, layers every block's tokens as
                    layers.K, keys / values the last block's [B, heads, N, head_dim]; pooled needs
                    a config with proj_dim)
  --dtype D         weight storage: fp32 (default) or fp16 (half the file; cast to float32 in the
                    graph, so results are those of the fp16-rounded weights computed in float32)
  --external-data   weights in MODEL.onnx.data beside the graph: auto (default: above 1.8 GiB,
                    which protobuf's 2 GiB limit requires, e.g. ViT-g), yes or no
  --portable        standard ONNX operators only: attention as MatMul/Softmax/MatMul instead of
                    ONNX Runtime's com.microsoft.Attention (for other runtimes; a little slower)
`;

/** --size: "HxW" or "N" (square). */
export function parseSize(value: string | undefined): [number, number] {
  if (value === undefined) return [224, 224];
  const m = /^(\d+)(?:x(\d+))?$/.exec(value);
  if (!m) throw new CliError(`--size: expected HxW or N (pixels), got "${value}"`);
  const h = Number(m[1]);
  return [h, m[2] === undefined ? h : Number(m[2])];
}

/** --outputs: names from ONNX_OUTPUTS, comma-separated. */
export function parseOutputs(value: string | undefined): OnnxOutput[] | undefined {
  if (value === undefined) return undefined;
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.length === 0) throw new CliError('--outputs: expected a comma-separated list of output names');
  for (const n of names) {
    if (!(ONNX_OUTPUTS as readonly string[]).includes(n))
      throw new CliError(`--outputs: unknown output "${n}"; expected some of ${ONNX_OUTPUTS.join(', ')}`);
  }
  return names as OnnxOutput[];
}

export const exportCommand: Command = {
  summary: 'export a checkpoint to ONNX (one input size) for onnxruntime and other runtimes',
  usage,
  async run(argv) {
    const f = parseFlags('export', argv, {
      ...MODEL_FLAGS,
      format: { type: 'string' },
      out: { type: 'string' },
      size: { type: 'string' },
      outputs: { type: 'string' },
      dtype: { type: 'string' },
      'external-data': { type: 'string' },
      portable: { type: 'boolean' },
    });
    const { values } = f;
    f.noPositionals();
    f.choice('format', ['onnx'] as const, 'onnx');
    if (values.backend !== undefined) f.fail('--backend does not apply to export (no model runs)');
    const out = f.require('out', '--out MODEL.onnx is required');
    if (out && !out.toLowerCase().endsWith('.onnx')) f.fail(`--out: expected a .onnx path, got ${out}`);
    const [height, width] = f.check(() => parseSize(values.size), [224, 224]);
    const outputs = f.check(() => parseOutputs(values.outputs), undefined);
    const dtype = f.choice('dtype', ['fp32', 'fp16'] as const, 'fp32');
    const external = f.choice('external-data', ['auto', 'yes', 'no'] as const, 'auto');
    const weights = f.require('weights', '--weights FILE is required (.safetensors or .pth)');
    const config = f.check(() => configFlag(values.config), undefined);
    f.done();
    if (!existsSync(weights)) throw new CliError(`--weights: ${weights} does not exist`);
    let files: string[];
    try {
      const read = await readWeights(weights, { model: values.model, config });
      files = await exportOnnx(resolve(out), read.config, read.stateDict, {
        height,
        width,
        outputs,
        weightType: dtype === 'fp16' ? 'float16' : 'float32',
        externalData: external === 'auto' ? 'auto' : external === 'yes',
        contribAttention: !values.portable,
      });
    } catch (err) {
      if (err instanceof CliError) throw err;
      throw new CliError((err as Error).message);
    }
    process.stderr.write(`wrote ${files.join(' and ')} (${height}x${width}, ${dtype})\n`);
  },
};
