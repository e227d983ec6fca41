/**
 * `npm run bench -- data [--images 2000] [--size 256] [--classes 20] [--threads 1,4] [--concurrency 1,4,16,64]
 *   [--batch 256] [--step-ms 0] [--dir FOLDER]`
 *
 * Image-folder loading speed on a generated folder of JPEGs (`--images` of `--size` px in `--classes`
 * class folders, in a temporary folder or `--dir`, kept there when given):
 * - `data-index`: opening the folder by listing it (writing the index), then from the index, both
 *   synchronously (`new ImageFolderDataset`) and in parallel (`ImageFolderDataset.open`);
 * - `data-decode`: images/s decoded through a BatchPrefetcher reading the folder in batches of `--batch`
 *   (prefetching the next batch, taking the current one), for each UV_THREADPOOL_SIZE of `--threads` (a
 *   child process each: libuv reads it at start) and each `--concurrency`. `--step-ms` blocks the main
 *   thread that long per batch, as a training step would: decoding then overlaps it.
 * One JSON line per case. Files are read once before timing, so the numbers are decode, not disk.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { BatchPrefetcher, ImageFolderDataset, IMAGE_FOLDER_INDEX_NAME, uvThreadpoolSize } from '@vitreg/core';

const list = (s: string, flag: string): number[] =>
  s.split(',').map((v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag}: expected positive integers separated by commas, got "${s}"`);
    return n;
  });

/** Writes `count` JPEGs (smooth colour fields plus noise, so they compress like photos) into `classes` folders. */
async function generate(dir: string, count: number, size: number, classes: number): Promise<void> {
  for (let c = 0; c < classes; c++) mkdirSync(join(dir, `class${String(c).padStart(3, '0')}`), { recursive: true });
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const pixels = new Uint8Array(size * size * 3);
  for (let i = 0; i < count; i++) {
    const [a, b, c] = [rand() * 6, rand() * 6, rand() * 255];
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const o = (y * size + x) * 3;
        pixels[o] = 128 + 100 * Math.sin((a * x) / size + b);
        pixels[o + 1] = 128 + 100 * Math.cos((b * y) / size + a);
        pixels[o + 2] = (c + 60 * rand()) % 256;
      }
    }
    const file = join(dir, `class${String(i % classes).padStart(3, '0')}`, `img${String(i).padStart(6, '0')}.jpg`);
    await sharp(pixels, { raw: { width: size, height: size, channels: 3 } })
      .jpeg({ quality: 90 })
      .toFile(file);
  }
}

function timed<T>(fn: () => T): { value: T; seconds: number } {
  const t0 = performance.now();
  const value = fn();
  return { value, seconds: (performance.now() - t0) / 1000 };
}

async function timedAsync<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, seconds: (performance.now() - t0) / 1000 };
}

function emit(line: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(line) + '\n');
}

async function indexCases(dir: string, images: number): Promise<void> {
  const log = () => undefined;
  const rm = () => rmSync(join(dir, IMAGE_FOLDER_INDEX_NAME), { force: true });
  rm();
  const cases: [string, () => Promise<ImageFolderDataset>][] = [
    ['sync-list', async () => (rm(), new ImageFolderDataset(dir, { log }))],
    ['sync-index', async () => new ImageFolderDataset(dir, { log })],
    ['async-list', async () => (rm(), ImageFolderDataset.open(dir, { log }))],
    ['async-index', async () => ImageFolderDataset.open(dir, { log })],
  ];
  for (const [mode, open] of cases) {
    const { value, seconds } = await timedAsync(open);
    if (value.length !== images) throw new Error(`${mode}: ${value.length} images, expected ${images}`);
    emit({ case: 'data-index', mode, source: value.index.source, images, classes: value.numClasses, ms: +(seconds * 1000).toFixed(2) });
  }
}

