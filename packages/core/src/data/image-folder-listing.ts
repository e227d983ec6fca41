/**
 * Opening an image folder's listing: read a valid index file, or list the class folders (one readdir
 * per class folder; in parallel, with progress lines, for `ImageFolderDataset.open`) and write the
 * index. Also the validity check of an index against the folder (see ImageFolderIndexCheck). The
 * index file itself is image-folder-index.ts's.
 */
import { readdirSync, readFileSync, statSync, type Dirent } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { extname, join, resolve } from 'node:path';
import { IMAGE_EXTENSIONS } from '../image-files.js';
import { log as defaultLog } from '../log.js';
import {
  cacheIndexFile,
  IMAGE_FOLDER_INDEX_NAME,
  parseIndex,
  StaleIndex,
  writeIndex,
  writeIndexSync,
  type ClassListing,
  type ImageFolderIndexCheck,
  type ResolvedOptions,
} from './image-folder-index.js';

export interface ImageFolderOptions {
  /** File extensions to include, case-insensitive, with or without the dot (default: IMAGE_EXTENSIONS). */
  extensions?: readonly string[];
  /** List the folder again and rewrite the index even when the index is valid (CLI: `--rebuild-index`). */
  rebuildIndex?: boolean;
  /** How a cached index is validated (default `mtimes`; see ImageFolderIndexCheck). */
  indexCheck?: ImageFolderIndexCheck;
  /**
   * Where the index lives. Default: `<root>/.vitreg-index.jsonl`, or, when that cannot be written
   * (read-only root), `<cacheDir>/<sha256 of the root's real path, 16 hex>.jsonl`. A path: that file
   * only. `false`: no index (list the folder, write nothing).
   */
  indexFile?: string | false;
  /** Cache folder for indexes of read-only roots (default `$XDG_CACHE_HOME/vitreg/image-folder-index`, `~/.cache/...` without it). */
  cacheDir?: string;
  /** `ImageFolderDataset.open`: class folders listed at once (default 64; fs calls run on libuv's pool, see UV_THREADPOOL_SIZE). */
  concurrency?: number;
  /** Progress and re-index messages (default: core's `log`, i.e. `[vitreg] ...` on stderr). */
  log?: (line: string) => void;
  /** Milliseconds between progress lines while listing (default 5000). */
  progressIntervalMs?: number;
}

/** How the listing of an opened ImageFolderDataset was obtained. */
export interface ImageFolderIndexInfo {
  /** The index file read or written; null when none was (indexFile: false, or the write failed). */
  file: string | null;
  /** `read`: from the index file, no listing; `built`: the folder was listed (and the index written when `file` is set). */
  source: 'read' | 'built';
  /** Why the folder was listed: no index, rebuild asked, or what made the index out of date. */
  reason?: string;
}

const NO_INDEX = 'no index yet';

/** Symbol under which `open` hands its listing to the constructor. */
export const PRELOADED = Symbol('preloaded listing');

export interface Loaded {
  classes: ClassListing[];
  info: ImageFolderIndexInfo;
}

function resolveOptions(root: string, opts: ImageFolderOptions): ResolvedOptions {
  const extensions = [...new Set((opts.extensions ?? IMAGE_EXTENSIONS).map((e) => (e.startsWith('.') ? e : `.${e}`).toLowerCase()))].sort();
  const check = opts.indexCheck ?? 'mtimes';
  if (!['mtimes', 'classes', 'none'].includes(check)) {
    throw new Error(`image folder ${root}: indexCheck must be 'mtimes', 'classes' or 'none', got '${check}'`);
  }
  const concurrency = opts.concurrency ?? 64;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new Error(`image folder ${root}: concurrency must be a positive integer, got ${concurrency}`);
  }
  let candidates: string[];
  if (opts.indexFile === false) candidates = [];
  else if (opts.indexFile !== undefined) candidates = [resolve(opts.indexFile)];
  else candidates = [join(resolve(root), IMAGE_FOLDER_INDEX_NAME), cacheIndexFile(root, opts.cacheDir)];
  return {
    extensions,
    check,
    rebuild: opts.rebuildIndex ?? false,
    candidates,
    concurrency,
    log: opts.log ?? defaultLog,
    intervalMs: opts.progressIntervalMs ?? 5000,
  };
}

// ---------------------------------------------------------------------------------------------
// Loading: read a valid index, or list the folder and write one.

