/**
 * A safe reader for PyTorch checkpoints written by `torch.save` (the zip format, PyTorch >= 1.6,
 * as the official DINOv2 release ships them). Nothing in the file is ever executed: the zip is
 * parsed here, and `data.pkl` is interpreted by a small pickle machine that knows only the opcodes
 * and globals a state dict needs. Any other opcode or global is refused with an error naming it.
 *
 * Archive layout: `<archive>/data.pkl` (the pickled object), `<archive>/data/<key>` (one raw storage
 * per key), `<archive>/byteorder` (optional, "little" or "big"), `<archive>/version`.
 * Tensors are pickled as `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
 * requires_grad, backward_hooks[, metadata])`, where `storage` is a persistent id
 * `("storage", torch.<Type>Storage, key, location, numel)`.
 */
import type { FileHandle } from 'node:fs/promises';
import { inflateRawSync } from 'node:zlib';
import { openForReading, readFully } from './fs.js';
import { DTYPE_SIZE, numel, swapBytes, type DType, type HostTensor } from './tensor.js';

/**
 * Reads a torch.save checkpoint into a flat record of tensors. Nested dicts are flattened with '.'
 * (`{"teacher": {"blocks.0.norm1.weight": t}}` gives `teacher.blocks.0.norm1.weight`); entries that
 * are not tensors or dicts (step counters, config strings, lists) are skipped.
 */
