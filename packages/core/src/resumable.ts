/**
 * Resumable result files: what a long run writes as it goes, so that the same run started again goes on
 * where it stopped, and a run with other settings is refused instead of mixing its results with the old
 * ones. One rule for all of them: settings are plain JSON values, compared as JSON text, key by key.
 *
 * Three shapes, for three kinds of output:
 * - a finished result that records its settings (`readFinishedResult`): reused when they match;
 * - the settings of a run folder (`stampSettings`) beside a log of finished items (`JsonLinesLog`), one
 *   JSON line per item, appended and fsynced a batch at a time; a torn last line is cut off when read;
 * - row files (`RowFiles`): fixed-size binary rows appended and fsynced per batch, then a small record
 *   `{ settings, count }` rewritten atomically; bytes beyond `count` rows are cut off when read.
 * A settings conflict is a `SettingsMismatchError` (an InputError) that lists what differs.
 */
import { existsSync } from 'node:fs';
import { appendFile, open, readFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from './errors.js';
import { ensureDir, writeJsonAtomic } from './fs.js';

/** One setting whose value differs between an earlier run (`before`) and this one (`now`). */
export interface SettingsChange {
  key: string;
  before: unknown;
  now: unknown;
}

/** The keys (default: every key of either side, earlier run's first) whose values differ as JSON. */
export function settingsChanges(before: Record<string, unknown>, now: Record<string, unknown>, keys?: readonly string[]): SettingsChange[] {
  const names = keys ?? Object.keys({ ...before, ...now });
  return names.filter((k) => JSON.stringify(before[k]) !== JSON.stringify(now[k])).map((k) => ({ key: k, before: before[k], now: now[k] }));
}

/** Changes in words: `steps 20, not 30; size 56, not 64`. */
export function describeSettingsChanges(changes: readonly SettingsChange[]): string {
  return changes.map((c) => `${c.key} ${JSON.stringify(c.before)}, not ${JSON.stringify(c.now)}`).join('; ');
}

/** A resumable output in `file` was made with other settings; `changes` says which (when both were objects). */
export class SettingsMismatchError extends InputError {
  constructor(
    readonly file: string,
    readonly changes: SettingsChange[],
    readonly before: unknown,
    message = `${file} holds the results of a run with other settings (${describeSettingsChanges(changes)})`,
  ) {
    super(message);
    this.name = 'SettingsMismatchError';
  }
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A finished result saved as JSON with its settings under `settings`: the parsed file when it records the
 * same settings; null when there is no file, or it records no settings (written before results did: run
 * again). Other settings throw a SettingsMismatchError listing every key that differs.
 */
export async function readFinishedResult<T>(
  file: string,
  settings: Record<string, unknown>,
): Promise<(T & { settings: Record<string, unknown> }) | null> {
  if (!existsSync(file)) return null;
  const prev = JSON.parse(await readFile(file, 'utf8')) as T & { settings?: Record<string, unknown> };
  if (prev.settings === undefined) return null;
  const changes = settingsChanges(prev.settings, settings);
  if (changes.length > 0) throw new SettingsMismatchError(file, changes, prev.settings);
  return prev as T & { settings: Record<string, unknown> };
}

/**
 * The settings of a run folder: when `file` exists, its `keys` must equal those of `settings` (else a
 * SettingsMismatchError listing the keys that differ, in `keys` order); then `settings` is written to
 * `file` (atomically). Keys outside `keys` (say, a description of the model) may change between runs.
 */
export async function stampSettings(file: string, settings: Record<string, unknown>, keys: readonly string[]): Promise<void> {
  if (existsSync(file)) {
    const prev = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    const changes = settingsChanges(prev, settings, keys);
    if (changes.length > 0) throw new SettingsMismatchError(file, changes, prev);
  }
  await writeJsonAtomic(file, settings);
}

/** Appends `data` to `file` (created if missing) and fsyncs it, so the bytes are on disk when it returns. */
export async function appendDurably(file: string, data: string | Uint8Array): Promise<void> {
  await appendFile(file, data);
  const fh = await open(file, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * A log of finished items, one JSON record per line (e.g. results.jsonl). `read` returns the records
 * already there, cutting the file back after the last complete one (a line torn by an interrupted write
 * and anything after it is dropped, so the item runs again); `append` writes records and fsyncs.
 */
export class JsonLinesLog<T> {
  constructor(readonly path: string) {}

  async read(): Promise<T[]> {
    if (!existsSync(this.path)) return [];
    const text = await readFile(this.path, 'utf8');
    const out: T[] = [];
    let good = 0;
    for (const line of text.split('\n')) {
      if (line.trim() === '') {
        good += line.length + 1;
        continue;
      }
      try {
        out.push(JSON.parse(line) as T);
        good += Buffer.byteLength(line) + 1;
      } catch {
        break;
      }
    }
    if (good < Buffer.byteLength(text)) await truncate(this.path, good);
    return out;
  }

  async append(records: readonly T[]): Promise<void> {
    await appendDurably(this.path, records.map((r) => JSON.stringify(r) + '\n').join(''));
  }
}

export interface RowFilesOptions<K extends string> {
  /** Folder of the files (created by `load`). */
  dir: string;
  /** Name of this set: `<dir>/<name>.json` holds `{ settings, count }`, `<dir>/<name>.<suffix>` each stream. */
  name: string;
  /** What the rows were made with (any JSON value); a record with other settings is refused. */
  settings: unknown;
  /** File suffix of each stream, e.g. `{ x: 'x.f32', targets: 'targets.bin' }`. */
  files: Record<K, string>;
  /** How errors name these files (default 'the row files'), e.g. 'dense probe: the feature cache'. */
  label?: string;
  /** What one row is, in errors (default 'rows'), e.g. 'images'. */
  unit?: string;
}

/**
 * Append-only streams of fixed-size binary rows (say, the features of one image per row in one file and
 * its training target in another), with a record of how many rows are complete. `load` returns the
 * complete rows of every stream (cutting each file back to them); `append` adds a batch's rows to every
 * stream (fsynced) and then records the new count, so an interrupted append is redone, not half-kept.
 */
export class RowFiles<K extends string> {
  readonly record: string;
  readonly paths: Record<K, string>;
  private readonly label: string;
  private readonly unit: string;

  constructor(private readonly o: RowFilesOptions<K>) {
    this.record = join(o.dir, `${o.name}.json`);
    const entries = Object.entries<string>(o.files).map(([k, suffix]) => [k, join(o.dir, `${o.name}.${suffix}`)]);
    this.paths = Object.fromEntries(entries) as Record<K, string>;
    this.label = o.label ?? 'the row files';
    this.unit = o.unit ?? 'rows';
  }

  /**
   * The rows already complete, per stream, given each stream's bytes per row (0: the stream is unused and
   * its file emptied if present). Throws a SettingsMismatchError when the record holds other settings.
   */
  async load(rowBytes: Record<K, number>): Promise<{ count: number; rows: Record<K, Uint8Array> }> {
    await ensureDir(this.o.dir);
    let count = 0;
    if (existsSync(this.record)) {
      const m = JSON.parse(await readFile(this.record, 'utf8')) as { settings: unknown; count: number };
      if (JSON.stringify(m.settings) !== JSON.stringify(this.o.settings)) {
        const changes = isRecord(m.settings) && isRecord(this.o.settings) ? settingsChanges(m.settings, this.o.settings) : [];
        throw new SettingsMismatchError(
          this.record,
          changes,
          m.settings,
          `${this.label} ${this.record} was made with other settings (${JSON.stringify(m.settings)}); ` +
            `delete ${this.o.dir} or use another folder`,
        );
      }
      count = m.count;
    }
    const rows = {} as Record<K, Uint8Array>;
    for (const k of Object.keys(this.paths) as K[]) {
      const file = this.paths[k];
      const want = count * rowBytes[k];
      if (want === 0) {
        await truncate(file, 0).catch(() => undefined);
        rows[k] = new Uint8Array(0);
        continue;
      }
      const buf = existsSync(file) ? new Uint8Array(await readFile(file)) : new Uint8Array(0);
      if (buf.length < want) {
        const says = `its record says ${count} ${this.unit} (${want} bytes)`;
        throw new Error(`${this.label} ${file} holds ${buf.length} bytes, ${says}; delete ${this.o.dir}`);
      }
      if (buf.length > want) await truncate(file, want);
      rows[k] = buf.subarray(0, want);
    }
    return { count, rows };
  }

  /** Appends a batch's rows to each stream (fsynced; empty ones skipped), then records `count` rows done. */
  async append(rows: Record<K, Uint8Array>, count: number): Promise<void> {
    for (const k of Object.keys(this.paths) as K[]) {
      if (rows[k].length === 0) continue;
      await appendDurably(this.paths[k], rows[k]);
    }
    await writeJsonAtomic(this.record, { settings: this.o.settings, count });
  }
}
