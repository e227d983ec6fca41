/**
 * The pickle machine of the .pth reader: interprets a state dict's `data.pkl` with a whitelist of
 * opcodes and globals, and never calls into anything. Dicts, lists, tuples, scalars and strings become
 * plain values (`PyDict` for dicts); torch's tensor rebuild calls and storage persistent ids become
 * `TensorSpec` and `StorageRef` (pth-storage.ts). Any other opcode or global is refused with an error
 * naming it and its byte offset in data.pkl.
 *
 * Hostile pickles cost time and memory linear in data.pkl's size whatever their structure: MARKs are kept
 * on a stack of their own (no scan of the value stack), and there are limits on the value stack's depth,
 * the MARK nesting, the memo, the objects made and the work done on values that the memo lets a pickle
 * reuse (`PICKLE_LIMITS`); each is refused with one error naming the file and the limit. A string dict key
 * may hold at most `maxKeyChars` characters (longer distinct keys all hash alike in V8, so a Map of them is
 * quadratic). The work budget follows data.pkl's size, or the archive's where that is smaller: a deflated
 * data.pkl (torch.save stores it) cannot buy work with bytes that are not in the file.
 *
 * Over 450 lines: one job, the opcode loop and the checks of each opcode's values belong together.
 */
import { InputError } from './errors.js';
import { OPCODE_NAMES, PICKLE_LIMITS } from './pickle-tables.js';
import { STORAGE_DTYPES, StorageRef, TensorSpec } from './pth-storage.js';

export { PICKLE_LIMITS } from './pickle-tables.js';

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

const MARK = Symbol('mark');

/** Interprets a state-dict pickle with a whitelist of opcodes and globals; never calls into anything. */
export class Unpickler {
  private pos = 0;
  private stack: unknown[] = [];
  /** Stack lengths at each open MARK (Python's metastack, without copying). */
  private readonly marks: number[] = [];
  private readonly memo = new Map<number, unknown>();
  private readonly view: DataView;
  private objects = 0;
  private work = 0;
  private readonly workBudget: number;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  /**
   * @param path the file, for errors
   * @param buf data.pkl's bytes
   * @param fileBytes the size of the file they came from (the archive): the work budget follows the smaller of it
   *   and data.pkl's size, so a deflated data.pkl that inflates 500x buys no more work than its archive's bytes
   */
  constructor(
    private readonly path: string,
    private readonly buf: Uint8Array,
    fileBytes: number = buf.byteLength,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.budgetBytes = Math.min(buf.byteLength, fileBytes);
    this.workBudget = 1_000_000 + PICKLE_LIMITS.workPerByte * this.budgetBytes;
  }

  private readonly budgetBytes: number;

