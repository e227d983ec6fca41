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
      `${path}: tensor "${name}": view (shape [${shape.join(',')}], stride [${stride.join(',')}]) would copy ${n * size} bytes out of a storage of ${storage.byteLength}, more than the file's size allows (repeated elements)`,
    );
  copies.left -= n * size;
  const data = new Uint8Array(n * size);
  const index = new Array<number>(shape.length).fill(0);
  let src = offset;
  for (let i = 0; i < n; i++) {
    data.set(storage.subarray(src * size, (src + 1) * size), i * size);
    // Advance the multi-index like an odometer, keeping `src` in step.
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++index[d]! < shape[d]!) {
        src += stride[d]!;
        break;
      }
      src -= (shape[d]! - 1) * stride[d]!;
      index[d] = 0;
    }
  }
  return { dtype, shape, data };
}
