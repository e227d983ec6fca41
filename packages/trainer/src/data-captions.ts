/**
 * Image-caption pairs for text-supervised (CLIP) training, in open_clip's data formats (WebDataset tar shards
 * are data-webdataset.ts's):
 * - CSV / TSV (open_clip's `CsvDataset`, `--csv-separator` tab by default): a header row, the image path in
 *   the `--csv-img-key` column (`filepath`), the caption in `--csv-caption-key` (`title`); quoted fields as
 *   RFC 4180 (pandas' default). Relative paths are relative to the working directory, as open_clip opens them.
 * - The built-in synthetic shapes with generated captions ("a large bright triangle on a dark striped
 *   background"): shape, size, brightness and background texture of each image's main object, so a
 *   text tower can learn what the image tower sees.
 */
import { readFile } from 'node:fs/promises';
import type { DatasetItem, SyntheticDataset } from '@vitreg/core';

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

/** Words of the synthetic scenes' captions: shape names are the class names. */
const TEXTURES: Record<ReturnType<SyntheticDataset['scene']>['background'], string> = {
  gradient: 'shaded',
  noise: 'grainy',
  stripes: 'striped',
  checker: 'checkered',
  flat: 'plain',
};

/**
 * The caption of a synthetic image: "a {small|large} {light|bright} {shape} on a dark {texture} background".
 * Size: the main shape's side against the middle of its range (default 0.55 to 0.8 of the image side; a flat
 * background is "plain"); brightness:
 * its luminance against 200 (BT.601).
 */
export function syntheticCaption(ds: SyntheticDataset, index: number): string {
  const scene = ds.scene(index);
  const main = scene.objects[0]!;
  const side = (2 * main.radius) / ds.size;
  const [r, g, b] = main.color;
  const luma = 0.299 * r + 0.587 * g + 0.114 * b;
  const middle = (ds.objectSide[0] + ds.objectSide[1]) / 2;
  return `a ${side < middle ? 'small' : 'large'} ${luma < 200 ? 'light' : 'bright'} ${main.shape} on a dark ${TEXTURES[scene.background]} background`;
}

/** A synthetic item with its generated caption. */
export async function syntheticCaptionItem(ds: SyntheticDataset, index: number): Promise<DatasetItem & { caption: string }> {
  const item = await ds.get(index);
  return { ...item, caption: syntheticCaption(ds, index) };
}
