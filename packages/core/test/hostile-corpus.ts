/**
 * Builders of valid and hostile tensor files, shared by the hostile-file and fuzz tests and by
 * `npm run bench -- hostile`: a torch.save-style zip writer (data descriptors, as torch writes them),
 * a state-dict pickle writer, the hostile .pth files, seeded mutation, and the hostile corpus of every
 * format (safetensors and image builders in hostile-corpus-safetensors.ts and -images.ts, re-exported) (deep pickles, deflate bombs, huge shapes,
 * overlapping entries and offsets, truncated files, tuple-key bombs, long keys, deflated pickles, stride-0
 * views). Not part of the library.
 */
import { deflateRawSync, constants as zc } from 'node:zlib';
import { crc32, jpegBomb, pngBomb } from './hostile-corpus-images.js';
import {
  deepHeaderSafetensors,
  hugeStringSafetensors,
  longNamesSafetensors,
  manyTensorsSafetensors,
  manyValuesSafetensors,
  safetensorsBytes,
  validSafetensors,
} from './hostile-corpus-safetensors.js';

export { crc32, jpegBomb, pngBomb } from './hostile-corpus-images.js';
export {
  deepHeaderSafetensors,
  hugeStringSafetensors,
  longNamesSafetensors,
  manyTensorsSafetensors,
  manyValuesSafetensors,
  rawHeaderSafetensors,
  safetensorsBytes,
  validSafetensors,
} from './hostile-corpus-safetensors.js';

export interface ZipMember {
  name: string;
  data: Uint8Array;
  /** Deflate the data (or store these bytes as its deflated form, with `size` declared). */
  deflate?: boolean;
  /** Already-compressed bytes to store as the deflated data (with `size` the declared size). */
  compressed?: Uint8Array;
  /** Declared uncompressed size (default: data's length). */
  size?: number;
}

