/**
 * One end of a tunnel: the single state machine the frontend's doors and the
 * agent's TCP bridge are thin adapters around.
 *
 * Bus side: sequenced DATA and FIN frames, absolute WINDOW grants, CLOSE with
 * a reason, BLOCKED/PING probes. Local side: a byte source that can be paused
 * and a sink that reports when bytes were handed off (TunnelLocalSide).
 *
 * End-of-stream contract, kept here and by every adapter:
 * - A clean end delivers everything, then closes. A local EOF (a TCP FIN) is
 *   `finishSending()`: what waits for credit is sent first, then a FIN frame
 *   (sequenced like DATA), and the peer ends its local writable side after
 *   delivering every byte before it. The tunnel is over once FINs went both
 *   ways. `close()` ends the whole tunnel cleanly (CLOSE_REQ, a stream end
 *   without error): what waits is flushed, then CLOSE. The peer's receiving
 *   adapter ends its local side after what it was given to deliver.
 * - An abort (TCP reset, socket error, CLOSE with an error) reaches the other
 *   end as an abort: `fail(err)` sends CLOSE with the error's code at once and
 *   drops what waits; the adapter on the other end aborts its local side (TCP
 *   reset, or an error in CLOSE_RSP / DIAL_RSP), never a clean end.
 * - Order: an adapter attaches only once its client was told the dial
 *   succeeded (DIAL_RSP written, or the CONNECT `200`), so no byte can
 *   precede that answer; bytes and a FIN or close that arrived earlier wait in
 *   the tunnel until then.
 * - Half-close needs both ends to speak it: FIN frames go only to peers of a
 *   bus protocol that knows them (otherwise a local EOF closes the whole
 *   tunnel, as before), and an adapter whose protocol has no half-close (the
 *   gRPC door) leaves out `shutdownWrite`, so a peer's FIN closes the tunnel
 *   after its bytes were delivered.
 * - A side that stops reading is bounded by its window, and a tunnel whose
 *   last bytes wait for credit gives up after the linger time without any new
 *   grant (an abort).
 *
 * Other invariants:
 * - byte-exact or closed: DATA and FIN must arrive with consecutive sequence
 *   numbers, and a CLOSE/PING/PONG names the last sequence the peer sent, so
 *   a lost frame always closes the tunnel with KNATS_SEQUENCE_GAP;
 * - bounded memory: the peer may never exceed our grant (else
 *   KNATS_CREDIT_VIOLATION), and we never hold more than one local read
 *   beyond our send credit before pausing the local source. Credit counts
 *   bytes, so frames are bounded too: an empty DATA frame is malformed (our
 *   senders never send one; FIN is its own frame type), and the local side
 *   is handed at most a window's eighth of per-chunk cost (CHUNK_COST_BYTES
 *   each) it has not written yet; frames beyond that wait here, small ones
 *   copied together (coalesced), so a flood of 1-byte frames at a local side
 *   that does not read costs about its bytes, not a message per byte;
 * - nothing stalls for ever: `lastMovedAt` and `hasBytesWaiting` let the
 *   host abort a tunnel whose bytes wait while none moves (stalled timeout).
 *
 * The tunnel owns no timers; its TunnelHost drives the periodic work
 * (BLOCKED resends, confirm timeouts, idle probes) for all tunnels at once.
 */
import { ErrorCode, errorFromPeer, KnatsError } from '../errors.js';
import type { Logger } from '../logging.js';
import { HALF_CLOSE_PROTOCOL_VERSION } from '../wire/bus-messages.js';
import {
  decodeFrame,
  encodeBlocked,
  encodeClose,
  encodeDataInPlace,
  encodeFin,
  encodePing,
  encodePong,
  encodeWindow,
  type Frame,
  FrameType,
  MAX_DATA_PAYLOAD,
} from '../wire/codec.js';
import { type CreditSettings, type ReceiveBudget, ReceiveCredit, SendCredit } from './credit.js';
import { encodePooledData, encodeWholeReadInPlace } from './frame-pool.js';
import { LocalDelivery } from './local-delivery.js';

