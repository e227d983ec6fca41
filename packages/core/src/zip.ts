/**
 * A read-only zip reader for torch.save archives: the central directory (zip64 included), then one
 * entry at a time by positioned reads, stored or deflated. It knows nothing of PyTorch; `pth.ts` asks
 * it for `data.pkl`, `byteorder` and the storage entries.
 *
 * Hostile archives are refused before they cost memory: the central directory, each local header and
 * each data descriptor must agree (name, method, sizes, CRC); entries may not overlap or share bytes
 * (each must end before the next local header); a caller that knows an entry's size (the tensor
 * header's numel x dtype size) has it checked before anything is read; deflated entries are inflated
 * with a cap at their declared size, so the first byte past it stops the inflation, and an archive may
 * inflate to at most `ZIP_LIMITS.inflatedBytes` plus `inflatedPerByte` x its own size in all, and one entry
 * to at most 1 MiB plus `maxDeflateRatio` x its deflated size where its reader asks (pth.ts, for data.pkl).
 */
import type { FileHandle } from 'node:fs/promises';
import { inflateRawSync } from 'node:zlib';
import { InputError } from './errors.js';
import { readFully } from './fs.js';
import { fileKind } from './safetensors.js';

/** How much an archive's deflated entries may expand to in all. */
export const ZIP_LIMITS = {
  /** Bytes any archive may inflate to, whatever its size. */
  inflatedBytes: 64 * 2 ** 20,
  /** Plus this many per byte of the archive (torch.save stores tensors uncompressed; weights compress ~1.1x). */
  inflatedPerByte: 32,
};

interface ZipEntry {
  name: string;
  flags: number;
  method: number;
  crc: number;
  compressedSize: number;
  size: number;
  localOffset: number;
  /** Where the next local header (or the central directory) starts: the entry's bytes end before it. */
  limit: number;
}

/** What `read` checks beyond the directory. */
export interface ZipReadOptions {
  /** The entry must hold exactly this many bytes (checked before reading, and while inflating). */
  expectedSize?: number;
  /** The entry may hold at most this many bytes. */
  maxSize?: number;
  /** What the expected size comes from, for the error (e.g. `tensor "w": 10 x F32`). */
  why?: string;
  /**
   * A deflated entry may hold at most 1 MiB plus this many times its deflated bytes (checked before
   * inflating; the inflation stops at the declared size): for an entry that its writer stores, so that a
   * small file cannot make its reader hold the archive's whole inflation budget.
   */
  maxDeflateRatio?: number;
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

  private inflated = 0;

