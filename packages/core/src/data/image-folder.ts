/**
 * A folder of images with one sub-folder per class (torchvision's `ImageFolder` layout, as
 * torchvision/datasets/folder.py): `root/<class>/<image>`. Class names are the sub-folder names
 * sorted by code point; labels are their positions; the images of a class are its files with one
 * of `extensions`, sorted by name (class folders are not searched recursively). Files are decoded
 * with sharp, returned as RGB at their stored size.
 *
 * Listing ImageNet-22k (~14M files in ~22k class folders) takes minutes on a network file system,
 * so the listing is cached in an index file written on the first open and read on later opens
 * (see `ImageFolderOptions` and the package README for the file and its validity rule).
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
  type Dirent,
} from 'node:fs';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { extname, join, resolve } from 'node:path';
import { writeFileAtomic } from '../fs.js';
import { decodeImage, IMAGE_EXTENSIONS } from '../image.js';
import { log as defaultLog } from '../log.js';
import { checkIndex, type Dataset, type DatasetItem } from './types.js';

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

/** One class folder as listed: its mtime and its image file names (sorted), joined by '/'. */
interface ClassListing {
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

interface ResolvedOptions {
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
class StaleIndex {
  constructor(readonly reason: string) {}
}

/** torchvision's ImageFolder over `root/<class>/<image>`, its listing cached in an index file (see the module comment). */
export class ImageFolderDataset implements Dataset {
  readonly root: string;
  readonly classNames: string[];
  /** Where the listing came from (index file read, or folder listed). */
  readonly index: ImageFolderIndexInfo;
  /** Number of images of each class. */
  readonly classCounts: Uint32Array;
  /** `starts[c]`: position of class `c`'s first image; `starts[numClasses]` = length. */
  private readonly starts: Float64Array;
  /** Per class: its file names joined by '/', and the offset of each name in that string (count + 1 entries). */
  private readonly names: string[];
  private readonly offsets: Uint32Array[];

  /**
   * Opens `root` synchronously: reads a valid index, or lists the folder (one readdir per class
   * folder, in turn) and writes the index. `ImageFolderDataset.open` lists in parallel instead.
   */
  constructor(root: string, opts: ImageFolderOptions = {}) {
    const built = loadSync(root, opts);
    this.root = root;
    this.index = built.info;
    this.classNames = built.classes.map((c) => c.name);
    this.classCounts = Uint32Array.from(built.classes, (c) => c.count);
    this.starts = new Float64Array(built.classes.length + 1);
    built.classes.forEach((c, i) => (this.starts[i + 1] = this.starts[i]! + c.count));
    this.names = built.classes.map((c) => c.files);
    this.offsets = built.classes.map((c) => nameOffsets(c.files, c.count));
  }

  /**
   * Opens `root` like the constructor, but lists class folders `concurrency` at a time with
   * progress lines, and checks an index's mtimes in parallel: the way to open a large folder.
   */
  static async open(root: string, opts: ImageFolderOptions = {}): Promise<ImageFolderDataset> {
    const built = await loadAsync(root, opts);
    // The constructor takes the listing as is: no second read of the index.
    return new ImageFolderDataset(root, { ...opts, [PRELOADED]: built } as ImageFolderOptions);
  }

  get length(): number {
    return this.starts[this.starts.length - 1]!;
  }

  get numClasses(): number {
    return this.classNames.length;
  }

  /** Label of image `index`. */
  label(index: number): number {
    checkIndex(`image folder ${this.root}`, index, this.length);
    return this.classOf(index);
  }

  /** `<class>/<file>` of image `index` (its id). */
  relativePath(index: number): string {
    checkIndex(`image folder ${this.root}`, index, this.length);
    const c = this.classOf(index);
    return `${this.classNames[c]}/${this.fileName(c, index - this.starts[c]!)}`;
  }

  /** Path of image `index`: `root/<class>/<file>`. */
  path(index: number): string {
    return join(this.root, this.relativePath(index));
  }

  async get(index: number): Promise<DatasetItem> {
    checkIndex(`image folder ${this.root}`, index, this.length);
    const label = this.classOf(index);
    const id = `${this.classNames[label]}/${this.fileName(label, index - this.starts[label]!)}`;
    const { data, width, height } = await decodeImage(join(this.root, id));
    return { image: data, width, height, label, boxes: [], id };
  }

