/**
 * safetensors read/write (https://github.com/huggingface/safetensors, "Format"):
 *
 *   8 bytes  little-endian u64 N, the header length
 *   N bytes  UTF-8 JSON: { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { str: str } }
 *   rest     the data buffer; offsets are relative to its start
 *
 * The reader parses and validates the header once, then reads each tensor on demand with a
 * positioned read, so large files are never loaded or parsed twice. Validation follows the
 * reference implementation: tensors must lie inside the buffer, not overlap, and cover it with no
 * holes, and each byte range must equal numel x dtype size.
 */
import type { FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { openForReading, readFully, writeFileAtomic } from './fs.js';
import { HeaderScan, SAFETENSORS_LIMITS, safetensorsStringLimits } from './safetensors-header.js';
import { HeaderJsonError, HeaderJsonParser, trimPartialUtf8 } from './safetensors-json.js';
import { DTYPE_SIZE, isDType, isShape, numel, toFloat32, type DType, type HostTensor } from './tensor.js';

/** Dtype and shape of a stored tensor. */
export interface TensorInfo {
  dtype: DType;
  shape: number[];
}

interface Entry extends TensorInfo {
  name: string;
  begin: number;
  end: number;
}

/** Header bytes read and scanned at a time. */
const HEADER_CHUNK = 2 ** 20;

/** Lazily reads tensors from one safetensors file; call close() when done. */
export class SafetensorsReader {
  private constructor(
    /** The file this reader holds open. */
    readonly path: string,
    private readonly fh: FileHandle,
    private readonly entries: Map<string, Entry>,
    /** The header's `__metadata__` (empty if absent). */
    readonly metadata: Record<string, string>,
    private readonly dataStart: number,
  ) {}

  /** Opens `path` and validates its header; throws an error naming the file on any corruption. */
  static async open(path: string): Promise<SafetensorsReader> {
    const fh = await openForReading(path);
    try {
      const { entries, metadata, dataStart } = await readHeader(path, fh);
      return new SafetensorsReader(path, fh, entries, metadata, dataStart);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Tensor names in file order. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Dtype and shape of `name` without reading its data. */
  info(name: string): TensorInfo {
    const e = this.entry(name);
    return { dtype: e.dtype, shape: [...e.shape] };
  }

  /** Reads one tensor's bytes (a fresh, unshared buffer). */
  async read(name: string): Promise<HostTensor> {
    const e = this.entry(name);
    const data = new Uint8Array(e.end - e.begin);
    await readFully(this.fh, data, this.dataStart + e.begin, `${this.path}: tensor "${name}"`);
    return { dtype: e.dtype, shape: [...e.shape], data };
  }

  /**
   * Reads one tensor's stored bytes into `into`, which must be exactly as long (numel x the dtype's size),
   * with positioned reads: no buffer of the reader's own (safetensors-read-into.ts fills float32 views).
   */
  async readBytesInto(name: string, into: Uint8Array): Promise<void> {
    const e = this.entry(name);
    if (into.byteLength !== e.end - e.begin)
      throw new Error(`${this.path}: tensor "${name}" holds ${e.end - e.begin} bytes, the destination ${into.byteLength}`);
    await readFully(this.fh, into, this.dataStart + e.begin, `${this.path}: tensor "${name}"`);
  }

  /** Reads one tensor decoded to float32 (F32 data is used in place, not copied). */
  async readFloat32(name: string): Promise<Float32Array> {
    const t = await this.read(name);
    if (t.dtype === 'F32' && endianness() === 'LE') return new Float32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4);
    return toFloat32(t);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) {
      const names = this.names();
      const some =
        names
          .slice(0, 10)
          .map((n) => JSON.stringify(n))
          .join(', ') + (names.length > 10 ? `, ... (${names.length} in all)` : '');
      throw new Error(`${this.path}: no tensor "${name}" (the file holds ${some || 'no tensors'})`);
    }
    return e;
  }
}

/** Reads every tensor of a safetensors file, plus its metadata. */
export async function readSafetensors(path: string): Promise<{ tensors: Record<string, HostTensor>; metadata: Record<string, string> }> {
  const reader = await SafetensorsReader.open(path);
  try {
    const tensors: [string, HostTensor][] = [];
    for (const name of reader.names()) tensors.push([name, await reader.read(name)]);
    return { tensors: Object.fromEntries(tensors), metadata: { ...reader.metadata } };
  } finally {
    await reader.close();
  }
}

/**
 * Writes tensors (and optional string metadata) as a safetensors file, atomically. Tensors are laid
 * out by decreasing element size, then by name, as the reference writer does, so every tensor is
 * aligned to its element size; the header is padded with spaces to a multiple of 8 bytes.
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, HostTensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  const names = Object.keys(tensors);
  for (const name of names) checkTensorForWrite(path, name, tensors[name]);
  names.sort((a, b) => DTYPE_SIZE[tensors[b]!.dtype] - DTYPE_SIZE[tensors[a]!.dtype] || (a < b ? -1 : a > b ? 1 : 0));

  // Built by hand so keys keep this order (JS objects would move integer-like names first).
  const fields: string[] = [];
  if (metadata !== undefined) {
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata))
      throw new Error(`${path}: metadata must be an object of strings`);
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`${path}: metadata "${k}" must be a string, got ${describe(v)}`);
    }
    fields.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const name of names) {
    const t = tensors[name]!;
    const end = offset + t.data.byteLength;
    fields.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype: t.dtype, shape: t.shape, data_offsets: [offset, end] })}`);
    offset = end;
  }
  let json = Buffer.from(`{${fields.join(',')}}`, 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  await writeFileAtomic(path, [prefix, json, ...names.map((n) => tensors[n]!.data)]);
}

function checkTensorForWrite(path: string, name: string, t: HostTensor | undefined): void {
  const where = `${path}: tensor "${name}"`;
  if (name === '__metadata__') throw new Error(`${path}: "__metadata__" is reserved and cannot name a tensor`);
  if (!t || typeof t !== 'object') throw new Error(`${where}: expected a HostTensor, got ${describe(t)}`);
  if (!isDType(t.dtype)) throw new Error(`${where}: unknown dtype ${JSON.stringify(t.dtype)}`);
  if (!isShape(t.shape)) throw new Error(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(t.shape)}`);
  if (!(t.data instanceof Uint8Array)) throw new Error(`${where}: data must be a Uint8Array, got ${describe(t.data)}`);
  const need = numel(t.shape) * DTYPE_SIZE[t.dtype];
  if (t.data.byteLength !== need) {
    throw new Error(`${where}: ${t.dtype} shape [${t.shape.join(',')}] needs ${need} bytes, data has ${t.data.byteLength}`);
  }
}

/**
 * What a file is, from its first bytes, when they say so clearly (for "X is not a safetensors file: it
 * is ..." and the .pth reader's equivalent); undefined when they do not. `size` is the whole file's.
 */
export function fileKind(head: Uint8Array, size: number): string | undefined {
  const starts = (...bytes: number[]) => bytes.every((b, i) => head[i] === b);
  if (size === 0) return 'empty';
  if (starts(0x50, 0x4b, 0x03, 0x04)) return 'a zip archive (a PyTorch .pth checkpoint? name it .pth)';
  if (head[0] === 0x80 && head.length > 1 && head[1]! >= 2 && head[1]! <= 5) return 'a Python pickle (a legacy torch.save file?)';
  if (starts(0x89, 0x50, 0x4e, 0x47)) return 'a PNG image';
  if (starts(0xff, 0xd8, 0xff)) return 'a JPEG image';
  if (starts(0x47, 0x49, 0x46, 0x38)) return 'a GIF image';
  if (starts(0x1f, 0x8b)) return 'gzip-compressed';
  if (head.length >= 9 && head[8] === 0x7b) {
    const n = Buffer.from(head.buffer, head.byteOffset, 8).readBigUInt64LE(0);
    if (n >= 2n && 8n + n <= BigInt(size)) return 'a safetensors file';
  }
  if (head.length >= 3 && head[0] === 0x08 && head[1]! > 0 && head[1]! < 16 && head[2] === 0x12) return 'an ONNX model (name it .onnx)';
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(head.length === 64 ? trimPartialUtf8(head) : head);
  } catch {
    return undefined;
  }
  if (!/^[\t\n\r\x20-\x7e\u00a0-\uffff]+$/u.test(text)) return undefined;
  const first = text.trim().split(/\r?\n/)[0]!.slice(0, 40);
  return `text ("${first}${text.trim().length > first.length ? '...' : ''}")`;
}

