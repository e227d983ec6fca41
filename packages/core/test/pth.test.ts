import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { deflateRawSync } from 'node:zlib';
import { readPth } from '../src/pth.js';
import { readSafetensors } from '../src/safetensors.js';
import { toFloat32, type HostTensor } from '../src/tensor.js';

const FIXTURES = fileURLToPath(new URL('../../registers/test/fixtures/dinov2-parity/', import.meta.url));
const dir = await mkdtemp(join(tmpdir(), 'vitreg-pth-'));
after(() => rm(dir, { recursive: true, force: true }));

// ------------------------------------------------------------------------------------------------
// A minimal zip writer (stored or deflated entries, optionally with zip64 records) and pickle writer,
// so the tests build checkpoints the way torch.save lays them out without needing PyTorch.

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

interface ZipInput {
  name: string;
  data: Uint8Array;
  deflate?: boolean;
}

function makeZip(entries: ZipInput[], zip64 = false): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const body = e.deflate ? deflateRawSync(e.data) : Buffer.from(e.data);
    const method = e.deflate ? 8 : 0;
    const crc = crc32(e.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(zip64 ? 45 : 20, 4);
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    locals.push(local, name, body);
    const extra = Buffer.alloc(zip64 ? 28 : 0);
    if (zip64) {
      extra.writeUInt16LE(1, 0);
      extra.writeUInt16LE(24, 2);
      extra.writeBigUInt64LE(BigInt(e.data.length), 4);
      extra.writeBigUInt64LE(BigInt(body.length), 12);
      extra.writeBigUInt64LE(BigInt(offset), 20);
    }
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(45, 4);
    central.writeUInt16LE(zip64 ? 45 : 20, 6);
    central.writeUInt16LE(method, 10);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(zip64 ? 0xffffffff : body.length, 20);
    central.writeUInt32LE(zip64 ? 0xffffffff : e.data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt16LE(extra.length, 30);
    central.writeUInt32LE(zip64 ? 0xffffffff : offset, 42);
    centrals.push(central, name, extra);
    offset += 30 + name.length + body.length;
  }
  const cd = Buffer.concat(centrals);
  const tail: Buffer[] = [];
  if (zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeUInt16LE(45, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeBigUInt64LE(BigInt(entries.length), 24);
    rec.writeBigUInt64LE(BigInt(entries.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(offset), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(offset + cd.length), 8);
    loc.writeUInt32LE(1, 16);
    tail.push(rec, loc);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(zip64 ? 0xffff : entries.length, 8);
  eocd.writeUInt16LE(zip64 ? 0xffff : entries.length, 10);
  eocd.writeUInt32LE(zip64 ? 0xffffffff : cd.length, 12);
  eocd.writeUInt32LE(zip64 ? 0xffffffff : offset, 16);
  return Buffer.concat([...locals, cd, ...tail, eocd]);
}

/** Emits pickle opcodes (protocol 2, as torch.save writes them). */
class Pickle {
  private readonly out: number[] = [0x80, 2];
  raw(...bytes: number[]): this {
    this.out.push(...bytes);
    return this;
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    const n = Buffer.alloc(4);
    n.writeUInt32LE(b.length);
    return this.raw(0x58, ...n, ...b);
  }
  int(v: number): this {
    if (v < 256) return this.raw(0x4b, v);
    const n = Buffer.alloc(4);
    n.writeInt32LE(v);
    return this.raw(0x4a, ...n);
  }
  global(module: string, name: string): this {
    return this.raw(0x63, ...Buffer.from(`${module}\n${name}\n`, 'latin1'));
  }
  mark(): this {
    return this.raw(0x28);
  }
  tuple(): this {
    return this.raw(0x74);
  }
  dict(): this {
    return this.raw(0x7d);
  }
  setitems(): this {
    return this.raw(0x75);
  }
  reduce(): this {
    return this.raw(0x52);
  }
  orderedDict(): this {
    return this.global('collections', 'OrderedDict').raw(0x29).reduce();
  }
  /** torch._utils._rebuild_tensor_v2(storage(key), offset, size, stride, False, OrderedDict()). */
  tensor(storageType: string, key: string, storageNumel: number, offset: number, size: number[], stride: number[]): this {
    this.global('torch._utils', '_rebuild_tensor_v2').mark();
    this.mark().str('storage').global('torch', storageType).str(key).str('cpu').int(storageNumel).tuple().raw(0x51);
    this.int(offset).mark();
    size.forEach((s) => this.int(s));
    this.tuple().mark();
    stride.forEach((s) => this.int(s));
    this.tuple().raw(0x89).orderedDict().tuple().reduce();
    return this;
  }
  stop(): Uint8Array {
    return new Uint8Array([...this.out, 0x2e]);
  }
}

const f32Bytes = (values: number[]) => new Uint8Array(new Float32Array(values).buffer);
const values = (t: HostTensor | undefined) => [...toFloat32(t!)];

/** A nested checkpoint: {"model": OrderedDict(w, wt (transposed view), row (offset view), h, p (a Parameter)), ...}. */
function checkpointPickle(): Uint8Array {
  const p = new Pickle().dict().mark();
  p.str('model').orderedDict().mark();
  p.str('w').tensor('FloatStorage', '0', 6, 0, [2, 3], [3, 1]);
  p.str('wt').tensor('FloatStorage', '0', 6, 0, [3, 2], [1, 3]);
  p.str('row').tensor('FloatStorage', '0', 6, 3, [3], [1]);
  p.str('h').tensor('HalfStorage', '1', 2, 0, [2], [1]);
  p.str('p').global('torch._utils', '_rebuild_parameter');
  p.tensor('LongStorage', '2', 2, 1, [1], [1]).raw(0x88).orderedDict().raw(0x87).reduce();
  p.setitems();
  // OrderedDict state (the `_metadata` attribute of a state dict) arrives through BUILD and is dropped.
  p.dict().str('_metadata').dict().raw(0x73).raw(0x62);
  p.str('iteration').int(1234).str('config').str('vit').str('lr').raw(0x47, 0x3f, 0x50, 0x62, 0x4d, 0xd2, 0xf1, 0xa9, 0xfc);
  p.str('shape').mark().int(1).int(2).tuple().str('list').raw(0x5d).int(7).raw(0x61);
  return p.setitems().stop();
}

function checkpointEntries(opts: { deflate?: boolean; bigEndian?: boolean } = {}): ZipInput[] {
  const w = f32Bytes([0, 1, 2, 3, 4, 5]);
  const h = new Uint8Array([0x00, 0x3c, 0x00, 0xc0]); // F16 1, -2
  const l = new Uint8Array(new BigInt64Array([7n, -9n]).buffer);
  const swap = (b: Uint8Array, size: number) =>
    opts.bigEndian ? new Uint8Array(b).map((_, i) => b[i - (i % size) + size - 1 - (i % size)]!) : b;
  const entries: ZipInput[] = [
    { name: 'ckpt/data.pkl', data: checkpointPickle(), deflate: opts.deflate },
    { name: 'ckpt/data/0', data: swap(w, 4), deflate: opts.deflate },
    { name: 'ckpt/data/1', data: swap(h, 2) },
    { name: 'ckpt/data/2', data: swap(l, 8) },
    { name: 'ckpt/version', data: Buffer.from('3\n') },
  ];
  if (opts.bigEndian) entries.push({ name: 'ckpt/byteorder', data: Buffer.from('big') });
  return entries;
}

async function writeZip(name: string, entries: ZipInput[], zip64 = false): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, makeZip(entries, zip64));
  return p;
}

/** A checkpoint whose data.pkl is `pkl`, with one float storage. */
const withPickle = (name: string, pkl: Uint8Array) =>
  writeZip(name, [
    { name: 'x/data.pkl', data: pkl },
    { name: 'x/data/0', data: f32Bytes([1]) },
  ]);

async function assertRefused(p: string, re: RegExp): Promise<void> {
  await assert.rejects(readPth(p), (err: Error) => {
    assert.ok(err.message.startsWith(`${p}: `), err.message);
    assert.match(err.message, re);
    return true;
  });
}

// ------------------------------------------------------------------------------------------------

test('reg4.dinov2.pth holds exactly the tensors of reg4.dinov2.safetensors', async () => {
  const pth = await readPth(FIXTURES + 'reg4.dinov2.pth');
  const st = await readSafetensors(FIXTURES + 'reg4.dinov2.safetensors');
  assert.deepEqual(Object.keys(pth).sort(), Object.keys(st.tensors).sort());
  for (const [name, t] of Object.entries(st.tensors)) {
    assert.equal(pth[name]!.dtype, t.dtype, name);
    assert.deepEqual(pth[name]!.shape, t.shape, name);
    assert.ok(Buffer.from(pth[name]!.data).equals(Buffer.from(t.data)), name);
  }
  assert.deepEqual(pth['register_tokens']!.shape, [1, 4, 96]);
});

test('views honour storage offsets and strides; nested dicts flatten with dots; other values are skipped', async () => {
  for (const [label, p] of [
    ['stored', await writeZip('ckpt.pth', checkpointEntries())],
    ['deflated', await writeZip('deflate.pth', checkpointEntries({ deflate: true }))],
    ['big-endian', await writeZip('big.pth', checkpointEntries({ bigEndian: true }))],
    ['zip64', await writeZip('zip64.pth', checkpointEntries(), true)],
  ] as const) {
    const t = await readPth(p);
    assert.deepEqual(Object.keys(t).sort(), ['model.h', 'model.p', 'model.row', 'model.w', 'model.wt'], label);
    assert.deepEqual(t['model.w']!.shape, [2, 3]);
    assert.deepEqual(values(t['model.w']), [0, 1, 2, 3, 4, 5], label);
    assert.deepEqual(t['model.wt']!.shape, [3, 2]);
    assert.deepEqual(values(t['model.wt']), [0, 3, 1, 4, 2, 5], label);
    assert.deepEqual(values(t['model.row']), [3, 4, 5], label);
    assert.equal(t['model.h']!.dtype, 'F16');
    assert.deepEqual(values(t['model.h']), [1, -2], label);
    assert.equal(t['model.p']!.dtype, 'I64');
    assert.deepEqual(values(t['model.p']), [-9], label);
  }
});

test('a tensor named "__proto__" comes back as an ordinary entry', async () => {
  const pkl = new Pickle().dict().str('__proto__').tensor('FloatStorage', '0', 1, 0, [1], [1]).raw(0x73).stop();
  const t = await readPth(await withPickle('proto.pth', pkl));
  assert.deepEqual(Object.keys(t), ['__proto__']);
  assert.equal(Object.getPrototypeOf(t), Object.prototype);
  assert.deepEqual(values(t['__proto__']), [1]);
});

test('a pickled os.system call is refused naming the global, before anything runs', async () => {
  const p = await withPickle('os-system.pth', new Pickle().global('os', 'system').mark().str('touch /tmp/pwned').tuple().reduce().stop());
  await assertRefused(p, /refusing pickle global "os\.system" at byte 2 of data\.pkl/);
  const q = await withPickle('stack-global.pth', new Pickle().str('builtins').str('eval').raw(0x93).stop());
  await assertRefused(q, /refusing pickle global "builtins\.eval"/);
  const r = await withPickle('torch-load.pth', new Pickle().global('torch', 'load').stop());
  await assertRefused(r, /refusing pickle global "torch\.load"/);
});

test('forbidden and unknown opcodes are refused naming them', async () => {
  const inst = await withPickle(
    'inst.pth',
    new Pickle()
      .mark()
      .str('x')
      .raw(0x69, ...Buffer.from('os\nsystem\n'))
      .stop(),
  );
  await assertRefused(inst, /refusing pickle opcode INST \(0x69\) at byte 9 of data\.pkl/);
  const newobj = await withPickle('newobj.pth', new Pickle().global('collections', 'OrderedDict').raw(0x29, 0x81).stop());
  await assertRefused(newobj, /refusing pickle opcode NEWOBJ \(0x81\)/);
  const unknown = await withPickle('unknown.pth', new Pickle().dict().raw(0xff).stop());
  await assertRefused(unknown, /unknown pickle opcode 0xff at byte 3 of data\.pkl/);
  const build = await withPickle('build.pth', new Pickle().raw(0x5d).dict().raw(0x62).stop());
  await assertRefused(build, /refusing pickle opcode BUILD on a list/);
});

test('storage classes cannot be called, and persistent ids must name a storage', async () => {
  const call = await withPickle('call.pth', new Pickle().global('torch', 'FloatStorage').raw(0x29).reduce().stop());
  await assertRefused(call, /refusing to call "torch\.FloatStorage"/);
  const pid = await withPickle('pid.pth', new Pickle().mark().str('module').str('x').tuple().raw(0x51).stop());
  await assertRefused(pid, /unsupported persistent id a tuple of 2/);
});

test('truncated, non-zip, legacy and incomplete checkpoints are errors naming the file', async () => {
  const whole = await readFile(FIXTURES + 'reg4.dinov2.pth');
  const cut = join(dir, 'truncated.pth');
  await writeFile(cut, whole.subarray(0, whole.length - 100));
  await assertRefused(cut, /truncated or corrupt zip archive: end-of-central-directory record not found/);
  const half = join(dir, 'half.pth');
  await writeFile(half, whole.subarray(0, whole.length >> 1));
  await assertRefused(half, /truncated or corrupt zip archive/);
  const text = join(dir, 'text.pth');
  await writeFile(text, 'hello, not a zip');
  await assertRefused(text, /not a zip archive/);
  const legacy = join(dir, 'legacy.pth');
  await writeFile(legacy, new Uint8Array([0x80, 0x02, 0x8a, 0x0a]));
  await assertRefused(legacy, /legacy \(pre-1\.6\) torch\.save format/);
  const noPkl = await writeZip('nopkl.pth', [{ name: 'x/data/0', data: f32Bytes([1]) }]);
  await assertRefused(noPkl, /no <archive>\/data\.pkl entry/);
  const missing = await writeZip(
    'missing.pth',
    checkpointEntries().filter((e) => e.name !== 'ckpt/data/1'),
  );
  await assertRefused(missing, /tensor "model\.h": storage entry ckpt\/data\/1 is missing/);
  const short = await writeZip(
    'short.pth',
    checkpointEntries().map((e) => (e.name === 'ckpt/data/0' ? { ...e, data: e.data.subarray(0, 20) } : e)),
  );
  await assertRefused(short, /storage ckpt\/data\/0 holds 20 bytes, expected 6 x F32 = 24/);
  const pkl = new Pickle().dict().str('w').tensor('FloatStorage', '0', 1, 0, [2], [1]).raw(0x73).stop();
  const overrun = await withPickle('overrun.pth', pkl);
  await assertRefused(overrun, /tensor "w": view \(offset 0, shape \[2\], stride \[1\]\) reaches element 1 of a storage of 1/);
  const dup = new Pickle().dict().mark().str('a.b').tensor('FloatStorage', '0', 1, 0, [1], [1]);
  dup.str('a').dict().str('b').tensor('FloatStorage', '0', 1, 0, [1], [1]).raw(0x73).setitems();
  await assertRefused(await withPickle('dup.pth', dup.stop()), /two tensors flatten to the same name "a\.b"/);
  const cutPkl = await withPickle('cutpkl.pth', checkpointPickle().subarray(0, 50));
  await assertRefused(cutPkl, /data\.pkl ends in the middle of an opcode/);
});
