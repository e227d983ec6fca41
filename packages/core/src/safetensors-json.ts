/**
 * An incremental JSON parser for safetensors headers (issue 21): it takes the header's bytes chunk by
 * chunk as they are read and builds the value `JSON.parse` would build (the same keys in the same order,
 * duplicates resolved the same way, `__proto__` an own key, numbers and escapes converted alike), so
 * the header is never held whole as bytes nor decoded to one string. A header within the 100 MB limit
 * that is one huge string cost 3-4x its size that way before it could be refused (a 99 MB
 * `__metadata__` value: ~280 MB over the process's own). Strings are bounded as they arrive (limits in
 * SAFETENSORS_LIMITS): any key, and any string outside `__metadata__`'s values, to `maxNameBytes`; all
 * strings together to `maxStringBytes`; numbers to `maxNameBytes`. The bytes are checked to be UTF-8
 * (`isUtf8`, a partial sequence at a chunk's end carried to the next) before they are parsed. As the
 * TextDecoder the reader used before did, one leading byte order mark is skipped. A tensor's entry that
 * lies whole in a chunk and within `maxNameBytes` is handed to JSON.parse (faster, above all before the
 * JIT has warmed up; malformed, it goes through the state machine, which names the fault).
 *
 * Over 450 lines: one job, one state machine over shared state (strings, numbers, containers, UTF-8 carry).
 */
import { isUtf8 } from 'node:buffer';
import { endianness } from 'node:os';

/** A header refused by the parser; the message completes "<file>: header ...". */
export class HeaderJsonError extends Error {
  override name = 'HeaderJsonError';
}

