/**
 * Credit-based flow control, pure logic (no I/O, no timers).
 *
 * Grants are absolute byte offsets ("you may send up to offset N"), as QUIC's
 * MAX_STREAM_DATA: a lost grant is repaired by the next one, so a dropped
 * message cannot deadlock a tunnel.
 *
 * NATS core has no flow control of its own: a server cuts a connection that
 * falls max_pending bytes behind (a slow consumer), killing every tunnel on
 * it. So the bytes a process has granted and not yet consumed, summed over
 * all its tunnels, are capped by one ReceiveBudget per process. Every tunnel
 * may always hold `minWindow` outstanding so none starves; beyond that it
 * borrows from the shared budget up to its fair share (the budget divided
 * among the open tunnels, at most its own `window`). A tunnel above its share
 * (it came first) gives the excess back as its grant drains, so a thousand
 * tunnels end up with equal windows, and stuck tunnels hold only their share.
 */

export interface CreditSettings {
  /** Largest window one tunnel direction may hold (bytes granted, not yet consumed). */
  readonly window: number;
  /** Window every tunnel gets regardless of the shared budget. */
  readonly minWindow: number;
  /** Sum of outstanding grants above minWindow allowed in one process. */
  readonly budget: number;
}

export const defaultCreditSettings: CreditSettings = {
  window: 4 * 1024 * 1024,
  minWindow: 64 * 1024,
  budget: 48 * 1024 * 1024,
};

/** The process-wide pool of receive credit above each tunnel's guaranteed minimum. */
export class ReceiveBudget {
  readonly capacity: number;
  private borrowed = 0;
  private holders = 0;
  private readonly waiters = new Set<() => void>();

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  get inUse(): number {
    return this.borrowed;
  }

  /** Each tunnel direction that borrows is a holder while it is open. */
  join(): void {
    this.holders++;
  }

  leave(): void {
    this.holders--;
  }

  /** What one holder may borrow when the budget is shared evenly. */
  get fairShare(): number {
    return Math.floor(this.capacity / Math.max(1, this.holders));
  }

  /** Takes up to `wanted` bytes; returns how many it got (possibly 0). */
  borrow(wanted: number): number {
    const granted = Math.max(0, Math.min(wanted, this.capacity - this.borrowed));
    this.borrowed += granted;
    return granted;
  }

  giveBack(bytes: number): void {
    if (bytes <= 0) return;
    this.borrowed -= bytes;
    if (this.waiters.size === 0) return;
    // Wake everyone who waited; each takes what it can and re-queues if it got nothing.
    const waiting = [...this.waiters];
    this.waiters.clear();
    for (const wake of waiting) wake();
  }

  /** Calls `wake` once, the next time credit is given back. */
  waitForCredit(wake: () => void): void {
    this.waiters.add(wake);
  }

  cancelWait(wake: () => void): void {
    this.waiters.delete(wake);
  }
}

/**
 * The receiving half of one tunnel direction: tracks what was granted,
 * received and consumed, and decides when to grant more.
 */
export class ReceiveCredit {
  private limitOffset: number;
  private receivedBytes = 0;
  private consumedBytes = 0;
  /** Bytes of the current grant that came from the shared budget. */
  private borrowedBytes: number;
  private readonly settings: CreditSettings;
  private readonly budget: ReceiveBudget;

  constructor(settings: CreditSettings, budget: ReceiveBudget) {
    this.settings = settings;
    this.budget = budget;
    budget.join();
    this.borrowedBytes = budget.borrow(this.share());
    this.limitOffset = settings.minWindow + this.borrowedBytes;
  }

  /** The absolute offset the peer may send up to. */
  get limit(): number {
    return this.limitOffset;
  }
  get received(): number {
    return this.receivedBytes;
  }
  get consumed(): number {
    return this.consumedBytes;
  }
  /** The window the peer is granted now: the minimum plus what this tunnel borrowed. */
  get window(): number {
    return this.settings.minWindow + this.borrowedBytes;
  }
  /** Bytes received and not yet consumed by the local sink. */
  get buffered(): number {
    return this.receivedBytes - this.consumedBytes;
  }

  /** Returns false when the peer overran its grant (a protocol violation). */
  onReceived(bytes: number): boolean {
    this.receivedBytes += bytes;
    return this.receivedBytes <= this.limitOffset;
  }

  onConsumed(bytes: number): void {
    this.consumedBytes += bytes;
  }

  /**
   * Extends the grant when enough was consumed to make a WINDOW frame worth
   * sending (a quarter of the window), borrowing from the shared budget.
   * Returns the new limit, or undefined when no new grant should be sent.
   * A tunnel keeps what it borrowed until it ends: an absolute grant cannot
   * be taken back, so credit handed out stays reserved.
   */
  nextGrant(): number | undefined {
    const share = this.share();
    if (this.borrowedBytes < share) {
      this.borrowedBytes += this.budget.borrow(share - this.borrowedBytes);
    } else if (this.borrowedBytes > share) {
      // Above its share: keep only what the current grant already promised.
      const promised = Math.max(0, this.limitOffset - this.consumedBytes - this.settings.minWindow);
      const keep = Math.max(share, promised);
      if (keep < this.borrowedBytes) {
        // Own state first: giveBack wakes waiters synchronously, and one of them may be this tunnel again.
        const excess = this.borrowedBytes - keep;
        this.borrowedBytes = keep;
        this.budget.giveBack(excess);
      }
    }
    const window = this.settings.minWindow + this.borrowedBytes;
    const target = this.consumedBytes + window;
    if (target - this.limitOffset < Math.max(1, window >>> 2)) return undefined;
    this.limitOffset = target;
    return target;
  }

  /** Whether a larger grant is possible once the shared budget frees up. */
  get starved(): boolean {
    return this.borrowedBytes < this.share();
  }

  private share(): number {
    return Math.min(this.settings.window - this.settings.minWindow, this.budget.fairShare);
  }

  /** Returns everything borrowed; the tunnel is done. */
  release(): void {
    const bytes = this.borrowedBytes;
    this.borrowedBytes = 0;
    this.budget.leave();
    this.budget.giveBack(bytes);
  }
}

/** The sending half of one tunnel direction. */
export class SendCredit {
  private limitOffset: number;
  private sentBytes = 0;

  constructor(initialLimit: number) {
    this.limitOffset = initialLimit;
  }

  get sent(): number {
    return this.sentBytes;
  }
  get available(): number {
    return this.limitOffset - this.sentBytes;
  }

  /** Applies an absolute grant; stale or reordered grants never shrink the limit. */
  grant(limit: number): boolean {
    if (limit <= this.limitOffset) return false;
    this.limitOffset = limit;
    return true;
  }

  onSent(bytes: number): void {
    this.sentBytes += bytes;
  }
}