export interface TunnelLocalSide {
  /**
   * Hands bytes from the peer to the local socket/stream; `done(bytes)` once
   * they left our buffers. One call may report several chunks' bytes (a
   * burst written at once); `done` is the same function for every chunk.
   */
  deliver(chunk: Buffer, done: (bytes: number) => void): void;
  /** Backpressure on the local source. */
  pause(): void;
  resume(): void;
  /**
   * The peer sends nothing more (its FIN): end the local writable side after
   * what was delivered, and keep reading. Left out by adapters whose protocol
   * has no half-close; the tunnel then closes as a whole.
   */
  shutdownWrite?(): void;
  /**
   * The tunnel ended. `err` undefined is a clean close: the adapter ends its
   * side after what it was given to deliver. With `err`, it aborts its side
   * (TCP reset, or the error in its protocol's close message).
   */
  finish(err: KnatsError | undefined): void;
}

export interface FramePublisher {
  publish(subject: string, frame: Uint8Array, reply?: string): void;
  /** Largest DATA payload the bus accepts (64 KiB, or less if the server's max_payload is smaller). */
  readonly maxDataPayload: number;
}

/** What the host needs to see of a tunnel. */
export interface TunnelHostHooks {
  ended(tunnel: Tunnel, err: KnatsError | undefined): void;
  blockedChanged(tunnel: Tunnel, blocked: boolean): void;
}

export interface TunnelOptions {
  readonly id: string;
  readonly localSubject: string;
  readonly credit: CreditSettings;
  readonly budget: ReceiveBudget;
  readonly publisher: FramePublisher;
  readonly logger: Logger;
  readonly hooks: TunnelHostHooks;
  /** How long a clean end may wait without new credit to flush what the local side sent. */
  readonly lingerMs: number;
}

type State = 'opening' | 'open' | 'closed';

/**
 * What one chunk in a local side's hands costs beyond its bytes: the door's
 * message or write request, its callback and Buffer views (measured before
 * this bound: about 420 bytes per DATA message queued toward a gRPC client
 * that does not read, 1.7 million frames in 720 MiB). Chunks handed over and
 * not yet reported done may cost at most an eighth of the tunnel's window.
 */
export const CHUNK_COST_BYTES = 512;
/** Fewest chunks a local side may hold, whatever the window. */
const MIN_CHUNKS_IN_HAND = 4;

/**
 * What ends our sending direction once the bytes waiting for credit are out:
 * nothing yet, a FIN (local EOF, the tunnel stays open the other way) or a
 * clean CLOSE (the whole tunnel).
 */
type SendEnd = 'none' | 'fin' | 'close';

export class Tunnel {
  readonly id: string;
  readonly localSubject: string;
  readonly openedAt = Date.now();
  logger: Logger;
  /** Id of the process at the other end; known once the dial was answered. */
  peerId = '';
  private peerSubject = '';
  /** The peer understands FIN frames. */
  private peerHalfCloses = false;
  private state: State = 'opening';
  private local: TunnelLocalSide | undefined;
  /** Peer bytes on their way to the local side (before it is attached, and while it holds all it may). */
  private readonly delivery: LocalDelivery;
  private readonly publisher: FramePublisher;
  private readonly hooks: TunnelHostHooks;
  private readonly budget: ReceiveBudget;
  private readonly receive: ReceiveCredit;
  private send = new SendCredit(0);
  private nextSendSeq = 1;
  private expectedSeq = 1;
  /** Local bytes waiting for send credit (at most one local read beyond the credit). */
  private pendingOut: Buffer[] = [];
  /**
   * A read with header room waits until credit covers all of it instead of
   * going in two frames: split, its rest would have to be copied (the front
   * of its buffer belongs to the first frame) and its buffer could not be
   * reused. Only with a peer that grants windows of two frames or more (ours
   * grant at least 64 KiB), so the wait always ends.
   */
  private readsWaitWhole = false;
  /** Per pendingOut chunk: a whole read with a DATA header's room in front (see write's `headroom`). */
  private pendingOutHeadroom: boolean[] = [];
  private pendingOutBytes = 0;
  private sendEnd: SendEnd = 'none';
  private finSent = false;
  private finReceived = false;
  /** Last time bytes moved either way (read locally, sent, received from the peer, written locally). */
  lastMovedAt = Date.now();
  /** How the tunnel ended, for an adapter that attaches after the end. */
  private endError: KnatsError | undefined;
  private localPaused = false;
  private waitingForBudget = false;
  /** How long a side that stops taking our last bytes is waited for (also by adapters ending their socket). */
  readonly lingerMs: number;
  /**
   * Set when the local side ended its sending while bytes still wait for
   * credit; moved on by every grant, so only a peer that stops consuming for
   * lingerMs is given up on.
   */
  private finishDeadline = 0;
  /** Time of the last frame from the peer, for idle probes and confirm timeouts. */
  lastPeerFrameAt = Date.now();
  /** Frontend: called when the agent acknowledges the dial request (before it dials). */
  onAccepted: (() => void) | undefined;
  /** False on the agent until the frontend's first frame arrives. */
  confirmed = false;
  /** A frame went to the peer (on the frontend: the tunnel is confirmed). */
  private sentFrame = false;
  bytesIn = 0;
  bytesOut = 0;