/** The parser's string limits, in bytes of the header's JSON (escapes count as written). */
export interface HeaderJsonLimits {
  /** One key anywhere, one string outside `__metadata__`'s values, one number. */
  maxNameBytes: number;
  /** All strings together. */
  maxStringBytes: number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Parser states: what the next byte may be. */
const START = 0; // the header's first byte (a byte order mark may come first)
const BOM = 1; // inside a leading byte order mark
const VALUE = 2; // a value
const ARRAY_FIRST = 3; // after '[': a value or ']'
const OBJECT_FIRST = 4; // after '{': a key or '}'
const KEY = 5; // after ',' in an object: a key
const COLON = 6; // after a key
const AFTER = 7; // after a value in a container: ',' or the container's close
const DONE = 8; // after the header's value: whitespace only
const STRING = 9; // inside a string (one that spans chunks or holds escapes)
const ESCAPE = 10; // after a backslash
const UNICODE = 11; // inside \uXXXX
const NUMBER = 12;
const LITERAL = 13;

/** Number states (RFC 8259's grammar); the terminal ones may end the number. */
const N_MINUS = 0;
const N_ZERO = 1;
const N_INT = 2;
const N_DOT = 3;
const N_FRAC = 4;
const N_E = 5;
const N_ESIGN = 6;
const N_EXP = 7;
const N_TERMINAL = [false, true, true, false, true, false, false, true];

/** The next number state after byte `b`, or -1 when `b` does not continue the number. */
function numberStep(ns: number, b: number): number {
  const digit = b >= 0x30 && b <= 0x39;
  switch (ns) {
    case N_MINUS:
      return b === 0x30 ? N_ZERO : digit ? N_INT : -1;
    case N_ZERO:
    case N_INT:
    case N_FRAC:
      if (digit && ns !== N_ZERO) return ns;
      if (b === 0x2e && ns !== N_FRAC) return N_DOT;
      return b === 0x65 || b === 0x45 ? N_E : -1;
    case N_DOT:
      return digit ? N_FRAC : -1;
    case N_E:
      return b === 0x2b || b === 0x2d ? N_ESIGN : digit ? N_EXP : -1;
    default: // N_ESIGN, N_EXP
      return digit ? N_EXP : -1;
  }
}

/** The character each short escape stands for, by the byte after the backslash (0: not one). */
const SHORT_ESCAPES = new Uint8Array(256);
for (const [b, u] of [
  [0x22, 0x22],
  [0x5c, 0x5c],
  [0x2f, 0x2f],
  [0x62, 8],
  [0x66, 0xc],
  [0x6e, 0xa],
  [0x72, 0xd],
  [0x74, 9],
])
  SHORT_ESCAPES[b!] = u!;
/** Each byte's value as a hex digit, -1 for the others. */
const HEX = new Int8Array(256).fill(-1);
for (let b = 0; b < 256; b++) {
  if (b >= 0x30 && b <= 0x39) HEX[b] = b - 0x30;
  else if ((b | 0x20) >= 0x61 && (b | 0x20) <= 0x66) HEX[b] = (b | 0x20) - 0x61 + 10;
}
const LITERALS: Record<number, [Uint8Array, unknown]> = {
  0x74: [Buffer.from('true'), true],
  0x66: [Buffer.from('false'), false],
  0x6e: [Buffer.from('null'), null],
};
const BOM_BYTES = [0xef, 0xbb, 0xbf];
/** Runs of plain string bytes at least this long are decoded on their own (else through the unit buffer). */
const LONG_RUN = 256;
/** UTF-16 units buffered before they join the string being built. */
const UNITS = 8192;
/** The short-string cache: slots, and bytes per slot (a length, then up to CACHE_BYTES - 1 bytes). */
const CACHE_SLOTS = 1024;
const CACHE_BYTES = 32;

/** Buffer's own decoders, which `toString` calls after checking its arguments (Node has had them since 0.x; not typed). */
interface Slices {
  utf8Slice(start: number, end: number): string;
  latin1Slice(start: number, end: number): string;
  ucs2Slice(start: number, end: number): string;
}
const hasSlices = typeof (Buffer.prototype as Partial<Slices>).utf8Slice === 'function';
const utf8 = hasSlices
  ? (b: Buffer, s: number, e: number) => (b as Buffer & Slices).utf8Slice(s, e)
  : (b: Buffer, s: number, e: number) => b.toString('utf8', s, e);
const latin1 = hasSlices
  ? (b: Buffer, s: number, e: number) => (b as Buffer & Slices).latin1Slice(s, e)
  : (b: Buffer, s: number, e: number) => b.toString('latin1', s, e);
/** UTF-16 code units as a string: little-endian bytes decoded, else (a big-endian host) one by one. */
const fromUnits =
  endianness() === 'LE'
    ? (units: Uint16Array, n: number) => {
        const b = Buffer.from(units.buffer, units.byteOffset, 2 * n);
        return hasSlices ? (b as Buffer & Slices).ucs2Slice(0, 2 * n) : b.toString('utf16le');
      }
    : (units: Uint16Array, n: number) => String.fromCharCode.apply(null, units.subarray(0, n) as unknown as number[]);

function show(b: number): string {
  return b > 0x20 && b < 0x7f ? `'${String.fromCharCode(b)}'` : `byte 0x${b.toString(16).padStart(2, '0')}`;
}

/** `bytes` without an incomplete UTF-8 sequence at its end (a prefix cut from a longer text). */
export function trimPartialUtf8(bytes: Uint8Array): Uint8Array {
  let end = bytes.length;
  for (let k = 1; k <= 3 && end - k >= 0; k++) {
    const b = bytes[end - k]!;
    if ((b & 0xc0) !== 0x80) {
      const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
      if (need > k) end -= k;
      break;
    }
  }
  return bytes.subarray(0, end);
}

/**
 * Parses one JSON text fed in chunks: `push` each chunk in order, then `end` returns the value. Throws
 * HeaderJsonError ("is not valid UTF-8", "is not valid JSON: ... at byte N", or a limit) at the first
 * fault. Keeps no reference to a chunk after `push` returns, so the caller may reuse its buffer.
 */
export class HeaderJsonParser {
  private state = START;
  /** Header offset of the current chunk's first byte. */
  private base = 0;
  /** Open containers, by depth: an object (filled as its members come), or null for an array. */
  private readonly objects: (Record<string, unknown> | null)[] = [];
  /** By depth: an object's key whose value comes next; an array's first element in `elements`. */
  private readonly keys: string[] = [];
  private readonly firsts: number[] = [];
  /** The open arrays' elements (each array is made at its close, of its exact length). */
  private readonly elements: unknown[] = [];
  private depth = 0;
  /** The depth of `__metadata__`'s object (or array) once open, -1 outside it. */
  private metaDepth = -1;
  /** Short plain strings seen before (keys repeat: dtype, shape, data_offsets), by a hash of their bytes. */
  private readonly cacheStrings: (string | undefined)[] = new Array<string | undefined>(CACHE_SLOTS);
  private readonly cacheBytes = new Uint8Array(CACHE_SLOTS * CACHE_BYTES);
  private result: unknown;
  /** UTF-8 validation: an incomplete sequence at the last chunk's end. */
  private readonly carry = new Uint8Array(4);
  private carryLen = 0;
  // the string being parsed
  private strKey = false;
  private strAt = 0;
  private strLimit = 0;
  private strMeta = false;
  private strBytes = 0;
  private str = '';
  private readonly units = new Uint16Array(UNITS);
  private nUnits = 0;
  /** Whether a unit over 0xff is buffered (else the units are made a one-byte string through `latin`). */
  private wide = false;
  private readonly latin = Buffer.alloc(UNITS);
  /** A UTF-8 sequence cut by a chunk's end: its bits so far and the bytes it still needs. */
  private cp = 0;
  private need = 0;
  private hex = 0;
  private hexDigits = 0;
  /** All strings' bytes so far. */
  private stringBytes = 0;
  // the number or literal being parsed
  private ns = 0;
  private numAt = 0;
  private numText = '';
  private literal: [Uint8Array, unknown] = LITERALS[0x6e]!;
  private literalPos = 0;
  private bomPos = 0;
  /** A fault found in a chunk that ends inside a UTF-8 sequence, thrown once that sequence is checked. */
  private deferred: HeaderJsonError | undefined;