export function loadSync(root: string, opts: ImageFolderOptions): Loaded {
  const preloaded = (opts as { [PRELOADED]?: Loaded })[PRELOADED];
  if (preloaded) return preloaded;
  const o = resolveOptions(root, opts);
  const rootEntries = readRootSync(root);
  let reason = o.rebuild ? 'rebuild asked' : NO_INDEX;
  if (!o.rebuild) {
    for (const file of o.candidates) {
      let buf: Buffer;
      try {
        if (!statSync(file).isFile()) continue;
        buf = readFileSync(file);
      } catch {
        continue;
      }
      const parsed = parseIndex(buf, file, root, o);
      if (!(parsed instanceof StaleIndex)) {
        const stale =
          o.check === 'none'
            ? null
            : (checkClasses(parsed, classFolderNamesSync(root, rootEntries)) ?? checkMtimesSync(root, parsed, o.check));
        if (!stale) return { classes: parsed, info: { file, source: 'read' } };
        if (reason === NO_INDEX) reason = `${file} is out of date (${stale})`;
      } else if (reason === NO_INDEX) reason = `${file} is out of date (${parsed.reason})`;
      // an out-of-date index in a read-only root: the cache file may hold the current listing
    }
  }
  if (o.candidates.length > 0 && reason !== NO_INDEX) o.log(`image folder ${root}: listing class folders again: ${reason}`);
  const classes = walkSync(root, rootEntries, o);
  return { classes, info: { file: writeIndexSync(root, classes, o), source: 'built', reason } };
}

export async function loadAsync(root: string, opts: ImageFolderOptions): Promise<Loaded> {
  const o = resolveOptions(root, opts);
  const rootEntries = await readRoot(root);
  let reason = o.rebuild ? 'rebuild asked' : NO_INDEX;
  if (!o.rebuild) {
    for (const file of o.candidates) {
      let buf: Buffer;
      try {
        if (!(await stat(file)).isFile()) continue;
        buf = await readFile(file);
      } catch {
        continue;
      }
      const parsed = parseIndex(buf, file, root, o);
      if (!(parsed instanceof StaleIndex)) {
        const stale =
          o.check === 'none'
            ? null
            : (checkClasses(parsed, await classFolderNames(root, rootEntries)) ?? (await checkMtimes(root, parsed, o)));
        if (!stale) return { classes: parsed, info: { file, source: 'read' } };
        if (reason === NO_INDEX) reason = `${file} is out of date (${stale})`;
      } else if (reason === NO_INDEX) reason = `${file} is out of date (${parsed.reason})`;
      // an out-of-date index in a read-only root: the cache file may hold the current listing
    }
  }
  if (o.candidates.length > 0 && reason !== NO_INDEX) o.log(`image folder ${root}: listing class folders again: ${reason}`);
  const classes = await walkAsync(root, rootEntries, o);
  return { classes, info: { file: await writeIndex(root, classes, o), source: 'built', reason } };
}

// ---------------------------------------------------------------------------------------------
// Listing

function readRootSync(root: string): Dirent[] {
  try {
    return readdirSync(root, { withFileTypes: true });
  } catch (err) {
    throw new Error(`image folder ${root}: cannot read it (${(err as Error).message})`, { cause: err });
  }
}

async function readRoot(root: string): Promise<Dirent[]> {
  try {
    return await readdir(root, { withFileTypes: true });
  } catch (err) {
    throw new Error(`image folder ${root}: cannot read it (${(err as Error).message})`, { cause: err });
  }
}