  static async open(path: string, fh: FileHandle): Promise<ZipReader> {
    const { size } = await fh.stat();
    const at = async (position: number, length: number): Promise<DataView> => {
      if (position < 0 || position + length > size)
        throw new InputError(
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
        throw new InputError(`${path}: legacy (pre-1.6) torch.save format, not a zip archive; re-save it with a current PyTorch`);
      const head = new Uint8Array(Math.min(size, 64));
      if (size > 0) await readFully(fh, head, 0, path);
      const kind = fileKind(head, size);
      throw new InputError(`${path}: not a zip archive (torch.save checkpoints are zip files)${kind ? `: it is ${kind}` : ''}`);
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
    if (eocd < 0) throw new InputError(`${path}: truncated or corrupt zip archive: end-of-central-directory record not found`);
    let count = tail.getUint16(eocd + 10, true);
    let cdSize = tail.getUint32(eocd + 12, true);
    let cdOffset = tail.getUint32(eocd + 16, true);
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      const locPos = size - tailLen + eocd - 20;
      const loc = await at(locPos, 20);
      if (loc.getUint32(0, true) !== ZIP64_LOCATOR_SIG)
        throw new InputError(`${path}: corrupt zip archive: zip64 end-of-central-directory locator not found`);
      const z = await at(safeU64(path, loc, 8), 56);
      if (z.getUint32(0, true) !== ZIP64_EOCD_SIG)
        throw new InputError(`${path}: corrupt zip archive: bad zip64 end-of-central-directory record`);
      count = safeU64(path, z, 32);
      cdSize = safeU64(path, z, 40);
      cdOffset = safeU64(path, z, 48);
    }
    const cd = await at(cdOffset, cdSize);
    const entries = new Map<string, ZipEntry>();
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cdSize || cd.getUint32(p, true) !== CENTRAL_SIG)
        throw new InputError(`${path}: corrupt zip archive: bad central directory entry ${i}`);
      const nameLen = cd.getUint16(p + 28, true);
      const extraLen = cd.getUint16(p + 30, true);
      const commentLen = cd.getUint16(p + 32, true);
      if (p + 46 + nameLen + extraLen > cdSize)
        throw new InputError(`${path}: corrupt zip archive: central directory entry ${i} runs past the directory`);
      const name = new TextDecoder().decode(new Uint8Array(cd.buffer, p + 46, nameLen));
      const entry: ZipEntry = {
        name,
        flags: cd.getUint16(p + 8, true),
        method: cd.getUint16(p + 10, true),
        crc: cd.getUint32(p + 16, true),
        compressedSize: cd.getUint32(p + 20, true),
        size: cd.getUint32(p + 24, true),
        localOffset: cd.getUint32(p + 42, true),
        limit: cdOffset,
      };
      readZip64Extra(path, entry, new DataView(cd.buffer, p + 46 + nameLen, extraLen));
      if (entries.has(name)) throw new InputError(`${path}: corrupt zip archive: two entries named ${JSON.stringify(name)}`);
      if (entry.flags & 1) throw new InputError(`${path}: zip entry ${name} is encrypted (not a torch.save archive)`);
      entries.set(name, entry);
      p += 46 + nameLen + extraLen + commentLen;
    }
    // Entries in file order: each one's header and data must end before the next one's header starts.
    const ordered = [...entries.values()].sort((a, b) => a.localOffset - b.localOffset);
    for (let i = 0; i < ordered.length; i++) {
      const e = ordered[i]!;
      e.limit = i + 1 < ordered.length ? ordered[i + 1]!.localOffset : cdOffset;
      const nameBytes = new TextEncoder().encode(e.name).byteLength;
      if (e.localOffset + 30 + nameBytes + e.compressedSize > e.limit)
        throw new InputError(
          `${path}: corrupt zip archive: entry ${e.name} (local header at byte ${e.localOffset}, ${e.compressedSize} bytes of data) overlaps ${
            i + 1 < ordered.length ? `entry ${ordered[i + 1]!.name} at byte ${e.limit}` : `the central directory at byte ${e.limit}`
          }`,
        );
    }
    return new ZipReader(path, fh, size, entries);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Declared (uncompressed) size of an entry, from the central directory. */
  sizeOf(name: string): number {
    return this.entries.get(name)!.size;
  }

  /**
   * The uncompressed bytes of one entry (stored or deflated), its local header and data descriptor
   * cross-checked with the central directory, its size with `opts.expectedSize` / `opts.maxSize`.
   */
  async read(name: string, opts: ZipReadOptions = {}): Promise<Uint8Array> {
    const e = this.entries.get(name)!;
    const where = `${this.path}: zip entry ${name}`;
    if (opts.expectedSize !== undefined && e.size !== opts.expectedSize)
      throw new InputError(
        `${where}: the directory says ${e.size} bytes, but ${opts.why ?? 'its reader'} needs ${opts.expectedSize} (corrupt archive)`,
      );
    if (opts.maxSize !== undefined && e.size > opts.maxSize)
      throw new InputError(`${where}: the directory says ${e.size} bytes, over the limit of ${opts.maxSize} for this entry`);
    if (e.method !== 0 && e.method !== 8)
      throw new InputError(`${where}: unsupported compression method ${e.method} (only stored and deflate)`);
    if (e.method === 8 && opts.maxDeflateRatio !== undefined && e.size > 2 ** 20 + opts.maxDeflateRatio * e.compressedSize)
      throw new InputError(
        `${where}: ${e.compressedSize} deflated bytes would inflate to ${e.size}, over the limit of 1 MiB + ${opts.maxDeflateRatio} x its deflated size for this entry (${opts.why ?? 'its writer stores it'}): a deflate bomb or corrupt archive`,
      );
    if (e.method === 0 && e.compressedSize !== e.size)
      throw new InputError(`${where}: stored entry with ${e.compressedSize} bytes of data and size ${e.size} (corrupt archive)`);
    if (e.localOffset + 30 > this.size) throw new InputError(`${where}: local header past the end of the file (truncated archive)`);
    const head = new Uint8Array(30);
    await readFully(this.fh, head, e.localOffset, where);
    const hv = new DataView(head.buffer);
    if (hv.getUint32(0, true) !== LOCAL_SIG) throw new InputError(`${where}: bad local header (corrupt archive)`);
    const nameLen = hv.getUint16(26, true);
    const extraLen = hv.getUint16(28, true);
    const start = e.localOffset + 30 + nameLen + extraLen;
    if (start + e.compressedSize > this.size)
      throw new InputError(`${where}: data runs past the end of the file (${this.size} bytes): truncated archive`);
    if (start + e.compressedSize > e.limit)
      throw new InputError(`${where}: local header and data run past the next entry at byte ${e.limit} (corrupt archive)`);
    const local = new Uint8Array(nameLen + extraLen);
    await readFully(this.fh, local, e.localOffset + 30, where);
    this.crossCheck(e, hv, local, nameLen, where);
    if (e.flags & 8) await this.checkDescriptor(e, start + e.compressedSize, where);

    const cost = e.method === 8 ? e.size : 0;
    const budget = ZIP_LIMITS.inflatedBytes + ZIP_LIMITS.inflatedPerByte * this.size;
    if (e.method === 8 && (e.size > 1032 * e.compressedSize + 64 || this.inflated + cost > budget))
      throw new InputError(
        `${where}: ${e.compressedSize} deflated bytes would inflate to ${e.size} (${this.inflated} inflated before it; ` +
          `limit ${budget} for a ${this.size}-byte archive): a deflate bomb or corrupt archive (torch.save stores tensors uncompressed)`,
      );
    const raw = new Uint8Array(e.compressedSize);
    await readFully(this.fh, raw, start, where);
    let data: Uint8Array;
    if (e.method === 0) data = raw;
    else {
      this.inflated += cost;
      try {
        // The cap stops the inflation at the first byte past the declared size.
        data = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE')
          throw new InputError(
            `${where}: inflates to more than the ${e.size} bytes the directory says (a deflate bomb or corrupt archive)`,
            {
              cause: err,
            },
          );
        throw new InputError(`${where}: cannot inflate: ${(err as Error).message}`, { cause: err });
      }
    }
    if (data.byteLength !== e.size)
      throw new InputError(`${where}: holds ${data.byteLength} bytes, the directory says ${e.size} (corrupt archive)`);
    return data;
  }

