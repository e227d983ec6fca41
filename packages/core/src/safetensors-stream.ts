/**
 * Streaming safetensors writes: a file of several float32 tensors whose first axis is one row per item
 * (per image, say), written batch by batch while a run goes, so memory holds one batch and not the whole
 * file. The file is the one writeSafetensors would write for the same tensors (F32, laid out by name,
 * header padded with spaces to 8 bytes), so any safetensors reader opens it.
 */
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { numel } from './tensor.js';

/** A float32 array and its shape (row-major), first axis the batch. */
export interface RowBatch {
  data: Float32Array;
  shape: readonly number[];
}

/**
 * Writes tensors of `count` rows each to `path`, batch by batch. At the first batch the header (every
 * tensor as F32 [count, ...its per-row shape], laid out by name, with `metadata()`'s `__metadata__`) goes
 * to a temporary file beside `path`; each batch's rows are written at their offsets; `finish` checks that
 * every row was written, fsyncs and renames the file into place. A failed run calls `abort`: the
 * temporary file goes and any earlier file at `path` stays intact. Errors start with `label` (default
 * 'features').
 */
export class FeatureWriter {
  private fh?: FileHandle;
  private readonly tmp: string;
  private readonly layout = new Map<string, { offset: number; shape: number[] }>();
  private rows = 0;

  constructor(
    private readonly path: string,
    private readonly count: number,
    private readonly metadata: () => Record<string, string>,
    private readonly label = 'features',
  ) {
    this.tmp = `${path}.tmp-${process.pid}`;
  }

  private async open(outputs: Map<string, RowBatch>): Promise<void> {
    const names = [...outputs.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const fields = [`"__metadata__":${JSON.stringify(this.metadata())}`];
    let offset = 0;
    for (const name of names) {
      const shape = [this.count, ...outputs.get(name)!.shape.slice(1)];
      const end = offset + numel(shape) * 4;
      fields.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype: 'F32', shape, data_offsets: [offset, end] })}`);
      this.layout.set(name, { offset, shape });
      offset = end;
    }
    let json = Buffer.from(`{${fields.join(',')}}`, 'utf8');
    const padded = Math.ceil(json.length / 8) * 8;
    json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.length));
    this.fh = await open(this.tmp, 'w');
    await this.fh.write(Buffer.concat([prefix, json]), 0, 8 + json.length, 0);
    const dataStart = 8 + json.length;
    for (const l of this.layout.values()) l.offset += dataStart;
    await this.fh.truncate(dataStart + offset);
  }

  /** One batch of `n` rows: every tensor by name, each [n, ...] (the same names and row shapes every time). */
  async add(outputs: Map<string, RowBatch>, n: number): Promise<void> {
    if (!this.fh) await this.open(outputs);
    for (const [name, t] of outputs) {
      const l = this.layout.get(name);
      if (!l || l.shape.slice(1).join(',') !== t.shape.slice(1).join(',')) {
        throw new Error(`${this.label}: output ${name} changed shape between batches`);
      }
      const rowBytes = (numel(l.shape) / this.count) * 4;
      const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      await this.fh!.write(bytes, 0, bytes.length, l.offset + this.rows * rowBytes);
    }
    this.rows += n;
  }

  /** All rows written: sync and move the file into place. */
  async finish(): Promise<void> {
    if (this.rows !== this.count) throw new Error(`${this.label}: wrote ${this.rows} of ${this.count} images`);
    await this.fh!.sync();
    await this.fh!.close();
    this.fh = undefined;
    await rename(this.tmp, this.path);
  }

  /** Give up: close and remove the temporary file (an earlier file at `path` is untouched). */
  async abort(): Promise<void> {
    await this.fh?.close().catch(() => {});
    await rm(this.tmp, { force: true });
  }
}