  load(): unknown {
    for (;;) {
      const at = this.pos;
      this.charge(1, at);
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
          if (this.stack.length !== 1 || this.marks.length)
            throw this.error(`STOP with ${this.stack.length + this.marks.length} values on the stack`, at);
          return this.stack[0];
        }
        case 0x28:
          if (this.marks.length >= PICKLE_LIMITS.maxMarks)
            throw this.error(`more than ${PICKLE_LIMITS.maxMarks} MARKs open at once (limit for a state dict)`, at);
          this.marks.push(this.stack.length);
          break;
        case 0x7d:
          this.push(new PyDict());
          break;
        case 0x5d:
          this.push([]);
          break;
        case 0x29:
          this.push(tuple([]));
          break;
        case 0x74:
          this.push(tuple(this.popMark(at)));
          break;
        case 0x85:
          this.push(tuple(this.popN(1, at)));
          break;
        case 0x86:
          this.push(tuple(this.popN(2, at)));
          break;
        case 0x87:
          this.push(tuple(this.popN(3, at)));
          break;
        case 0x4e:
          this.push(null);
          break;
        case 0x88:
          this.push(true);
          break;
        case 0x89:
          this.push(false);
          break;
        case 0x4a:
          this.push(this.view.getInt32(this.advance(4), true));
          break; // BININT
        case 0x4b:
          this.push(this.u8());
          break; // BININT1
        case 0x4d:
          this.push(this.view.getUint16(this.advance(2), true));
          break; // BININT2
        case 0x8a:
          this.push(this.long(this.u8()));
          break; // LONG1
        case 0x47:
          this.push(this.view.getFloat64(this.advance(8), false));
          break; // BINFLOAT (big-endian)
        case 0x58:
          this.push(this.utf8(this.view.getUint32(this.advance(4), true), at));
          break; // BINUNICODE
        case 0x8c:
          this.push(this.utf8(this.u8(), at));
          break; // SHORT_BINUNICODE
        case 0x8d:
          this.push(this.utf8(this.u64(at), at));
          break; // BINUNICODE8
        case 0x55:
          this.push(this.latin1(this.u8()));
          break; // SHORT_BINSTRING
        case 0x54: {
          // BINSTRING
          const n = this.view.getInt32(this.advance(4), true);
          if (n < 0) throw this.error(`BINSTRING with negative length ${n}`, at);
          this.push(this.latin1(n));
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
          this.dictTarget(at).map.set(this.key(key, at), value);
          break;
        }
        case 0x75: {
          // SETITEMS
          const items = this.popMark(at);
          if (items.length % 2) throw this.error('SETITEMS with an odd number of items', at);
          const dict = this.dictTarget(at);
          for (let i = 0; i < items.length; i += 2) dict.map.set(this.key(items[i], at), items[i + 1]);
          break;
        }
        case 0x61: {
          // APPEND
          const value = this.pop1(at);
          this.listTarget(at).push(value);
          this.charge(1, at);
          break;
        }
        case 0x65: {
          // APPENDS
          const items = this.popMark(at);
          const list = this.listTarget(at);
          for (const v of items) list.push(v);
          break;
        }
        case 0x63: {
          // GLOBAL
          const module = this.line(at);
          const name = this.line(at);
          this.push(this.global(module, name, at));
          break;
        }
        case 0x93: {
          // STACK_GLOBAL
          const [module, name] = this.popN(2, at);
          if (typeof module !== 'string' || typeof name !== 'string') throw this.error('STACK_GLOBAL expects two strings', at);
          this.push(this.global(module, name, at));
          break;
        }
        case 0x52: {
          // REDUCE
          const [fn, args] = this.popN(2, at);
          this.push(this.call(fn, args, at));
          break;
        }
        case 0x51: {
          // BINPERSID
          const pid = this.pop1(at);
          this.push(this.persistent(pid, at));
          break;
        }
        case 0x62: {
          // BUILD: only an OrderedDict's attribute state (e.g. `_metadata`), which is dropped
          this.pop1(at);
          const target = this.top();
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
    return new InputError(`${this.path}: ${msg} at byte ${at} of data.pkl`);
  }

  /** Pushes a value made by the current opcode, counting it against the stack and object limits. */
  private push(v: unknown, at: number = this.pos): void {
    if (v !== null && (typeof v === 'object' || typeof v === 'string') && ++this.objects > PICKLE_LIMITS.maxObjects)
      throw this.error(`more than ${PICKLE_LIMITS.maxObjects} objects (limit for a state dict)`, at);
    this.pushRef(v, at);
  }

  /** Pushes a value that already exists (a memo get). */
  private pushRef(v: unknown, at: number): void {
    if (this.stack.length >= PICKLE_LIMITS.maxStack)
      throw this.error(`stack deeper than ${PICKLE_LIMITS.maxStack} values (limit for a state dict; nested too deeply)`, at);
    this.stack.push(v);
  }

  /** Counts `n` units of work against the budget that keeps the time linear in the pickle's size. */
  private charge(n: number, at: number): void {
    this.work += n;
    if (this.work > this.workBudget)
      throw this.error(
        this.budgetBytes < this.buf.byteLength
          ? `pickle does more work than the archive's ${this.budgetBytes} bytes allow (over ${this.workBudget} steps; its data.pkl is deflated and inflates to ${this.buf.byteLength} bytes, where torch.save stores it): values reused over and over`
          : `pickle does more work than its ${this.buf.byteLength} bytes allow (over ${this.workBudget} steps: values reused over and over)`,
        at,
      );
  }

  /** A dict key, checked: a string key may hold at most `maxKeyChars` characters. */
  private key(k: unknown, at: number): unknown {
    if (typeof k === 'string' && k.length > PICKLE_LIMITS.maxKeyChars)
      throw this.error(
        `dict key of ${k.length} characters (${describe(k)}), over the limit of ${PICKLE_LIMITS.maxKeyChars} (real state-dict names take under 300): corrupt or hostile`,
        at,
      );
    return k;
  }

  /** Stack length at the innermost open MARK (0 without one). */
  private floor(): number {
    return this.marks.length ? this.marks[this.marks.length - 1]! : 0;
  }

  /** The top value, or MARK when the innermost MARK is on top (or the stack is empty). */
  private top(): unknown {
    return this.stack.length > this.floor() ? this.stack[this.stack.length - 1] : MARK;
  }

  private truncated(): Error {
    return new InputError(`${this.path}: data.pkl ends in the middle of an opcode (truncated pickle)`);
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
      return this.decoder.decode(b);
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
    const near = this.buf.subarray(this.pos, this.pos + 257).indexOf(0x0a);
    if (near < 0 && this.pos + 257 > this.buf.byteLength) throw this.truncated();
    if (near < 0) throw this.error('GLOBAL name longer than 256 bytes', at);
    const end = this.pos + near;
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

  private pop1(at: number): unknown {
    if (this.stack.length - 1 < this.floor()) throw this.error('stack underflow', at);
    return this.stack.pop();
  }

  private popN(n: number, at: number): unknown[] {
    if (this.stack.length - n < this.floor()) throw this.error('stack underflow', at);
    // Not splice: V8's splice costs time in the stack's length, which made deep pickles quadratic.
    const out = new Array<unknown>(n);
    for (let i = n - 1; i >= 0; i--) out[i] = this.stack.pop();
    return out;
  }

  private popMark(at: number): unknown[] {
    const markAt = this.marks.pop();
    if (markAt === undefined) throw this.error('no MARK on the stack', at);
    const items = this.stack.slice(markAt);
    this.stack.length = markAt;
    this.charge(items.length, at);
    return items;
  }

  private put(index: number, at: number): void {
    const top = this.top();
    if (top === MARK) throw this.error('memo put with an empty stack', at);
    if (this.memo.size >= PICKLE_LIMITS.maxMemo && !this.memo.has(index))
      throw this.error(`more than ${PICKLE_LIMITS.maxMemo} memo entries (limit for a state dict)`, at);
    this.memo.set(index, top);
  }

  private get(index: number, at: number): void {
    if (!this.memo.has(index)) throw this.error(`memo key ${index} was never stored`, at);
    this.pushRef(this.memo.get(index), at);
  }

  private dictTarget(at: number): PyDict {
    const target = this.top();
    if (!(target instanceof PyDict)) throw this.error(`SETITEM(S) on ${describe(target)}, expected a dict`, at);
    return target;
  }

  private listTarget(at: number): unknown[] {
    const target = this.top();
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
        if (isList(args[0])) this.charge(args[0].length, at);
        if (args.length === 1 && isList(args[0]) && args[0].every((p) => isTuple(p) && p.length === 2)) {
          for (const p of args[0] as PyTuple[]) dict.map.set(this.key(p[0], at), p[1]);
          return dict;
        }
        throw this.error('collections.OrderedDict called with unsupported arguments', at);
      }
      case 'torch._utils._rebuild_tensor_v2': {
        const [storage, offset, size, stride] = args;
        if (args.length < 6 || args.length > 7) throw this.error(`_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`, at);
        if (!(storage instanceof StorageRef)) throw this.error('_rebuild_tensor_v2: first argument is not a storage', at);
        if (isTuple(size)) this.charge(size.length, at);
        if (isTuple(stride)) this.charge(stride.length, at);
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
