/**
 * The pickle machine of the .pth reader: interprets a state dict's `data.pkl` with a whitelist of
 * opcodes and globals, and never calls into anything. Dicts, lists, tuples, scalars and strings become
 * plain values (`PyDict` for dicts); torch's tensor rebuild calls and storage persistent ids become
 * `TensorSpec` and `StorageRef` (pth-storage.ts). Any other opcode or global is refused with an error
 * naming it and its byte offset in data.pkl.
 */
import { STORAGE_DTYPES, StorageRef, TensorSpec } from './pth-storage.js';

/** A Python dict (keys in insertion order, as pickled). */
export class PyDict {
  readonly map = new Map<unknown, unknown>();
}

class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get fullName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A tuple: a frozen array (lists are plain arrays). */
type PyTuple = readonly unknown[];
const tuple = (items: unknown[]): PyTuple => Object.freeze(items);
const isTuple = (v: unknown): v is PyTuple => Array.isArray(v) && Object.isFrozen(v);
const isList = (v: unknown): v is unknown[] => Array.isArray(v) && !Object.isFrozen(v);

/** The only globals that may be called (REDUCE). */
const CALLABLES = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
]);

/** Every pickle opcode by byte, so refused ones can be named. */
const OPCODE_NAMES: Record<number, string> = {
  0x28: 'MARK',
  0x2e: 'STOP',
  0x30: 'POP',
  0x31: 'POP_MARK',
  0x32: 'DUP',
  0x46: 'FLOAT',
  0x49: 'INT',
  0x4a: 'BININT',
  0x4b: 'BININT1',
  0x4c: 'LONG',
  0x4d: 'BININT2',
  0x4e: 'NONE',
  0x50: 'PERSID',
  0x51: 'BINPERSID',
  0x52: 'REDUCE',
  0x53: 'STRING',
  0x54: 'BINSTRING',
  0x55: 'SHORT_BINSTRING',
  0x56: 'UNICODE',
  0x58: 'BINUNICODE',
  0x61: 'APPEND',
  0x62: 'BUILD',
  0x63: 'GLOBAL',
  0x64: 'DICT',
  0x7d: 'EMPTY_DICT',
  0x65: 'APPENDS',
  0x67: 'GET',
  0x68: 'BINGET',
  0x69: 'INST',
  0x6a: 'LONG_BINGET',
  0x6c: 'LIST',
  0x5d: 'EMPTY_LIST',
  0x6f: 'OBJ',
  0x70: 'PUT',
  0x71: 'BINPUT',
  0x72: 'LONG_BINPUT',
  0x73: 'SETITEM',
  0x74: 'TUPLE',
  0x29: 'EMPTY_TUPLE',
  0x75: 'SETITEMS',
  0x47: 'BINFLOAT',
  0x80: 'PROTO',
  0x81: 'NEWOBJ',
  0x82: 'EXT1',
  0x83: 'EXT2',
  0x84: 'EXT4',
  0x85: 'TUPLE1',
  0x86: 'TUPLE2',
  0x87: 'TUPLE3',
  0x88: 'NEWTRUE',
  0x89: 'NEWFALSE',
  0x8a: 'LONG1',
  0x8b: 'LONG4',
  0x42: 'BINBYTES',
  0x43: 'SHORT_BINBYTES',
  0x8c: 'SHORT_BINUNICODE',
  0x8d: 'BINUNICODE8',
  0x8e: 'BINBYTES8',
  0x8f: 'EMPTY_SET',
  0x90: 'ADDITEMS',
  0x91: 'FROZENSET',
  0x92: 'NEWOBJ_EX',
  0x93: 'STACK_GLOBAL',
  0x94: 'MEMOIZE',
  0x95: 'FRAME',
  0x96: 'BYTEARRAY8',
  0x97: 'NEXT_BUFFER',
  0x98: 'READONLY_BUFFER',
};

const MARK = Symbol('mark');

/** Interprets a state-dict pickle with a whitelist of opcodes and globals; never calls into anything. */
export class Unpickler {
  private pos = 0;
  private stack: unknown[] = [];
  private readonly memo = new Map<number, unknown>();
  private readonly view: DataView;

