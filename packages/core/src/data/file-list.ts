/**
 * A dataset listed in a text file, one image per line with its integer label: the `train.txt` /
 * `val.txt` lists of Caffe's ImageNet, timm's and many ImageNet-22k setups (`n01440764/x.JPEG 0`).
 *
 * Format (UTF-8, an optional BOM, `\n` or `\r\n` line ends):
 * - text lists: `<path><TAB><label>` or `<path><spaces><label>`: the label is the last field (after
 *   the last tab or space), so paths may hold spaces;
 * - `.csv` lists (or `format: 'csv'`): `<path>,<label>` without a header line, the path optionally in
 *   double quotes (`""` for a quote inside);
 * - blank lines and lines starting with `#` are skipped; the label is a decimal integer >= 0;
 * - a relative path is under `root` (default: the list file's folder), an absolute path is used as is.
 * Class names come from a classes file (line k names label k - 1) or are the label numbers.
 *
 * The file is kept as one buffer with the offsets of each path (12 bytes per image besides the
 * file), so 14M lines cost ~0.7 GB, not 14M strings.
 */
import { readFileSync } from 'node:fs';
import { dirname, extname, isAbsolute, join } from 'node:path';
import { decodeImage } from '../image.js';
import { checkIndex, type Dataset, type DatasetItem } from './types.js';

export type FileListFormat = 'text' | 'csv';

/** A parsed list file: the bytes, and per entry its path's byte range and label. */
export interface ParsedFileList {
  file: string;
  format: FileListFormat;
  buf: Buffer;
  /** Byte range `[start, end)` of entry i's path in `buf`. */
  starts: Uint32Array;
  ends: Uint32Array;
  labels: Uint32Array;
  length: number;
  /** Largest label. */
  maxLabel: number;
  /** Paths that were quoted in a CSV list, unquoted, by entry. */
  unquoted: Map<number, string>;
}

export interface FileListOptions {
  /** Folder that relative paths are under (default: the list file's folder). */
  root?: string;
  /** A classes file: one name per line, line k naming label k - 1. */
  classesFile?: string;
  /** Class names given directly (instead of classesFile). */
  classNames?: readonly string[];
  /** Without class names: the number of classes (default: the largest label + 1); names are the numbers. */
  numClasses?: number;
  /** Default: `csv` for a `.csv` file, else `text`. */
  format?: FileListFormat;
}

const TAB = 9;
const LF = 10;
const CR = 13;
const SPACE = 32;
const HASH = 35;
const QUOTE = 34;
const COMMA = 44;

/** The line number (1-based) of byte `pos` of `buf`. */
function lineAt(buf: Buffer, pos: number): number {
  let line = 1;
  for (let i = buf.indexOf(LF); i >= 0 && i < pos; i = buf.indexOf(LF, i + 1)) line++;
  return line;
}

function shown(buf: Buffer, s: number, e: number): string {
  const text = buf.toString('utf8', s, Math.min(e, s + 120));
  return JSON.stringify(e - s > 120 ? `${text}...` : text);
}

/** Reads and checks a list file; errors name the file and line (`train.txt:12: ...`). */
export function parseFileList(file: string, opts: { format?: FileListFormat } = {}): ParsedFileList {
  const format = opts.format ?? (extname(file).toLowerCase() === '.csv' ? 'csv' : 'text');
  if (format !== 'text' && format !== 'csv') throw new Error(`file list ${file}: format must be 'text' or 'csv', got '${format}'`);
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (err) {
    throw new Error(`file list ${file}: cannot read it (${(err as Error).message})`, { cause: err });
  }
  let lines = 1;
  for (let i = buf.indexOf(LF); i >= 0; i = buf.indexOf(LF, i + 1)) lines++;
  const starts = new Uint32Array(lines);
  const ends = new Uint32Array(lines);
  const labels = new Uint32Array(lines);
  const unquoted = new Map<number, string>();
  const isBlank = (c: number) => c === SPACE || c === TAB || c === CR;
  const expected = format === 'csv' ? '"<path>,<label>"' : '"<path><TAB or space><label>"';
  let lineNo = 0;
  let s = 0;
  let e = 0;
  const fail = (what: string) => new Error(`${file}:${lineNo}: ${what}, in line ${shown(buf, s, e)}`);
  let n = 0;
  let maxLabel = -1;
  let pos = buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf ? 3 : 0;
  while (pos <= buf.length) {
    lineNo++;
    let end = buf.indexOf(LF, pos);
    if (end < 0) end = buf.length;
    const next = end + 1;
    s = pos;
    e = end;
    while (s < e && isBlank(buf[s]!)) s++;
    while (e > s && isBlank(buf[e - 1]!)) e--;
    pos = next;
    if (s === e || buf[s] === HASH) continue;
    // The label is the last field: after the last comma (csv), or after the last tab or space.
    let sep = e - 1;
    if (format === 'csv') while (sep >= s && buf[sep] !== COMMA) sep--;
    else while (sep >= s && buf[sep] !== TAB && buf[sep] !== SPACE) sep--;
    if (sep < s) throw fail(`expected ${expected}`);
    const ps = s;
    let pe = sep;
    while (pe > ps && isBlank(buf[pe - 1]!)) pe--;
    let ls = sep + 1;
    while (ls < e && isBlank(buf[ls]!)) ls++;
    if (pe === ps) throw fail(`expected ${expected}: the path is empty`);
    let label = 0;
    if (ls === e || e - ls > 9) label = -1;
    for (let i = ls; i < e && label >= 0; i++) {
      const d = buf[i]! - 48;
      label = d >= 0 && d <= 9 ? label * 10 + d : -1;
    }
    if (label < 0) {
      const hint = format === 'csv' && n === 0 ? ' (CSV file lists have no header line)' : '';
      throw fail(`label ${JSON.stringify(buf.toString('utf8', ls, e))} is not an integer >= 0${hint}`);
    }
    if (format === 'csv' && buf[ps] === QUOTE) {
      if (pe - ps < 2 || buf[pe - 1] !== QUOTE) throw fail('the quoted path has no closing quote');
      const inner = buf.toString('utf8', ps + 1, pe - 1);
      if (inner.replace(/""/g, '').includes('"')) throw fail('a quote inside a quoted path must be doubled ("")');
      unquoted.set(n, inner.replace(/""/g, '"'));
    }
    starts[n] = ps;
    ends[n] = pe;
    labels[n] = label;
    if (label > maxLabel) maxLabel = label;
    n++;
  }
  if (n === 0) throw new Error(`file list ${file}: no entries (expected lines ${expected})`);
  return {
    file,
    format,
    buf,
    starts: starts.subarray(0, n),
    ends: ends.subarray(0, n),
    labels: labels.subarray(0, n),
    length: n,
    maxLabel,
    unquoted,
  };
}