function isDirSync(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The root's sub-folders (and links to folders), sorted; the index's name is reserved, never a class. */
function classFolderNamesSync(root: string, entries: Dirent[]): string[] {
  return entries
    .filter((e) => e.name !== IMAGE_FOLDER_INDEX_NAME)
    .filter((e) => e.isDirectory() || (e.isSymbolicLink() && isDirSync(join(root, e.name))))
    .map((e) => e.name)
    .sort();
}

async function classFolderNames(root: string, entries: Dirent[]): Promise<string[]> {
  const out: string[] = [];
  for (const e of entries) {
    if (e.name === IMAGE_FOLDER_INDEX_NAME) continue;
    if (e.isDirectory()) out.push(e.name);
    else if (
      e.isSymbolicLink() &&
      (await stat(join(root, e.name)).then(
        (s) => s.isDirectory(),
        () => false,
      ))
    )
      out.push(e.name);
  }
  return out.sort();
}

function noClasses(root: string): Error {
  return new Error(`image folder ${root}: expected one sub-folder per class, found none`);
}

/** A class folder's images: files with an allowed extension, sorted, joined by '/'. */
function classListing(root: string, name: string, mtimeMs: number, files: string[], extensions: string[]): ClassListing {
  const exts = new Set(extensions);
  const images = files.filter((f) => exts.has(extname(f).toLowerCase())).sort();
  if (images.length === 0) {
    throw new Error(`image folder ${root}: class folder ${join(root, name)} holds no images (extensions ${extensions.join(', ')})`);
  }
  return { name, mtimeMs, count: images.length, files: images.join('/') };
}

/** Progress lines every `intervalMs` while listing, and a summary at the end when any was written. */
function progressReporter(root: string, total: number, o: ResolvedOptions): { tick(images: number): void; done(): void } {
  const start = Date.now();
  let last = start;
  let done = 0;
  let images = 0;
  let reported = false;
  const seconds = () => (Date.now() - start) / 1000;
  return {
    tick(n: number) {
      done++;
      images += n;
      const now = Date.now();
      if (now - last >= o.intervalMs && done < total) {
        last = now;
        reported = true;
        const s = seconds();
        o.log(
          `image folder ${root}: listed ${done}/${total} class folders, ${images} images, ${s.toFixed(0)} s (${(done / s).toFixed(0)} folders/s)`,
        );
      }
    },
    done() {
      if (reported) o.log(`image folder ${root}: listed ${total} class folders, ${images} images in ${seconds().toFixed(0)} s`);
    },
  };
}

function walkSync(root: string, rootEntries: Dirent[], o: ResolvedOptions): ClassListing[] {
  const names = classFolderNamesSync(root, rootEntries);
  if (names.length === 0) throw noClasses(root);
  const progress = progressReporter(root, names.length, o);
  const out = names.map((name) => {
    const dir = join(root, name);
    // stat before readdir: a change between the two leaves a newer mtime, so the next open re-lists.
    const mtimeMs = statSync(dir).mtimeMs;
    const listing = classListing(root, name, mtimeMs, readdirSync(dir), o.extensions);
    progress.tick(listing.count);
    return listing;
  });
  progress.done();
  return out;
}

async function walkAsync(root: string, rootEntries: Dirent[], o: ResolvedOptions): Promise<ClassListing[]> {
  const names = await classFolderNames(root, rootEntries);
  if (names.length === 0) throw noClasses(root);
  const progress = progressReporter(root, names.length, o);
  const out = await mapLimit(names, o.concurrency, async (name) => {
    const dir = join(root, name);
    const mtimeMs = (await stat(dir)).mtimeMs;
    const listing = classListing(root, name, mtimeMs, await readdir(dir), o.extensions);
    progress.tick(listing.count);
    return listing;
  });
  progress.done();
  return out;
}

/** `fn` over `items`, at most `limit` at a time, results in order; the first error stops new calls and is thrown. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Validity

/** Why the index's classes differ from the folder's, or null. */
function checkClasses(index: ClassListing[], names: string[]): string | null {
  const known = new Set(index.map((c) => c.name));
  const added = names.filter((n) => !known.has(n));
  const present = new Set(names);
  const removed = index.filter((c) => !present.has(c.name)).map((c) => c.name);
  if (added.length === 0 && removed.length === 0) return null;
  const few = (xs: string[]) => xs.slice(0, 3).join(', ') + (xs.length > 3 ? `, ... (${xs.length})` : '');
  return [added.length ? `class folders added: ${few(added)}` : '', removed.length ? `class folders removed: ${few(removed)}` : '']
    .filter(Boolean)
    .join('; ');
}

function mtimeReason(root: string, c: ClassListing, mtimeMs: number | null): string | null {
  if (mtimeMs === null) return `class folder ${join(root, c.name)} cannot be read`;
  return mtimeMs === c.mtimeMs ? null : `class folder ${join(root, c.name)} changed since it was listed`;
}

function checkMtimesSync(root: string, index: ClassListing[], check: ImageFolderIndexCheck): string | null {
  if (check !== 'mtimes') return null;
  for (const c of index) {
    let m: number | null;
    try {
      m = statSync(join(root, c.name)).mtimeMs;
    } catch {
      m = null;
    }
    const r = mtimeReason(root, c, m);
    if (r) return r;
  }
  return null;
}

async function checkMtimes(root: string, index: ClassListing[], o: ResolvedOptions): Promise<string | null> {
  if (o.check !== 'mtimes') return null;
  const reasons = await mapLimit(index, o.concurrency, async (c) =>
    mtimeReason(
      root,
      c,
      await stat(join(root, c.name)).then(
        (s) => s.mtimeMs,
        () => null,
      ),
    ),
  );
  return reasons.find((r) => r !== null) ?? null;
}