  constructor(options: TunnelOptions) {
    this.id = options.id;
    this.localSubject = options.localSubject;
    this.publisher = options.publisher;
    this.hooks = options.hooks;
    this.budget = options.budget;
    this.logger = options.logger;
    this.lingerMs = options.lingerMs;
    this.receive = new ReceiveCredit(options.credit, options.budget);
    // The chunks in a local side's hands cost at most an eighth of the window.
    this.delivery = new LocalDelivery(
      () => Math.max(MIN_CHUNKS_IN_HAND, Math.floor(this.receive.window / 8 / CHUNK_COST_BYTES)),
      this.onConsumed,
    );
  }

  /** The grant to announce in the dial (request or response). */
  get initialWindow(): number {
    return this.receive.limit;
  }
  get isClosed(): boolean {
    return this.state === 'closed';
  }
  get isOpen(): boolean {
    return this.state === 'open';
  }
  /** Whether it ever opened: a dial attempt that failed ends a tunnel that never carried anything. */
  get wasOpened(): boolean {
    return this.peerSubject !== '';
  }
  /** The abort that ended the tunnel (undefined while open, or after a clean end). */
  get abortedWith(): KnatsError | undefined {
    return this.endError;
  }
  /** Bytes received from the peer and not yet handed off locally. */
  get bufferedIn(): number {
    return this.receive.buffered;
  }
  /** Local bytes held because the peer granted no credit. */
  get bufferedOut(): number {
    return this.pendingOutBytes;
  }
  /** Bytes wait to move in some direction: for send credit, or to be taken by the local side. */
  get hasBytesWaiting(): boolean {
    return this.pendingOutBytes > 0 || this.receive.buffered > 0;
  }
  /** Chunks handed to the local side and not yet reported done. */
  get chunksInHand(): number {
    return this.delivery.chunksInHand;
  }
  /** The local source is paused for want of send credit. */
  get isLocalPaused(): boolean {
    return this.localPaused;
  }
  /** Our sending ended while bytes wait for credit, and the peer granted none for the linger time. */
  get finishOverdue(): boolean {
    return this.pendingOutBytes > 0 && this.sendEnd !== 'none' && Date.now() > this.finishDeadline;
  }

  /**
   * The dial was answered: the peer is known and granted `sendLimit`. Frames
   * can flow both ways from now on.
   */
  open(
    peerId: string,
    peerSubject: string,
    sendLimit: number,
    peerProtocolVersion: number,
    logger?: Logger,
  ): void {
    if (this.state !== 'opening') return;
    this.peerId = peerId;
    this.peerSubject = peerSubject;
    this.peerHalfCloses = peerProtocolVersion >= HALF_CLOSE_PROTOCOL_VERSION;
    this.send = new SendCredit(sendLimit);
    this.readsWaitWhole = sendLimit >= 2 * MAX_DATA_PAYLOAD;
    if (logger) this.logger = logger;
    this.state = 'open';
  }

  /**
   * Connects the local socket/stream, once its client was told the dial
   * succeeded: bytes, a FIN or an end that arrived early are handed over now.
   */
  attach(local: TunnelLocalSide): void {
    this.local = local;
    this.delivery.attach(local);
    if (this.state === 'closed') {
      // A clean end kept the early bytes (an abort dropped them): all of them go before the end.
      this.delivery.drain(true);
      local.finish(this.endError);
    } else if (this.finReceived) {
      this.onPeerFinDelivered();
    } else {
      this.delivery.drain(false);
    }
  }

