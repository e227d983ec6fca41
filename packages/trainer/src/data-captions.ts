/**
 * Image-caption pairs for text-supervised (CLIP) training, in open_clip's data formats:
 * - CSV / TSV (open_clip's `CsvDataset`, `--csv-separator` tab by default): a header row, the image path in
 *   the `--csv-img-key` column (`filepath`), the caption in `--csv-caption-key` (`title`); quoted fields as
 *   RFC 4180 (pandas' default). Relative paths are relative to the working directory, as open_clip opens them.
 * - WebDataset tar shards (`.tar` files, or a folder of them, read in name order): members grouped into
 *   samples by key (the member path up to the first dot of its file name), image from `jpg` / `jpeg` / `png` /
 *   `webp`, caption from `txt`, read as a stream (one sample in memory at a time; ustar, pax and GNU long
 *   names). Images come back undecoded.
 * - The built-in synthetic shapes with generated captions ("a large bright triangle on a dark striped
 *   background"): shape, size, brightness and background texture of each image's main object, so a
 *   text tower can learn what the image tower sees.
 */
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { SyntheticDataset, type DatasetItem } from '@vitreg/core';

/** One CSV / TSV row: the image path and its caption. */
export interface CaptionEntry {
  image: string;
  caption: string;
}

/** Fields of one CSV / TSV record (RFC 4180 quoting: "" inside quotes is a quote; separators and line breaks may be quoted). */
export function parseDelimited(text: string, separator: string, file = 'table'): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  let i = 0;
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  while (i < body.length) {
    const c = body[i]!;
    if (quoted) {
      if (c === '"' && body[i + 1] === '"') {
        field += '"';
        i += 2;
        continue;
      }
      if (c === '"') quoted = false;
      else field += c;
      i++;
      continue;
    }
    if (c === '"' && field === '') quoted = true;
    else if (c === separator) {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && body[i + 1] === '\n') i++;
      row.push(field);
      if (row.length > 1 || row[0] !== '') rows.push(row);
      row = [];
      field = '';
    } else field += c;
    i++;
  }
  if (quoted) throw new Error(`${file}: a quoted field is not closed`);
  if (field !== '' || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

/** The (image, caption) rows of a CSV / TSV file with open_clip's keys (errors name the file, the column and the row). */
export async function readCaptionTable(
  path: string,
  opts: { imgKey?: string; captionKey?: string; separator?: string } = {},
): Promise<CaptionEntry[]> {
  const imgKey = opts.imgKey ?? 'filepath';
  const captionKey = opts.captionKey ?? 'title';
  const sep = opts.separator ?? (path.toLowerCase().endsWith('.csv') ? ',' : '\t');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new Error(`${path}: cannot read the caption table (${(e as Error).message})`, { cause: e });
  }
  const rows = parseDelimited(text, sep, path);
  if (rows.length < 2) throw new Error(`${path}: expected a header row and at least one row of (image, caption)`);
  const header = rows[0]!;
  const col = (key: string, flag: string) => {
    const k = header.indexOf(key);
    if (k < 0) throw new Error(`${path}: no column "${key}" (${flag}); the header has ${header.map((h) => JSON.stringify(h)).join(', ')}`);
    return k;
  };
  const ci = col(imgKey, '--csv-img-key');
  const cc = col(captionKey, '--csv-caption-key');
  return rows.slice(1).map((r, n) => {
    if (r.length !== header.length) throw new Error(`${path}: row ${n + 2} has ${r.length} fields, the header ${header.length}`);
    if (r[ci] === '') throw new Error(`${path}: row ${n + 2} has no image path in "${imgKey}"`);
    return { image: r[ci]!, caption: r[cc]! };
  });
}

/** One WebDataset sample: its key, the image bytes and their extension, the caption. */
export interface WebDatasetSample {
  key: string;
  /** The tar file it came from. */
  shard: string;
  image: Uint8Array;
  /** `jpg`, `jpeg`, `png` or `webp`. */
  imageExt: string;
  caption: string;
}

const IMAGE_EXTS = ['jpg', 'jpeg', 'png', 'webp'];

/** The `.tar` shards of a source: a folder (its .tar files in name order) or one .tar file. */
export async function webDatasetShards(source: string): Promise<string[]> {
  let s;
  try {
    s = await stat(source);
  } catch (e) {
    throw new Error(`${source}: no such WebDataset folder or .tar file`, { cause: e });
  }
  if (s.isFile()) return [source];
  const shards = (await readdir(source)).filter((f) => f.endsWith('.tar')).sort();
  if (shards.length === 0) throw new Error(`${source}: no .tar shards in this folder`);
  return shards.map((f) => join(source, f));
}

/** A tar header's octal number field. */
function octal(b: Uint8Array, at: number, len: number): number {
  const s = Buffer.from(b.subarray(at, at + len))
    .toString('latin1')
    .replace(/\0.*$/s, '')
    .trim();
  return s === '' ? 0 : parseInt(s, 8);
}

