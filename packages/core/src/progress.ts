/**
 * Progress reporting for long loops (feature extraction, training epochs, evaluation).
 *
 * On a terminal it redraws one bar in place: `label [=====>    ] 12/100 3.40 img/s ETA 0:25 info`.
 * Elsewhere (CI logs, files, pipes) it writes plain lines instead, at most one every `interval` seconds
 * or at each further 10% of the total, plus a final line from `done()` (or `stop()`, for a loop that
 * ended early: `stopped at N/M`). Nothing is written while `setQuiet(true)` is in effect.
 */
import { isQuiet } from './log.js';

/** The part of a stream that Progress uses (process.stderr, or a fake one in tests). */
export interface ProgressStream {
  isTTY?: boolean;
  /** Terminal width; 80 when absent. */
  columns?: number;
  write(chunk: string): unknown;
}

export interface ProgressOptions {
  /** Number of units the loop will process (>= 0), counted from 0 even when `start` > 0. */
  total: number;
  /**
   * Units done before this loop started (a resumed run): the count starts there (`465/1200`), and the
   * rate and ETA count only this session's units. Default 0.
   */
  start?: number;
  label: string;
  /** Unit name used in the rate, e.g. 'img' -> `3.40 img/s`. Default 'it'. */
  unit?: string;
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Plain (non-TTY) output: seconds between lines, besides one line per 10%. Default 5. */
  interval?: number;
  /** Clock in milliseconds. Default performance.now; tests pass a fake clock. */
  now?: () => number;
}

/** Minimum milliseconds between two redraws of a TTY bar. */
const TTY_REDRAW_MS = 100;

export class Progress {
  readonly total: number;
  readonly label: string;
  readonly unit: string;
  private readonly stream: ProgressStream;
  private readonly tty: boolean;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly start: number;
  private count: number;
  /** The count at the start (Options.start). */
  private readonly first: number;
  private info = '';
  private lastWrite: number;
  private lastDecile = 0;
  private finished = false;

  constructor(opts: ProgressOptions) {
    if (!Number.isFinite(opts.total) || opts.total < 0) {
      throw new Error(`Progress '${opts.label}': total must be a finite number >= 0, got ${opts.total}`);
    }
    this.total = opts.total;
    const start = opts.start ?? 0;
    if (!Number.isFinite(start) || start < 0 || start > opts.total) {
      throw new Error(`Progress '${opts.label}': start must be a number in [0, total], got ${opts.start}`);
    }
    this.count = start;
    this.first = start;
    this.label = opts.label;
    this.unit = opts.unit ?? 'it';
    this.stream = opts.stream ?? process.stderr;
    this.tty = this.stream.isTTY === true;
    this.intervalMs = (opts.interval ?? 5) * 1000;
    this.now = opts.now ?? (() => performance.now());
    this.start = this.now();
    this.lastWrite = this.start;
    this.lastDecile = this.total > 0 ? Math.floor((10 * start) / this.total) : 0;
  }

  /** Units done so far. */
  get n(): number {
    return this.count;
  }

  /** Record `n` more units done (default 1); `info` replaces the text shown after the bar (e.g. a loss). */
  tick(n = 1, info?: string): void {
    if (this.finished) return;
    this.count += n;
    if (info !== undefined) this.info = info;
    const t = this.now();
    if (this.tty) {
      if (t - this.lastWrite >= TTY_REDRAW_MS) this.write(`\r${this.fit(this.barLine(t))}\x1b[K`, t);
      return;
    }
    const decile = this.total > 0 ? Math.floor((10 * this.count) / this.total) : 0;
    if ((decile > this.lastDecile && decile < 10) || t - this.lastWrite >= this.intervalMs) {
      this.lastDecile = Math.max(this.lastDecile, decile);
      this.write(`${this.plainLine(t)}\n`, t);
    }
  }

  /** Finish: draw the final state (elapsed time and average rate) and end the line. Idempotent. */
  done(info?: string): void {
    this.finish(false, info);
  }

  /**
   * Finish a loop that stopped before its end (an interrupted training run): the final line says
   * `stopped at N/M` (`train: stopped at 942/3000 in 1:02 (15.2 step/s)`) instead of `done N/M`.
   * Idempotent; nothing after done() or stop().
   */
  stop(info?: string): void {
    this.finish(true, info);
  }

  private finish(stopped: boolean, info?: string): void {
    if (this.finished) return;
    this.finished = true;
    if (info !== undefined) this.info = info;
    const t = this.now();
    const elapsed = (t - this.start) / 1000;
    const summary = `${this.count}/${this.total} in ${formatDuration(elapsed)} (${this.rateText(t)})${this.infoText()}`;
    if (this.tty)
      this.write(`\r${this.fit(`${this.label} [${this.bar(this.barWidth())}] ${stopped ? 'stopped at ' : ''}${summary}`)}\x1b[K\n`, t);
    else this.write(`${this.label}: ${stopped ? 'stopped at' : 'done'} ${summary}\n`, t);
  }

  private write(text: string, t: number): void {
    this.lastWrite = t;
    if (!isQuiet()) this.stream.write(text);
  }

  private rate(t: number): number {
    const seconds = (t - this.start) / 1000;
    return seconds > 0 ? (this.count - this.first) / seconds : NaN;
  }

  private rateText(t: number): string {
    return `${formatRate(this.rate(t))} ${this.unit}/s`;
  }

  private etaText(t: number): string {
    const rate = this.rate(t);
    if (!(rate > 0)) return 'ETA ?';
    return `ETA ${formatDuration(Math.max(0, this.total - this.count) / rate)}`;
  }

  private infoText(): string {
    return this.info ? ` ${this.info}` : '';
  }

  private barLine(t: number): string {
    return `${this.label} [${this.bar(this.barWidth())}] ${this.count}/${this.total} ${this.rateText(t)} ${this.etaText(t)}${this.infoText()}`;
  }

  private plainLine(t: number): string {
    const pct = this.total > 0 ? ` (${Math.floor((100 * this.count) / this.total)}%)` : '';
    return `${this.label}: ${this.count}/${this.total}${pct} ${this.rateText(t)} ${this.etaText(t)}${this.infoText()}`;
  }

  private barWidth(): number {
    return Math.max(10, Math.min(40, Math.floor((this.stream.columns ?? 80) / 4)));
  }

  private bar(width: number): string {
    const frac = this.total > 0 ? Math.min(1, this.count / this.total) : 1;
    const full = Math.floor(frac * width);
    if (full >= width) return '='.repeat(width);
    return `${'='.repeat(full)}>${' '.repeat(width - full - 1)}`;
  }

  /** Cut a line to the terminal width so that `\r` redraws never wrap. */
  private fit(line: string): string {
    const max = (this.stream.columns ?? 80) - 1;
    return line.length > max ? line.slice(0, max) : line;
  }
}

/** `m:ss` below an hour, `h:mm:ss` above. */
export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

function formatRate(rate: number): string {
  if (!Number.isFinite(rate)) return '?';
  if (rate >= 100) return rate.toFixed(0);
  if (rate >= 10) return rate.toFixed(1);
  return rate.toFixed(2);
}