  /** The class holding position `index` (binary search over the class starts). */
  private classOf(index: number): number {
    let lo = 0;
    let hi = this.classNames.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= index) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private fileName(c: number, k: number): string {
    const off = this.offsets[c]!;
    return this.names[c]!.slice(off[k], off[k + 1]! - 1);
  }
}

const NO_INDEX = 'no index yet';

/** Symbol under which `open` hands its listing to the constructor. */
const PRELOADED = Symbol('preloaded listing');

interface Loaded {
  classes: ClassListing[];
  info: ImageFolderIndexInfo;
}

/** Start offset of each of `count` names in `joined` ('/'-separated), plus length + 1 at the end. */
function nameOffsets(joined: string, count: number): Uint32Array {
  const off = new Uint32Array(count + 1);
  let pos = 0;
  for (let k = 1; k < count; k++) {
    pos = joined.indexOf('/', pos) + 1;
    off[k] = pos;
  }
  off[count] = joined.length + 1;
  return off;
}

function resolveOptions(root: string, opts: ImageFolderOptions): ResolvedOptions {
  const extensions = [
    ...new Set((opts.extensions ?? IMAGE_EXTENSIONS).map((e) => (e.startsWith('.') ? e : `.${e}`).toLowerCase())),
  ].sort();
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

/** `<cacheDir>/<first 16 hex of sha256(real path of root)>.jsonl`. */
function cacheIndexFile(root: string, cacheDir?: string): string {
  let real = resolve(root);
  try {
    real = realpathSync(real);
  } catch {
    // a missing root is reported by the listing
  }
  const dir =
    cacheDir ?? join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vitreg', 'image-folder-index');
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
// Loading: read a valid index, or list the folder and write one.

function loadSync(root: string, opts: ImageFolderOptions): Loaded {
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
          o.check === 'none' ? null : (checkClasses(parsed, classFolderNamesSync(root, rootEntries)) ?? checkMtimesSync(root, parsed, o.check));
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

async function loadAsync(root: string, opts: ImageFolderOptions): Promise<Loaded> {
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
          o.check === 'none' ? null : (checkClasses(parsed, await classFolderNames(root, rootEntries)) ?? (await checkMtimes(root, parsed, o)));
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
    throw new Error(`image folder ${root}: cannot read it (${(err as Error).message})`);
  }
}

async function readRoot(root: string): Promise<Dirent[]> {
  try {
    return await readdir(root, { withFileTypes: true });
  } catch (err) {
    throw new Error(`image folder ${root}: cannot read it (${(err as Error).message})`);
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
    else if (e.isSymbolicLink() && (await stat(join(root, e.name)).then((s) => s.isDirectory(), () => false))) out.push(e.name);
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
    throw new Error(
      `image folder ${root}: class folder ${join(root, name)} holds no images (extensions ${extensions.join(', ')})`,
    );
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
        o.log(`image folder ${root}: listed ${done}/${total} class folders, ${images} images, ${s.toFixed(0)} s (${(done / s).toFixed(0)} folders/s)`);
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
    mtimeReason(root, c, await stat(join(root, c.name)).then((s) => s.mtimeMs, () => null)),
  );
  return reasons.find((r) => r !== null) ?? null;
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
function parseIndex(buf: Buffer, file: string, root: string, o: ResolvedOptions): ClassListing[] | StaleIndex {
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
  if (!Number.isInteger(h.classes) || (h.classes as number) < 1) throw corrupt(root, file, 1, 'header field classes must be a positive integer');
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
    throw corrupt(root, file, lineNo, `the header promises ${String(h.classes)} classes and ${String(h.files)} files, found ${classes.length} and ${files}`);
  }
  return classes;
}

/** Writes the index to the first candidate that takes it; returns its path, or null (logged) when none does. */
function writeIndexSync(root: string, classes: ClassListing[], o: ResolvedOptions): string | null {
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

async function writeIndex(root: string, classes: ClassListing[], o: ResolvedOptions): Promise<string | null> {
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
        for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off, chunk.length - off);
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