export async function readPth(path: string): Promise<Record<string, HostTensor>> {
  const fh = await openForReading(path);
  try {
    const zip = await ZipReader.open(path, fh);
    const pkl = zip.names().find((n) => n === 'data.pkl' || /^[^/]+\/data\.pkl$/.test(n));
    if (!pkl) throw new Error(`${path}: not a torch.save checkpoint: the zip archive has no <archive>/data.pkl entry`);
    const prefix = pkl.slice(0, pkl.length - 'data.pkl'.length);

    let bigEndian = false;
    if (zip.has(`${prefix}byteorder`)) {
      const order = new TextDecoder().decode(await zip.read(`${prefix}byteorder`)).trim();
      if (order !== 'little' && order !== 'big') throw new Error(`${path}: ${prefix}byteorder must be "little" or "big", got ${JSON.stringify(order)}`);
      bigEndian = order === 'big';
    }

    const root = new Unpickler(path, await zip.read(pkl)).load();
    const found: [string, TensorSpec][] = [];
    if (root instanceof TensorSpec) throw new Error(`${path}: holds a single tensor, expected a dict of tensors (a state dict)`);
    if (!(root instanceof PyDict)) throw new Error(`${path}: top-level object is ${describe(root)}, expected a dict of tensors (a state dict)`);
    collectTensors(root, '', found, new Set());
    if (found.length === 0) throw new Error(`${path}: holds no tensors`);
    const seen = new Set<string>();
    for (const [name] of found) {
      if (seen.has(name)) throw new Error(`${path}: two tensors flatten to the same name "${name}"`);
      seen.add(name);
    }

    // Load each storage once; tensors that cover a whole storage use its bytes without a copy.
    const storages = new Map<string, Uint8Array>();
    const out: [string, HostTensor][] = [];
    for (const [name, spec] of found) {
      const s = spec.storage;
      let bytes = storages.get(s.key);
      if (!bytes) {
        const entry = `${prefix}data/${s.key}`;
        if (!zip.has(entry)) throw new Error(`${path}: tensor "${name}": storage entry ${entry} is missing from the archive`);
        bytes = await zip.read(entry);
        const need = s.numel * DTYPE_SIZE[s.dtype];
        if (bytes.byteLength !== need) throw new Error(`${path}: tensor "${name}": storage ${entry} holds ${bytes.byteLength} bytes, expected ${s.numel} x ${s.dtype} = ${need}`);
        if (bigEndian) bytes = swapBytes(bytes, DTYPE_SIZE[s.dtype]);
        storages.set(s.key, bytes);
      }
      out.push([name, materialize(path, name, spec, bytes)]);
    }
    return Object.fromEntries(out); // own properties even for a name like "__proto__"
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Tensors

/** A storage named by a persistent id: its element dtype, its zip entry key and element count. */
class StorageRef {
  constructor(readonly dtype: DType, readonly key: string, readonly numel: number) {}
}

/** A tensor as pickled: a strided view into a storage, materialised after unpickling. */
class TensorSpec {
  constructor(readonly storage: StorageRef, readonly offset: number, readonly shape: number[], readonly stride: number[]) {}
}

/** Copies a strided view out of its storage into contiguous bytes (no copy if already contiguous). */
function materialize(path: string, name: string, spec: TensorSpec, storage: Uint8Array): HostTensor {
  const { shape, stride, offset } = spec;
  const dtype = spec.storage.dtype;
  const size = DTYPE_SIZE[dtype];
  const n = numel(shape);
  if (n === 0) return { dtype, shape, data: new Uint8Array(0) };
  let last = offset;
  for (let d = 0; d < shape.length; d++) last += (shape[d]! - 1) * stride[d]!;
  if (last >= spec.storage.numel) {
    throw new Error(`${path}: tensor "${name}": view (offset ${offset}, shape [${shape.join(',')}], stride [${stride.join(',')}]) reaches element ${last} of a storage of ${spec.storage.numel}`);
  }
  let contiguous = true;
  for (let d = shape.length - 1, expect = 1; d >= 0; expect *= shape[d]!, d--) {
    if (shape[d] !== 1 && stride[d] !== expect) contiguous = false;
  }
  if (contiguous) return { dtype, shape, data: storage.subarray(offset * size, (offset + n) * size) };

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

/** Walks nested dicts collecting tensors under dotted names; cycles and other values are skipped. */
function collectTensors(dict: PyDict, prefix: string, out: [string, TensorSpec][], open: Set<PyDict>): void {
  open.add(dict);
  for (const [key, value] of dict.map) {
    const name = prefix + String(key);
    if (value instanceof TensorSpec) out.push([name, value]);
    else if (value instanceof PyDict && !open.has(value) && open.size < 64) collectTensors(value, name + '.', out, open);
  }
  open.delete(dict);
}

// ---------------------------------------------------------------------------------------------
// Pickle

class PyDict {
  readonly map = new Map<unknown, unknown>();
}

class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get fullName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A tuple: a frozen array (lists are plain arrays). */
type PyTuple = readonly unknown[];
const tuple = (items: unknown[]): PyTuple => Object.freeze(items);
const isTuple = (v: unknown): v is PyTuple => Array.isArray(v) && Object.isFrozen(v);
const isList = (v: unknown): v is unknown[] => Array.isArray(v) && !Object.isFrozen(v);

/** torch storage classes and the dtype of their elements. */
const STORAGE_DTYPES: Record<string, DType> = {
  'torch.FloatStorage': 'F32', 'torch.DoubleStorage': 'F64', 'torch.HalfStorage': 'F16', 'torch.BFloat16Storage': 'BF16',
  'torch.LongStorage': 'I64', 'torch.IntStorage': 'I32', 'torch.ShortStorage': 'I16', 'torch.CharStorage': 'I8',
  'torch.ByteStorage': 'U8', 'torch.BoolStorage': 'BOOL',
};

/** The only globals that may be called (REDUCE). */
const CALLABLES = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
]);

/** Every pickle opcode by byte, so refused ones can be named. */
const OPCODE_NAMES: Record<number, string> = {
  0x28: 'MARK', 0x2e: 'STOP', 0x30: 'POP', 0x31: 'POP_MARK', 0x32: 'DUP', 0x46: 'FLOAT', 0x49: 'INT', 0x4a: 'BININT',
  0x4b: 'BININT1', 0x4c: 'LONG', 0x4d: 'BININT2', 0x4e: 'NONE', 0x50: 'PERSID', 0x51: 'BINPERSID', 0x52: 'REDUCE',
  0x53: 'STRING', 0x54: 'BINSTRING', 0x55: 'SHORT_BINSTRING', 0x56: 'UNICODE', 0x58: 'BINUNICODE', 0x61: 'APPEND',
  0x62: 'BUILD', 0x63: 'GLOBAL', 0x64: 'DICT', 0x7d: 'EMPTY_DICT', 0x65: 'APPENDS', 0x67: 'GET', 0x68: 'BINGET',
  0x69: 'INST', 0x6a: 'LONG_BINGET', 0x6c: 'LIST', 0x5d: 'EMPTY_LIST', 0x6f: 'OBJ', 0x70: 'PUT', 0x71: 'BINPUT',
  0x72: 'LONG_BINPUT', 0x73: 'SETITEM', 0x74: 'TUPLE', 0x29: 'EMPTY_TUPLE', 0x75: 'SETITEMS', 0x47: 'BINFLOAT',
  0x80: 'PROTO', 0x81: 'NEWOBJ', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x85: 'TUPLE1', 0x86: 'TUPLE2', 0x87: 'TUPLE3',
  0x88: 'NEWTRUE', 0x89: 'NEWFALSE', 0x8a: 'LONG1', 0x8b: 'LONG4', 0x42: 'BINBYTES', 0x43: 'SHORT_BINBYTES',
  0x8c: 'SHORT_BINUNICODE', 0x8d: 'BINUNICODE8', 0x8e: 'BINBYTES8', 0x8f: 'EMPTY_SET', 0x90: 'ADDITEMS', 0x91: 'FROZENSET',
  0x92: 'NEWOBJ_EX', 0x93: 'STACK_GLOBAL', 0x94: 'MEMOIZE', 0x95: 'FRAME', 0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER',
  0x98: 'READONLY_BUFFER',
};

const MARK = Symbol('mark');

/** Interprets a state-dict pickle with a whitelist of opcodes and globals; never calls into anything. */
class Unpickler {
  private pos = 0;
  private stack: unknown[] = [];
  private readonly memo = new Map<number, unknown>();
  private readonly view: DataView;

  constructor(private readonly path: string, private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  load(): unknown {
    for (;;) {
      const at = this.pos;
      const op = this.u8();
      switch (op) {
        case 0x80: { // PROTO
          const v = this.u8();
          if (v > 5) throw this.error(`unsupported pickle protocol ${v}`, at);
          break;
        }
        case 0x95: this.bytes(8); break; // FRAME: a length hint only
        case 0x2e: { // STOP
          if (this.stack.length !== 1) throw this.error(`STOP with ${this.stack.length} values on the stack`, at);
          return this.stack[0];
        }
        case 0x28: this.stack.push(MARK); break;
        case 0x7d: this.stack.push(new PyDict()); break;
        case 0x5d: this.stack.push([]); break;
        case 0x29: this.stack.push(tuple([])); break;
        case 0x74: this.stack.push(tuple(this.popMark(at))); break;
        case 0x85: this.stack.push(tuple(this.popN(1, at))); break;
        case 0x86: this.stack.push(tuple(this.popN(2, at))); break;
        case 0x87: this.stack.push(tuple(this.popN(3, at))); break;
        case 0x4e: this.stack.push(null); break;
        case 0x88: this.stack.push(true); break;
        case 0x89: this.stack.push(false); break;
        case 0x4a: this.stack.push(this.view.getInt32(this.advance(4), true)); break; // BININT
        case 0x4b: this.stack.push(this.u8()); break; // BININT1
        case 0x4d: this.stack.push(this.view.getUint16(this.advance(2), true)); break; // BININT2
        case 0x8a: this.stack.push(this.long(this.u8())); break; // LONG1
        case 0x47: this.stack.push(this.view.getFloat64(this.advance(8), false)); break; // BINFLOAT (big-endian)
        case 0x58: this.stack.push(this.utf8(this.view.getUint32(this.advance(4), true), at)); break; // BINUNICODE
        case 0x8c: this.stack.push(this.utf8(this.u8(), at)); break; // SHORT_BINUNICODE
        case 0x8d: this.stack.push(this.utf8(this.u64(at), at)); break; // BINUNICODE8
        case 0x55: this.stack.push(this.latin1(this.u8())); break; // SHORT_BINSTRING
        case 0x54: { // BINSTRING
          const n = this.view.getInt32(this.advance(4), true);
          if (n < 0) throw this.error(`BINSTRING with negative length ${n}`, at);
          this.stack.push(this.latin1(n));
          break;
        }
        case 0x71: this.put(this.u8(), at); break; // BINPUT
        case 0x72: this.put(this.view.getUint32(this.advance(4), true), at); break; // LONG_BINPUT
        case 0x94: this.put(this.memo.size, at); break; // MEMOIZE
        case 0x68: this.get(this.u8(), at); break; // BINGET
        case 0x6a: this.get(this.view.getUint32(this.advance(4), true), at); break; // LONG_BINGET
        case 0x73: { // SETITEM
          const [key, value] = this.popN(2, at);
          this.dictTarget(at).map.set(key, value);
          break;
        }
        case 0x75: { // SETITEMS
          const items = this.popMark(at);
          if (items.length % 2) throw this.error('SETITEMS with an odd number of items', at);
          const dict = this.dictTarget(at);
          for (let i = 0; i < items.length; i += 2) dict.map.set(items[i], items[i + 1]);
          break;
        }
        case 0x61: { // APPEND
          const [value] = this.popN(1, at);
          this.listTarget(at).push(value);
          break;
        }
        case 0x65: { // APPENDS
          const items = this.popMark(at);
          this.listTarget(at).push(...items);
          break;
        }
        case 0x63: { // GLOBAL
          const module = this.line(at);
          const name = this.line(at);
          this.stack.push(this.global(module, name, at));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          const [module, name] = this.popN(2, at);
          if (typeof module !== 'string' || typeof name !== 'string') throw this.error('STACK_GLOBAL expects two strings', at);
          this.stack.push(this.global(module, name, at));
          break;
        }
        case 0x52: { // REDUCE
          const [fn, args] = this.popN(2, at);
          this.stack.push(this.call(fn, args, at));
          break;
        }
        case 0x51: { // BINPERSID
          const [pid] = this.popN(1, at);
          this.stack.push(this.persistent(pid, at));
          break;
        }
        case 0x62: { // BUILD: only an OrderedDict's attribute state (e.g. `_metadata`), which is dropped
          this.popN(1, at);
          const target = this.stack[this.stack.length - 1];
          if (!(target instanceof PyDict)) throw this.error(`refusing pickle opcode BUILD on ${describe(target)}`, at);
          break;
        }
        default: {
          const name = OPCODE_NAMES[op];
          if (name) throw this.error(`refusing pickle opcode ${name} (0x${op.toString(16).padStart(2, '0')})`, at);
          throw this.error(`unknown pickle opcode 0x${op.toString(16).padStart(2, '0')}`, at);
        }
      }
    }
  }

  private error(msg: string, at: number): Error {
    return new Error(`${this.path}: ${msg} at byte ${at} of data.pkl`);
  }

  private truncated(): Error {
    return new Error(`${this.path}: data.pkl ends in the middle of an opcode (truncated pickle)`);
  }

  private advance(n: number): number {
    const p = this.pos;
    if (p + n > this.buf.byteLength) throw this.truncated();
    this.pos += n;
    return p;
  }

  private u8(): number {
    return this.buf[this.advance(1)]!;
  }

  private u64(at: number): number {
    const v = this.view.getBigUint64(this.advance(8), true);
    if (v > BigInt(this.buf.byteLength)) throw this.error(`length ${v} runs past the end of data.pkl`, at);
    return Number(v);
  }

  private bytes(n: number): Uint8Array {
    const p = this.advance(n);
    return this.buf.subarray(p, p + n);
  }

  private utf8(n: number, at: number): string {
    const b = this.bytes(n);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(b);
    } catch {
      throw this.error('string is not valid UTF-8', at);
    }
  }

  private latin1(n: number): string {
    const b = this.bytes(n);
    return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
  }

  /** A newline-terminated ASCII line (GLOBAL's arguments). */
  private line(at: number): string {
    const end = this.buf.indexOf(0x0a, this.pos);
    if (end < 0) throw this.truncated();
    if (end - this.pos > 256) throw this.error('GLOBAL name longer than 256 bytes', at);
    const s = this.latin1(end - this.pos);
    this.pos = end + 1;
    return s;
  }

  /** Little-endian two's-complement integer of n bytes; a number when safe, else a bigint. */
  private long(n: number): number | bigint {
    const b = this.bytes(n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (n > 0 && b[n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }

  private popN(n: number, at: number): unknown[] {
    const markAt = this.stack.lastIndexOf(MARK);
    if (this.stack.length - n < markAt + 1) throw this.error('stack underflow', at);
    return this.stack.splice(this.stack.length - n, n);
  }

  private popMark(at: number): unknown[] {
    const markAt = this.stack.lastIndexOf(MARK);
    if (markAt < 0) throw this.error('no MARK on the stack', at);
    const items = this.stack.splice(markAt + 1);
    this.stack.pop();
    return items;
  }

  private put(index: number, at: number): void {
    if (this.stack.length === 0 || this.stack[this.stack.length - 1] === MARK) throw this.error('memo put with an empty stack', at);
    this.memo.set(index, this.stack[this.stack.length - 1]);
  }

  private get(index: number, at: number): void {
    if (!this.memo.has(index)) throw this.error(`memo key ${index} was never stored`, at);
    this.stack.push(this.memo.get(index));
  }

  private dictTarget(at: number): PyDict {
    const target = this.stack[this.stack.length - 1];
    if (!(target instanceof PyDict)) throw this.error(`SETITEM(S) on ${describe(target)}, expected a dict`, at);
    return target;
  }

  private listTarget(at: number): unknown[] {
    const target = this.stack[this.stack.length - 1];
    if (!isList(target)) throw this.error(`APPEND(S) on ${describe(target)}, expected a list`, at);
    return target;
  }

  private global(module: string, name: string, at: number): PyGlobal {
    const g = new PyGlobal(module, name);
    if (!CALLABLES.has(g.fullName) && !(g.fullName in STORAGE_DTYPES)) throw this.error(`refusing pickle global "${g.fullName}"`, at);
    return g;
  }

  private call(fn: unknown, args: unknown, at: number): unknown {
    if (!(fn instanceof PyGlobal) || !CALLABLES.has(fn.fullName)) throw this.error(`refusing to call ${fn instanceof PyGlobal ? `"${fn.fullName}"` : describe(fn)}`, at);
    if (!isTuple(args)) throw this.error(`REDUCE arguments for "${fn.fullName}" must be a tuple`, at);
    switch (fn.fullName) {
      case 'collections.OrderedDict': {
        const dict = new PyDict();
        if (args.length === 0) return dict;
        if (args.length === 1 && isList(args[0]) && args[0].every((p) => isTuple(p) && p.length === 2)) {
          for (const p of args[0] as PyTuple[]) dict.map.set(p[0], p[1]);
          return dict;
        }
        throw this.error('collections.OrderedDict called with unsupported arguments', at);
      }
      case 'torch._utils._rebuild_tensor_v2': {
        const [storage, offset, size, stride] = args;
        if (args.length < 6 || args.length > 7) throw this.error(`_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`, at);
        if (!(storage instanceof StorageRef)) throw this.error('_rebuild_tensor_v2: first argument is not a storage', at);
        if (!isIndex(offset)) throw this.error(`_rebuild_tensor_v2: storage_offset must be a non-negative integer, got ${describe(offset)}`, at);
        if (!isTuple(size) || !size.every(isIndex)) throw this.error('_rebuild_tensor_v2: size must be a tuple of non-negative integers', at);
        if (!isTuple(stride) || stride.length !== size.length || !stride.every(isIndex)) throw this.error('_rebuild_tensor_v2: stride must be a tuple of non-negative integers, one per dimension', at);
        return new TensorSpec(storage, offset, [...size] as number[], [...stride] as number[]);
      }
      default: { // _rebuild_parameter(data, requires_grad, backward_hooks[, state]): the tensor itself
        if (!(args[0] instanceof TensorSpec)) throw this.error(`${fn.fullName}: first argument is not a tensor`, at);
        return args[0];
      }
    }
  }

  private persistent(pid: unknown, at: number): StorageRef {
    if (!isTuple(pid) || pid.length !== 5 || pid[0] !== 'storage') throw this.error(`unsupported persistent id ${describe(pid)}, expected ("storage", type, key, location, numel)`, at);
    const [, type, key, , count] = pid;
    if (!(type instanceof PyGlobal) || !(type.fullName in STORAGE_DTYPES)) throw this.error(`persistent id storage type ${describe(type)} is not a torch storage class`, at);
    if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(key)) throw this.error(`persistent id storage key ${describe(key)} is not a plain name`, at);
    if (!isIndex(count)) throw this.error(`persistent id numel ${describe(count)} is not a non-negative integer`, at);
    return new StorageRef(STORAGE_DTYPES[type.fullName]!, key, count);
  }
}

const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function describe(v: unknown): string {
  if (v === null) return 'None';
  if (v === MARK) return 'a MARK';
  if (v instanceof PyDict) return 'a dict';
  if (v instanceof PyGlobal) return `global "${v.fullName}"`;
  if (v instanceof TensorSpec) return 'a tensor';
  if (v instanceof StorageRef) return 'a storage';
  if (isTuple(v)) return `a tuple of ${v.length}`;
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}`;
  return `${typeof v} ${String(v)}`;
}

// ---------------------------------------------------------------------------------------------
// Zip

interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;

/** Reads the central directory of a zip (zip64 included), then entries on demand by positioned reads. */
class ZipReader {
  private constructor(private readonly path: string, private readonly fh: FileHandle, private readonly size: number, private readonly entries: Map<string, ZipEntry>) {}

  static async open(path: string, fh: FileHandle): Promise<ZipReader> {
    const { size } = await fh.stat();
    const at = async (position: number, length: number): Promise<DataView> => {
      if (position < 0 || position + length > size) throw new Error(`${path}: truncated or corrupt zip archive: a record at byte ${position} runs past the end of the file (${size} bytes)`);
      const b = new Uint8Array(length);
      await readFully(fh, b, position, path);
      return new DataView(b.buffer);
    };

    const magic = size >= 4 ? (await at(0, 4)).getUint32(0, true) : 0;
    if (magic !== LOCAL_SIG) {
      const first = size > 0 ? (await at(0, 1)).getUint8(0) : -1;
      if (first === 0x80) throw new Error(`${path}: legacy (pre-1.6) torch.save format, not a zip archive; re-save it with a current PyTorch`);
      throw new Error(`${path}: not a zip archive (torch.save checkpoints are zip files)`);
    }

    // End of central directory: 22 bytes plus a comment of up to 65535, at the very end.
    const tailLen = Math.min(size, 22 + 65535);
    const tail = await at(size - tailLen, tailLen);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tail.getUint32(i, true) === EOCD_SIG && i + 22 + tail.getUint16(i + 20, true) === tailLen) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new Error(`${path}: truncated or corrupt zip archive: end-of-central-directory record not found`);
    let count = tail.getUint16(eocd + 10, true);
    let cdSize = tail.getUint32(eocd + 12, true);
    let cdOffset = tail.getUint32(eocd + 16, true);
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      const locPos = size - tailLen + eocd - 20;
      const loc = await at(locPos, 20);
      if (loc.getUint32(0, true) !== ZIP64_LOCATOR_SIG) throw new Error(`${path}: corrupt zip archive: zip64 end-of-central-directory locator not found`);
      const z = await at(safeU64(path, loc, 8), 56);
      if (z.getUint32(0, true) !== ZIP64_EOCD_SIG) throw new Error(`${path}: corrupt zip archive: bad zip64 end-of-central-directory record`);
      count = safeU64(path, z, 32);
      cdSize = safeU64(path, z, 40);
      cdOffset = safeU64(path, z, 48);
    }
    const cd = await at(cdOffset, cdSize);
    const entries = new Map<string, ZipEntry>();
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cdSize || cd.getUint32(p, true) !== CENTRAL_SIG) throw new Error(`${path}: corrupt zip archive: bad central directory entry ${i}`);
      const nameLen = cd.getUint16(p + 28, true);
      const extraLen = cd.getUint16(p + 30, true);
      const commentLen = cd.getUint16(p + 32, true);
      if (p + 46 + nameLen + extraLen > cdSize) throw new Error(`${path}: corrupt zip archive: central directory entry ${i} runs past the directory`);
      const name = new TextDecoder().decode(new Uint8Array(cd.buffer, p + 46, nameLen));
      const entry: ZipEntry = {
        name,
        method: cd.getUint16(p + 10, true),
        compressedSize: cd.getUint32(p + 20, true),
        size: cd.getUint32(p + 24, true),
        localOffset: cd.getUint32(p + 42, true),
      };
      readZip64Extra(path, entry, new DataView(cd.buffer, p + 46 + nameLen, extraLen));
      entries.set(name, entry);
      p += 46 + nameLen + extraLen + commentLen;
    }
    return new ZipReader(path, fh, size, entries);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** The uncompressed bytes of one entry (stored or deflated). */
  async read(name: string): Promise<Uint8Array> {
    const e = this.entries.get(name)!;
    const where = `${this.path}: zip entry ${name}`;
    if (e.localOffset + 30 > this.size) throw new Error(`${where}: local header past the end of the file (truncated archive)`);
    const head = new Uint8Array(30);
    await readFully(this.fh, head, e.localOffset, where);
    const hv = new DataView(head.buffer);
    if (hv.getUint32(0, true) !== LOCAL_SIG) throw new Error(`${where}: bad local header (corrupt archive)`);
    const start = e.localOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
    if (start + e.compressedSize > this.size) throw new Error(`${where}: data runs past the end of the file (${this.size} bytes): truncated archive`);
    const raw = new Uint8Array(e.compressedSize);
    await readFully(this.fh, raw, start, where);
    let data: Uint8Array;
    if (e.method === 0) data = raw;
    else if (e.method === 8) {
      try {
        data = inflateRawSync(raw);
      } catch (err) {
        throw new Error(`${where}: cannot inflate: ${(err as Error).message}`);
      }
    } else throw new Error(`${where}: unsupported compression method ${e.method} (only stored and deflate)`);
    if (data.byteLength !== e.size) throw new Error(`${where}: holds ${data.byteLength} bytes, the directory says ${e.size} (corrupt archive)`);
    return data;
  }
}

/** Replaces 0xffffffff sizes/offsets with their values from the zip64 extra field (id 1). */
function readZip64Extra(path: string, e: ZipEntry, extra: DataView): void {
  for (let p = 0; p + 4 <= extra.byteLength;) {
    const id = extra.getUint16(p, true);
    const len = extra.getUint16(p + 2, true);
    if (id === 1) {
      let q = p + 4;
      const next = (): number => {
        if (q + 8 > p + 4 + len) throw new Error(`${path}: corrupt zip archive: short zip64 field for ${e.name}`);
        const v = safeU64(path, extra, q);
        q += 8;
        return v;
      };
      if (e.size === 0xffffffff) e.size = next();
      if (e.compressedSize === 0xffffffff) e.compressedSize = next();
      if (e.localOffset === 0xffffffff) e.localOffset = next();
      return;
    }
    p += 4 + len;
  }
}

function safeU64(path: string, v: DataView, at: number): number {
  const n = v.getBigUint64(at, true);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${path}: corrupt zip archive: 64-bit field ${n} is out of range`);
  return Number(n);
}