  /**
   * Tells the agent the tunnel is wanted (it closes one it never hears from):
   * any frame does, so a WINDOW goes only if nothing was sent yet. The
   * frontend's host calls this shortly after the dial, off its critical path;
   * a client that speaks at once has confirmed it by then with its first bytes.
   */
  confirm(): void {
    if (!this.sentFrame && this.state === 'open') this.publish(encodeWindow(this.receive.limit));
  }

  // ---- local -> peer ---------------------------------------------------

  /**
   * Bytes read from the local source. `headroom`: the chunk came from
   * readFrameBuffer, so its first frame is built around it without a copy.
   */
  write(chunk: Buffer, headroom = false): void {
    if (this.state !== 'open' || this.sendEnd !== 'none' || chunk.length === 0) return;
    this.lastMovedAt = Date.now();
    if (this.pendingOutBytes === 0) {
      const rest = this.transmit(chunk, headroom);
      // Once part of it went, the bytes in front of the rest belong to a published frame.
      if (rest.length !== chunk.length) headroom = false;
      chunk = rest;
    }
    if (chunk.length > 0) {
      // Kept as it is (a read waiting for credit keeps its headroom: it leaves without a copy later).
      this.pendingOut.push(chunk);
      this.pendingOutHeadroom.push(headroom);
      this.pendingOutBytes += chunk.length;
      this.setLocalPaused(true);
    }
  }

  /**
   * Sends what credit allows; returns the part that did not fit. Only the
   * first frame can use the chunk's headroom: in front of any later part
   * are bytes already handed to nats.js, which copies them only when it
   * flushes.
   */
  private transmit(chunk: Buffer, headroom = false): Buffer {
    const maxFrame = this.publisher.maxDataPayload;
    if (headroom && this.readsWaitWhole && chunk.length <= maxFrame && this.send.available < chunk.length) {
      return chunk;
    }
    while (chunk.length > 0) {
      const n = Math.min(chunk.length, this.send.available, maxFrame);
      if (n <= 0) break;
      const seq = this.takeSendSeq();
      const payload = chunk.subarray(0, n);
      let frame: Buffer;
      if (!headroom) frame = encodePooledData(seq, payload);
      // A read that is one whole frame: nothing else keeps its buffer, so it is reused once written.
      else if (n === chunk.length) frame = encodeWholeReadInPlace(seq, payload);
      else frame = encodeDataInPlace(seq, payload);
      this.publish(frame);
      headroom = false;
      this.lastMovedAt = Date.now();
      this.send.onSent(n);
      this.bytesOut += n;
      chunk = chunk.subarray(n);
    }
    return chunk;
  }

  private takeSendSeq(): number {
    const seq = this.nextSendSeq;
    this.nextSendSeq = (seq + 1) >>> 0;
    return seq;
  }

  private flushPendingOut(): void {
    while (this.pendingOut.length > 0) {
      const chunk = this.pendingOut[0]!;
      const rest = this.transmit(chunk, this.pendingOutHeadroom[0]);
      this.pendingOutBytes -= chunk.length - rest.length;
      if (rest.length > 0) {
        this.pendingOut[0] = rest;
        if (rest.length !== chunk.length) this.pendingOutHeadroom[0] = false;
        return;
      }
      this.pendingOut.shift();
      this.pendingOutHeadroom.shift();
    }
    this.setLocalPaused(false);
    this.endSendingIfFlushed();
  }

  private setLocalPaused(paused: boolean): void {
    if (this.localPaused === paused) return;
    this.localPaused = paused;
    if (paused) this.local?.pause();
    else this.local?.resume();
    this.hooks.blockedChanged(this, paused);
  }

  /**
   * The local source reached its end (a TCP FIN): what waits for credit is
   * sent, then a FIN. The other direction keeps flowing. A peer without
   * half-close gets the whole tunnel closed cleanly instead.
   */
  finishSending(): void {
    if (!this.peerHalfCloses) {
      this.close();
      return;
    }
    this.endSending('fin');
  }

