/**
 * Atomic file writes: data goes to a uniquely named temporary file in the target's folder, is
 * fsynced, then renamed over the target (and the folder fsynced, best effort only where the file
 * system refuses directory fsync: see `syncDir`), so readers see either the old
 * file or the complete new one, never a partial write. On failure the temporary file is removed
 * and the previous file is left as it was. Also: positioned reads that fill a buffer.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Largest single read or write; fs calls take at most 2 GiB - 1 bytes at once. */
const MAX_IO = 1 << 30;

/** Creates a folder and its parents if missing. */
export async function ensureDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
}

/**
 * Writes `data` to `path` atomically. `data` may be a string (UTF-8), bytes, or a list of byte
 * chunks written one after another (so large files need not be concatenated in memory first).
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string | readonly Uint8Array[]): Promise<void> {
  const chunks = typeof data === 'string' ? [Buffer.from(data, 'utf8')] : data instanceof Uint8Array ? [data] : data;
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fh;
  try {
    fh = await open(tmp, 'wx');
  } catch (err) {
    throw writeError(path, err);
  }
  try {
    try {
      for (const chunk of chunks) {
        if (!(chunk instanceof Uint8Array)) throw new TypeError(`data chunk is ${typeof chunk}, expected a Uint8Array`);
        for (let off = 0; off < chunk.byteLength;) {
          const { bytesWritten } = await fh.write(chunk, off, Math.min(chunk.byteLength - off, MAX_IO));
          off += bytesWritten;
        }
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw writeError(path, err);
  }
  await syncDir(dir);
}

/** An error naming the target file, keeping the system error's code and the original as cause. */
function writeError(path: string, err: unknown): Error {
  const e = err as NodeJS.ErrnoException;
  const out: NodeJS.ErrnoException = new Error(`${path}: cannot write: ${e?.message ?? String(err)}`, { cause: err });
  if (e?.code) out.code = e.code;
  return out;
}

/** Writes `value` as pretty-printed JSON plus a final newline, atomically. */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(value, null, 2) + '\n');
}

/**
 * Error codes with which a platform or file system refuses to open or fsync a folder (Windows cannot
 * open folders as files, EISDIR / EPERM; some network, FUSE and virtual file systems reject fsync of a
 * folder, EINVAL; a few systems need a writable descriptor for it, EBADF). `syncDir` skips the fsync
 * on these and only these.
 */
export const DIR_FSYNC_UNSUPPORTED: readonly string[] = ['EISDIR', 'EINVAL', 'EPERM', 'EBADF'];

export interface SyncDirOptions {
  /** Opens the folder (default `fs.promises.open`); a seam for tests and unusual file systems. */
  open?: (path: string, flags: 'r') => Promise<Pick<FileHandle, 'sync' | 'close'>>;
}

/**
 * fsyncs a folder so a rename in it is durable. Best effort only where the file system refuses
 * directory fsync (`DIR_FSYNC_UNSUPPORTED`): then it returns false and the rename is as durable as the
 * file system makes it. Any other failure (a missing folder, EACCES, EIO, ...) is thrown as
 * "<dir>: cannot fsync folder: ..." with the system error's code. Returns true when the folder was synced.
 */
export async function syncDir(dir: string, opts: SyncDirOptions = {}): Promise<boolean> {
  const openDir = opts.open ?? open;
  const unsupported = (err: unknown) => DIR_FSYNC_UNSUPPORTED.includes((err as NodeJS.ErrnoException)?.code ?? '');
  let fh;
  try {
    fh = await openDir(dir, 'r');
  } catch (err) {
    if (unsupported(err)) return false;
    throw syncError(dir, err);
  }
  let synced = true;
  try {
    await fh.sync();
  } catch (err) {
    if (!unsupported(err)) {
      await fh.close().catch(() => undefined);
      throw syncError(dir, err);
    }
    synced = false;
  }
  try {
    await fh.close();
  } catch (err) {
    throw syncError(dir, err);
  }
  return synced;
}

/** "<dir>: cannot fsync folder: ..." keeping the system error's code and the original as cause. */
function syncError(dir: string, err: unknown): Error {
  const e = err as NodeJS.ErrnoException;
  const out: NodeJS.ErrnoException = new Error(`${dir}: cannot fsync folder: ${e?.message ?? String(err)}`, { cause: err });
  if (e?.code) out.code = e.code;
  return out;
}

/**
 * Fills `buf` from byte `position` of an open file (positioned reads, looping over short reads);
 * if the file ends first, throws "<what>: unexpected end of file at byte N".
 */
/** Opens `path` for reading; the error names the file. */
export async function openForReading(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (err) {
    throw new Error(`${path}: cannot open: ${(err as Error).message}`, { cause: err });
  }
}

export async function readFully(fh: FileHandle, buf: Uint8Array, position: number, what: string): Promise<void> {
  for (let off = 0; off < buf.byteLength;) {
    const { bytesRead } = await fh.read(buf, off, Math.min(buf.byteLength - off, MAX_IO), position + off);
    if (bytesRead === 0) throw new Error(`${what}: unexpected end of file at byte ${position + off}`);
    off += bytesRead;
  }
}
