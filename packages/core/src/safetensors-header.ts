/**
 * A safetensors header counted before it is parsed (issue 21): a linear byte scan of its JSON, chunk by
 * chunk as the chunks are read (each chunk before safetensors-json.ts parses it), that allocates nothing
 * per value and counts the top-level members (the tensors), every JSON value and the nesting depth. A
 * header within the 100 MB limit could otherwise declare over a million tensors: `JSON.parse` then built
 * several objects per tensor (300,000 tensors in 21.8 MB took 1.2 s and 226 MB over the process's own
 * 118 MB before the reader could refuse the file). With the limits below the parse that follows is
 * bounded (50,000 tensors: ~0.35 CPU-s, ~40 MB); the string limits bound what a huge string costs.
 */

/** What one safetensors header may hold; mutable (tests lower them), like the pickle reader's limits. */
export const SAFETENSORS_LIMITS = {
  /** Header bytes: the reference implementation's limit. */
  maxHeaderBytes: 100_000_000,
  /** Tensors in one file; the largest real checkpoints hold a few thousand (a ViT-g ~600, its optimiser state ~2,000). */
  maxTensors: 50_000,
  /** JSON values (objects, arrays, strings, numbers, literals) in the header: a tensor takes 6 to 10. */
  maxValues: 500_000,
  /** Nesting depth: a header needs 3 (the header, a tensor, its shape). */
  maxDepth: 64,
  /**
   * Bytes of one key anywhere, of one string outside `__metadata__`'s values (a tensor name, a dtype) and
   * of one number, as written in the header: real names take under 300. Kept under V8's 16,383
   * characters, past which a string is hashed by its length alone (1,500 names of 64 KiB took 13 s to key
   * an object). `VITREG_SAFETENSORS_MAX_NAME_BYTES` raises it.
   */
  maxNameBytes: 8192,
  /**
   * Bytes of all the header's strings together (`__metadata__`'s keys and values, names, dtypes). Real
   * headers hold a few KB of metadata (vitreg's configs, Hugging Face's `format`, diffusers' and timm's
   * few fields; a kohya LoRA's dataset tag counts and thumbnail a few MB at most) and 5 MB of names at
   * the 50,000-tensor limit; one 16 MiB string costs 16-32 MiB to build. `VITREG_SAFETENSORS_MAX_STRING_BYTES`
   * raises it.
   */
  maxStringBytes: 16 * 2 ** 20,
};

/** The string limits in force: the environment's (a positive integer), else SAFETENSORS_LIMITS'. */
export function safetensorsStringLimits(): { maxNameBytes: number; maxStringBytes: number } {
  const env = (name: string, fallback: number) => {
    const v = Number(process.env[name]);
    return Number.isSafeInteger(v) && v > 0 ? v : fallback;
  };
  return {
    maxNameBytes: env('VITREG_SAFETENSORS_MAX_NAME_BYTES', SAFETENSORS_LIMITS.maxNameBytes),
    maxStringBytes: env('VITREG_SAFETENSORS_MAX_STRING_BYTES', SAFETENSORS_LIMITS.maxStringBytes),
  };
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_OBJECT = 0x7b;
const OPEN_ARRAY = 0x5b;
const CLOSE_OBJECT = 0x7d;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;
/** `prev` after a value (a scalar, a string or a closed container) and after a key. */
const VALUE = 0x76;
const KEY = 0x6b;
const METADATA = Buffer.from('__metadata__');

/**
 * Counts a header's tensors, values and depth over successive chunks of its bytes. Exact for valid JSON
 * (a top-level key other than `__metadata__` is a tensor); on malformed JSON the counts are whatever the
 * bytes give, and the parser (safetensors-json.ts) reports the error.
 */
export class HeaderScan {
  /** Top-level keys other than `__metadata__`. */
  tensors = 0;
  /** JSON values seen (containers, strings, scalars). */
  values = 0;
  private depth = 0;
  private readonly kinds = new Uint8Array(SAFETENSORS_LIMITS.maxDepth + 2);
  private inString = false;
  private escape = false;
  private isKey = false;
  /** For a top-level key: its bytes so far, and whether they still spell `__metadata__`. */
  private keyLength = 0;
  private keyIsMetadata = false;
  /** The last byte outside strings that is not whitespace (VALUE / KEY after a value / key). */
  private prev = 0;

  /** True once more than `maxTensors` tensors were counted (the scan then counts only tensors). */
  get overTensors(): boolean {
    return this.tensors > SAFETENSORS_LIMITS.maxTensors;
  }

  /**
   * Scans `bytes`, the header's bytes from offset `at`. Returns why the header is refused (values or
   * depth over their limits, with the byte offset) or undefined.
   */
  scan(bytes: Uint8Array, at: number): string | undefined {
    const { maxValues, maxDepth } = SAFETENSORS_LIMITS;
    const n = bytes.length;
    for (let i = 0; i < n; i++) {
      if (this.inString && !this.escape && !(this.isKey && this.depth === 1)) {
        // a string's plain bytes change nothing: skip to its next quote or backslash
        while (i < n) {
          const c = bytes[i]!;
          if (c === QUOTE || c === BACKSLASH) break;
          i++;
        }
        if (i === n) break;
      }
      const b = bytes[i]!;
      if (this.inString) {
        if (this.escape) this.escape = false;
        else if (b === BACKSLASH) this.escape = true;
        else if (b === QUOTE) {
          this.inString = false;
          if (this.isKey) {
            if (this.depth === 1 && !(this.keyIsMetadata && this.keyLength === METADATA.length)) this.tensors++;
            this.prev = KEY;
          } else this.prev = VALUE;
          continue;
        }
        if (this.isKey && this.depth === 1) {
          if (this.keyLength >= METADATA.length || b !== METADATA[this.keyLength]) this.keyIsMetadata = false;
          this.keyLength++;
        }
        continue;
      }
      switch (b) {
        case 0x20:
        case 0x0a:
        case 0x0d:
        case 0x09:
          continue;
        case OPEN_OBJECT:
        case OPEN_ARRAY:
          this.values++;
          if (++this.depth > maxDepth)
            return `nests deeper than ${maxDepth} levels at byte ${at + i} (a header needs 3): corrupt or hostile`;
          this.kinds[this.depth] = b;
          this.prev = b;
          break;
        case CLOSE_OBJECT:
        case CLOSE_ARRAY:
          if (this.depth > 0) this.depth--;
          this.prev = VALUE;
          break;
        case QUOTE:
          this.inString = true;
          this.isKey = this.kinds[this.depth] === OPEN_OBJECT && (this.prev === OPEN_OBJECT || this.prev === COMMA);
          if (this.isKey) {
            this.keyLength = 0;
            this.keyIsMetadata = true;
          } else this.values++;
          break;
        case COLON:
        case COMMA:
          this.prev = b;
          break;
        default:
          // a number or literal: counted at its first byte
          if (this.prev !== VALUE) {
            this.values++;
            this.prev = VALUE;
          }
      }
      if (this.values > maxValues && !this.overTensors)
        return `holds more than ${maxValues} JSON values (at byte ${at + i}; a tensor takes 6 to 10): corrupt or hostile`;
    }
    return undefined;
  }
}
