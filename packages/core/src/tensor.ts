/**
 * Host-side tensors: raw little-endian bytes plus dtype and shape, the unit that safetensors and
 * .pth files hold. Conversions to and from Float32Array live here so every package decodes F16/BF16
 * the same way.
 */
export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Record<DType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

export interface HostTensor {
  dtype: DType;
  shape: number[];
  /** Raw little-endian bytes, exactly numel(shape) * DTYPE_SIZE[dtype] long. */
  data: Uint8Array;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** True when `x` names a dtype this project handles. */
export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZE, x);
}

/** True when `shape` is an array of non-negative safe integers. */
export function isShape(shape: unknown): shape is number[] {
  return Array.isArray(shape) && shape.every((d) => Number.isSafeInteger(d) && d >= 0);
}

/** Every typed array `hostTensor` accepts, with the dtype it becomes. */
export type HostTypedArray =
  | Float64Array
  | Float32Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | BigUint64Array
  | Uint32Array
  | Uint16Array
  | Uint8Array;

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Wraps a typed array as a HostTensor; the dtype follows the array type (Uint8Array is U8).
 * On little-endian hosts (all that Node supports in practice) the tensor shares the array's memory.
 */
export function hostTensor(data: HostTypedArray, shape: readonly number[]): HostTensor {
  const dtype = typedArrayDType(data);
  if (!isShape(shape)) throw new Error(`hostTensor: shape ${JSON.stringify(shape)} is not an array of non-negative integers`);
  if (numel(shape) !== data.length) {
    throw new Error(
      `hostTensor: ${data.constructor.name} of length ${data.length} does not match shape [${shape.join(',')}] (${numel(shape)} elements)`,
    );
  }
  return { dtype, shape: [...shape], data: littleEndianBytes(data) };
}

function typedArrayDType(data: HostTypedArray): DType {
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof BigInt64Array) return 'I64';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof Int16Array) return 'I16';
  if (data instanceof Int8Array) return 'I8';
  if (data instanceof BigUint64Array) return 'U64';
  if (data instanceof Uint32Array) return 'U32';
  if (data instanceof Uint16Array) return 'U16';
  if (data instanceof Uint8Array) return 'U8';
  throw new Error(`hostTensor: unsupported array type ${(data as object)?.constructor?.name ?? typeof data}`);
}

/** The bytes of a typed array in little-endian order (a view on LE hosts, a swapped copy otherwise). */
function littleEndianBytes(a: HostTypedArray): Uint8Array {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return HOST_LITTLE_ENDIAN ? bytes : swapBytes(bytes, a.BYTES_PER_ELEMENT);
}

/** A copy of `bytes` with each `size`-byte element reversed. */
export function swapBytes(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += size) {
    for (let j = 0; j < size; j++) out[i + j] = bytes[i + size - 1 - j]!;
  }
  return out;
}

/**
 * A native-endian, aligned typed view of t's elements: a view when the bytes already are,
 * an aligned (and on big-endian hosts byte-swapped) copy otherwise.
 */
function nativeView<T>(t: HostTensor, ctor: { new (b: ArrayBufferLike, o: number, n: number): T; BYTES_PER_ELEMENT: number }): T {
  const size = ctor.BYTES_PER_ELEMENT;
  const n = t.data.byteLength / size;
  if (HOST_LITTLE_ENDIAN && t.data.byteOffset % size === 0) return new ctor(t.data.buffer, t.data.byteOffset, n);
  const copy = HOST_LITTLE_ENDIAN ? t.data.slice() : swapBytes(t.data, size);
  return new ctor(copy.buffer, 0, n);
}

function checkTensor(t: HostTensor, fn: string): void {
  if (!isDType(t.dtype)) throw new Error(`${fn}: unknown dtype ${JSON.stringify(t.dtype)}`);
  const expected = numel(t.shape) * DTYPE_SIZE[t.dtype];
  if (t.data.byteLength !== expected) {
    throw new Error(`${fn}: ${t.dtype} tensor of shape [${t.shape.join(',')}] needs ${expected} bytes, has ${t.data.byteLength}`);
  }
}

let f16Table: Uint32Array | undefined;

/** float32 bit patterns of all 65536 float16 values (exact: subnormals, ±inf and NaN payloads). */
function float16Table(): Uint32Array {
  if (f16Table) return f16Table;
  const table = new Uint32Array(65536);
  const f = new Float32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0x1f) table[h] = sign | 0x7f800000 | (mant << 13);
    else if (exp === 0)
      f[h] = (sign ? -1 : 1) * mant * 2 ** -24; // zero and subnormals, exact in f32
    else table[h] = sign | ((exp + 112) << 23) | (mant << 13);
  }
  f16Table = table;
  return table;
}

