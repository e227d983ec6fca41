/**
 * WebDataset tar shards for text-supervised (CLIP) training (`.tar` files, or a folder of them, read in name
 * order): members grouped into samples by key (the member path up to the first dot of its file name), image
 * from `jpg` / `jpeg` / `png` / `webp`, caption from `txt`, read as a stream (one sample in memory at a time;
 * ustar, pax and GNU long names). Images come back undecoded. For training, `WebDatasetStream` is open_clip's
 * webdataset pipeline (training/data.py): per epoch the shard list shuffled with seed + epoch (detshuffle2),
 * every W-th shard from the rank's own (split_by_node), the samples through a shuffle buffer (5000, first pick
 * at 1000), then batches; the stream of a rank runs on over epochs, and its batch k depends only on (seed, rank,
 * W, B, k), so a resumed run gets the same batches (whole epochs skipped by a header-only count of each shard).
 */
import { createReadStream } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeImage, InputError, Rng, type RgbImage } from '@vitreg/core';

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

/** A 512-byte tar header (ustar / GNU): member name, size, type flag; null for the zero block that ends the archive. */
function parseHeader(header: Uint8Array, file: string): { name: string; size: number; type: string; padded: number } | null {
  if (header.every((v) => v === 0)) return null;
  if (Buffer.from(header).toString('latin1', 257, 262) !== 'ustar') throw new Error(`${file}: not a tar file (no ustar header)`);
  const size = octal(header, 124, 12);
  const prefix = cstring(header, 345, 155);
  const name = cstring(header, 0, 100);
  return { name: prefix ? `${prefix}/${name}` : name, size, type: String.fromCharCode(header[156]!), padded: Math.ceil(size / 512) * 512 };
}

/** The name a GNU long-name ('L') or pax ('x') member gives the next member, or null. */
function longNameOf(type: string, data: Uint8Array): string | null {
  if (type === 'L') return Buffer.from(data).toString('utf8').replace(/\0+$/, '');
  const path = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(Buffer.from(data).toString('utf8'));
  return path ? path[1]! : null;
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
  try {
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
      const h = parseHeader(buf.subarray(0, 512), file);
      if (!h) return;
      const { name, size, type, padded } = h;
      if (!(await fill(512 + padded))) throw new Error(`${file}: truncated member "${name}" (${size} bytes)`);
      const data = new Uint8Array(buf.subarray(512, 512 + size));
      buf = buf.subarray(512 + padded);
      if (type === 'L' || type === 'x') longName = longNameOf(type, data) ?? longName;
      else if (type === '0' || type === '\0') {
        yield [longName ?? name, data];
        longName = null;
      } else longName = null;
    }
  } finally {
    stream.destroy();
  }
}

/** WebDataset's key and extension of a member path: up to / after the first dot of its file name. */
function keyOf(path: string): [string, string] {
  const slash = path.lastIndexOf('/');
  const dot = path.indexOf('.', slash + 1);
  return dot < 0 ? [path, ''] : [path.slice(0, dot), path.slice(dot + 1).toLowerCase()];
}