  /**
   * The local side is done with the whole tunnel (CLOSE_REQ, stream end). A
   * clean close first sends what waits for credit; an error closes at once.
   */
  close(err?: KnatsError): void {
    if (this.state === 'closed') return;
    if (this.state === 'opening') {
      // Nobody to tell yet: the dialer handles a late answer (see frontend).
      this.end(err);
      return;
    }
    if (err) {
      this.sendCloseAndEnd(err);
      return;
    }
    this.endSending('close');
  }

  private endSending(how: 'fin' | 'close'): void {
    if (this.state !== 'open' || this.sendEnd === 'close' || (how === 'fin' && this.sendEnd === 'fin'))
      return;
    this.sendEnd = how;
    this.finishDeadline = Date.now() + this.lingerMs;
    if (this.finSent && how === 'close') {
      this.sendCloseAndEnd(undefined);
      return;
    }
    this.endSendingIfFlushed();
  }

  private endSendingIfFlushed(): void {
    if (this.pendingOutBytes > 0 || this.state !== 'open') return;
    if (this.sendEnd === 'close') {
      this.sendCloseAndEnd(undefined);
    } else if (this.sendEnd === 'fin' && !this.finSent) {
      this.finSent = true;
      this.publish(encodeFin(this.takeSendSeq()));
      if (this.finReceived) this.end(undefined);
    }
  }

  private sendCloseAndEnd(err: KnatsError | undefined): void {
    this.publish(encodeClose(this.nextSendSeq - 1, err?.code ?? '', err?.message ?? ''));
    this.end(err);
  }

  // ---- peer -> local ---------------------------------------------------

  /** A frame from the bus for this tunnel. `reply` is set on probes. */
  handleFrame(bytes: Buffer): void {
    if (this.state === 'closed') return;
    let frame: Frame | undefined;
    try {
      frame = decodeFrame(bytes);
    } catch (err) {
      this.fail(err as KnatsError);
      return;
    }
    if (!frame) return; // a frame type from a newer peer: ignored
    this.lastPeerFrameAt = Date.now();
    this.confirmed = true;
    switch (frame.type) {
      case FrameType.Data:
        this.onData(frame.seq, frame.payload);
        return;
      case FrameType.Fin:
        this.onPeerFin(frame.seq);
        return;
      case FrameType.Window:
        if (this.send.grant(frame.limit) && this.state !== 'opening') {
          // A tunnel whose last bytes wait is not stuck while its peer keeps consuming: its linger starts over.
          if (this.sendEnd !== 'none') this.finishDeadline = Date.now() + this.lingerMs;
          this.flushPendingOut();
        }
        return;
      case FrameType.Close:
        this.onPeerClose(frame.lastSeq, frame.code, frame.message);
        return;
      case FrameType.Blocked:
        // Our last grant may have been lost: repeat it (absolute, so repeating is harmless).
        this.publish(encodeWindow(this.receive.limit));
        return;
      case FrameType.Ping:
        if (this.checkPeerSeq(frame.lastSeq)) this.publish(encodePong(this.nextSendSeq - 1));
        return;
      case FrameType.Pong:
        this.checkPeerSeq(frame.lastSeq);
        return;
      case FrameType.Accepted:
        this.onAccepted?.();
        return;
    }
  }

  /** Checks that a DATA or FIN frame is the next one the peer may send. */
  private acceptSeq(seq: number): boolean {
    if (seq !== this.expectedSeq) {
      this.fail(gap(this.expectedSeq, seq));
      return false;
    }
    this.expectedSeq = (this.expectedSeq + 1) >>> 0;
    if (this.finReceived) {
      this.fail(new KnatsError(ErrorCode.MalformedFrame, 'peer sent a frame after its FIN'));
      return false;
    }
    return true;
  }

  private onData(seq: number, payload: Buffer): void {
    if (payload.length === 0) {
      // Credit counts bytes: a frame without any would cost us a message per frame for free.
      this.fail(new KnatsError(ErrorCode.MalformedFrame, 'peer sent an empty DATA frame'));
      return;
    }
    if (!this.acceptSeq(seq)) return;
    if (!this.receive.onReceived(payload.length)) {
      this.fail(
        new KnatsError(ErrorCode.CreditViolation, `peer sent past its grant of ${this.receive.limit} bytes`),
      );
      return;
    }
    this.bytesIn += payload.length;
    this.lastMovedAt = Date.now();
    this.delivery.push(payload);
  }

