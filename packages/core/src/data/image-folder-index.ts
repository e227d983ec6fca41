/**
 * The index file of an image folder: its name and where it lives (the root, or a cache file for a
 * read-only root), its JSON-lines format, parsing it (a stale index is rebuilt, a corrupt one is an
 * error naming file:line) and writing it atomically. Listing the folder and deciding whether an index
 * is still valid is image-folder-listing.ts's job.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, realpathSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { writeFileAtomic } from '../fs.js';

/** Name of the index file written in an image folder's root (when the root is writable). */
export const IMAGE_FOLDER_INDEX_NAME = '.vitreg-index.jsonl';
const INDEX_FORMAT = 'vitreg-image-folder-index';
const INDEX_VERSION = 1;

/**
 * How an index read from disk is checked against the folder before it is trusted:
 * - `mtimes` (default): the root's class sub-folders are the index's (one readdir of the root), and
 *   every class folder's modification time equals the one recorded when it was listed (one stat per
 *   class). A folder's mtime changes when a file is added, removed or renamed in it, not when a
 *   file's contents change, so this catches every change to the set of images.
 * - `classes`: only the class sub-folders are compared (one readdir): images added to or removed
 *   from an existing class folder go unnoticed until a rebuild.
 * - `none`: the index is trusted as is (for a frozen dataset on a slow file system).
 */
export type ImageFolderIndexCheck = 'mtimes' | 'classes' | 'none';

/** One class folder as listed: its mtime and its image file names (sorted), joined by '/'. */
export interface ClassListing {
  name: string;
  mtimeMs: number;
  count: number;
  /** File names joined by '/' (a character no file name holds): one string per class, not one per file. */
  files: string;
}

interface IndexHeader {
  format: string;
  version: number;
  root: string;
  extensions: string[];
  classes: number;
  files: number;
}

/** The options of an open, checked and with their defaults filled in (resolveOptions in image-folder-listing.ts). */
export interface ResolvedOptions {
  extensions: string[];
  check: ImageFolderIndexCheck;
  rebuild: boolean;
  /** Index files to try, in order: the first that exists is read; the first that can be written is written. */
  candidates: string[];
  concurrency: number;
  log: (line: string) => void;
  intervalMs: number;
}

/** An index written for other options, another format version or another root: rebuilt (corrupt ones throw instead). */
export class StaleIndex {
  constructor(readonly reason: string) {}
}

/** `<cacheDir>/<first 16 hex of sha256(real path of root)>.jsonl`. */
export function cacheIndexFile(root: string, cacheDir?: string): string {
  let real = resolve(root);
  try {
    real = realpathSync(real);
  } catch {
    // a missing root is reported by the listing
  }
  const dir = cacheDir ?? join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vitreg', 'image-folder-index');
  return join(dir, `${createHash('sha256').update(real).digest('hex').slice(0, 16)}.jsonl`);
}

function absoluteRoot(root: string): string {
  try {
    return realpathSync(resolve(root));
  } catch {
    return resolve(root);
  }
}

// ---------------------------------------------------------------------------------------------
// The index file: JSON lines. Line 1 is the header
//   {"format":"vitreg-image-folder-index","version":1,"root":"/abs/root","extensions":[".jpeg",...],"classes":C,"files":N}
// then one line per class, sorted by name:
//   {"name":"n01440764","mtimeMs":1712345678901.25,"count":1300,"files":"a.JPEG/b.JPEG/..."}
// with the class's image names sorted and joined by '/'.

function headerOf(root: string, classes: ClassListing[], o: ResolvedOptions): IndexHeader {
  return {
    format: INDEX_FORMAT,
    version: INDEX_VERSION,
    root: absoluteRoot(root),
    extensions: o.extensions,
    classes: classes.length,
    files: classes.reduce((s, c) => s + c.count, 0),
  };
}

function serialize(root: string, classes: ClassListing[], o: ResolvedOptions): Buffer[] {
  const lines = [JSON.stringify(headerOf(root, classes, o)) + '\n'];
  for (const c of classes) lines.push(JSON.stringify({ name: c.name, mtimeMs: c.mtimeMs, count: c.count, files: c.files }) + '\n');
  // Chunks of about 4 MiB: no single string near V8's length limit even for 14M names.
  const chunks: Buffer[] = [];
  let group: string[] = [];
  let size = 0;
  for (const line of lines) {
    group.push(line);
    size += line.length;
    if (size >= 1 << 22) {
      chunks.push(Buffer.from(group.join(''), 'utf8'));
      group = [];
      size = 0;
    }
  }
  if (group.length) chunks.push(Buffer.from(group.join(''), 'utf8'));
  return chunks;
}