  constructor(private readonly limits: HeaderJsonLimits) {}

  /** Parses the next chunk of the text. */
  push(bytes: Uint8Array): void {
    this.checkUtf8(bytes);
    if (this.deferred) {
      if (this.carryLen === 0) throw this.deferred;
      return;
    }
    try {
      this.parse(bytes);
    } catch (err) {
      // as when the whole text was checked first: invalid UTF-8 in the sequence cut by this chunk's end goes first
      if (err instanceof HeaderJsonError && this.carryLen > 0) this.deferred = err;
      else throw err;
    }
  }

  /** The parsed value, once every chunk was pushed. */
  end(): unknown {
    if (this.carryLen > 0) throw new HeaderJsonError('is not valid UTF-8');
    if (this.deferred) throw this.deferred;
    if (this.state === NUMBER) {
      if (!N_TERMINAL[this.ns]) throw this.syntax('Unexpected end of JSON input in a number', 0);
      this.value(Number(this.numText));
    }
    if (this.state !== DONE) throw new HeaderJsonError('is not valid JSON: Unexpected end of JSON input');
    return this.result;
  }

  private parse(bytes: Uint8Array): void {
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = bytes.length;
    let numStart = 0;
    let i = 0;
    while (i < n) {
      const b = bytes[i]!;
      switch (this.state) {
        case STRING:
          i = this.stringRun(buf, i);
          continue;
        case ESCAPE: {
          this.strBytes++;
          if (b === 0x75) {
            this.state = UNICODE;
            this.hex = 0;
            this.hexDigits = 0;
          } else {
            const u = SHORT_ESCAPES[b]!;
            if (u === 0) throw this.syntax(`Bad escaped character ${show(b)}`, i);
            this.unit(u);
            this.state = STRING;
          }
          i++;
          continue;
        }
        case UNICODE: {
          const h = HEX[b]!;
          if (h < 0) throw this.syntax(`Bad Unicode escape ${show(b)}`, i);
          this.strBytes++;
          this.hex = this.hex * 16 + h;
          if (++this.hexDigits === 4) {
            this.unit(this.hex);
            this.state = STRING;
          }
          i++;
          continue;
        }
        case NUMBER: {
          let ns = this.ns;
          let j = i;
          for (; j < n; j++) {
            const next = numberStep(ns, bytes[j]!);
            if (next < 0) break;
            ns = next;
          }
          this.ns = ns;
          if (j === n) {
            i = n;
            continue; // the number goes on in the next chunk (its text is kept below)
          }
          if (!N_TERMINAL[ns]) throw this.syntax(`Unexpected ${show(bytes[j]!)} in a number`, j);
          const text = this.numText + latin1(buf, numStart, j);
          this.numText = '';
          this.checkNumber(text.length);
          this.value(Number(text));
          i = j; // the byte after the number, as a structural one
          continue;
        }
        case LITERAL: {
          const [word, value] = this.literal;
          if (b !== word[this.literalPos]) throw this.syntax(`Unexpected ${show(b)}`, i);
          i++;
          if (++this.literalPos === word.length) this.value(value);
          continue;
        }
        case START:
          if (b === BOM_BYTES[0]) {
            this.state = BOM;
            this.bomPos = 1;
            i++;
          } else this.state = VALUE;
          continue;
        case BOM:
          if (b !== BOM_BYTES[this.bomPos]) throw this.syntax(`Unexpected ${show(b)}`, i);
          i++;
          if (++this.bomPos === 3) this.state = VALUE;
          continue;
      }
      if (b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09) {
        for (i++; i < n; i++) {
          const c = bytes[i]!;
          if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
        }
        continue;
      }
      switch (this.state) {
        case VALUE:
        case ARRAY_FIRST:
          if (b === 0x5d && this.state === ARRAY_FIRST) {
            this.close();
            i++;
          } else if (b === 0x2d || (b >= 0x30 && b <= 0x39)) {
            // an integer of up to 15 digits ended within this chunk: its value at once, exactly
            let j = b === 0x2d ? i + 1 : i;
            const digits = j;
            let v = 0;
            if (j < n && bytes[j] === 0x30) j++;
            else
              for (; j < n; j++) {
                const d = bytes[j]!;
                if (d < 0x30 || d > 0x39) break;
                v = v * 10 + d - 0x30;
              }
            const c = j < n ? bytes[j]! : 0x30;
            if (
              j > digits &&
              j - digits <= 15 &&
              j - i <= this.limits.maxNameBytes &&
              !(c >= 0x30 && c <= 0x39) &&
              c !== 0x2e &&
              c !== 0x65 &&
              c !== 0x45
            ) {
              this.value(b === 0x2d ? -v : v);
              i = j;
              continue;
            }
            this.state = NUMBER;
            this.ns = b === 0x2d ? N_MINUS : b === 0x30 ? N_ZERO : N_INT;
            this.numAt = this.base + i;
            this.numText = '';
            numStart = i++;
          } else {
            const k = this.depth === 1 && (b === 0x7b || b === 0x5b) ? this.entry(buf, i) : -1;
            i = k >= 0 ? k : this.beginValue(buf, b, i);
          }
          continue;
        case OBJECT_FIRST:
        case KEY:
          if (b === 0x7d && this.state === OBJECT_FIRST) {
            this.close();
            i++;
          } else if (b === QUOTE) i = this.beginString(buf, i, true);
          else throw this.syntax(`Unexpected ${show(b)}, expected a property name in double quotes`, i);
          continue;
        case COLON:
          if (b !== 0x3a) throw this.syntax(`Unexpected ${show(b)}, expected ':' after a property name`, i);
          this.state = VALUE;
          i++;
          continue;
        case AFTER: {
          const array = this.objects[this.depth - 1] === null;
          if (b === 0x2c) this.state = array ? VALUE : KEY;
          else if (b === (array ? 0x5d : 0x7d)) this.close();
          else
            throw this.syntax(
              `Unexpected ${show(b)}, expected ',' or '${array ? ']' : '}'}' after ${array ? 'an array element' : 'a property value'}`,
              i,
            );
          i++;
          continue;
        }
        default: // DONE
          throw this.syntax(`Unexpected non-whitespace character ${show(b)} after JSON`, i);
      }
    }
    if (this.state === NUMBER) {
      this.numText += latin1(buf, numStart, n);
      this.checkNumber(this.numText.length);
    } else if (this.state === STRING || this.state === ESCAPE || this.state === UNICODE) this.checkString();
    this.base += n;
  }