  private onPeerFin(seq: number): void {
    if (!this.acceptSeq(seq)) return;
    this.finReceived = true;
    if (this.local) this.onPeerFinDelivered();
  }

  /** Every byte before the peer's FIN went to the local side: end its writing, or the whole tunnel. */
  private onPeerFinDelivered(): void {
    // Everything before the FIN goes to the local side first (held bytes are within our grant).
    this.delivery.drain(true);
    if (!this.local?.shutdownWrite) {
      this.close();
      return;
    }
    this.local.shutdownWrite();
    if (this.finSent) this.end(undefined);
  }

  private readonly onConsumed = (bytes: number): void => {
    if (this.state === 'closed') return;
    this.delivery.consumed(bytes);
    if (bytes > 0) this.lastMovedAt = Date.now();
    this.receive.onConsumed(bytes);
    this.grantMore();
    this.delivery.drain(false);
  };

  private grantMore = (): void => {
    // Called directly (bytes consumed) while still queued for budget: leave the queue, so a give-back
    // cannot run this again in the middle of it.
    if (this.waitingForBudget) this.budget.cancelWait(this.grantMore);
    this.waitingForBudget = false;
    if (this.state === 'closed') return;
    const limit = this.receive.nextGrant();
    if (limit !== undefined && this.peerSubject) this.publish(encodeWindow(limit));
    if (this.receive.starved && !this.waitingForBudget) {
      this.waitingForBudget = true;
      this.budget.waitForCredit(this.grantMore);
    }
  };

  /** A CLOSE/PING/PONG names the peer's last DATA/FIN seq; anything beyond what we got was lost. */
  private checkPeerSeq(peerLastSeq: number): boolean {
    const received = (this.expectedSeq - 1) >>> 0;
    if (peerLastSeq === received) return true;
    this.fail(gap(this.expectedSeq, peerLastSeq));
    return false;
  }

  private onPeerClose(lastSeq: number, code: string, message: string): void {
    if (!this.checkPeerSeq(lastSeq)) return;
    const err = code ? errorFromPeer(code, message) : undefined;
    // A clean close delivers every byte before it.
    if (!err) this.delivery.drain(true);
    this.end(err);
  }

  // ---- housekeeping driven by the host -------------------------------------

  /** Repeats a BLOCKED probe so a lost WINDOW cannot stall the tunnel. */
  probeBlocked(): void {
    if (this.state === 'open') this.publish(encodeBlocked(this.send.sent), this.localSubject);
  }

  /** Asks the peer to confirm it still knows this tunnel and got every frame (after reconnects, when idle). */
  probe(): void {
    if (this.state === 'open') this.publish(encodePing(this.nextSendSeq - 1), this.localSubject);
  }

  /** Aborts: closes with an error, telling the peer why when we know where it is. */
  fail(err: KnatsError): void {
    if (this.state === 'closed') return;
    if (this.peerSubject) this.sendCloseAndEnd(err);
    else this.end(err);
  }

  /** Ends without telling the peer (it is gone, or it told us). */
  end(err: KnatsError | undefined): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.endError = err;
    if (this.waitingForBudget) this.budget.cancelWait(this.grantMore);
    this.receive.release();
    this.pendingOut = [];
    this.pendingOutHeadroom = [];
    this.pendingOutBytes = 0;
    // A clean end hands over what is held (kept for an adapter that attaches later); an abort drops it.
    if (err) this.delivery.drop();
    else this.delivery.drain(true);
    if (this.localPaused) {
      this.localPaused = false;
      this.hooks.blockedChanged(this, false);
    }
    this.hooks.ended(this, err);
    this.local?.finish(err);
  }

  private publish(frame: Uint8Array, reply?: string): void {
    if (!this.peerSubject) return;
    this.sentFrame = true;
    this.publisher.publish(this.peerSubject, frame, reply);
  }
}

function gap(expected: number, got: number): KnatsError {
  return new KnatsError(
    ErrorCode.SequenceGap,
    `frames lost on the bus: expected seq ${expected}, peer is at ${got}; closing rather than corrupting the stream`,
  );
}
