/**
 * One end of a tunnel: the single state machine the frontend's doors and the
 * agent's TCP bridge are thin adapters around.
 *
 * Bus side: sequenced DATA frames, absolute WINDOW grants, CLOSE with a
 * reason, BLOCKED/PING probes. Local side: a byte source that can be paused
 * and a sink that reports when bytes were handed off (TunnelLocalSide).
 *
 * Invariants kept here:
 * - byte-exact or closed: DATA must arrive with consecutive sequence numbers,
 *   and a CLOSE/PING/PONG names the last sequence the peer sent, so a lost
 *   frame always closes the tunnel with KNATS_SEQUENCE_GAP;
 * - bounded memory: the peer may never exceed our grant (else
 *   KNATS_CREDIT_VIOLATION), and we never hold more than one local read
 *   beyond our send credit before pausing the local source.
 *
 * The tunnel owns no timers; its TunnelHost drives the periodic work
 * (BLOCKED resends, confirm timeouts, idle probes) for all tunnels at once.
 */
import {
  decodeFrame,
  encodeBlocked,
  encodeClose,
  encodeData,
  encodePing,
  encodePong,
  encodeWindow,
  type Frame,
  FrameType,
} from './codec.js';
import { type CreditSettings, type ReceiveBudget, ReceiveCredit, SendCredit } from './credit.js';
import { ErrorCode, KnatsError, parseErrorCode } from './errors.js';
import type { Logger } from './logging.js';

export interface TunnelLocalSide {
  /** Hands bytes from the peer to the local socket/stream; `done` once they left our buffers. */
  deliver(chunk: Buffer, done: () => void): void;
  /** Backpressure on the local source. */
  pause(): void;
  resume(): void;
  /**
   * The tunnel ended: `err` undefined is a clean close. The adapter closes its
   * side after what it was given to deliver.
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
  /** How long a clean close may wait for send credit to flush what the local side sent. */
  readonly lingerMs: number;
}

type State = 'opening' | 'open' | 'finishing' | 'closed';

export class Tunnel {
  readonly id: string;
  readonly localSubject: string;
  readonly openedAt = Date.now();
  logger: Logger;
  /** Id of the process at the other end; known once the dial was answered. */
  peerId = '';
  private peerSubject = '';
  private state: State = 'opening';
  private local: TunnelLocalSide | undefined;
  private readonly publisher: FramePublisher;
  private readonly hooks: TunnelHostHooks;
  private readonly budget: ReceiveBudget;
  private readonly receive: ReceiveCredit;
  private send = new SendCredit(0);
  private nextSendSeq = 1;
  private expectedSeq = 1;
  /** Local bytes waiting for send credit (at most one local read beyond the credit). */
  private pendingOut: Buffer[] = [];
  private pendingOutBytes = 0;
  /** Peer bytes that arrived before the local side was attached (bounded by our grant). */
  private earlyIn: Buffer[] = [];
  private localPaused = false;
  private waitingForBudget = false;
  private readonly lingerMs: number;
  /**
   * Set when the local side asked for a clean close while bytes still wait
   * for credit; moved on by every grant, so only a peer that stops consuming
   * for lingerMs is given up on.
   */
  private finishDeadline = 0;
  /** Time of the last frame from the peer, for idle probes and confirm timeouts. */
  lastPeerFrameAt = Date.now();
  /** Frontend: called when the agent acknowledges the dial request (before it dials). */
  onAccepted: (() => void) | undefined;
  /** False on the agent until the frontend's first frame arrives. */
  confirmed = false;
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
  /** Bytes received from the peer and not yet handed off locally. */
  get bufferedIn(): number {
    return this.receive.buffered;
  }
  /** Local bytes held because the peer granted no credit. */
  get bufferedOut(): number {
    return this.pendingOutBytes;
  }
  get finishOverdue(): boolean {
    return this.state === 'finishing' && Date.now() > this.finishDeadline;
  }

  /**
   * The dial was answered: the peer is known and granted `sendLimit`. Frames
   * can flow both ways from now on.
   */
  open(peerId: string, peerSubject: string, sendLimit: number, logger?: Logger): void {
    if (this.state !== 'opening') return;
    this.peerId = peerId;
    this.peerSubject = peerSubject;
    this.send = new SendCredit(sendLimit);
    if (logger) this.logger = logger;
    this.state = 'open';
  }

  /** Connects the local socket/stream; bytes that arrived early are handed over now. */
  attach(local: TunnelLocalSide): void {
    this.local = local;
    const early = this.earlyIn;
    this.earlyIn = [];
    for (const chunk of early) this.deliverLocally(chunk);
  }

  /** The frontend's first frame: tells the agent the tunnel is wanted (confirm-on-first-frame). */
  sendInitialGrant(): void {
    this.publish(encodeWindow(this.receive.limit));
  }

  // ---- local -> peer ---------------------------------------------------

  /** Bytes read from the local source. */
  write(chunk: Buffer): void {
    if (this.state !== 'open' || chunk.length === 0) return;
    if (this.pendingOutBytes === 0) chunk = this.transmit(chunk);
    if (chunk.length > 0) {
      this.pendingOut.push(chunk);
      this.pendingOutBytes += chunk.length;
      this.setLocalPaused(true);
    }
  }

  /** Sends what credit allows; returns the part that did not fit. */
  private transmit(chunk: Buffer): Buffer {
    const maxFrame = this.publisher.maxDataPayload;
    while (chunk.length > 0) {
      const n = Math.min(chunk.length, this.send.available, maxFrame);
      if (n <= 0) break;
      this.publish(encodeData(this.nextSendSeq, chunk.subarray(0, n)));
      this.nextSendSeq = (this.nextSendSeq + 1) >>> 0;
      this.send.onSent(n);
      this.bytesOut += n;
      chunk = chunk.subarray(n);
    }
    return chunk;
  }

