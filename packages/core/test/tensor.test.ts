import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from '../src/safetensors.js';
import { DTYPE_SIZE, fromFloat32, hostTensor, numel, toFloat32, type HostTensor } from '../src/tensor.js';

const FIXTURES = fileURLToPath(new URL('../../registers/test/fixtures/dinov2-parity/', import.meta.url));

/** Decodes one float16 bit pattern through toFloat32. */
function f16(bits: number): number {
  return toFloat32({ dtype: 'F16', shape: [1], data: new Uint8Array(new Uint16Array([bits]).buffer) })[0]!;
}

/** Encodes float32 values and returns the float16 (or bfloat16) bit patterns. */
function encode(values: Float32Array, dtype: 'F16' | 'BF16'): Uint16Array {
  const t = fromFloat32(values, [values.length], dtype);
  return new Uint16Array(t.data.buffer, t.data.byteOffset, values.length);
}

/** The float32 just above / below a positive float32 value. */
function nextUp(x: number): number {
  const b = new Uint32Array(new Float32Array([x]).buffer);
  b[0]! += 1;
  return new Float32Array(b.buffer)[0]!;
}
function nextDown(x: number): number {
  const b = new Uint32Array(new Float32Array([x]).buffer);
  b[0]! -= 1;
  return new Float32Array(b.buffer)[0]!;
}

test('F16 decodes normals, subnormals, zeros, infinities and NaN as IEEE 754 binary16 defines them', () => {
  assert.equal(f16(0x3c00), 1);
  assert.equal(f16(0xc000), -2);
  assert.equal(f16(0x3555), (1 + 341 / 1024) * 2 ** (13 - 15)); // exponent 13, mantissa 0x155
  assert.equal(f16(0x7bff), 65504);
  assert.equal(f16(0x0400), 2 ** -14);
  assert.equal(f16(0x0001), 2 ** -24);
  assert.equal(f16(0x03ff), 1023 * 2 ** -24);
  assert.equal(f16(0x8001), -(2 ** -24));
  assert.ok(Object.is(f16(0x8000), -0));
  assert.ok(Object.is(f16(0x0000), 0));
  assert.equal(f16(0x7c00), Infinity);
  assert.equal(f16(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16(0x7e00)));
  assert.ok(Number.isNaN(f16(0xfc01)));
});

test('F16 encode inverts decode for all 65536 bit patterns (NaN stays NaN)', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const decoded = toFloat32({ dtype: 'F16', shape: [65536], data: new Uint8Array(all.buffer) });
  const back = encode(decoded, 'F16');
  for (let h = 0; h < 65536; h++) {
    const isNaN16 = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (isNaN16)
      assert.ok(Number.isNaN(decoded[h]!) && (back[h]! & 0x7c00) === 0x7c00 && (back[h]! & 0x3ff) !== 0, `NaN 0x${h.toString(16)}`);
    else assert.equal(back[h], h, `0x${h.toString(16)} -> ${decoded[h]} -> 0x${back[h]!.toString(16)}`);
  }
});

test('F16 encode rounds to nearest, ties to even, at every pair of neighbouring halves', () => {
  // Positive finite halves 0x0000..0x7bff, then 0x7c00 (inf) standing in for 65536 as the next step.
  const mids: number[] = [];
  for (let h = 0; h < 0x7c00; h++) {
    const lo = f16(h);
    const hi = h + 1 === 0x7c00 ? 65536 : f16(h + 1);
    const mid = (lo + hi) / 2; // exact in float32: halves have 11 significant bits
    mids.push(mid, nextDown(mid), nextUp(mid));
  }
  const bits = encode(new Float32Array(mids), 'F16');
  for (let h = 0; h < 0x7c00; h++) {
    const even = h % 2 === 0 ? h : h + 1;
    assert.equal(bits[3 * h], even, `tie between 0x${h.toString(16)} and its successor`);
    assert.equal(bits[3 * h + 1], h, `just below the midpoint above 0x${h.toString(16)}`);
    assert.equal(bits[3 * h + 2], h + 1, `just above the midpoint above 0x${h.toString(16)}`);
  }
  // Negative values mirror positive ones; far out of range saturates to infinity; tiny to signed zero.
  const [neg, big, tiny, negTiny] = encode(new Float32Array([-1.5, 1e10, 1e-10, -1e-10]), 'F16');
  assert.equal(neg, 0xbe00);
  assert.equal(big, 0x7c00);
  assert.equal(tiny, 0x0000);
  assert.equal(negTiny, 0x8000);
});

test('BF16 decodes as the high half of float32 and encodes with round-to-nearest-even', () => {
  const [one, negTwo] = toFloat32({ dtype: 'BF16', shape: [2], data: new Uint8Array(new Uint16Array([0x3f80, 0xc000]).buffer) });
  assert.equal(one, 1);
  assert.equal(negTwo, -2);
  // Reference by value: pick the nearer of the two bfloat16 neighbours, the even one on a tie.
  const f32 = new Float32Array(20000);
  const u32 = new Uint32Array(f32.buffer);
  let seed = 12345;
  for (let i = 0; i < u32.length; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    u32[i] = i % 4 === 0 ? (seed & 0xffff0000) | 0x8000 : seed; // every 4th is an exact tie
    if ((u32[i]! & 0x7f800000) === 0x7f800000) u32[i] = 0x3f800000 | (seed & 0x7fff); // keep finite
  }
  const bits = encode(f32, 'BF16');
  const asF32 = (b: number) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]!;
  for (let i = 0; i < f32.length; i++) {
    const lo = u32[i]! >>> 16;
    const hi = lo + 1;
    const dLo = Math.abs(f32[i]! - asF32(lo));
    const dHi = Math.abs(asF32(hi) - f32[i]!);
    const want = dLo < dHi ? lo : dHi < dLo ? hi : lo % 2 === 0 ? lo : hi;
    assert.equal(bits[i], want & 0xffff, `0x${u32[i]!.toString(16)}`);
  }
  const [nan, inf] = encode(new Float32Array([NaN, Infinity]), 'BF16');
  assert.equal(nan, 0x7fc0);
  assert.equal(inf, 0x7f80);
});