/** A zip as torch.save writes it: each entry with a data descriptor (flag 8), stored unless asked. */
export function makeZip(members: ZipMember[], opts: { sameOffset?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  let firstOffset = 0;
  for (const [i, m] of members.entries()) {
    const name = Buffer.from(m.name);
    const deflated = m.deflate || m.compressed !== undefined;
    const body = m.compressed ? Buffer.from(m.compressed) : m.deflate ? deflateRawSync(m.data) : Buffer.from(m.data);
    const size = m.size ?? m.data.length;
    const crc = crc32(m.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x808, 6);
    local.writeUInt16LE(deflated ? 8 : 0, 8);
    local.writeUInt16LE(name.length, 26);
    const desc = Buffer.alloc(16);
    desc.writeUInt32LE(0x08074b50, 0);
    desc.writeUInt32LE(crc, 4);
    desc.writeUInt32LE(body.length, 8);
    desc.writeUInt32LE(size, 12);
    const at = opts.sameOffset && i > 0 ? firstOffset : offset;
    if (i === 0) firstOffset = offset;
    if (!(opts.sameOffset && i > 0)) {
      parts.push(local, name, body, desc);
      offset += 30 + name.length + body.length + 16;
    }
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0x808, 8);
    central.writeUInt16LE(deflated ? 8 : 0, 10);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(size, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(at, 42);
    centrals.push(central, name);
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(members.length, 8);
  eocd.writeUInt16LE(members.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cd, eocd]);
}

/** Emits pickle opcodes (protocol 2, as torch.save writes them). */
export class Pickle {
  private readonly out: number[] = [0x80, 2];
  raw(...bytes: number[]): this {
    for (const b of bytes) this.out.push(b);
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
  tuple(items: number[]): this {
    this.raw(0x28);
    for (const v of items) this.int(v);
    return this.raw(0x74);
  }
  bytes(): Buffer {
    return Buffer.from(this.out);
  }
}

export interface PthTensor {
  name: string;
  key: string;
  numel: number;
  offset?: number;
  shape: number[];
  stride: number[];
}

/** Emits `_rebuild_tensor_v2(FloatStorage key, offset, shape, stride, False, OrderedDict())` (one value on the stack). */
function pushTensor(p: Pickle, t: Omit<PthTensor, 'name'>): Pickle {
  p.global('torch._utils', '_rebuild_tensor_v2').raw(0x28);
  p.raw(0x28).str('storage').global('torch', 'FloatStorage').str(t.key).str('cpu').int(t.numel).raw(0x74, 0x51);
  return p
    .int(t.offset ?? 0)
    .tuple(t.shape)
    .tuple(t.stride)
    .raw(0x89)
    .global('collections', 'OrderedDict')
    .raw(0x29, 0x52, 0x74, 0x52);
}

/** A state dict pickle `{name: _rebuild_tensor_v2(FloatStorage key, offset, shape, stride, False, OrderedDict())}`. */
export function stateDictPickle(tensors: PthTensor[]): Buffer {
  const p = new Pickle().raw(0x7d, 0x28);
  for (const t of tensors) pushTensor(p.str(t.name), t);
  return p.raw(0x75, 0x2e).bytes();
}

/** A small valid checkpoint: w [2, 3] and b [3] (F32), in archive `ckpt`. */
export function validPth(): Buffer {
  const w = new Float32Array([1, 2, 3, 4, 5, 6]);
  const b = new Float32Array([0.5, -1, 2]);
  const pkl = stateDictPickle([
    { name: 'w', key: '0', numel: 6, shape: [2, 3], stride: [3, 1] },
    { name: 'b', key: '1', numel: 3, shape: [3], stride: [1] },
  ]);
  return makeZip([
    { name: 'ckpt/data.pkl', data: pkl },
    { name: 'ckpt/byteorder', data: Buffer.from('little') },
    { name: 'ckpt/data/0', data: new Uint8Array(w.buffer) },
    { name: 'ckpt/data/1', data: new Uint8Array(b.buffer) },
    { name: 'ckpt/version', data: Buffer.from('3\n') },
  ]);
}

/** A pickle `{"x": [[[...]]]}` nested `depth` deep (EMPTY_LIST x depth, APPEND x depth - 1). */
export function deepListPickle(depth: number): Buffer {
  const head = Buffer.from([0x80, 2, 0x7d, 0x8c, 1, 0x78]); // PROTO 2, EMPTY_DICT, SHORT_BINUNICODE "x"
  return Buffer.concat([head, Buffer.alloc(depth, 0x5d), Buffer.alloc(depth - 1, 0x61), Buffer.from([0x73, 0x2e])]);
}

/** A pickle that reuses one memoized list of `pairs` pairs in `calls` OrderedDict(list) calls (quadratic work without a budget). */
export function reusePickle(pairs: number, calls: number): Buffer {
  const p = new Pickle().raw(0x7d, 0x8c, 1, 0x79, 0x5d, 0x28);
  for (let i = 0; i < pairs; i++)
    p.int(i % 256)
      .int(0)
      .raw(0x86);
  p.raw(0x65, 0x71, 0, 0x73); // APPENDS, BINPUT 0, SETITEM: {"y": list}
  p.raw(0x8c, 1, 0x67).global('collections', 'OrderedDict').raw(0x71, 1, 0x73); // {"g": OrderedDict}
  // {"x": OrderedDict(list)} again and again: 10 bytes each, `pairs` steps each.
  const call = Buffer.from([0x8c, 1, 0x78, 0x68, 1, 0x68, 0, 0x85, 0x52, 0x73]);
  return Buffer.concat([p.bytes(), calls ? Buffer.alloc(calls * call.length, call) : Buffer.alloc(0), Buffer.from([0x2e])]);
}

/** A .pth whose data.pkl (`pkl`) is deflated, as torch.save never writes it; `extra` members are stored. */
export function deflatedPth(pkl: Uint8Array, extra: ZipMember[] = []): Buffer {
  return makeZip([{ name: 'ckpt/data.pkl', data: pkl, deflate: true }, ...extra]);
}

/**
 * A state dict of one tensor whose key is the tuple `(k0, k1, ..., k_depth)` of nested pairs, each two memo gets
 * of the one below (`k1 = (k0, k0)`, `k2 = (k1, k1)`, ...): ~7 bytes per level, 2^depth leaves if stringified
 * (`depth` at most 255: one-byte memo indexes).
 */
export function keyBombPth(depth: number): Buffer {
  const p = new Pickle().raw(0x7d, 0x28, 0x4b, 1, 0x4b, 1, 0x86, 0x71, 0);
  for (let i = 1; i <= depth; i++) p.raw(0x68, (i - 1) & 0xff, 0x68, (i - 1) & 0xff, 0x86, 0x71, i & 0xff);
  pushTensor(p.raw(0x74), { key: '0', numel: 1, shape: [1], stride: [1] }).raw(0x73, 0x2e); // the key: (k0, k1, ..., k_depth)
  return makeZip([
    { name: 'ckpt/data.pkl', data: p.bytes() },
    { name: 'ckpt/data/0', data: new Uint8Array(4) },
  ]);
}

/** A pickle `{key_i: 1}` of `count` distinct string keys of `chars` characters (BINUNICODE), built as Buffers. */
export function longKeysPickle(count: number, chars: number): Buffer {
  const parts: Buffer[] = [Buffer.from([0x80, 2, 0x7d])];
  const base = 'a'.repeat(Math.max(0, chars - 8));
  for (let i = 0; i < count; i++) {
    const s = Buffer.from(base + String(i).padStart(8, '0'));
    const n = Buffer.alloc(4);
    n.writeUInt32LE(s.length);
    parts.push(Buffer.from([0x58]), n, s, Buffer.from([0x4b, 1, 0x73]));
  }
  parts.push(Buffer.from([0x2e]));
  return Buffer.concat(parts);
}

/** A valid checkpoint of `count` one-element tensors (all views of one storage) under distinct names of `chars` characters. */
export function longNamesPth(count: number, chars: number): Buffer {
  const tensor = pushTensor(new Pickle(), { key: '0', numel: 1, shape: [1], stride: [1] })
    .bytes()
    .subarray(2);
  const parts: Buffer[] = [Buffer.from([0x80, 2, 0x7d, 0x28])];
  const base = 'n'.repeat(Math.max(0, chars - 8));
  for (let i = 0; i < count; i++) {
    const s = Buffer.from(base + String(i).padStart(8, '0'));
    const n = Buffer.alloc(4);
    n.writeUInt32LE(s.length);
    parts.push(Buffer.from([0x58]), n, s, tensor);
  }
  parts.push(Buffer.from([0x75, 0x2e]));
  return makeZip([
    { name: 'ckpt/data.pkl', data: Buffer.concat(parts) },
    { name: 'ckpt/data/0', data: new Uint8Array(4) },
  ]);
}

/** A stride-0 view `w` of shape [n] over a one-element storage (n x 4 bytes if copied out of a 398-byte file). */
export function stride0ViewPth(n: number): Buffer {
  const pkl = stateDictPickle([{ name: 'w', key: '0', numel: 1, shape: [n], stride: [0] }]);
  return makeZip([
    { name: 'ckpt/data.pkl', data: pkl },
    { name: 'ckpt/data/0', data: new Uint8Array(4) },
  ]);
}

/** A .pth around any data.pkl bytes. */
export function pthWithPickle(pkl: Uint8Array): Buffer {
  return makeZip([{ name: 'ckpt/data.pkl', data: pkl }]);
}

/** Raw deflate bytes that inflate to `mib` MiB of zeros (blocks of 1 MiB repeated, then a final empty block). */
export function deflateBomb(mib: number): Buffer {
  const block = deflateRawSync(Buffer.alloc(2 ** 20), { finishFlush: zc.Z_SYNC_FLUSH });
  return Buffer.concat([...Array.from({ length: mib }, () => block), Buffer.from([0x03, 0x00])]);
}

/** A checkpoint whose storage claims `mib` MiB and is a deflate bomb of that size (directory and pickle agree). */
export function deflateBombPth(mib: number): Buffer {
  const numel = (mib * 2 ** 20) / 4;
  const pkl = stateDictPickle([{ name: 'w', key: '0', numel, shape: [numel], stride: [1] }]);
  return makeZip([
    { name: 'ckpt/data.pkl', data: pkl },
    { name: 'ckpt/data/0', data: new Uint8Array(0), compressed: deflateBomb(mib), size: mib * 2 ** 20 },
  ]);
}

/** A deflate bomb whose directory says 24 bytes (the tensor's size) but which inflates to `mib` MiB. */
export function lyingBombPth(mib: number): Buffer {
  const pkl = stateDictPickle([{ name: 'w', key: '0', numel: 6, shape: [6], stride: [1] }]);
  return makeZip([
    { name: 'ckpt/data.pkl', data: pkl },
    { name: 'ckpt/data/0', data: new Uint8Array(24), compressed: deflateBomb(mib), size: 24 },
  ]);
}

/** A stride-0 view of shape [2^20, 2^20] over a one-element storage (4 TiB if copied out). */
export function hugeViewPth(): Buffer {
  const pkl = stateDictPickle([{ name: 'w', key: '0', numel: 1, shape: [2 ** 20, 2 ** 20], stride: [0, 0] }]);
  return makeZip([
    { name: 'ckpt/data.pkl', data: pkl },
    { name: 'ckpt/data/0', data: new Uint8Array(4) },
  ]);
}

/** Two storages whose directory entries point at the same bytes. */
export function overlappingPth(): Buffer {
  const pkl = stateDictPickle([
    { name: 'a', key: '0', numel: 1024, shape: [1024], stride: [1] },
    { name: 'b', key: '1', numel: 1024, shape: [1024], stride: [1] },
  ]);
  return makeZip(
    [
      { name: 'ckpt/data/0', data: new Uint8Array(4096) },
      { name: 'ckpt/data/1', data: new Uint8Array(4096) },
      { name: 'ckpt/data.pkl', data: pkl },
    ],
    { sameOffset: true },
  );
}

const EXTREMES = [0, 1, 0x7f, 0xff, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 2 ** 20];

/** One mutation of `base`, drawn from `rng` (a seeded generator): bytes flipped, a 4-byte field set to an extreme, cut short, junk inserted, or a chunk repeated. */
export function mutate(base: Uint8Array, rng: { float(): number }): Buffer {
  const b = Buffer.from(base);
  const at = () => Math.floor(rng.float() * b.length);
  switch (Math.floor(rng.float() * 5)) {
    case 0: {
      const n = 1 + Math.floor(rng.float() * 8);
      for (let i = 0; i < n; i++) b[at()] = Math.floor(rng.float() * 256);
      return b;
    }
    case 1: {
      const p = Math.min(at(), b.length - 4);
      b.writeUInt32LE(EXTREMES[Math.floor(rng.float() * EXTREMES.length)]!, Math.max(0, p));
      return b;
    }
    case 2:
      return b.subarray(0, at());
    case 3: {
      const p = at();
      const junk = Buffer.from(Array.from({ length: 1 + Math.floor(rng.float() * 64) }, () => Math.floor(rng.float() * 256)));
      return Buffer.concat([b.subarray(0, p), junk, b.subarray(p)]);
    }
    default: {
      const p = at();
      const len = Math.min(b.length - p, 1 + Math.floor(rng.float() * 256));
      return Buffer.concat([b.subarray(0, p + len), b.subarray(p, p + len), b.subarray(p + len)]);
    }
  }
}

export interface HostileFile {
  /** Short name of the case (also the file's stem). */
  name: string;
  /** File name extension, with the dot. */
  ext: '.pth' | '.safetensors' | '.png' | '.jpg';
  bytes: () => Buffer;
  /** Environment variables for the read (a raised limit). */
  env?: Record<string, string>;
  /** Too large for the test (100 MB), or accepted: `npm run bench -- hostile` only. */
  benchOnly?: true;
}

/** The hostile corpus of `npm run bench -- hostile` (each must be refused quickly and cheaply). */
export function hostileCorpus(): HostileFile[] {
  return [
    ...[10_000, 50_000, 99_000].map((d): HostileFile => ({
      name: `deep-list-${d}`,
      ext: '.pth',
      bytes: () => pthWithPickle(deepListPickle(d)),
    })),
    ...[200_000, 2_000_000].map((d): HostileFile => ({
      name: `deep-list-${d}`,
      ext: '.pth',
      bytes: () => pthWithPickle(deepListPickle(d)),
    })),
    ...[10_000, 30_000, 100_000].map((calls): HostileFile => ({
      name: `reuse-ordereddict-${calls}`,
      ext: '.pth',
      bytes: () => pthWithPickle(reusePickle(1000, calls)),
    })),
    // a tuple key of nested pairs reusing each other through the memo (before: stringified, 2^depth; 170 bytes took 5 s)
    ...[22, 250].map((d): HostileFile => ({ name: `key-bomb-${d}`, ext: '.pth', bytes: () => keyBombPth(d) })),
    // distinct keys over 16,383 characters, which V8 hashes by length alone (before: 4,000 took 12 s / 355 MB)
    { name: 'long-keys-4000x16400', ext: '.pth', bytes: () => pthWithPickle(longKeysPickle(4000, 16_400)), benchOnly: true },
    { name: 'long-keys-deflated-4000x16400', ext: '.pth', bytes: () => deflatedPth(longKeysPickle(4000, 16_400)), benchOnly: true },
    { name: 'long-keys-deflated-400x16400', ext: '.pth', bytes: () => deflatedPth(longKeysPickle(400, 16_400)) },
    // at the key limit (8,192 characters): read, time linear in the count (bench only)
    ...[300, 3000].map((n): HostileFile => ({
      name: `long-names-${n}x8192-at-limit`,
      ext: '.pth',
      bytes: () => longNamesPth(n, 8192),
      benchOnly: true,
    })),
    // a deflated data.pkl reusing one list: 60 MB of pickle in a 118 KB file (before: inflated, and the work budget
    // followed the 60 MB, 8 s); 0.95 MB (within the deflate ratio's 1 MiB floor) is budgeted by the archive's bytes
    ...[90_000, 600_000, 6_000_000].map((calls): HostileFile => ({
      name: `reuse-deflated-${calls}`,
      ext: '.pth',
      bytes: () => deflatedPth(reusePickle(10_000, calls)),
      ...(calls > 1_000_000 ? { benchOnly: true as const } : {}),
    })),
    { name: 'deflate-bomb-1gib', ext: '.pth', bytes: () => deflateBombPth(1024) },
    { name: 'lying-bomb-1gib', ext: '.pth', bytes: () => lyingBombPth(1024) },
    { name: 'huge-view', ext: '.pth', bytes: hugeViewPth },
    // a stride-0 view of 10^8 elements in 398 bytes (before: copied, 4.8 s and 404 MB); one at the 16 MiB limit is read (bench only)
    { name: 'stride0-view-1e8', ext: '.pth', bytes: () => stride0ViewPth(100_000_000) },
    { name: 'stride0-view-4m-at-limit', ext: '.pth', bytes: () => stride0ViewPth(4_000_000), benchOnly: true },
    { name: 'overlapping-entries', ext: '.pth', bytes: overlappingPth },
    { name: 'truncated-pth', ext: '.pth', bytes: () => validPth().subarray(0, 150) },
    {
      name: 'huge-shape',
      ext: '.safetensors',
      bytes: () => safetensorsBytes({ w: { dtype: 'F32', shape: [2 ** 30, 2 ** 30], data_offsets: [0, 16] } }, new Uint8Array(16)),
    },
    {
      name: 'overlapping-offsets',
      ext: '.safetensors',
      bytes: () =>
        safetensorsBytes(
          { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } },
          new Uint8Array(24),
        ),
    },
    {
      name: 'header-length-past-end',
      ext: '.safetensors',
      bytes: () => {
        const b = validSafetensors();
        b.writeBigUInt64LE(99_000_000n, 0);
        return b;
      },
    },
    { name: 'truncated-safetensors', ext: '.safetensors', bytes: () => validSafetensors().subarray(0, 40) },
    ...[5_000, 15_000, 45_000, 300_000].map((n): HostileFile => ({
      name: `many-tensors-${n}`,
      ext: '.safetensors',
      bytes: () => manyTensorsSafetensors(n),
    })),
    { name: 'deep-header', ext: '.safetensors', bytes: () => deepHeaderSafetensors(10_000_000) },
    { name: 'png-bomb-12000', ext: '.png', bytes: () => pngBomb(12_000, 12_000) },
    { name: 'png-bomb-30000', ext: '.png', bytes: () => pngBomb(30_000, 30_000) },
    { name: 'jpeg-bomb-30000', ext: '.jpg', bytes: () => jpegBomb(30_000, 30_000) },
    // at the limit (2^26 pixels): decoded, the cost the limit allows (bench only)
    { name: 'png-8192-at-limit', ext: '.png', bytes: () => pngBomb(8192, 8192) },
    ...[450_000, 10_000_000].map((n): HostileFile => ({
      name: `many-values-${n}`,
      ext: '.safetensors',
      bytes: () => manyValuesSafetensors(n),
    })),
    // one huge string, or a few, in a header within the 100 MB limit (before: kept as bytes, text and parsed strings)
    {
      name: 'metadata-99mb-bad-offset',
      ext: '.safetensors',
      bytes: () => hugeStringSafetensors('metadata', 99_000_000, true),
      benchOnly: true,
    },
    { name: 'name-90mb', ext: '.safetensors', bytes: () => hugeStringSafetensors('name', 90_000_000), benchOnly: true },
    { name: 'metadata-99mb', ext: '.safetensors', bytes: () => hugeStringSafetensors('metadata', 99_000_000), benchOnly: true },
    {
      name: 'metadata-99mb-limit-raised',
      ext: '.safetensors',
      bytes: () => hugeStringSafetensors('metadata', 99_000_000),
      env: { VITREG_SAFETENSORS_MAX_STRING_BYTES: '100000000' },
      benchOnly: true,
    },
    { name: 'names-1500x64k', ext: '.safetensors', bytes: () => longNamesSafetensors(1500, 65_536), benchOnly: true },
  ];
}
