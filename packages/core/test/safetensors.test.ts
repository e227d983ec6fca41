import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readSafetensors, SafetensorsReader, writeSafetensors } from '../src/safetensors.js';
import { DTYPE_SIZE, fromFloat32, hostTensor, numel, toFloat32, type DType, type HostTensor } from '../src/tensor.js';

const FIXTURES = fileURLToPath(new URL('../../registers/test/fixtures/dinov2-parity/', import.meta.url));
const dir = await mkdtemp(join(tmpdir(), 'vitreg-st-'));
after(() => rm(dir, { recursive: true, force: true }));

/** A tensor of the given dtype and shape filled with distinct byte patterns. */
function patterned(dtype: DType, shape: number[], seed: number): HostTensor {
  const data = new Uint8Array(numel(shape) * DTYPE_SIZE[dtype]);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed * 7) & 0xff;
  if (dtype === 'BOOL') data.forEach((v, i) => (data[i] = v & 1));
  return { dtype, shape, data };
}

/** Writes a hand-made safetensors file: 8-byte length (or `length`), header (JSON, text or bytes), buffer. */
async function rawFile(name: string, header: unknown, buffer: Uint8Array, length?: bigint): Promise<string> {
  const json = header instanceof Uint8Array ? header : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(length ?? BigInt(json.length));
  const p = join(dir, name);
  await writeFile(p, Buffer.concat([prefix, json, buffer]));
  return p;
}

/** Asserts that opening `p` fails with a message starting with the path and matching `re`. */
async function assertCorrupt(p: string, re: RegExp): Promise<void> {
  await assert.rejects(SafetensorsReader.open(p), (err: Error) => {
    assert.ok(err.message.startsWith(`${p}: `), err.message);
    assert.match(err.message, re);
    return true;
  });
}