/** In a child process with UV_THREADPOOL_SIZE set: decode throughput for each concurrency. */
async function decodeCases(dir: string, concurrencies: number[], batch: number, stepMs: number, size: number): Promise<void> {
  const ds = new ImageFolderDataset(dir, { log: () => undefined });
  for (let i = 0; i < ds.length; i++) readFileSync(ds.path(i)); // page cache
  const order = Array.from({ length: ds.length }, (_, i) => (i * 7919) % ds.length); // a fixed shuffle (7919 is prime)
  const batches: number[][] = [];
  for (let s = 0; s < order.length; s += batch) batches.push(order.slice(s, s + batch));
  await Promise.all(batches[0]!.slice(0, 8).map((i) => ds.get(i))); // warm up sharp
  for (const concurrency of concurrencies) {
    const loader = new BatchPrefetcher(ds, { concurrency });
    let pixels = 0;
    const { seconds } = await timedAsync(async () => {
      for (let s = 0; s < batches.length; s++) {
        if (s + 1 < batches.length) loader.prefetch(batches[s + 1]!);
        const items = await loader.take(batches[s]!);
        for (const it of items) pixels += it.width * it.height;
        if (stepMs > 0)
          timed(() => {
            const end = performance.now() + stepMs;
            while (performance.now() < end);
          });
      }
    });
    if (pixels !== ds.length * size * size) throw new Error(`decoded ${pixels} pixels, expected ${ds.length * size * size}`);
    emit({
      case: 'data-decode',
      images: ds.length,
      size,
      format: 'jpeg',
      uv_threadpool_size: uvThreadpoolSize(),
      concurrency,
      batch,
      step_ms: stepMs,
      sharp_concurrency: sharp.concurrency(),
      cpus: cpus().length,
      images_per_s: +(ds.length / seconds).toFixed(1),
      ms_per_image: +((seconds * 1000) / ds.length).toFixed(3),
      seconds: +seconds.toFixed(3),
      prefetch_hits: loader.stats.hits,
    });
  }
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      images: { type: 'string', default: '2000' },
      size: { type: 'string', default: '256' },
      classes: { type: 'string', default: '20' },
      threads: { type: 'string', default: '1,4' },
      concurrency: { type: 'string', default: '1,4,16,64' },
      batch: { type: 'string', default: '256' },
      'step-ms': { type: 'string', default: '0' },
      dir: { type: 'string' },
      child: { type: 'boolean', default: false },
    },
  });
  const [images] = list(values.images!, 'images');
  const [size] = list(values.size!, 'size');
  const [classes] = list(values.classes!, 'classes');
  const [batch] = list(values.batch!, 'batch');
  const stepMs = Number(values['step-ms']);
  if (!(stepMs >= 0)) throw new Error(`--step-ms: expected a number >= 0, got "${values['step-ms']}"`);
  const concurrencies = list(values.concurrency!, 'concurrency');
  if (values.child) {
    await decodeCases(values.dir!, concurrencies, batch!, stepMs, size!);
    return;
  }
  const dir = values.dir ?? mkdtempSync(join(tmpdir(), 'vitreg-bench-data-'));
  try {
    const existing = readdirSync(dir).filter((f) => f.startsWith('class')).length;
    if (existing === 0) await generate(dir, images!, size!, classes!);
    await indexCases(dir, images!);
    const main = fileURLToPath(new URL('./main.ts', import.meta.url));
    for (const threads of list(values.threads!, 'threads')) {
      const args = [
        ...process.execArgv,
        main,
        'data',
        '--child',
        '--dir',
        dir,
        '--size',
        String(size),
        '--batch',
        String(batch),
        '--concurrency',
        values.concurrency!,
        '--step-ms',
        String(stepMs),
      ];
      const r = spawnSync(process.execPath, args, {
        env: { ...process.env, UV_THREADPOOL_SIZE: String(threads) },
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      if (r.status !== 0) throw new Error(`bench data: the child with UV_THREADPOOL_SIZE=${threads} failed (exit ${r.status})`);
    }
  } finally {
    if (!values.dir) rmSync(dir, { recursive: true, force: true });
  }
}
