/**
 * Reading safetensors tensors straight into float32 arrays the caller owns (issue 16): a training engine
 * that keeps its state in flat buffers resumes a checkpoint by reading each tensor's bytes into its own
 * views (F32 data with positioned reads, no buffer in between; other dtypes through one tensor's bytes,
 * decoded), so a large state is held once, not twice. The targets are checked against the header first
 * (`float32TargetProblems`: every problem, each naming the file and the tensor), then filled tensor by
 * tensor (`readFloat32Into`); `readSafetensorsInto` does both for one file.
 */
import { endianness } from 'node:os';
import { SafetensorsReader } from './safetensors.js';
import { numel, toFloat32, type DType } from './tensor.js';

/** One tensor of a file and where its values go. */
export interface Float32Target {
  /** The tensor's name in the file. */
  name: string;
  /** Its values as float32, exactly as many as the stored tensor has. */
  into: Float32Array;
  /**
   * The stored shape it must have. Without it the stored number of values must be `into.length`; with it
   * only the shape is checked (a caller that converts the values, say from another layout, reads them
   * into its own buffer of that shape first).
   */
  shape?: readonly number[];
  /** The stored dtypes accepted (default: any; everything but F32 is decoded as `toFloat32` does). */
  dtypes?: readonly DType[];
}

const shapeText = (s: readonly number[]): string => `[${s.join(',')}]`;

/**
 * Every reason `targets` cannot be read from `reader`, one line each naming the file and the tensor (a
 * missing tensor, a dtype not accepted, a shape or number of values other than the target's); empty when
 * every target can be read. Reads nothing but the header the reader already holds.
 */
export function float32TargetProblems(reader: SafetensorsReader, targets: readonly Float32Target[]): string[] {
  const problems: string[] = [];
  for (const t of targets) {
    const where = `${reader.path}: tensor "${t.name}"`;
    if (!reader.has(t.name)) {
      problems.push(`${where} is missing`);
      continue;
    }
    const { dtype, shape } = reader.info(t.name);
    if (t.dtypes && !t.dtypes.includes(dtype)) problems.push(`${where} has dtype ${dtype}, expected ${t.dtypes.join(' or ')}`);
    const n = numel(shape);
    if (t.shape) {
      if (shapeText(t.shape) !== shapeText(shape)) problems.push(`${where} has shape ${shapeText(shape)}, expected ${shapeText(t.shape)}`);
    } else if (n !== t.into.length) problems.push(`${where} has ${n} values (shape ${shapeText(shape)}), expected ${t.into.length}`);
  }
  return problems;
}

/**
 * Reads tensor `name` of `reader` into `into` (exactly its number of values): F32 on a little-endian host
 * straight into `into`'s bytes with positioned reads, any other dtype through a buffer of the tensor's
 * bytes decoded by `toFloat32`. A file cut short while it is read is an error naming the file and tensor.
 */
export async function readFloat32Into(reader: SafetensorsReader, name: string, into: Float32Array): Promise<void> {
  const { dtype, shape } = reader.info(name);
  const n = numel(shape);
  if (n !== into.length) throw new Error(`${reader.path}: tensor "${name}" has ${n} values, the destination ${into.length}`);
  if (dtype === 'F32' && endianness() === 'LE') {
    await reader.readBytesInto(name, new Uint8Array(into.buffer, into.byteOffset, into.byteLength));
    return;
  }
  into.set(toFloat32(await reader.read(name)));
}

/**
 * Opens the safetensors file `path`, checks every target against its header (one error listing every
 * problem, each naming the file and the tensor, before any target is written), then fills the targets
 * in the file's order. Returns the header's `__metadata__`. Tensors of the file that no target names are
 * not read.
 */
export async function readSafetensorsInto(path: string, targets: readonly Float32Target[]): Promise<{ metadata: Record<string, string> }> {
  const reader = await SafetensorsReader.open(path);
  try {
    const problems = float32TargetProblems(reader, targets);
    const n = problems.length;
    if (n > 0) throw new Error(`${path}: cannot read the tensors asked for (${n} problem${n === 1 ? '' : 's'}): ${problems.join('; ')}`);
    const byName = new Map(targets.map((t) => [t.name, t]));
    for (const name of reader.names()) {
      const t = byName.get(name);
      if (t) await readFloat32Into(reader, name, t.into);
    }
    return { metadata: { ...reader.metadata } };
  } finally {
    await reader.close();
  }
}