test('every dtype round-trips with its shape, bytes and metadata', async () => {
  const dtypes: DType[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL'];
  const tensors: Record<string, HostTensor> = {};
  dtypes.forEach((dt, i) => (tensors[`t.${dt.toLowerCase()}`] = patterned(dt, [3, i + 1], i)));
  tensors['scalar'] = patterned('F32', [], 99);
  tensors['empty'] = patterned('F16', [0, 4], 0);
  tensors['10'] = patterned('U8', [5], 3); // an integer-like name
  const p = join(dir, 'all.safetensors');
  await writeSafetensors(p, tensors, { format: 'pt', note: 'héllo' });
  const back = await readSafetensors(p);
  assert.deepEqual(back.metadata, { format: 'pt', note: 'héllo' });
  assert.deepEqual(Object.keys(back.tensors).sort(), Object.keys(tensors).sort());
  for (const [name, t] of Object.entries(tensors)) {
    const b = back.tensors[name]!;
    assert.equal(b.dtype, t.dtype, name);
    assert.deepEqual(b.shape, t.shape, name);
    assert.ok(Buffer.from(b.data).equals(Buffer.from(t.data)), name);
  }
  assert.deepEqual(await readdir(dir).then((f) => f.filter((n) => n.endsWith('.tmp'))), []);
});

test('written files follow the format: padded header, tensors aligned, contiguous, deterministic', async () => {
  const tensors = { b: patterned('F16', [3], 1), a: patterned('U8', [1], 2), c: patterned('F32', [2, 2], 3), d: patterned('F64', [1], 4) };
  const p1 = join(dir, 'layout1.safetensors');
  const p2 = join(dir, 'layout2.safetensors');
  await writeSafetensors(p1, tensors);
  await writeSafetensors(p2, { d: tensors.d, c: tensors.c, a: tensors.a, b: tensors.b });
  const bytes = await readFile(p1);
  assert.ok(bytes.equals(await readFile(p2)), 'output does not depend on insertion order');
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  const text = bytes.subarray(8, 8 + n).toString('utf8');
  assert.match(text, /^\{.*\} *$/);
  const header = JSON.parse(text) as Record<string, { dtype: DType; data_offsets: [number, number] }>;
  assert.equal(header['__metadata__'], undefined, 'no metadata given, none written');
  const spans = Object.values(header)
    .map((e) => [...e.data_offsets, DTYPE_SIZE[e.dtype]] as const)
    .sort((x, y) => x[0] - y[0]);
  let pos = 0;
  for (const [begin, end, size] of spans) {
    assert.equal(begin, pos);
    assert.equal(begin % size, 0, 'each tensor starts at a multiple of its element size');
    pos = end;
  }
  assert.equal(8 + n + pos, bytes.length);
});

test('the reader reads lazily: info without data, one tensor at a time, float32 decoding', async () => {
  const p = join(dir, 'lazy.safetensors');
  const values = new Float32Array([0.5, -1.25, 3, 1e-3]);
  await writeSafetensors(p, { x: fromFloat32(values, [2, 2]), h: fromFloat32(values, [4], 'F16') }, { k: 'v' });
  const r = await SafetensorsReader.open(p);
  try {
    assert.deepEqual(r.names().sort(), ['h', 'x']);
    assert.deepEqual(r.info('x'), { dtype: 'F32', shape: [2, 2] });
    assert.deepEqual(r.metadata, { k: 'v' });
    assert.ok(r.has('h') && !r.has('y'));
    assert.deepEqual([...(await r.readFloat32('x'))], [...values]);
    assert.deepEqual([...(await r.readFloat32('h'))], [...toFloat32(fromFloat32(values, [4], 'F16'))]);
    assert.throws(
      () => r.info('y'),
      (err: Error) => err.message === `${p}: no tensor "y" (the file holds "x", "h")`,
    );
  } finally {
    await r.close();
  }
});

test('the DINOv2 fixture reads with the expected tensor shapes', async () => {
  const r = await SafetensorsReader.open(FIXTURES + 'reg4.dinov2.safetensors');
  try {
    assert.deepEqual(r.info('pos_embed'), { dtype: 'F32', shape: [1, 1370, 96] });
    assert.deepEqual(r.info('register_tokens'), { dtype: 'F32', shape: [1, 4, 96] });
    assert.deepEqual(r.info('cls_token'), { dtype: 'F32', shape: [1, 1, 96] });
    assert.deepEqual(r.info('patch_embed.proj.weight'), { dtype: 'F32', shape: [96, 3, 14, 14] });
    assert.deepEqual(r.info('blocks.0.attn.qkv.weight'), { dtype: 'F32', shape: [288, 96] });
    const pos = await r.readFloat32('pos_embed');
    assert.equal(pos.length, 1370 * 96);
    assert.ok(pos.every(Number.isFinite) && pos.some((v) => v !== 0));
  } finally {
    await r.close();
  }
});

test('F16 and BF16 fixtures decode to the F32 values within their rounding', async () => {
  const f32 = await readSafetensors(FIXTURES + 'reg4.timm.safetensors');
  for (const [file, relErr] of [
    ['reg4.timm.f16.safetensors', 2 ** -11],
    ['reg4.timm.bf16.safetensors', 2 ** -8],
  ] as const) {
    const half = await readSafetensors(FIXTURES + file);
    for (const [name, t] of Object.entries(f32.tensors)) {
      const want = toFloat32(t);
      const got = toFloat32(half.tensors[name]!);
      assert.equal(got.length, want.length);
      for (let i = 0; i < want.length; i++) {
        // Half a unit in the last place, relative; plus half the smallest F16 subnormal for tiny values.
        assert.ok(Math.abs(got[i]! - want[i]!) <= Math.abs(want[i]!) * relErr + 2 ** -25, `${file} ${name}[${i}]: ${got[i]} vs ${want[i]}`);
      }
    }
  }
});

test('corrupt files get errors naming the file (and tensor) and the problem', async () => {
  const ok = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };
  const buf8 = new Uint8Array(8);
  const cases: [string, Promise<string>, RegExp][] = [
    [
      'short',
      writeFile(join(dir, 'short'), new Uint8Array(5)).then(() => join(dir, 'short')),
      /5 bytes, too short for the 8-byte header length/,
    ],
    ['past-end', rawFile('past-end', { x: ok }, buf8, 5000n), /header length 5000 runs past the end of the file \(\d+ bytes\)/],
    ['absurd', rawFile('absurd', { x: ok }, buf8, 1n << 50n), /header length 1125899906842624 is absurd/],
    ['bad-json', rawFile('bad-json', '{"x": {"dtype": "F32",', buf8), /header is not valid JSON/],
    ['not-utf8', rawFile('not-utf8', new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), buf8), /header is not valid UTF-8/],
    ['array', rawFile('array', [ok], buf8), /header must be a JSON object, got an array/],
    ['dtype', rawFile('dtype', { w: { ...ok, dtype: 'F8_E4M3' } }, buf8), /tensor "w": unknown dtype "F8_E4M3"/],
    [
      'shape',
      rawFile('shape', { w: { ...ok, shape: [2, -1] } }, buf8),
      /tensor "w": shape must be an array of non-negative integers, got \[2,-1\]/,
    ],
    [
      'shape-float',
      rawFile('shape-float', { w: { ...ok, shape: [1.5] } }, buf8),
      /tensor "w": shape must be an array of non-negative integers/,
    ],
    ['offsets-form', rawFile('offsets-form', { w: { ...ok, data_offsets: [0] } }, buf8), /tensor "w": data_offsets must be \[begin, end\]/],
    [
      'offsets-order',
      rawFile('offsets-order', { w: { ...ok, data_offsets: [8, 0] } }, buf8),
      /tensor "w": data_offsets \[8, 0\] have begin > end/,
    ],
    [
      'offsets-range',
      rawFile('offsets-range', { w: { ...ok, data_offsets: [0, 16], shape: [4] } }, buf8),
      /tensor "w": data_offsets \[0, 16\] run past the end of the data buffer \(8 bytes\)/,
    ],
    [
      'size',
      rawFile('size', { w: { ...ok, shape: [3] } }, buf8),
      /tensor "w": data_offsets \[0, 8\] hold 8 bytes but F32 shape \[3\] needs 12/,
    ],
    [
      'overlap',
      rawFile('overlap', { a: ok, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, buf8),
      /tensor "b" bytes \[4, 8\) overlap tensor "a" \[0, 8\)/,
    ],
    [
      'hole',
      rawFile('hole', { a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, buf8),
      /bytes \[0, 4\) of the data buffer belong to no tensor \(a hole before tensor "a"\)/,
    ],
    [
      'trailing',
      rawFile('trailing', { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, buf8),
      /4 trailing bytes belong to no tensor/,
    ],
    ['entry', rawFile('entry', { a: 'F32' }, buf8), /tensor "a": expected an object \{dtype, shape, data_offsets\}/],
    [
      'meta-value',
      rawFile('meta-value', { __metadata__: { epoch: 3 }, x: ok }, buf8),
      /__metadata__ "epoch" must be a string, got number 3/,
    ],
    ['meta-type', rawFile('meta-type', { __metadata__: ['a'], x: ok }, buf8), /__metadata__ must be an object of strings, got an array/],
  ];
  for (const [label, made, re] of cases) {
    const p = await made;
    await assertCorrupt(p, re).catch((err) => assert.fail(`${label}: ${(err as Error).message}`));
  }
});

test('a tensor named "__proto__" comes back as an ordinary entry', async () => {
  const p = await rawFile('proto.safetensors', '{"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', new Uint8Array([42]));
  const { tensors } = await readSafetensors(p);
  assert.deepEqual(Object.keys(tensors), ['__proto__']);
  assert.equal(Object.getPrototypeOf(tensors), Object.prototype);
  assert.deepEqual([...tensors['__proto__']!.data], [42]);
});

test('a truncated file is refused naming the file and the tensor that runs past the end', async () => {
  const p = join(dir, 'trunc.safetensors');
  await writeSafetensors(p, { a: patterned('F32', [4], 1), b: patterned('F32', [8], 2) });
  const bytes = await readFile(p);
  await writeFile(p, bytes.subarray(0, bytes.length - 3));
  await assertCorrupt(p, /tensor "[ab]": data_offsets \[\d+, \d+\] run past the end of the data buffer/);
});

test('the writer refuses bad tensors and metadata naming them, and leaves an existing file intact', async () => {
  const p = join(dir, 'keep.safetensors');
  await writeSafetensors(p, { a: patterned('U8', [2], 1) });
  const before = await readFile(p);
  const bad: [Record<string, HostTensor>, Record<string, string> | undefined, RegExp][] = [
    [{ w: { dtype: 'F32', shape: [3], data: new Uint8Array(8) } }, undefined, /tensor "w": F32 shape \[3\] needs 12 bytes, data has 8/],
    [{ w: { dtype: 'Q4' as DType, shape: [1], data: new Uint8Array(1) } }, undefined, /tensor "w": unknown dtype "Q4"/],
    [
      { w: { dtype: 'U8', shape: [-1], data: new Uint8Array(0) } },
      undefined,
      /tensor "w": shape must be an array of non-negative integers/,
    ],
    [{ w: { dtype: 'U8', shape: [1], data: [1] as unknown as Uint8Array } }, undefined, /tensor "w": data must be a Uint8Array/],
    [{ __metadata__: hostTensor(new Uint8Array(1), [1]) }, undefined, /"__metadata__" is reserved/],
    [{ a: hostTensor(new Uint8Array(1), [1]) }, { n: 1 as unknown as string }, /metadata "n" must be a string, got number 1/],
  ];
  for (const [tensors, meta, re] of bad) {
    await assert.rejects(writeSafetensors(p, tensors, meta), (err: Error) => err.message.startsWith(`${p}: `) && re.test(err.message));
  }
  assert.ok((await readFile(p)).equals(before));
});
