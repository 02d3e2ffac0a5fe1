/**
 * At most one log line per key per interval, for events a peer or a client
 * can cause as often as it likes (refused handshakes, refused dial answers):
 * every event is still counted in a metric; the log says how many lines it
 * left out since the last one, so nothing is hidden.
 */
export class LogThrottle {
  private readonly last = new Map<string, { at: number; skipped: number }>();

  /** `maxKeys` bounds the keys remembered (a key idle for an interval is forgotten first). */
  constructor(
    private readonly intervalMs: number,
    private readonly maxKeys = 4096,
  ) {}

  /**
   * Whether a line for `key` may be written now: undefined if not, else how
   * many were left out since the last one written.
   */
  take(key: string, now = Date.now()): number | undefined {
    const entry = this.last.get(key);
    if (entry && now - entry.at < this.intervalMs) {
      entry.skipped++;
      return undefined;
    }
    if (!entry && this.last.size >= this.maxKeys) this.forgetIdle(now);
    this.last.set(key, { at: now, skipped: 0 });
    return entry?.skipped ?? 0;
  }

  private forgetIdle(now: number): void {
    for (const [key, entry] of this.last) if (now - entry.at >= this.intervalMs) this.last.delete(key);
    // All keys active within the interval: forget the oldest rather than grow.
    if (this.last.size >= this.maxKeys) this.last.delete(this.last.keys().next().value!);
  }
}
