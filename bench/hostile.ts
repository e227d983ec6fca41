/**
 * `npm run bench -- hostile [--only NAME,...]`: time and peak memory to refusal for a corpus of hostile
 * files (packages/core/test/hostile-corpus.ts: deep pickles and a pickle reusing one list at several
 * sizes, deflate bombs, a huge stride-0 view, overlapping zip entries and safetensors offsets, huge
 * shapes, truncated files, safetensors headers of many tensors (3 sizes under the limit, one over), many
 * values or deep nesting, or of one huge string or a few (a 99 MB `__metadata__` value, a 90 MB name,
 * 1,500 names of 64 KiB; one with a limit raised through its `env`), PNG and JPEG decompression bombs;
 * the bench-only ones too). Each file is read in a child process of its
 * own, so its peak RSS is its own: one JSON line per file with the bytes, the milliseconds and
 * CPU-milliseconds of the read, the child's peak RSS and its RSS before the read, and the error's first
 * 140 characters. Goal: under 1 s and 200 MB each, time linear in size.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeImage, readPth, readSafetensors } from '@vitreg/core';
import { hostileCorpus, validPth } from '../packages/core/test/hostile-corpus.js';

const MAIN = fileURLToPath(new URL('./main.ts', import.meta.url));

/** Child mode: read one file, print {ms, peakRssMB, rssBeforeMB, error}. */
async function readOne(file: string): Promise<void> {
  const rssBefore = process.memoryUsage().rss;
  const cpu0 = process.cpuUsage();
  const t = performance.now();
  let error: string | null = null;
  try {
    await (file.endsWith('.safetensors') ? readSafetensors(file) : /\.(png|jpg)$/.test(file) ? decodeImage(file) : readPth(file));
  } catch (err) {
    error = `${(err as Error).name}: ${(err as Error).message}`;
  }
  const ms = performance.now() - t;
  const cpu = process.cpuUsage(cpu0);
  const peak = peakRss();
  process.stdout.write(
    JSON.stringify({
      ms: +ms.toFixed(1),
      cpuMs: +((cpu.user + cpu.system) / 1000).toFixed(1),
      peakRssMB: +(peak / 2 ** 20).toFixed(1),
      rssBeforeMB: +(rssBefore / 2 ** 20).toFixed(1),
      error,
    }) + '\n',
  );
}

/**
 * This process's peak RSS in bytes: VmHWM from /proc where there is one (its own address space's high-water
 * mark), else getrusage's maxRSS, which on Linux keeps the parent's RSS at fork across exec (the bench's
 * parent holds each generated file, up to 100 MB: every later child read as at least that).
 */
function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

export async function run(argv: string[]): Promise<void> {
  if (argv[0] === '--one') return readOne(argv[1]!);
  const only = argv[0] === '--only' ? new Set(argv[1]!.split(',')) : null;
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-hostile-bench-'));
  try {
    const cases = [{ name: 'valid-pth (baseline)', ext: '.pth' as const, bytes: validPth }, ...hostileCorpus()];
    for (const h of cases) {
      if (only && !only.has(h.name)) continue;
      const bytes = h.bytes();
      const file = join(dir, `${h.name.replace(/[^\w-]/g, '_')}${h.ext}`);
      await writeFile(file, bytes);
      const child = spawnSync(process.execPath, [...process.execArgv, MAIN, 'hostile', '--one', file], {
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, ...h.env },
      });
      const line = child.stdout.trim().split('\n').pop() ?? '';
      let r: { ms?: number; cpuMs?: number; peakRssMB?: number; rssBeforeMB?: number; error?: string | null } = {};
      try {
        r = JSON.parse(line) as typeof r;
      } catch {
        r = { error: `child failed (status ${child.status}, signal ${child.signal}): ${child.stderr.slice(-300)}` };
      }
      const error = r.error ? r.error.replace(file, '<file>').slice(0, 140) : null;
      process.stdout.write(
        JSON.stringify({
          case: 'hostile',
          file: h.name,
          bytes: bytes.length,
          ms: r.ms,
          cpuMs: r.cpuMs,
          peakRssMB: r.peakRssMB,
          rssBeforeMB: r.rssBeforeMB,
          refused: error !== null,
          error,
        }) + '\n',
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
