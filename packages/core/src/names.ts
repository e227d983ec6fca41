/**
 * Names for output files and folders made from input paths and labels: a file's stem, safe and unique
 * folder names, and short names that tell several checkpoints apart (one sub-folder per checkpoint of a
 * sweep).
 */
import { basename, extname, resolve, sep } from 'node:path';

/** File name without folder and extension. */
export const stem = (path: string): string => basename(path, extname(path));

/** Safe, unique names (for folders and tensor metadata) from labels: `a b`, `a b` -> `a_b`, `a_b-2`. */
export function uniqueNames(raw: string[]): string[] {
  const used = new Map<string, number>();
  return raw.map((r) => {
    const base = r.replace(/[^\w.-]+/g, '_').replace(/^\.+/, '_') || 'image';
    const k = (used.get(base) ?? 0) + 1;
    used.set(base, k);
    return k === 1 ? base : `${base}-${k}`;
  });
}

/**
 * Folder names for several checkpoints (sweeps): the file stem, or as many trailing path parts as it
 * takes to tell them apart (".../reg0/checkpoints/step-300/model.safetensors" -> "reg0_..._model").
 */
export function checkpointNames(paths: string[]): string[] {
  const parts = paths.map((p) =>
    resolve(p)
      .split(sep)
      .filter(Boolean)
      .map((s, i, all) => (i === all.length - 1 ? stem(s) : s)),
  );
  for (let k = 1; ; k++) {
    const names = parts.map((ps) => ps.slice(-k).join('_'));
    if (new Set(names).size === names.length || parts.every((ps) => ps.length <= k)) return uniqueNames(names);
  }
}