  constructor(
    private readonly path: string,
    private readonly buf: Uint8Array,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  load(): unknown {
    for (;;) {
      const at = this.pos;
      const op = this.u8();
      switch (op) {
        case 0x80: {
          // PROTO
          const v = this.u8();
          if (v > 5) throw this.error(`unsupported pickle protocol ${v}`, at);
          break;
        }
        case 0x95:
          this.bytes(8);
          break; // FRAME: a length hint only
        case 0x2e: {
          // STOP
          if (this.stack.length !== 1) throw this.error(`STOP with ${this.stack.length} values on the stack`, at);
          return this.stack[0];
        }
        case 0x28:
          this.stack.push(MARK);
          break;
        case 0x7d:
          this.stack.push(new PyDict());
          break;
        case 0x5d:
          this.stack.push([]);
          break;
        case 0x29:
          this.stack.push(tuple([]));
          break;
        case 0x74:
          this.stack.push(tuple(this.popMark(at)));
          break;
        case 0x85:
          this.stack.push(tuple(this.popN(1, at)));
          break;
        case 0x86:
          this.stack.push(tuple(this.popN(2, at)));
          break;
        case 0x87:
          this.stack.push(tuple(this.popN(3, at)));
          break;
        case 0x4e:
          this.stack.push(null);
          break;
        case 0x88:
          this.stack.push(true);
          break;
        case 0x89:
          this.stack.push(false);
          break;
        case 0x4a:
          this.stack.push(this.view.getInt32(this.advance(4), true));
          break; // BININT
        case 0x4b:
          this.stack.push(this.u8());
          break; // BININT1
        case 0x4d:
          this.stack.push(this.view.getUint16(this.advance(2), true));
          break; // BININT2
        case 0x8a:
          this.stack.push(this.long(this.u8()));
          break; // LONG1
        case 0x47:
          this.stack.push(this.view.getFloat64(this.advance(8), false));
          break; // BINFLOAT (big-endian)
        case 0x58:
          this.stack.push(this.utf8(this.view.getUint32(this.advance(4), true), at));
          break; // BINUNICODE
        case 0x8c:
          this.stack.push(this.utf8(this.u8(), at));
          break; // SHORT_BINUNICODE
        case 0x8d:
          this.stack.push(this.utf8(this.u64(at), at));
          break; // BINUNICODE8
        case 0x55:
          this.stack.push(this.latin1(this.u8()));
          break; // SHORT_BINSTRING
        case 0x54: {
          // BINSTRING
          const n = this.view.getInt32(this.advance(4), true);
          if (n < 0) throw this.error(`BINSTRING with negative length ${n}`, at);
          this.stack.push(this.latin1(n));
          break;
        }
        case 0x71:
          this.put(this.u8(), at);
          break; // BINPUT
        case 0x72:
          this.put(this.view.getUint32(this.advance(4), true), at);
          break; // LONG_BINPUT
        case 0x94:
          this.put(this.memo.size, at);
          break; // MEMOIZE
        case 0x68:
          this.get(this.u8(), at);
          break; // BINGET
        case 0x6a:
          this.get(this.view.getUint32(this.advance(4), true), at);
          break; // LONG_BINGET
        case 0x73: {
          // SETITEM
          const [key, value] = this.popN(2, at);
          this.dictTarget(at).map.set(key, value);
          break;
        }
        case 0x75: {
          // SETITEMS
          const items = this.popMark(at);
          if (items.length % 2) throw this.error('SETITEMS with an odd number of items', at);
          const dict = this.dictTarget(at);
          for (let i = 0; i < items.length; i += 2) dict.map.set(items[i], items[i + 1]);
          break;
        }
        case 0x61: {
          // APPEND
          const [value] = this.popN(1, at);
          this.listTarget(at).push(value);
          break;
        }
        case 0x65: {
          // APPENDS
          const items = this.popMark(at);
          this.listTarget(at).push(...items);
          break;
        }
        case 0x63: {
          // GLOBAL
          const module = this.line(at);
          const name = this.line(at);
          this.stack.push(this.global(module, name, at));
          break;
        }
        case 0x93: {
          // STACK_GLOBAL
          const [module, name] = this.popN(2, at);
          if (typeof module !== 'string' || typeof name !== 'string') throw this.error('STACK_GLOBAL expects two strings', at);
          this.stack.push(this.global(module, name, at));
          break;
        }
        case 0x52: {
          // REDUCE
          const [fn, args] = this.popN(2, at);
          this.stack.push(this.call(fn, args, at));
          break;
        }
        case 0x51: {
          // BINPERSID
          const [pid] = this.popN(1, at);
          this.stack.push(this.persistent(pid, at));
          break;
        }
        case 0x62: {
          // BUILD: only an OrderedDict's attribute state (e.g. `_metadata`), which is dropped
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
    if (!(fn instanceof PyGlobal) || !CALLABLES.has(fn.fullName))
      throw this.error(`refusing to call ${fn instanceof PyGlobal ? `"${fn.fullName}"` : describe(fn)}`, at);
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
        if (!isIndex(offset))
          throw this.error(`_rebuild_tensor_v2: storage_offset must be a non-negative integer, got ${describe(offset)}`, at);
        if (!isTuple(size) || !size.every(isIndex))
          throw this.error('_rebuild_tensor_v2: size must be a tuple of non-negative integers', at);
        if (!isTuple(stride) || stride.length !== size.length || !stride.every(isIndex))
          throw this.error('_rebuild_tensor_v2: stride must be a tuple of non-negative integers, one per dimension', at);
        return new TensorSpec(storage, offset, [...size] as number[], [...stride] as number[]);
      }
      default: {
        // _rebuild_parameter(data, requires_grad, backward_hooks[, state]): the tensor itself
        if (!(args[0] instanceof TensorSpec)) throw this.error(`${fn.fullName}: first argument is not a tensor`, at);
        return args[0];
      }
    }
  }

  private persistent(pid: unknown, at: number): StorageRef {
    if (!isTuple(pid) || pid.length !== 5 || pid[0] !== 'storage')
      throw this.error(`unsupported persistent id ${describe(pid)}, expected ("storage", type, key, location, numel)`, at);
    const [, type, key, , count] = pid;
    if (!(type instanceof PyGlobal) || !(type.fullName in STORAGE_DTYPES))
      throw this.error(`persistent id storage type ${describe(type)} is not a torch storage class`, at);
    if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(key))
      throw this.error(`persistent id storage key ${describe(key)} is not a plain name`, at);
    if (!isIndex(count)) throw this.error(`persistent id numel ${describe(count)} is not a non-negative integer`, at);
    return new StorageRef(STORAGE_DTYPES[type.fullName]!, key, count);
  }
}

const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

export function describe(v: unknown): string {
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
