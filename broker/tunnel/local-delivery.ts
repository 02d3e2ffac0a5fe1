/**
 * The peer's bytes on their way to a tunnel's local side: what waits until
 * the side is attached or may take more, and what it holds and has not
 * written yet.
 *
 * A local side may hold at most `maxChunksInHand()` chunks it has not
 * reported done (the tunnel sets that from its window: each chunk in a
 * side's hands costs about CHUNK_COST_BYTES beyond its bytes). Beyond that,
 * chunks wait here in order; small ones are copied together into a
 * coalescing buffer, so a flood of 1-byte frames costs about its bytes and
 * does not pin the NATS reads they are views of.
 */
import type { TunnelLocalSide } from './tunnel.js';

/** Payloads below this wait copied into a coalescing buffer of COALESCE_BYTES (not as views pinning NATS reads). */
const COALESCE_BELOW = 8 * 1024;
const COALESCE_BYTES = 16 * 1024;
/** Past this many reported-done entries, the in-hand list is compacted. */
const COMPACT_AFTER = 1024;

export class LocalDelivery {
  private local: TunnelLocalSide | undefined;
  /** Bytes not yet handed to the local side, in order. */
  private held: Buffer[] = [];
  /** The last entry of `held` while it still takes small payloads, filled up to `coalesceUsed`. */
  private coalesce: Buffer | undefined;
  private coalesceUsed = 0;
  /** A drain is running (a local side may report done from inside deliver). */
  private draining = false;
  /** End offsets, in bytes handed to the local side, of the chunks it has not reported done yet. */
  private inHandEnds: number[] = [];
  private inHandHead = 0;
  private handedBytes = 0;
  private doneBytes = 0;

  /**
   * `maxChunksInHand`: how many chunks the side may hold now. `onDone` is
   * what the side calls with the bytes it wrote (the same function for every
   * chunk); it must call `consumed` before anything else.
   */
  constructor(
    private readonly maxChunksInHand: () => number,
    private readonly onDone: (bytes: number) => void,
  ) {}

  /** Chunks handed to the local side and not yet reported done. */
  get chunksInHand(): number {
    return this.inHandEnds.length - this.inHandHead;
  }

  get isAttached(): boolean {
    return this.local !== undefined;
  }

  attach(local: TunnelLocalSide): void {
    this.local = local;
  }

  /** The next payload from the peer: to the local side at once when nothing waits and it may take it. */
  push(payload: Buffer): void {
    if (this.local && this.held.length === 0 && this.mayTakeMore()) this.handOver(payload);
    else this.hold(payload);
  }

  /** Hands waiting bytes to the local side, in order, as far as it may take them (`all`: every one, at an end). */
  drain(all: boolean): void {
    if (!this.local || this.draining) return;
    this.draining = true;
    try {
      while (this.held.length > 0 && (all || this.mayTakeMore())) {
        if (this.held.length === 1) this.sealCoalesce();
        this.handOver(this.held.shift()!);
      }
    } finally {
      this.draining = false;
    }
  }

  /** An abort: what waits is dropped. */
  drop(): void {
    this.held = [];
    this.coalesce = undefined;
  }

  /** The local side wrote `bytes` more: the chunks they complete leave its hands. */
  consumed(bytes: number): void {
    this.doneBytes += bytes;
    const ends = this.inHandEnds;
    while (this.inHandHead < ends.length && ends[this.inHandHead]! <= this.doneBytes) this.inHandHead++;
    if (this.inHandHead === ends.length) {
      ends.length = 0;
      this.inHandHead = 0;
    } else if (this.inHandHead >= COMPACT_AFTER) {
      this.inHandEnds = ends.slice(this.inHandHead);
      this.inHandHead = 0;
    }
  }

  private mayTakeMore(): boolean {
    return this.chunksInHand < this.maxChunksInHand();
  }

  private hold(payload: Buffer): void {
    if (payload.length >= COALESCE_BELOW) {
      this.sealCoalesce();
      this.held.push(payload);
      return;
    }
    let buffer = this.coalesce;
    if (!buffer || buffer.length - this.coalesceUsed < payload.length) {
      this.sealCoalesce();
      buffer = Buffer.allocUnsafeSlow(COALESCE_BYTES);
      this.coalesce = buffer;
      this.coalesceUsed = 0;
      this.held.push(buffer);
    }
    payload.copy(buffer, this.coalesceUsed);
    this.coalesceUsed += payload.length;
  }

  /** The coalescing buffer takes no more: its entry becomes the bytes it holds (copied out if mostly empty). */
  private sealCoalesce(): void {
    const buffer = this.coalesce;
    if (!buffer) return;
    this.coalesce = undefined;
    const used = buffer.subarray(0, this.coalesceUsed);
    this.held[this.held.length - 1] = this.coalesceUsed < buffer.length / 2 ? Buffer.from(used) : used;
  }

  private handOver(chunk: Buffer): void {
    this.handedBytes += chunk.length;
    // Recorded first: a local side may report it done from inside deliver.
    this.inHandEnds.push(this.handedBytes);
    this.local!.deliver(chunk, this.onDone);
  }
}
