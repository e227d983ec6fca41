/**
 * A read-only zip reader for torch.save archives: the central directory (zip64 included), then one
 * entry at a time by positioned reads, stored or deflated. It knows nothing of PyTorch; `pth.ts` asks
 * it for `data.pkl`, `byteorder` and the storage entries.
 */
import type { FileHandle } from 'node:fs/promises';
import { inflateRawSync } from 'node:zlib';
import { readFully } from './fs.js';
import { fileKind } from './safetensors.js';

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
export class ZipReader {
  private constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
    private readonly size: number,
    private readonly entries: Map<string, ZipEntry>,
  ) {}

  static async open(path: string, fh: FileHandle): Promise<ZipReader> {
    const { size } = await fh.stat();
    const at = async (position: number, length: number): Promise<DataView> => {
      if (position < 0 || position + length > size)
        throw new Error(
          `${path}: truncated or corrupt zip archive: a record at byte ${position} runs past the end of the file (${size} bytes)`,
        );
      const b = new Uint8Array(length);
      await readFully(fh, b, position, path);
      return new DataView(b.buffer);
    };

    const magic = size >= 4 ? (await at(0, 4)).getUint32(0, true) : 0;
    if (magic !== LOCAL_SIG) {
      const first = size > 0 ? (await at(0, 1)).getUint8(0) : -1;
      if (first === 0x80)
        throw new Error(`${path}: legacy (pre-1.6) torch.save format, not a zip archive; re-save it with a current PyTorch`);
      const head = new Uint8Array(Math.min(size, 64));
      if (size > 0) await readFully(fh, head, 0, path);
      const kind = fileKind(head, size);
      throw new Error(`${path}: not a zip archive (torch.save checkpoints are zip files)${kind ? `: it is ${kind}` : ''}`);
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
      if (loc.getUint32(0, true) !== ZIP64_LOCATOR_SIG)
        throw new Error(`${path}: corrupt zip archive: zip64 end-of-central-directory locator not found`);
      const z = await at(safeU64(path, loc, 8), 56);
      if (z.getUint32(0, true) !== ZIP64_EOCD_SIG)
        throw new Error(`${path}: corrupt zip archive: bad zip64 end-of-central-directory record`);
      count = safeU64(path, z, 32);
      cdSize = safeU64(path, z, 40);
      cdOffset = safeU64(path, z, 48);
    }
    const cd = await at(cdOffset, cdSize);
    const entries = new Map<string, ZipEntry>();
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cdSize || cd.getUint32(p, true) !== CENTRAL_SIG)
        throw new Error(`${path}: corrupt zip archive: bad central directory entry ${i}`);
      const nameLen = cd.getUint16(p + 28, true);
      const extraLen = cd.getUint16(p + 30, true);
      const commentLen = cd.getUint16(p + 32, true);
      if (p + 46 + nameLen + extraLen > cdSize)
        throw new Error(`${path}: corrupt zip archive: central directory entry ${i} runs past the directory`);
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
    if (start + e.compressedSize > this.size)
      throw new Error(`${where}: data runs past the end of the file (${this.size} bytes): truncated archive`);
    const raw = new Uint8Array(e.compressedSize);
    await readFully(this.fh, raw, start, where);
    let data: Uint8Array;
    if (e.method === 0) data = raw;
    else if (e.method === 8) {
      try {
        data = inflateRawSync(raw);
      } catch (err) {
        throw new Error(`${where}: cannot inflate: ${(err as Error).message}`, { cause: err });
      }
    } else throw new Error(`${where}: unsupported compression method ${e.method} (only stored and deflate)`);
    if (data.byteLength !== e.size)
      throw new Error(`${where}: holds ${data.byteLength} bytes, the directory says ${e.size} (corrupt archive)`);
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
