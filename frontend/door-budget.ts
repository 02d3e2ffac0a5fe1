/**
 * What a door may hold of bytes a client has sent but that are not yet a
 * whole message (gRPC) or a whole request header (CONNECT): bounded per
 * connection and per process, like the tunnels' credit budget bounds bytes
 * in flight. A holder that goes over is refused with its own error
 * (RESOURCE_EXHAUSTED, or 503 KNATS_DOOR_BUDGET_EXHAUSTED); its neighbours
 * keep flowing, because a holder that keeps no more than `floorBytes` (one
 * ordinary message or header) is never refused: only the ones that grow
 * large while the budget is spent are.
 */

/** One budget (a connection's, or the process's): bytes held now against a limit. */
export class BufferBudget {
  readonly limit: number;
  used = 0;
  private readonly onChange: ((used: number) => void) | undefined;

  constructor(limit: number, onChange?: (used: number) => void) {
    this.limit = limit;
    this.onChange = onChange;
  }

  get over(): boolean {
    return this.used > this.limit;
  }

  add(delta: number): void {
    if (delta === 0) return;
    this.used += delta;
    this.onChange?.(this.used);
  }
}

/**
 * One holder's share (a gRPC stream's partial message, a CONNECT
 * connection's partial header), charged to every budget it belongs to.
 */
export class BudgetShare {
  held = 0;
  private readonly budgets: readonly BufferBudget[];
  private readonly floorBytes: number;
  private closed = false;

  constructor(budgets: readonly BufferBudget[], floorBytes: number) {
    this.budgets = budgets;
    this.floorBytes = floorBytes;
  }

  /**
   * Sets what the holder keeps now. Returns the budget it went over (the
   * holder keeps more than the floor while that budget is spent), or
   * undefined; a refused holder should be ended and release()d.
   */
  set(bytes: number): BufferBudget | undefined {
    if (this.closed) return undefined;
    const delta = bytes - this.held;
    this.held = bytes;
    for (const budget of this.budgets) budget.add(delta);
    if (bytes <= this.floorBytes) return undefined;
    return this.budgets.find((budget) => budget.over);
  }

  /** The holder is gone or refused: everything it held is given back, and later set()s are ignored. */
  release(): void {
    if (this.closed) return;
    this.set(0);
    this.closed = true;
  }
}

/** Sizes in bytes, for messages. */
export function mib(bytes: number): string {
  return `${Math.round((bytes / (1024 * 1024)) * 10) / 10} MiB`;
}

/**
 * Follows gRPC's length-prefixed framing (1 flag byte, 4 length bytes, the
 * message) over the bytes of one HTTP/2 stream, and tells what the message
 * under way keeps in memory: grpc-js's decoder holds its chunks until the
 * message is whole, and each chunk is a slice of one of Node's HTTP/2 read
 * buffers, which stays allocated as long as a slice of it does. So a
 * partial message is charged the whole read buffers it references (an
 * upper bound: a buffer shared by several streams is charged to each).
 */
export class GrpcFrameTracker {
  /** What the current message's chunks keep allocated (0 between messages). */
  charged = 0;
  private readonly prefix = Buffer.alloc(5);
  private prefixGot = 0;
  private remaining = 0;
  /** Whether a message is under way (its prefix begun). */
  private inMessage = false;
  private readonly backing = new Set<ArrayBufferLike>();

  /** Takes the next chunk of the stream; returns `charged` after it. */
  push(chunk: Uint8Array): number {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      this.inMessage = true;
      if (this.remaining === 0) {
        const take = Math.min(5 - this.prefixGot, n - i);
        this.prefix.set(chunk.subarray(i, i + take), this.prefixGot);
        this.prefixGot += take;
        i += take;
        if (this.prefixGot === 5) {
          this.prefixGot = 0;
          this.remaining = this.prefix.readUInt32BE(1);
          if (this.remaining === 0) this.messageDone();
        }
      } else {
        const take = Math.min(this.remaining, n - i);
        this.remaining -= take;
        i += take;
        if (this.remaining === 0) this.messageDone();
      }
    }
    // The message under way (if any) now references this chunk's buffer.
    if (this.inMessage && this.remaining > 0 && !this.backing.has(chunk.buffer)) {
      this.backing.add(chunk.buffer);
      this.charged += chunk.buffer.byteLength;
    }
    return this.charged;
  }

  private messageDone(): void {
    this.inMessage = false;
    this.backing.clear();
    this.charged = 0;
  }
}
