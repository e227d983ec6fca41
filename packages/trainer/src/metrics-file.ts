/**
 * Rank 0's metrics.jsonl (one JSON line per logged step, plus `{ step, eval }` lines): what a resumed run
 * keeps of it, and the line of a committed step that a cluster's new rank 0 writes when the old one died
 * between the step's commit and its line.
 */
import { appendFile, readFile } from 'node:fs/promises';
import { writeFileAtomic } from '@vitreg/core';

/** A metrics line parsed, or undefined for a line that does not parse (a write cut short). */
function parseLine(line: string): { step?: number; eval?: unknown } | undefined {
  try {
    return JSON.parse(line) as { step?: number; eval?: unknown };
  } catch {
    return undefined;
  }
}

/** Keeps the metric lines up to `step` (a resumed run rewrites what came after its checkpoint). */
export async function truncateMetrics(path: string, step: number): Promise<void> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const kept = text.split('\n').filter((line) => {
    if (!line.trim()) return false;
    const parsed = parseLine(line);
    return parsed !== undefined && parsed.step! <= step;
  });
  await writeFileAtomic(path, kept.map((l) => l + '\n').join(''));
}

/**
 * Makes `path` hold the metrics line of the committed step `line.step`, appending `line` when no step
 * line (an eval line does not count) has that step. A cluster's rank 0 writes a step's line after the
 * step's commit; killed in between, the step stays committed (the others go on from its state) without
 * a line, and the new rank 0, which committed the same step, writes it from its own copy of the step's
 * metrics. An unfinished last line (a write cut short) is dropped first. Returns whether it wrote.
 */
export async function restoreMetricsLine(path: string, line: Record<string, number>): Promise<boolean> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const lines = text.split('\n').filter((l) => l.trim());
  const parsed = lines.map(parseLine);
  if (parsed.some((p) => p !== undefined && p.step === line.step && p.eval === undefined)) return false;
  const entry = JSON.stringify(line) + '\n';
  if (text === '' || (text.endsWith('\n') && parsed.every((p) => p !== undefined))) await appendFile(path, entry);
  else
    await writeFileAtomic(
      path,
      lines
        .filter((_, i) => parsed[i] !== undefined)
        .map((l) => l + '\n')
        .join('') + entry,
    );
  return true;
}