/** The (image, caption) samples of the given tar files in order; a sample without an image or a caption is an error naming its shard and key. */
async function* readShards(shards: readonly string[]): AsyncGenerator<WebDatasetSample> {
  for (const shard of shards) {
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

/**
 * The (image, caption) samples of WebDataset shards, streamed in shard and member order. A sample without an
 * image or a caption is an error naming its shard and key.
 */
export async function* readWebDataset(source: string): AsyncGenerator<WebDatasetSample> {
  yield* readShards(await webDatasetShards(source));
}

/** The number of samples (distinct consecutive keys) of a tar file, from its headers alone (member data skipped). */
export async function tarSampleCount(file: string): Promise<number> {
  const fh = await open(file, 'r');
  try {
    const { size: total } = await fh.stat();
    const header = new Uint8Array(512);
    let pos = 0;
    let count = 0;
    let last: string | null = null;
    let longName: string | null = null;
    while (pos + 512 <= total) {
      await fh.read(header, 0, 512, pos);
      const h = parseHeader(header, file);
      if (!h) break;
      if (pos + 512 + h.size > total) throw new Error(`${file}: truncated member "${h.name}" (${h.size} bytes)`);
      if (h.type === 'L' || h.type === 'x') {
        const data = new Uint8Array(h.size);
        await fh.read(data, 0, h.size, pos + 512);
        longName = longNameOf(h.type, data) ?? longName;
      } else if (h.type === '0' || h.type === '\0') {
        const [k] = keyOf(longName ?? h.name);
        if (k !== last) count++;
        last = k;
        longName = null;
      } else longName = null;
      pos += 512 + h.padded;
    }
    if (pos < total && pos + 512 > total)
      throw new Error(`${file}: not a tar file, or truncated (${total - pos} bytes left where a 512-byte header belongs)`);
    return count;
  } finally {
    await fh.close();
  }
}

/** open_clip's sample shuffle buffer (training/data.py `_SAMPLE_SHUFFLE_SIZE`, `_SAMPLE_SHUFFLE_INITIAL`). */
export const WDS_SHUFFLE = { size: 5000, initial: 1000 } as const;

/** webdataset's `shuffle(bufsize, initial)`: fill to `initial`, then each new sample goes in and a random one comes out. */
async function* shuffleBuffer<T>(src: AsyncIterable<T>, size: number, initial: number, rng: Rng): AsyncGenerator<T> {
  const first = Math.min(initial, size);
  const buf: T[] = [];
  const pick = (): T => {
    const k = rng.int(buf.length);
    [buf[k], buf[buf.length - 1]] = [buf[buf.length - 1]!, buf[k]!];
    return buf.pop()!;
  };
  const it = src[Symbol.asyncIterator]();
  for (;;) {
    const n = await it.next();
    if (n.done) break;
    buf.push(n.value);
    if (buf.length < size) {
      const m = await it.next();
      if (!m.done) buf.push(m.value);
    }
    if (buf.length >= first) yield pick();
  }
  while (buf.length > 0) yield pick();
}

/**
 * The shards rank `rank` of `worldSize` reads in epoch `epoch`: the list shuffled with (seed, epoch) (open_clip's
 * detshuffle2 seeds Python's random with seed + epoch; this is vitreg's Rng, so the order differs from Python's),
 * then every worldSize-th from position `rank` (webdataset's split_by_node).
 */
export function rankShards(shards: readonly string[], o: { seed: number; epoch: number; rank: number; worldSize: number }): string[] {
  const order = new Rng(o.seed)
    .fork(2_000_003)
    .fork(o.epoch)
    .shuffle([...shards]);
  return order.filter((_, i) => i % o.worldSize === o.rank);
}

/** What `WebDatasetStream` is built from: the rank and world size, the per-rank batch, the seed, the shuffle buffer. */
export interface WebDatasetStreamOptions {
  rank: number;
  worldSize: number;
  batchSize: number;
  seed: number;
  /** Sample shuffle buffer: size and fill before the first pick (default WDS_SHUFFLE, open_clip's 5000 / 1000). */
  shuffle?: { size: number; initial: number };
}

/** One decoded training pair of a stream (label -1: WebDataset captions have no class). */
export interface StreamPair {
  image: RgbImage;
  caption: string;
  label: number;
  key: string;
  shard: string;
}

/** An image's bytes decoded by sharp (as core's decodeImage does for a file), errors naming the shard and key. */
async function decodeSample(s: WebDatasetSample): Promise<RgbImage> {
  try {
    // sharp reads a Buffer as it reads a path; core's decodeImage is typed for paths only.
    return await decodeImage(Buffer.from(s.image.buffer, s.image.byteOffset, s.image.byteLength) as unknown as string);
  } catch (err) {
    const cause = (err as Error).cause as Error | undefined;
    const why = String(cause?.message ?? (err as Error).message).split('\n')[0]!;
    throw new Error(`${s.shard}: sample "${s.key}": cannot decode its ${s.imageExt} image (${why})`, { cause: err });
  }
}

/**
 * A rank's WebDataset training stream (open_clip's pipeline; see the module comment): `batch(k)` gives the k-th
 * batch of `batchSize` decoded pairs. Calls in step order read on; any other step (a resume) starts over and skips
 * to it: whole epochs by `tarSampleCount`, the rest through the shuffle buffer without decoding.
 */
export class WebDatasetStream {
  private shards: string[] = [];
  private samples: AsyncGenerator<WebDatasetSample> | null = null;
  private nextStep = 0;
  private readonly counts = new Map<string, number>();

  private constructor(
    readonly source: string,
    readonly o: WebDatasetStreamOptions,
  ) {}

  /** Lists the shards (errors: no such folder, no .tar files, fewer shards than ranks as open_clip refuses). */
  static async open(source: string, o: WebDatasetStreamOptions): Promise<WebDatasetStream> {
    const s = new WebDatasetStream(source, o);
    s.shards = await webDatasetShards(source);
    if (s.shards.length < o.worldSize)
      throw new InputError(
        `${source}: ${s.shards.length} WebDataset shard(s) for ${o.worldSize} ranks; each rank reads whole shards (open_clip's split_by_node), so give at least one per rank`,
      );
    return s;
  }

  /** The shards of this stream's source, in name order. */
  get shardList(): readonly string[] {
    return this.shards;
  }

  /** This rank's samples from epoch `epoch` on, endless (an epoch with no samples is an error). */
  private async *endless(epoch: number, skip: number): AsyncGenerator<WebDatasetSample> {
    const { rank, worldSize, seed } = this.o;
    const sh = this.o.shuffle ?? WDS_SHUFFLE;
    for (let e = epoch; ; e++) {
      const mine = rankShards(this.shards, { seed, epoch: e, rank, worldSize });
      let n = 0;
      const rng = new Rng(seed).fork(3_000_017).fork(e * 65_537 + rank);
      for await (const s of shuffleBuffer(readShards(mine), sh.size, sh.initial, rng)) {
        n++;
        if (skip > 0) skip--;
        else yield s;
      }
      if (n === 0) throw new Error(`${this.source}: rank ${rank}'s shards of epoch ${e} (${mine.join(', ')}) hold no samples`);
    }
  }

  /** Positions the stream at sample `k` of this rank: whole epochs counted from the tar headers, the rest read. */
  private async seek(step: number): Promise<void> {
    await this.samples?.return(undefined);
    let left = step * this.o.batchSize;
    let epoch = 0;
    for (;;) {
      const mine = rankShards(this.shards, { seed: this.o.seed, epoch, rank: this.o.rank, worldSize: this.o.worldSize });
      let n = 0;
      for (const f of mine) {
        if (!this.counts.has(f)) this.counts.set(f, await tarSampleCount(f));
        n += this.counts.get(f)!;
      }
      if (n === 0 || left < n) break;
      left -= n;
      epoch++;
    }
    this.samples = this.endless(epoch, left);
    this.nextStep = step;
  }

  /** The `batchSize` decoded pairs of step `step` for this rank. */
  async batch(step: number): Promise<StreamPair[]> {
    if (this.samples === null || step !== this.nextStep) await this.seek(step);
    const raw: WebDatasetSample[] = [];
    for (let i = 0; i < this.o.batchSize; i++) raw.push((await this.samples!.next()).value as WebDatasetSample);
    this.nextStep = step + 1;
    return Promise.all(raw.map(async (s) => ({ image: await decodeSample(s), caption: s.caption, label: -1, key: s.key, shard: s.shard })));
  }

  /** Stops reading (closes the open shard). */
  async close(): Promise<void> {
    await this.samples?.return(undefined);
    this.samples = null;
  }
}