function corrupt(root: string, file: string, line: number, what: string): Error {
  return new Error(
    `image folder ${root}: index ${file}:${line} is corrupt (${what}); delete the file or open with rebuildIndex (vitreg: --rebuild-index)`,
  );
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * The classes of an index file; a StaleIndex when it was written for other options, another
 * vitreg version or another root (cache files); throws for anything malformed, naming file:line.
 */
export function parseIndex(buf: Buffer, file: string, root: string, o: ResolvedOptions): ClassListing[] | StaleIndex {
  let pos = 0;
  let lineNo = 0;
  const nextLine = (): unknown => {
    if (pos >= buf.length) return undefined;
    let end = buf.indexOf(10, pos);
    if (end < 0) end = buf.length;
    const text = buf.toString('utf8', pos, end);
    pos = end + 1;
    lineNo++;
    try {
      return JSON.parse(text);
    } catch (err) {
      throw corrupt(root, file, lineNo, `not JSON: ${(err as Error).message}`);
    }
  };
  const h = nextLine();
  if (!isObject(h) || h.format !== INDEX_FORMAT) throw corrupt(root, file, 1, `expected a header with format "${INDEX_FORMAT}"`);
  if (h.version !== INDEX_VERSION) return new StaleIndex(`index version ${String(h.version)}, this vitreg writes ${INDEX_VERSION}`);
  if (!Number.isInteger(h.classes) || (h.classes as number) < 1)
    throw corrupt(root, file, 1, 'header field classes must be a positive integer');
  if (!Number.isInteger(h.files) || (h.files as number) < 1) throw corrupt(root, file, 1, 'header field files must be a positive integer');
  if (!Array.isArray(h.extensions) || typeof h.root !== 'string') throw corrupt(root, file, 1, 'header needs root and extensions');
  if (h.extensions.join(' ') !== o.extensions.join(' ')) {
    return new StaleIndex(`listed for extensions ${h.extensions.join(', ')}, asked for ${o.extensions.join(', ')}`);
  }
  if (h.root !== absoluteRoot(root) && file !== join(resolve(root), IMAGE_FOLDER_INDEX_NAME)) {
    // An index inside the root stays valid when the folder is moved; a cache or explicit file names its root.
    return new StaleIndex(`written for ${h.root}`);
  }
  const classes: ClassListing[] = [];
  let files = 0;
  for (let line = nextLine(); line !== undefined; line = nextLine()) {
    const c = line;
    const at = (what: string) => corrupt(root, file, lineNo, what);
    if (!isObject(c)) throw at('expected a class object');
    if (typeof c.name !== 'string' || c.name === '' || c.name.includes('/')) throw at('name must be a folder name');
    if (typeof c.mtimeMs !== 'number' || !Number.isFinite(c.mtimeMs)) throw at('mtimeMs must be a number');
    if (!Number.isInteger(c.count) || (c.count as number) < 1) throw at('count must be a positive integer');
    if (typeof c.files !== 'string') throw at('files must be a string');
    const prev = classes[classes.length - 1];
    if (prev && !(prev.name < c.name)) throw at(`class "${c.name}" is not after "${prev.name}" (names must be sorted and unique)`);
    let names = 1;
    for (let i = c.files.indexOf('/'); i >= 0; i = c.files.indexOf('/', i + 1)) names++;
    if (names !== c.count || c.files === '' || c.files.startsWith('/') || c.files.endsWith('/') || c.files.includes('//')) {
      throw at(`count ${c.count as number} does not match the ${names} file names`);
    }
    classes.push({ name: c.name, mtimeMs: c.mtimeMs, count: c.count as number, files: c.files });
    files += c.count as number;
  }
  if (classes.length !== h.classes || files !== h.files) {
    throw corrupt(
      root,
      file,
      lineNo,
      `the header promises ${String(h.classes)} classes and ${String(h.files)} files, found ${classes.length} and ${files}`,
    );
  }
  return classes;
}

/** Writes the index to the first candidate that takes it; returns its path, or null (logged) when none does. */
export function writeIndexSync(root: string, classes: ClassListing[], o: ResolvedOptions): string | null {
  if (o.candidates.length === 0) return null;
  const chunks = serialize(root, classes, o);
  const errors: string[] = [];
  for (const file of o.candidates) {
    try {
      writeAtomicSync(file, chunks);
      return file;
    } catch (err) {
      errors.push(`${file}: ${(err as Error).message}`);
    }
  }
  o.log(`image folder ${root}: cannot write an index (${errors.join('; ')}); the next open lists the folder again`);
  return null;
}

export async function writeIndex(root: string, classes: ClassListing[], o: ResolvedOptions): Promise<string | null> {
  if (o.candidates.length === 0) return null;
  const chunks = serialize(root, classes, o);
  const errors: string[] = [];
  for (const file of o.candidates) {
    try {
      await mkdir(join(file, '..'), { recursive: true });
      await writeFileAtomic(file, chunks);
      return file;
    } catch (err) {
      errors.push((err as Error).message);
    }
  }
  o.log(`image folder ${root}: cannot write an index (${errors.join('; ')}); the next open lists the folder again`);
  return null;
}

/** Temporary file in the target's folder, fsync, rename: readers see the old file or the whole new one. */
function writeAtomicSync(file: string, chunks: readonly Buffer[]): void {
  mkdirSync(join(file, '..'), { recursive: true });
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  const fd = openSync(tmp, 'wx');
  try {
    try {
      for (const chunk of chunks) {
        for (let off = 0; off < chunk.length;) off += writeSync(fd, chunk, off, chunk.length - off);
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw err;
  }
}
