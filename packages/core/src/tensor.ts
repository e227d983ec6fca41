/**
 * Host-side tensors: raw little-endian bytes plus dtype and shape, the unit that safetensors and
 * .pth files hold. Conversions to and from Float32Array live here so every package decodes F16/BF16
 * the same way.
 */
export type DType =
  | 'F64' | 'F32' | 'F16' | 'BF16'
  | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8'
  | 'BOOL';

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Record<DType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2,
  I64: 8, I32: 4, I16: 2, I8: 1,
  U64: 8, U32: 4, U16: 2, U8: 1,
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