  /** Checks that `bytes` continue valid UTF-8, keeping an incomplete last sequence for the next chunk. */
  private checkUtf8(bytes: Uint8Array): void {
    let start = 0;
    if (this.carryLen > 0) {
      const lead = this.carry[0]!;
      const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
      while (this.carryLen < need && start < bytes.length) this.carry[this.carryLen++] = bytes[start++]!;
      if (this.carryLen < need) return;
      if (!isUtf8(this.carry.subarray(0, need))) throw new HeaderJsonError('is not valid UTF-8');
      this.carryLen = 0;
    }
    const rest = bytes.subarray(start);
    const whole = trimPartialUtf8(rest);
    if (!isUtf8(whole)) throw new HeaderJsonError('is not valid UTF-8');
    this.carry.set(rest.subarray(whole.length));
    this.carryLen = rest.length - whole.length;
  }

  private syntax(what: string, i: number): HeaderJsonError {
    return new HeaderJsonError(`is not valid JSON: ${what} at byte ${this.base + i}`);
  }

  /**
   * A top-level member's value (a tensor's entry) from `i`, when it ends within this chunk and takes at
   * most maxNameBytes (so each token in it is within the limits): JSON.parse'd at once, which is faster
   * than this parser, above all before the JIT has warmed up. Returns the index after it, or -1 for the
   * state machine (too long, not whole here, or not valid: then the state machine finds the fault).
   */
  private entry(buf: Buffer, i: number): number {
    const end = Math.min(buf.length, i + this.limits.maxNameBytes);
    let depth = 0;
    let inString = false;
    let strBytes = 0;
    for (let j = i; j < end; j++) {
      const c = buf[j]!;
      if (inString) {
        if (c === QUOTE) inString = false;
        else if (c === BACKSLASH) {
          j++;
          strBytes += 2;
        } else strBytes++;
      } else if (c === QUOTE) inString = true;
      else if (c === 0x7b || c === 0x5b) depth++;
      else if ((c === 0x7d || c === 0x5d) && --depth === 0) {
        if (this.stringBytes + strBytes > this.limits.maxStringBytes) return -1;
        let v: unknown;
        try {
          v = JSON.parse(utf8(buf, i, j + 1));
        } catch {
          return -1;
        }
        this.stringBytes += strBytes;
        this.value(v);
        return j + 1;
      }
    }
    return -1;
  }