async function readHeader(
  path: string,
  fh: FileHandle,
): Promise<{ entries: Map<string, Entry>; metadata: Record<string, string>; dataStart: number }> {
  const { size } = await fh.stat();
  if (size < 8) throw new Error(`${path}: not a safetensors file: ${size} bytes, too short for the 8-byte header length`);
  const lenBytes = new Uint8Array(8);
  await readFully(fh, lenBytes, 0, path);
  const n = Buffer.from(lenBytes.buffer).readBigUInt64LE(0);
  const maxHeader = SAFETENSORS_LIMITS.maxHeaderBytes;
  if (n > BigInt(maxHeader) || 8n + n > BigInt(size)) {
    // Not a header length: say what the file is when its first bytes tell (text, an image, a zip...).
    const head = new Uint8Array(Math.min(size, 64));
    await readFully(fh, head, 0, path);
    const kind = fileKind(head, size);
    if (kind) throw new Error(`${path} is not a safetensors file: it is ${kind}`);
  }
  if (n > BigInt(maxHeader))
    throw new Error(
      `${path}: header length ${n} is absurd (limit ${maxHeader} bytes; file is ${size} bytes): not a safetensors file or corrupt`,
    );
  const headerLen = Number(n);
  if (8 + headerLen > size)
    throw new Error(`${path}: header length ${headerLen} runs past the end of the file (${size} bytes): truncated or corrupt`);
  const header = await readScannedHeader(path, fh, headerLen);
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new Error(`${path}: header must be a JSON object, got ${describe(header)}`);
  }

  const bufferLen = size - 8 - headerLen;
  const metadata: Record<string, string> = {};
  const list: Entry[] = [];
  const obj = header as Record<string, unknown>;
  for (const name of Object.keys(obj)) {
    const value = obj[name];
    if (name === '__metadata__') {
      if (typeof value !== 'object' || value === null || Array.isArray(value))
        throw new Error(`${path}: __metadata__ must be an object of strings, got ${describe(value)}`);
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new Error(`${path}: __metadata__ "${k}" must be a string, got ${describe(v)}`);
        Object.defineProperty(metadata, k, { value: v, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    list.push(parseEntry(path, name, value, bufferLen));
  }

  // Sorted by position, each tensor must start exactly where the previous one ended (files written by
  // the reference writer are in order already: checked in one pass before sorting a copy).
  const before = (a: Entry, b: Entry) => a.begin - b.begin || a.end - b.end;
  let inOrder = true;
  for (let i = 1; i < list.length && inOrder; i++) inOrder = before(list[i - 1]!, list[i]!) <= 0;
  const sorted = inOrder ? list : [...list].sort(before);
  let pos = 0;
  let prev: Entry | undefined;
  for (const e of sorted) {
    if (e.begin < pos)
      throw new Error(
        `${path}: tensor "${e.name}" bytes [${e.begin}, ${e.end}) overlap tensor "${prev!.name}" [${prev!.begin}, ${prev!.end})`,
      );
    if (e.begin > pos)
      throw new Error(`${path}: bytes [${pos}, ${e.begin}) of the data buffer belong to no tensor (a hole before tensor "${e.name}")`);
    pos = e.end;
    prev = e;
  }
  if (pos !== bufferLen)
    throw new Error(
      `${path}: the data buffer has ${bufferLen} bytes but its tensors cover only ${pos}: ${bufferLen - pos} trailing bytes belong to no tensor`,
    );
  return { entries: new Map(sorted.map((e) => [e.name, e])), metadata, dataStart: 8 + headerLen };
}

/**
 * Reads the header's bytes in 1 MiB chunks, scanning each as it arrives (HeaderScan), then parsing it
 * (HeaderJsonParser: the value JSON.parse would give, never the bytes or the text whole) once the scan
 * is 8 MiB ahead or at the end: a header that size or less is counted whole before any of it is
 * parsed, so one refused for its counts costs no parse (50,000 tensors take 3.5-8 MB). Refuses a header
 * over SAFETENSORS_LIMITS within 8 MiB of the byte that passes a limit: too deep, too many values or
 * strings too long; too many tensors after counting the rest of the header (the parse then stops; the
 * error names the count).
 */
async function readScannedHeader(path: string, fh: FileHandle, headerLen: number): Promise<unknown> {
  const scanAhead = 8 * HEADER_CHUNK;
  const scan = new HeaderScan();
  let parser: HeaderJsonParser | undefined = new HeaderJsonParser(safetensorsStringLimits());
  const parse = <T>(step: (p: HeaderJsonParser) => T): T => {
    try {
      return step(parser!);
    } catch (err) {
      if (err instanceof HeaderJsonError) throw new Error(`${path}: header ${err.message}`, { cause: err });
      throw err;
    }
  };
  /** Chunks scanned, not yet parsed; a chunk's buffer once parsed, to read the next into. */
  const ahead: Uint8Array[] = [];
  let aheadBytes = 0;
  let spare: Uint8Array | undefined;
  for (let off = 0; off < headerLen;) {
    const end = Math.min(headerLen, off + HEADER_CHUNK);
    const chunk = spare && spare.length >= end - off ? spare.subarray(0, end - off) : new Uint8Array(end - off);
    spare = undefined;
    await readFully(fh, chunk, 8 + off, path);
    const refused = scan.scan(chunk, off);
    if (refused) throw new Error(`${path}: header ${refused}`);
    if (scan.overTensors) {
      parser = undefined;
      ahead.length = 0;
      spare = chunk;
    } else {
      ahead.push(chunk);
      aheadBytes += chunk.length;
      while (aheadBytes > scanAhead) {
        const first = ahead.shift()!;
        aheadBytes -= first.length;
        parse((p) => p.push(first));
        spare = first;
      }
    }
    off = end;
  }
  const max = SAFETENSORS_LIMITS.maxTensors;
  if (scan.tensors > max)
    throw new Error(
      `${path}: header declares ${scan.tensors} tensors, more than the limit of ${max} (the largest real checkpoints hold a few thousand): corrupt or hostile`,
    );
  for (const chunk of ahead) parse((p) => p.push(chunk));
  return parse((p) => p.end());
}

function parseEntry(path: string, name: string, value: unknown, bufferLen: number): Entry {
  const where = `${path}: tensor "${name}"`;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new Error(`${where}: expected an object {dtype, shape, data_offsets}, got ${describe(value)}`);
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (!isDType(dtype))
    throw new Error(`${where}: unknown dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_SIZE).join(', ')})`);
  if (!isShape(shape)) throw new Error(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw new Error(`${where}: data_offsets must be [begin, end] with non-negative integers, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) throw new Error(`${where}: data_offsets [${begin}, ${end}] have begin > end`);
  if (end > bufferLen)
    throw new Error(
      `${where}: data_offsets [${begin}, ${end}] run past the end of the data buffer (${bufferLen} bytes): truncated or corrupt`,
    );
  const need = numel(shape) * DTYPE_SIZE[dtype];
  if (end - begin !== need)
    throw new Error(
      `${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} shape [${shape.join(',')}] needs ${need}`,
    );
  return { name, dtype, shape, begin, end };
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Uint8Array) return 'bytes';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}