/** Class names from a classes file: one per line (trimmed), line k naming label k - 1; trailing blank lines are ignored. */
export function readClassNames(file: string): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`classes file ${file}: cannot read it (${(err as Error).message})`, { cause: err });
  }
  const lines = text
    .replace(/^\uFEFF/, '')
    .split('\n')
    .map((l) => l.trim());
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  if (lines.length === 0) throw new Error(`classes file ${file}: no class names (expected one per line)`);
  const seen = new Map<string, number>();
  lines.forEach((name, i) => {
    if (name === '') throw new Error(`${file}:${i + 1}: empty class name (expected one name per line, line k naming label k - 1)`);
    const first = seen.get(name);
    if (first !== undefined) throw new Error(`${file}:${i + 1}: class "${name}" is already on line ${first}`);
    seen.set(name, i + 1);
  });
  return lines;
}

/** Images listed in a file with their labels (see the module comment for the format). */
export class FileListDataset implements Dataset {
  readonly file: string;
  readonly root: string;
  readonly classNames: string[];
  private readonly list: ParsedFileList;

  constructor(list: string | ParsedFileList, opts: FileListOptions = {}) {
    this.list = typeof list === 'string' ? parseFileList(list, { format: opts.format }) : list;
    const l = this.list;
    this.file = l.file;
    this.root = opts.root ?? dirname(l.file);
    let names: string[] | undefined;
    let source: string;
    if (opts.classNames && opts.classesFile) throw new Error(`file list ${l.file}: give classNames or classesFile, not both`);
    if (opts.classesFile !== undefined) {
      names = readClassNames(opts.classesFile);
      source = `classes file ${opts.classesFile} (${names.length} classes)`;
    } else if (opts.classNames) {
      names = [...opts.classNames];
      source = `the ${names.length} class names given`;
    } else {
      const n = opts.numClasses ?? l.maxLabel + 1;
      if (!Number.isInteger(n) || n < 1) throw new Error(`file list ${l.file}: numClasses must be a positive integer, got ${n}`);
      names = Array.from({ length: n }, (_, i) => String(i));
      source = `numClasses ${n}`;
    }
    if (l.maxLabel >= names.length) {
      const i = l.labels.findIndex((x) => x >= names!.length);
      throw new Error(
        `${l.file}:${lineAt(l.buf, l.starts[i]!)}: label ${l.labels[i]} is out of range for ${source} (expected 0..${names.length - 1})`,
      );
    }
    this.classNames = names;
  }

  get length(): number {
    return this.list.length;
  }

  get numClasses(): number {
    return this.classNames.length;
  }

  /** Label of entry `index`. */
  label(index: number): number {
    checkIndex(`file list ${this.file}`, index, this.length);
    return this.list.labels[index]!;
  }

  /** The path of entry `index` as written in the list (its id). */
  listedPath(index: number): string {
    checkIndex(`file list ${this.file}`, index, this.length);
    const l = this.list;
    return l.unquoted.get(index) ?? l.buf.toString('utf8', l.starts[index], l.ends[index]);
  }

  /** The file of entry `index`: absolute as listed, or under `root`. */
  path(index: number): string {
    const p = this.listedPath(index);
    return isAbsolute(p) ? p : join(this.root, p);
  }

  /** Line number (1-based) of entry `index` in the list file (counted on demand, for messages). */
  lineOf(index: number): number {
    checkIndex(`file list ${this.file}`, index, this.length);
    return lineAt(this.list.buf, this.list.starts[index]!);
  }

  async get(index: number): Promise<DatasetItem> {
    const id = this.listedPath(index);
    let image;
    try {
      image = await decodeImage(isAbsolute(id) ? id : join(this.root, id));
    } catch (err) {
      throw new Error(`${this.file}:${this.lineOf(index)}: ${(err as Error).message}`, { cause: err });
    }
    return { image: image.data, width: image.width, height: image.height, label: this.list.labels[index]!, boxes: [], id };
  }
}