  /** A value starting with byte `b` at `i` other than a number or ']'; returns the next index. */
  private beginValue(buf: Buffer, b: number, i: number): number {
    if (b === QUOTE) return this.beginString(buf, i, false);
    if (b === 0x7b || b === 0x5b) {
      const d = this.depth++;
      if (d === 1 && this.objects[0] !== null && this.keys[0] === '__metadata__') this.metaDepth = 2;
      if (b === 0x5b) {
        this.objects[d] = null;
        this.firsts[d] = this.elements.length;
        this.state = ARRAY_FIRST;
      } else {
        this.objects[d] = {};
        this.keys[d] = '';
        this.state = OBJECT_FIRST;
      }
      return i + 1;
    }
    const literal = LITERALS[b];
    if (!literal) throw this.syntax(`Unexpected ${show(b)}`, i);
    this.literal = literal;
    this.literalPos = 1;
    this.state = LITERAL;
    return i + 1;
  }

  /** A completed value: the header's, an array element or an object member. */
  private value(v: unknown): void {
    const d = this.depth - 1;
    if (d < 0) {
      this.result = v;
      this.state = DONE;
      return;
    }
    this.state = AFTER;
    const object = this.objects[d];
    if (object === null) this.elements.push(v);
    else {
      const key = this.keys[d]!;
      if (key === '__proto__') Object.defineProperty(object, key, { value: v, enumerable: true, writable: true, configurable: true });
      else object![key] = v;
    }
  }

