/**
 * Finding image files: command-line inputs (files, folders, `*` / `?` / `**` patterns) expanded into
 * image files by extension, in order and without duplicates.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

/** Extensions (lower case) that folder and glob inputs pick up: the formats sharp decodes here. */
export const IMAGE_EXTENSIONS: readonly string[] = ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif'];

/**
 * Expand command-line inputs into image files, in order and without duplicates:
 * - a file is taken as is (whatever its extension);
 * - a folder gives every image file below it (by extension, recursively, sorted, hidden names skipped);
 * - a pattern with `*`, `?` or `**` (for shells that do not expand it, or quoted) gives the matching
 *   image files, sorted; `*` and `?` stay within one path segment, `**` spans any number of folders.
 * A path that does not exist, or a pattern or folder with no images, is an error naming it.
 */
export async function listImageFiles(inputs: readonly string[]): Promise<string[]> {
  const seen = new Set<string>();
  const out: string[] = [];
  const add = (f: string) => {
    if (!seen.has(f)) {
      seen.add(f);
      out.push(f);
    }
  };
  for (const input of inputs) {
    const info = await stat(input).catch(() => null);
    if (info?.isFile()) {
      add(input);
      continue;
    }
    let found: string[];
    if (info?.isDirectory()) found = await walk(input);
    else if (/[*?]/.test(input)) found = await expandGlob(input);
    else throw new Error(`${input}: no such file or folder`);
    if (found.length === 0)
      throw new Error(`${input}: no image files (${IMAGE_EXTENSIONS.join(' ')}) ${info ? 'in this folder' : 'match this pattern'}`);
    found.forEach(add);
  }
  return out;
}

function isImageFile(name: string): boolean {
  return IMAGE_EXTENSIONS.includes(path.extname(name).toLowerCase());
}

/** Image files below `dir`, recursively, sorted; names starting with '.' are skipped. */
async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => compare(a.name, b.name));
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else if (e.isFile() && isImageFile(e.name)) out.push(p);
  }
  return out;
}

/** Image files matching a `*`, `?`, `**` pattern, sorted. */
async function expandGlob(pattern: string): Promise<string[]> {
  const absolute = pattern.startsWith('/');
  const parts = pattern.split(/[\\/]+/).filter(Boolean);
  // The leading segments without wildcards form the folder to search from.
  const first = parts.findIndex((s) => /[*?]/.test(s));
  if (parts[parts.length - 1] === '**') parts.push('*'); // 'dir/**' means every file below dir
  const prefix = (absolute ? '/' : '') + parts.slice(0, first).join('/');
  const matches: string[] = [];
  await matchSegments(prefix || '.', parts.slice(first), prefix, matches);
  return matches.filter(isImageFile).sort(compare);
}

async function matchSegments(dir: string, segments: string[], prefix: string, out: string[]): Promise<void> {
  const [seg, ...rest] = segments;
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const join = (name: string) => (prefix ? path.join(prefix, name) : name);
  if (seg === '**') {
    // Zero folders, then one more folder with '**' still pending.
    await matchSegments(dir, rest, prefix, out);
    for (const e of entries) {
      if (e.isDirectory() && !e.name.startsWith('.')) await matchSegments(path.join(dir, e.name), segments, join(e.name), out);
    }
    return;
  }
  const re = segmentRegExp(seg);
  for (const e of entries) {
    if (!re.test(e.name) || (e.name.startsWith('.') && !seg.startsWith('.'))) continue;
    if (rest.length === 0) {
      if (e.isFile()) out.push(join(e.name));
    } else if (e.isDirectory()) {
      await matchSegments(path.join(dir, e.name), rest, join(e.name), out);
    }
  }
}

function segmentRegExp(seg: string): RegExp {
  const body = seg
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '[^/]*')
    .replace(/\?/g, '[^/]');
  return new RegExp(`^${body}$`);
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