  /** The local header must name the same entry, method and (without a data descriptor) sizes and CRC. */
  private crossCheck(e: ZipEntry, hv: DataView, local: Uint8Array, nameLen: number, where: string): void {
    const bad = (what: string) => new InputError(`${where}: local header ${what} differs from the central directory's (corrupt archive)`);
    const localName = new TextDecoder().decode(local.subarray(0, nameLen));
    if (localName !== e.name) throw bad(`name ${JSON.stringify(localName)}`);
    if (hv.getUint16(8, true) !== e.method) throw bad(`compression method ${hv.getUint16(8, true)}`);
    if ((hv.getUint16(6, true) & 8) !== (e.flags & 8)) throw bad('data-descriptor flag');
    if (e.flags & 8) return; // sizes and CRC follow the data
    if (hv.getUint32(14, true) !== e.crc) throw bad(`CRC 0x${hv.getUint32(14, true).toString(16)}`);
    let csize = hv.getUint32(18, true);
    let usize = hv.getUint32(22, true);
    if (csize === 0xffffffff || usize === 0xffffffff) {
      const z: ZipEntry = { ...e, size: usize, compressedSize: csize, localOffset: 0 };
      readZip64Extra(this.path, z, new DataView(local.buffer, local.byteOffset + nameLen, local.byteLength - nameLen));
      csize = z.compressedSize;
      usize = z.size;
    }
    if (csize !== e.compressedSize) throw bad(`compressed size ${csize}`);
    if (usize !== e.size) throw bad(`size ${usize}`);
  }

  /** A data descriptor (optional signature, CRC, sizes of 4 or 8 bytes) must match the central directory. */
  private async checkDescriptor(e: ZipEntry, at: number, where: string): Promise<void> {
    const room = Math.min(24, e.limit - at, this.size - at);
    const b = new Uint8Array(Math.max(0, room));
    if (room < 12) throw new InputError(`${where}: data descriptor missing after the data (truncated or corrupt archive)`);
    await readFully(this.fh, b, at, where);
    const v = new DataView(b.buffer);
    const p = v.getUint32(0, true) === 0x08074b50 ? 4 : 0;
    const matches = (wide: boolean): boolean => {
      const n = wide ? 8 : 4;
      if (p + 4 + 2 * n > room) return false;
      const read = (q: number) => (wide ? Number(v.getBigUint64(q, true)) : v.getUint32(q, true));
      return v.getUint32(p, true) === e.crc && read(p + 4) === e.compressedSize && read(p + 4 + n) === e.size;
    };
    if (!matches(false) && !matches(true))
      throw new InputError(`${where}: data descriptor disagrees with the central directory (CRC or sizes; corrupt archive)`);
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
        if (q + 8 > p + 4 + len) throw new InputError(`${path}: corrupt zip archive: short zip64 field for ${e.name}`);
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
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new InputError(`${path}: corrupt zip archive: 64-bit field ${n} is out of range`);
  return Number(n);
}
