/**
 * What a torch.save pickle refers to, and how it becomes a HostTensor: the storages (a persistent id's
 * dtype, zip entry key and element count), the strided tensor views over them, the torch storage
 * classes and their dtypes, and the copy of a strided view into contiguous bytes.
 */
import { InputError } from './errors.js';
import { DTYPE_SIZE, numel, type DType, type HostTensor } from './tensor.js';

/** A storage named by a persistent id: its element dtype, its zip entry key and element count. */
export class StorageRef {
  constructor(
    readonly dtype: DType,
    readonly key: string,
    readonly numel: number,
  ) {}
}

/** A tensor as pickled: a strided view into a storage, materialised after unpickling. */
export class TensorSpec {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

/** torch storage classes and the dtype of their elements. */
export const STORAGE_DTYPES: Record<string, DType> = {
  'torch.FloatStorage': 'F32',
  'torch.DoubleStorage': 'F64',
  'torch.HalfStorage': 'F16',
  'torch.BFloat16Storage': 'BF16',
  'torch.LongStorage': 'I64',
  'torch.IntStorage': 'I32',
  'torch.ShortStorage': 'I16',
  'torch.CharStorage': 'I8',
  'torch.ByteStorage': 'U8',
  'torch.BoolStorage': 'BOOL',
};

/**
 * Copies a strided view out of its storage into contiguous bytes (no copy if already contiguous). A copy
 * is taken from `copies.left` (bytes): one past it is refused before anything is allocated.
 */
export function materialize(
  path: string,
  name: string,
  spec: TensorSpec,
  storage: Uint8Array,
  copies: { left: number } = { left: Infinity },
): HostTensor {
  const { shape, stride, offset } = spec;
  const dtype = spec.storage.dtype;
  const size = DTYPE_SIZE[dtype];
  const n = numel(shape);
  if (n === 0) return { dtype, shape, data: new Uint8Array(0) };
  let last = offset;
  for (let d = 0; d < shape.length; d++) last += (shape[d]! - 1) * stride[d]!;
  if (last >= spec.storage.numel) {
    throw new InputError(
      `${path}: tensor "${name}": view (offset ${offset}, shape [${shape.join(',')}], stride [${stride.join(',')}]) reaches element ${last} of a storage of ${spec.storage.numel}`,
    );
  }
  let contiguous = true;
  for (let d = shape.length - 1, expect = 1; d >= 0; expect *= shape[d]!, d--) {
    if (shape[d] !== 1 && stride[d] !== expect) contiguous = false;
  }
  if (contiguous) return { dtype, shape, data: storage.subarray(offset * size, (offset + n) * size) };

  if (n * size > copies.left)
    throw new InputError(
      `${path}: tensor "${name}": view (shape [${shape.join(',')}], stride [${stride.join(',')}]) would copy ${n * size} bytes out of a storage of ${storage.byteLength}, more than the file's size allows: its strided views together may copy at most the file's size + PTH_LIMITS.copyBytes (views that repeat elements, or several views of one storage)`,
    );
  copies.left -= n * size;
  return { dtype, shape, data: copyView(storage, size, offset, shape, stride, n) };
}

/**
 * The copy itself, by runs: adjacent dimensions that step evenly are merged first (so a transposed matrix
 * copies rows, an expanded one repeats a run), then the innermost run is copied at once when its stride is
 * 1 (TypedArray.set), repeated by doubling when it is 0, and element by element otherwise. Before, every
 * element was one subarray and one set: a stride-0 view of 10^8 elements took 4.8 s and 404 MB.
 */
function copyView(storage: Uint8Array, size: number, offset: number, shape0: number[], stride0: number[], n: number): Uint8Array {
  const shape: number[] = [];
  const stride: number[] = [];
  for (let d = 0; d < shape0.length; d++) {
    if (shape0[d] === 1) continue;
    const k = shape.length - 1;
    if (k >= 0 && stride[k] === shape0[d]! * stride0[d]!) {
      shape[k] = shape[k]! * shape0[d]!;
      stride[k] = stride0[d]!;
    } else {
      shape.push(shape0[d]!);
      stride.push(stride0[d]!);
    }
  }
  if (shape.length === 0) return storage.slice(offset * size, (offset + 1) * size);
  const data = new Uint8Array(n * size);
  const inner = shape.pop()!;
  const step = stride.pop()!;
  const run = inner * size;
  const rows = n / inner;
  const index = new Array<number>(shape.length).fill(0);
  let src = offset;
  for (let r = 0, out = 0; r < rows; r++, out += run) {
    const from = src * size;
    if (step === 1) data.set(storage.subarray(from, from + run), out);
    else if (step === 0) {
      for (let b = 0; b < size; b++) data[out + b] = storage[from + b]!;
      for (let have = size; have < run; have *= 2) data.copyWithin(out + have, out, out + Math.min(have, run - have));
    } else {
      for (let i = 0, s = from, o = out; i < inner; i++, s += step * size) for (let b = 0; b < size; b++) data[o++] = storage[s + b]!;
    }
    // Advance the outer multi-index like an odometer, keeping `src` in step.
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++index[d]! < shape[d]!) {
        src += stride[d]!;
        break;
      }
      src -= (shape[d]! - 1) * stride[d]!;
      index[d] = 0;
    }
  }
  return data;
}