function cstring(b: Uint8Array, at: number, len: number): string {
  const end = b.subarray(at, at + len).indexOf(0);
  return Buffer.from(b.subarray(at, end < 0 ? at + len : at + end)).toString('utf8');
}

/** The regular-file members of one tar file as a stream: [path, bytes]. */
async function* tarMembers(file: string): AsyncGenerator<[string, Uint8Array]> {
  let buf: Buffer = Buffer.alloc(0);
  let longName: string | null = null;
  const stream = createReadStream(file, { highWaterMark: 1 << 20 });
  const need = async function* (): AsyncGenerator<Buffer> {
    for await (const chunk of stream) yield chunk as Buffer;
  };
  const chunks = need();
  const fill = async (n: number): Promise<boolean> => {
    while (buf.length < n) {
      const next = await chunks.next();
      if (next.done) return false;
      buf = buf.length === 0 ? next.value : Buffer.concat([buf, next.value]);
    }
    return true;
  };
  for (;;) {
    if (!(await fill(512))) {
      if (buf.length > 0)
        throw new Error(`${file}: not a tar file, or truncated (${buf.length} bytes left where a 512-byte header belongs)`);
      return;
    }
    const header = buf.subarray(0, 512);
    if (header.every((v) => v === 0)) return;
    if (header.toString('latin1', 257, 262) !== 'ustar') throw new Error(`${file}: not a tar file (no ustar header)`);
    const size = octal(header, 124, 12);
    const type = String.fromCharCode(header[156]!);
    const prefix = cstring(header, 345, 155);
    let name = cstring(header, 0, 100);
    if (prefix) name = `${prefix}/${name}`;
    const padded = Math.ceil(size / 512) * 512;
    if (!(await fill(512 + padded))) throw new Error(`${file}: truncated member "${name}" (${size} bytes)`);
    const data = new Uint8Array(buf.subarray(512, 512 + size));
    buf = buf.subarray(512 + padded);
    if (type === 'L') longName = Buffer.from(data).toString('utf8').replace(/\0+$/, '');
    else if (type === 'x') {
      const path = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(Buffer.from(data).toString('utf8'));
      if (path) longName = path[1]!;
    } else if (type === '0' || type === '\0') {
      yield [longName ?? name, data];
      longName = null;
    } else longName = null;
  }
}

/** WebDataset's key and extension of a member path: up to / after the first dot of its file name. */
function keyOf(path: string): [string, string] {
  const slash = path.lastIndexOf('/');
  const dot = path.indexOf('.', slash + 1);
  return dot < 0 ? [path, ''] : [path.slice(0, dot), path.slice(dot + 1).toLowerCase()];
}

/**
 * The (image, caption) samples of WebDataset shards, streamed in shard and member order. A sample without an
 * image or a caption is an error naming its shard and key.
 */
export async function* readWebDataset(source: string): AsyncGenerator<WebDatasetSample> {
  for (const shard of await webDatasetShards(source)) {
    let key: string | null = null;
    let parts = new Map<string, Uint8Array>();
    const flush = (): WebDatasetSample => {
      const ext = IMAGE_EXTS.find((e) => parts.has(e));
      if (!ext)
        throw new Error(`${shard}: sample "${key}" has no image (${IMAGE_EXTS.join(', ')}); it has ${[...parts.keys()].join(', ')}`);
      const txt = parts.get('txt');
      if (!txt) throw new Error(`${shard}: sample "${key}" has no caption (txt); it has ${[...parts.keys()].join(', ')}`);
      return { key: key!, shard, image: parts.get(ext)!, imageExt: ext, caption: Buffer.from(txt).toString('utf8').trim() };
    };
    for await (const [path, data] of tarMembers(shard)) {
      const [k, ext] = keyOf(path);
      if (key !== null && k !== key) {
        yield flush();
        parts = new Map();
      }
      key = k;
      parts.set(ext, data);
    }
    if (key !== null) yield flush();
  }
}

/** Words of the synthetic scenes' captions: shape names are the class names. */
const TEXTURES = { gradient: 'shaded', noise: 'grainy', stripes: 'striped', checker: 'checkered' } as const;

/**
 * The caption of a synthetic image: "a {small|large} {light|bright} {shape} on a dark {texture} background".
 * Size: the main shape's side against the middle of its range (0.55 to 0.8 of the image side); brightness:
 * its luminance against 200 (BT.601).
 */
export function syntheticCaption(ds: SyntheticDataset, index: number): string {
  const scene = ds.scene(index);
  const main = scene.objects[0]!;
  const side = (2 * main.radius) / ds.size;
  const [r, g, b] = main.color;
  const luma = 0.299 * r + 0.587 * g + 0.114 * b;
  return `a ${side < 0.675 ? 'small' : 'large'} ${luma < 200 ? 'light' : 'bright'} ${main.shape} on a dark ${TEXTURES[scene.background]} background`;
}

/** A synthetic item with its generated caption. */
export async function syntheticCaptionItem(ds: SyntheticDataset, index: number): Promise<DatasetItem & { caption: string }> {
  const item = await ds.get(index);
  return { ...item, caption: syntheticCaption(ds, index) };
}