  private close(): void {
    const d = --this.depth;
    let v: unknown = this.objects[d];
    if (v === null) {
      const first = this.firsts[d]!;
      v = this.elements.slice(first);
      this.elements.length = first;
    }
    this.objects[d] = null;
    if (d < this.metaDepth) this.metaDepth = -1;
    this.value(v);
  }

  /** A string whose opening quote is at `i`: whole within this chunk and plain, it is decoded at once. */
  private beginString(buf: Buffer, i: number, key: boolean): number {
    this.strKey = key;
    this.strAt = this.base + i;
    // __metadata__'s values are bounded by the total only
    this.strMeta = this.metaDepth > 0 || (this.depth === 1 && !key && this.objects[0] !== null && this.keys[0] === '__metadata__');
    this.strLimit = key || !this.strMeta ? this.limits.maxNameBytes : Infinity;
    this.strBytes = 0;
    let j = i + 1;
    const n = buf.length;
    while (j < n) {
      const c = buf[j]!;
      if (c === QUOTE || c === BACKSLASH || c < 0x20) break;
      j++;
    }
    if (j < n && buf[j] === QUOTE) {
      this.strBytes = j - i - 1;
      this.checkString();
      this.endString(this.strBytes < CACHE_BYTES ? this.cached(buf, i + 1, j) : utf8(buf, i + 1, j));
      return j + 1;
    }
    this.str = '';
    this.nUnits = 0;
    this.need = 0;
    this.state = STRING;
    return i + 1;
  }

  /**
   * Inside a string from `i` (state STRING): its runs of plain bytes and the escapes between them, up to
   * its closing quote or the chunk's end (an escape cut by the end goes on in states ESCAPE, UNICODE);
   * returns the next index.
   */
  private stringRun(buf: Buffer, i: number): number {
    const n = buf.length;
    // the rest of a UTF-8 sequence cut by the last chunk's end
    while (this.need > 0 && i < n) {
      this.cp = (this.cp << 6) | (buf[i++]! & 0x3f);
      this.strBytes++;
      if (--this.need === 0) this.codePoint(this.cp);
    }
    for (;;) {
      let j = i;
      while (j < n) {
        const c = buf[j]!;
        if (c === QUOTE || c === BACKSLASH || c < 0x20) break;
        j++;
      }
      this.strBytes += j - i;
      // at the chunk's end the run may stop inside a sequence: decode up to it, keep its bits
      const end = j === n ? i + trimPartialUtf8(buf.subarray(i, j)).length : j;
      if (end - i >= LONG_RUN) {
        this.flushUnits();
        this.str += utf8(buf, i, end);
      } else if (end > i) {
        const s = utf8(buf, i, end);
        for (let k = 0; k < s.length; k++) this.unit(s.charCodeAt(k));
      }
      if (end < j) {
        const lead = buf[end]!;
        this.need = (lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2) - (j - end);
        this.cp = lead & (lead >= 0xf0 ? 0x07 : lead >= 0xe0 ? 0x0f : 0x1f);
        for (let k = end + 1; k < j; k++) this.cp = (this.cp << 6) | (buf[k]! & 0x3f);
      }
      if (j === n) return n;
      const c = buf[j]!;
      if (c === QUOTE) {
        this.checkString();
        this.flushUnits();
        const s = this.str;
        this.str = '';
        this.endString(s);
        return j + 1;
      }
      if (c !== BACKSLASH) throw this.syntax(`Bad control character ${show(c)} in string literal`, j);
      // an escape within this chunk, decoded here
      if (j + 1 < n && buf[j + 1] !== 0x75) {
        const u = SHORT_ESCAPES[buf[j + 1]!]!;
        if (u === 0) throw this.syntax(`Bad escaped character ${show(buf[j + 1]!)}`, j + 1);
        this.unit(u);
        this.strBytes += 2;
        i = j + 2;
        continue;
      }
      if (j + 5 < n) {
        const u = (HEX[buf[j + 2]!]! << 12) | (HEX[buf[j + 3]!]! << 8) | (HEX[buf[j + 4]!]! << 4) | HEX[buf[j + 5]!]!;
        if (u >= 0) {
          this.unit(u);
          this.strBytes += 6;
          i = j + 6;
          continue;
        }
      }
      this.strBytes++;
      this.state = ESCAPE;
      return j + 1;
    }
  }