test('F16 and BF16 encodings of the F32 fixture match the files PyTorch wrote byte for byte', async () => {
  const f32 = await readSafetensors(FIXTURES + 'reg4.timm.safetensors');
  for (const [file, dtype] of [
    ['reg4.timm.f16.safetensors', 'F16'],
    ['reg4.timm.bf16.safetensors', 'BF16'],
  ] as const) {
    const half = await readSafetensors(FIXTURES + file);
    assert.deepEqual(Object.keys(half.tensors).sort(), Object.keys(f32.tensors).sort());
    for (const [name, t] of Object.entries(f32.tensors)) {
      const ours = fromFloat32(toFloat32(t), t.shape, dtype);
      assert.equal(half.tensors[name]!.dtype, dtype);
      assert.deepEqual(ours.shape, half.tensors[name]!.shape);
      assert.ok(Buffer.from(ours.data).equals(Buffer.from(half.tensors[name]!.data)), `${file}: ${name}`);
    }
  }
});

test('integer, F64 and BOOL tensors decode to float32', () => {
  const cases: [HostTensor, number[]][] = [
    [hostTensor(new Int32Array([-3, 0, 7, 2 ** 30]), [2, 2]), [-3, 0, 7, 2 ** 30]],
    [hostTensor(new Int16Array([-32768, 5]), [2]), [-32768, 5]],
    [hostTensor(new Int8Array([-128, 127]), [2]), [-128, 127]],
    [hostTensor(new Uint32Array([4294967295, 1]), [2]), [4294967296, 1]],
    [hostTensor(new Uint16Array([65535, 2]), [2]), [65535, 2]],
    [hostTensor(new Uint8Array([255, 0]), [2]), [255, 0]],
    [hostTensor(new BigInt64Array([-5n, 1n << 40n]), [2]), [-5, 2 ** 40]],
    [hostTensor(new BigUint64Array([7n]), [1]), [7]],
    [hostTensor(new Float64Array([0.1, -1e300]), [2]), [Math.fround(0.1), -Infinity]],
    [{ dtype: 'BOOL', shape: [3], data: new Uint8Array([0, 1, 2]) }, [0, 1, 1]],
  ];
  for (const [t, want] of cases) assert.deepEqual([...toFloat32(t)], want, t.dtype);
  assert.deepEqual(
    cases.map(([t]) => t.dtype),
    ['I32', 'I16', 'I8', 'U32', 'U16', 'U8', 'I64', 'U64', 'F64', 'BOOL'],
  );
});

test('toFloat32 reads unaligned bytes and returns a copy', () => {
  const backing = new Uint8Array(1 + 3 * 4);
  backing.set(new Uint8Array(new Float32Array([1.5, -2, 3.25]).buffer), 1);
  const t: HostTensor = { dtype: 'F32', shape: [3], data: backing.subarray(1) };
  const out = toFloat32(t);
  assert.deepEqual([...out], [1.5, -2, 3.25]);
  out[0] = 9;
  assert.deepEqual([...toFloat32(t)], [1.5, -2, 3.25]);
  const i16: HostTensor = { dtype: 'I16', shape: [1], data: new Uint8Array([0, 0xfe, 0xff]).subarray(1) };
  assert.deepEqual([...toFloat32(i16)], [-2]);
});

test('fromFloat32 F32 copies the input; hostTensor shares it and infers the dtype', () => {
  const src = new Float32Array([1, 2, 3, 4, 5, 6]);
  const t = fromFloat32(src, [2, 3]);
  assert.equal(t.dtype, 'F32');
  assert.equal(t.data.byteLength, 6 * DTYPE_SIZE.F32);
  src[0] = 100;
  assert.equal(toFloat32(t)[0], 1);
  const shared = hostTensor(src, [6]);
  assert.equal(shared.dtype, 'F32');
  assert.equal(toFloat32(shared)[0], 100);
  assert.equal(numel([2, 3, 0]), 0);
});

test('shape and length mismatches are errors that say what was expected', () => {
  assert.throws(() => hostTensor(new Float32Array(5), [2, 3]), /length 5 does not match shape \[2,3\] \(6 elements\)/);
  assert.throws(() => hostTensor(new Float32Array(2), [2, -1]), /shape \[2,-1\] is not an array of non-negative integers/);
  assert.throws(() => fromFloat32(new Float32Array(3), [4], 'F16'), /3 values do not match shape \[4\]/);
  assert.throws(() => fromFloat32(new Float32Array(1), [1], 'I8' as 'F16'), /dtype must be F32, F16 or BF16/);
  assert.throws(() => toFloat32({ dtype: 'F32', shape: [3], data: new Uint8Array(8) }), /F32 tensor of shape \[3\] needs 12 bytes, has 8/);
  assert.throws(() => toFloat32({ dtype: 'F8' as 'F32', shape: [1], data: new Uint8Array(1) }), /unknown dtype "F8"/);
});