  private flushPendingOut(): void {
    while (this.pendingOut.length > 0) {
      const rest = this.transmit(this.pendingOut[0]!);
      this.pendingOutBytes -= this.pendingOut[0]!.length - rest.length;
      if (rest.length > 0) {
        this.pendingOut[0] = rest;
        return;
      }
      this.pendingOut.shift();
    }
    if (this.state === 'finishing') {
      this.sendCloseAndEnd(undefined);
      return;
    }
    this.setLocalPaused(false);
  }

  private setLocalPaused(paused: boolean): void {
    if (this.localPaused === paused) return;
    this.localPaused = paused;
    if (paused) this.local?.pause();
    else this.local?.resume();
    this.hooks.blockedChanged(this, paused);
  }

  /**
   * The local side is done (EOF, CLOSE_REQ, stream end). A clean close first
   * sends what waits for credit; an error closes at once.
   */
  close(err?: KnatsError): void {
    if (this.state === 'closed' || this.state === 'finishing') {
      if (err && this.state === 'finishing') this.sendCloseAndEnd(err);
      return;
    }
    if (this.state === 'opening') {
      // Nobody to tell yet: the dialer handles a late answer (see frontend).
      this.end(err);
      return;
    }
    if (!err && this.pendingOutBytes > 0) {
      this.state = 'finishing';
      this.finishDeadline = Date.now() + this.lingerMs;
      return;
    }
    this.sendCloseAndEnd(err);
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
      case FrameType.Window:
        if (this.send.grant(frame.limit) && this.state !== 'opening') {
          // A finishing tunnel whose peer keeps consuming is not stuck: its linger starts over.
          if (this.state === 'finishing') this.finishDeadline = Date.now() + this.lingerMs;
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

  private onData(seq: number, payload: Buffer): void {
    if (seq !== this.expectedSeq) {
      this.fail(gap(this.expectedSeq, seq));
      return;
    }
    this.expectedSeq = (this.expectedSeq + 1) >>> 0;
    if (!this.receive.onReceived(payload.length)) {
      this.fail(
        new KnatsError(ErrorCode.CreditViolation, `peer sent past its grant of ${this.receive.limit} bytes`),
      );
      return;
    }
    this.bytesIn += payload.length;
    if (this.local) this.deliverLocally(payload);
    else this.earlyIn.push(payload);
  }

  private deliverLocally(chunk: Buffer): void {
    const bytes = chunk.length;
    this.local!.deliver(chunk, () => this.onConsumed(bytes));
  }

  private onConsumed(bytes: number): void {
    if (this.state === 'closed') return;
    this.receive.onConsumed(bytes);
    this.grantMore();
  }

  private grantMore = (): void => {
    this.waitingForBudget = false;
    if (this.state === 'closed') return;
    const limit = this.receive.nextGrant();
    if (limit !== undefined && this.peerSubject) this.publish(encodeWindow(limit));
    if (this.receive.starved && !this.waitingForBudget) {
      this.waitingForBudget = true;
      this.budget.waitForCredit(this.grantMore);
    }
  };

  /** A CLOSE/PING/PONG names the peer's last DATA seq; anything beyond what we got was lost. */
  private checkPeerSeq(peerLastSeq: number): boolean {
    const received = (this.expectedSeq - 1) >>> 0;
    if (peerLastSeq === received) return true;
    this.fail(gap(this.expectedSeq, peerLastSeq));
    return false;
  }

  private onPeerClose(lastSeq: number, code: string, message: string): void {
    if (!this.checkPeerSeq(lastSeq)) return;
    this.end(code ? new KnatsError(parseErrorCode(code), message || code) : undefined);
  }

  // ---- housekeeping driven by the host -------------------------------------

  /** Repeats a BLOCKED probe so a lost WINDOW cannot stall the tunnel. */
  probeBlocked(): void {
    if (this.state === 'open' || this.state === 'finishing') {
      this.publish(encodeBlocked(this.send.sent), this.localSubject);
    }
  }

  /** Asks the peer to confirm it still knows this tunnel and got every frame (after reconnects, when idle). */
  probe(): void {
    if (this.state === 'open' || this.state === 'finishing') {
      this.publish(encodePing(this.nextSendSeq - 1), this.localSubject);
    }
  }

  /** Closes with an error, telling the peer why when we know where it is. */
  fail(err: KnatsError): void {
    if (this.state === 'closed') return;
    if (this.peerSubject) this.sendCloseAndEnd(err);
    else this.end(err);
  }

  /** Ends without telling the peer (it is gone, or it told us). */
  end(err: KnatsError | undefined): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this.waitingForBudget) this.budget.cancelWait(this.grantMore);
    this.receive.release();
    this.pendingOut = [];
    this.pendingOutBytes = 0;
    this.earlyIn = [];
    if (this.localPaused) {
      this.localPaused = false;
      this.hooks.blockedChanged(this, false);
    }
    this.hooks.ended(this, err);
    this.local?.finish(err);
  }

  private publish(frame: Uint8Array, reply?: string): void {
    if (!this.peerSubject) return;
    this.publisher.publish(this.peerSubject, frame, reply);
  }
}

function gap(expected: number, got: number): KnatsError {
  return new KnatsError(
    ErrorCode.SequenceGap,
    `frames lost on the bus: expected seq ${expected}, peer is at ${got}; closing rather than corrupting the stream`,
  );
}
