/**
 * Bounded logging of hostile or broken traffic: a flood of refused joins, garbage connections or
 * half-open sockets must neither fill the disk nor bury the job's own lines. Each kind of event gets
 * at most `max` lines per window; the rest are counted and summed up in one line when the window
 * ends ("... 4213 more refused Join calls in the last 10 s").
 */

export class LogLimiter {
  private windows = new Map<string, { start: number; shown: number; hidden: number; timer: NodeJS.Timeout | null }>();

  /**
   * @param log where lines go
   * @param max lines of one kind per window (default 20)
   * @param windowMs the window (default 10 s)
   */
  constructor(
    private readonly log: (line: string) => void,
    private readonly max = 20,
    private readonly windowMs = 10_000,
  ) {}

  /** Logs `text` unless `kind` already had `max` lines in this window; then it is only counted. True when logged. */
  line(kind: string, text: string): boolean {
    const now = Date.now();
    let w = this.windows.get(kind);
    if (w && now - w.start >= this.windowMs) {
      this.flush(kind);
      w = undefined;
    }
    if (!w) {
      w = { start: now, shown: 0, hidden: 0, timer: null };
      this.windows.set(kind, w);
    }
    if (w.shown < this.max) {
      w.shown++;
      this.log(text);
      return true;
    }
    w.hidden++;
    if (!w.timer) {
      w.timer = setTimeout(() => this.flush(kind), Math.max(0, w.start + this.windowMs - now));
      w.timer.unref();
    }
    return false;
  }

  /** Ends `kind`'s window: the summary line of what it did not log, if anything. */
  private flush(kind: string): void {
    const w = this.windows.get(kind);
    if (!w) return;
    this.windows.delete(kind);
    if (w.timer) clearTimeout(w.timer);
    if (w.hidden > 0)
      this.log(`... ${w.hidden} more ${kind} in the last ${Math.round((Date.now() - w.start) / 1000)} s (not logged one by one)`);
  }

  /** Writes every pending summary now (at close). */
  close(): void {
    for (const kind of [...this.windows.keys()]) this.flush(kind);
  }
}