  /** The string of plain bytes [s, e) (under CACHE_BYTES), from the cache when it was seen before. */
  private cached(buf: Buffer, s: number, e: number): string {
    let h = e - s;
    for (let k = s; k < e; k++) h = Math.imul(h ^ buf[k]!, 0x01000193);
    const slot = (h >>> 0) % CACHE_SLOTS;
    const at = slot * CACHE_BYTES;
    const cache = this.cacheBytes;
    const hit = this.cacheStrings[slot];
    if (hit !== undefined && cache[at] === e - s) {
      let k = s;
      while (k < e && cache[at + 1 + k - s] === buf[k]) k++;
      if (k === e) return hit;
    }
    const str = utf8(buf, s, e);
    cache[at] = e - s;
    cache.set(buf.subarray(s, e), at + 1);
    this.cacheStrings[slot] = str;
    return str;
  }

  private endString(s: string): void {
    this.stringBytes += this.strBytes;
    if (this.strKey) {
      this.keys[this.depth - 1] = s;
      this.state = COLON;
    } else this.value(s);
  }

  private unit(u: number): void {
    if (this.nUnits === UNITS) this.flushUnits();
    this.units[this.nUnits++] = u;
    if (u > 0xff) this.wide = true;
  }

  private codePoint(cp: number): void {
    if (cp < 0x10000) this.unit(cp);
    else {
      this.unit(0xd800 + ((cp - 0x10000) >> 10));
      this.unit(0xdc00 + ((cp - 0x10000) & 0x3ff));
    }
  }

  private flushUnits(): void {
    const n = this.nUnits;
    if (n === 0) return;
    if (this.wide) this.str += fromUnits(this.units, n);
    else {
      this.latin.set(this.units.subarray(0, n));
      this.str += latin1(this.latin, 0, n);
    }
    this.nUnits = 0;
    this.wide = false;
  }

  /** Refuses the string being parsed once it or all strings pass their limit. */
  private checkString(): void {
    const { maxNameBytes, maxStringBytes } = this.limits;
    if (this.strBytes > this.strLimit) {
      const what = this.strKey && this.depth === 1 ? 'tensor name' : this.strKey ? 'key' : 'string';
      throw new HeaderJsonError(
        `${what} at byte ${this.strAt} is longer than ${maxNameBytes} bytes (real names take under 300; the limit for a key and a string outside __metadata__'s values; VITREG_SAFETENSORS_MAX_NAME_BYTES raises it): corrupt or hostile`,
      );
    }
    if (this.stringBytes + this.strBytes > maxStringBytes)
      throw new HeaderJsonError(
        `strings take more than ${maxStringBytes} bytes (the string at byte ${this.strAt}, ${this.strMeta ? 'in __metadata__' : 'outside __metadata__'}, passes it; real headers hold a few KB of metadata and under 1 MB of names; VITREG_SAFETENSORS_MAX_STRING_BYTES raises the limit): corrupt or hostile`,
      );
  }

  private checkNumber(length: number): void {
    const max = this.limits.maxNameBytes;
    if (length > max)
      throw new HeaderJsonError(
        `number at byte ${this.numAt} is longer than ${max} bytes (VITREG_SAFETENSORS_MAX_NAME_BYTES raises the limit): corrupt or hostile`,
      );
  }
}