/** Decodes any dtype to a new Float32Array (integers convert to the nearest float32; BOOL to 0/1). */
export function toFloat32(t: HostTensor): Float32Array {
  checkTensor(t, 'toFloat32');
  const n = numel(t.shape);
  switch (t.dtype) {
    case 'F32':
      return nativeView(t, Float32Array).slice();
    case 'F16': {
      const table = float16Table();
      const src = nativeView(t, Uint16Array);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[src[i]!]!;
      return new Float32Array(out.buffer);
    }
    case 'BF16': {
      const src = nativeView(t, Uint16Array);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = src[i]! << 16;
      return new Float32Array(out.buffer);
    }
    case 'F64':
      return new Float32Array(nativeView(t, Float64Array));
    case 'I32':
      return new Float32Array(nativeView(t, Int32Array));
    case 'I16':
      return new Float32Array(nativeView(t, Int16Array));
    case 'I8':
      return new Float32Array(nativeView(t, Int8Array));
    case 'U32':
      return new Float32Array(nativeView(t, Uint32Array));
    case 'U16':
      return new Float32Array(nativeView(t, Uint16Array));
    case 'U8':
      return new Float32Array(t.data);
    case 'BOOL':
      return Float32Array.from(t.data, (b) => (b ? 1 : 0));
    case 'I64':
      return Float32Array.from(nativeView(t, BigInt64Array), Number);
    case 'U64':
      return Float32Array.from(nativeView(t, BigUint64Array), Number);
  }
}

/**
 * float32 bits -> float16 bits, rounding to nearest even as PyTorch's .half() does
 * (overflow gives ±inf, NaN becomes the quiet NaN 0x7e00 with its sign).
 */
function float16Bits(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const fexp = f & 0x7f800000;
  let fsig = f & 0x007fffff;
  if (fexp >= 0x47800000) {
    // |x| >= 65536, inf or NaN (values in [65520, 65536) round up to inf below).
    return sign | (fexp === 0x7f800000 && fsig !== 0 ? 0x7e00 : 0x7c00);
  }
  if (fexp <= 0x38000000) {
    // Result is a float16 subnormal or zero.
    if (fexp < 0x33000000) return sign; // below half the smallest subnormal: ±0
    const e = fexp >>> 23;
    fsig |= 0x00800000;
    const shift = 113 - e; // 1..11
    const lost = fsig & ((1 << shift) - 1);
    fsig >>>= shift;
    // Round the 13 dropped bits (plus the `lost` ones) to nearest even; a carry into the exponent is correct.
    if ((fsig & 0x3fff) !== 0x1000 || lost !== 0) fsig += 0x1000;
    return sign | (fsig >>> 13);
  }
  // Normal range: rebias exponent, round the 13 dropped mantissa bits to nearest even.
  const hexp = (fexp - 0x38000000) >>> 13;
  if ((fsig & 0x3fff) !== 0x1000) fsig += 0x1000;
  return (sign | hexp) + (fsig >>> 13); // mantissa carry bumps the exponent; 0x7bff + 1 = inf
}

/** float32 bits -> bfloat16 bits, as PyTorch's .bfloat16() (round to nearest even, NaN -> 0x7fc0). */
function bfloat16Bits(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Encodes float32 values as a new F32, F16 or BF16 tensor (rounding to nearest even). */
export function fromFloat32(data: Float32Array, shape: readonly number[], dtype: 'F32' | 'F16' | 'BF16' = 'F32'): HostTensor {
  if (!isShape(shape)) throw new Error(`fromFloat32: shape ${JSON.stringify(shape)} is not an array of non-negative integers`);
  if (numel(shape) !== data.length) {
    throw new Error(`fromFloat32: ${data.length} values do not match shape [${shape.join(',')}] (${numel(shape)} elements)`);
  }
  if (dtype === 'F32') return hostTensor(data.slice(), shape);
  if (dtype !== 'F16' && dtype !== 'BF16') throw new Error(`fromFloat32: dtype must be F32, F16 or BF16, got ${JSON.stringify(dtype)}`);
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  const encode = dtype === 'F16' ? float16Bits : bfloat16Bits;
  for (let i = 0; i < bits.length; i++) out[i] = encode(bits[i]!);
  return { dtype, shape: [...shape], data: littleEndianBytes(out) };
}
