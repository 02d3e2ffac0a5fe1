/**
 * All tunnel ends of one process: the one wildcard subscription that feeds
 * them, the registry (by tunnel id and by peer), and the single timer that
 * drives every tunnel's periodic work, so a tunnel owns no timer of its own.
 */
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { ErrorCode, KnatsError } from '../errors.js';
import { guarded } from '../guard.js';
import type { Logger } from '../logging.js';
import { DATA_HEADER_BYTES, encodeClose, FrameType, MAX_DATA_PAYLOAD } from '../wire/codec.js';
import { tunnelIdOf } from '../wire/subjects.js';
import { type CreditSettings, ReceiveBudget } from './credit.js';
import { type FramePublisher, Tunnel, type TunnelHostHooks } from './tunnel.js';

export interface TunnelHostTiming {
  /** How often a blocked sender repeats BLOCKED (a lost WINDOW is repaired within this). */
  readonly blockedProbeMs: number;
  /** A tunnel with no frame from its peer for this long sends a PING. */
  readonly idleProbeMs: number;
  /** Agent only: an answered dial with no frame from the frontend for this long is closed. */
  readonly confirmTimeoutMs: number;
  /** Our NATS link down for this long closes every tunnel (peers have given up on us by then). */
  readonly busLostMs: number;
  /** How long a clean close may wait without any new credit to flush its last bytes. */
  readonly lingerMs: number;
  /**
   * A tunnel whose bytes wait to move (for credit, or for the local side to
   * take them) while none moves either way for this long is aborted with
   * KNATS_TUNNEL_STALLED (--stalled-tunnel-timeout); 0: never.
   */
  readonly stalledTimeoutMs: number;
}

export const defaultTunnelHostTiming: TunnelHostTiming = {
  blockedProbeMs: 1000,
  idleProbeMs: 30_000,
  confirmTimeoutMs: 10_000,
  busLostMs: 6_000,
  lingerMs: 30_000,
  stalledTimeoutMs: 5 * 60_000,
};

export interface TunnelHostOptions {
  readonly nc: NatsConnection;
  /** Wildcard subject of this process's tunnel ends (Subjects.frontendTunnels / agentTunnels). */
  readonly subscribeSubject: string;
  readonly credit: CreditSettings;
  readonly timing: TunnelHostTiming;
  readonly logger: Logger;
  /**
   * Where peers' tunnel ends live (Subjects.agentTunnelsPrefix / frontendTunnelsPrefix):
   * frames for unknown tunnels are answered only on reply subjects under it, so
   * nobody can make this process publish to an arbitrary subject.
   */
  readonly peerFramePrefix: string;
  /** Called once per tunnel when it ends, after it left the registry. */
  readonly onTunnelEnded?: (tunnel: Tunnel, err: KnatsError | undefined) => void;
}

const TICK_MS = 250;

export class TunnelHost implements FramePublisher, TunnelHostHooks {
  readonly budget: ReceiveBudget;
  readonly maxDataPayload: number;
  private readonly tunnels = new Map<string, Tunnel>();
  private readonly byPeer = new Map<string, Set<Tunnel>>();
  private readonly blocked = new Set<Tunnel>();
  private readonly unconfirmed = new Set<Tunnel>();
  /** Frontend: answered dials whose confirmation is left to their first frame or the next tick. */
  private readonly toConfirm = new Set<Tunnel>();
  private readonly nc: NatsConnection;
  private readonly options: TunnelHostOptions;
  private readonly subscription: Subscription;
  private readonly ticker: NodeJS.Timeout;
  private lastIdleSweep = Date.now();
  private lastBlockedProbe = Date.now();
  private lastStalledSweep = Date.now();
  private disconnectedSince = 0;
  private stopped = false;
  private closedBytesIn = 0;
  private closedBytesOut = 0;
  /** Set when the server closed our frame subscription: no frame reaches this process any more. */
  lostSubscription: string | undefined;
  framesIn = 0;
  framesOut = 0;
  unknownTunnelFrames = 0;
  /** Tunnels this process aborted for the stalled-tunnel timeout. */
  stalledTunnels = 0;

  constructor(options: TunnelHostOptions) {
    this.options = options;
    this.nc = options.nc;
    this.budget = new ReceiveBudget(options.credit.budget);
    const serverMax = this.nc.info?.max_payload ?? 1024 * 1024;
    this.maxDataPayload = Math.min(MAX_DATA_PAYLOAD, serverMax - DATA_HEADER_BYTES);
    this.subscription = this.nc.subscribe(options.subscribeSubject, {
      callback: (err, msg) => {
        if (err) {
          // nats.js closes a subscription the server refused (a permission revoked while serving).
          this.lostSubscription = `tunnel subscription ${options.subscribeSubject} closed by the server (${err.message}); restart the process`;
          options.logger.error(
            { code: ErrorCode.BusPermission, subject: options.subscribeSubject, reason: err.message },
            'tunnel subscription failed',
          );
          return;
        }
        // Frames come from peers: whatever one does costs at most its tunnel, never the reader loop.
        guarded(
          options.logger,
          'tunnel frame',
          () => this.onMessage(msg),
          (error) => this.tunnels.get(tunnelIdOf(msg.subject))?.fail(error),
        );
      },
    });
    this.ticker = setInterval(() => guarded(options.logger, 'tunnel host tick', () => this.tick()), TICK_MS);
    this.ticker.unref();
  }

  get size(): number {
    return this.tunnels.size;
  }
  get blockedCount(): number {
    return this.blocked.size;
  }
  get unconfirmedCount(): number {
    return this.unconfirmed.size;
  }

  /** Bytes carried by all tunnels of this process, ended and open, each way. */
  totalBytes(): { in: number; out: number } {
    let bytesIn = this.closedBytesIn;
    let bytesOut = this.closedBytesOut;
    for (const tunnel of this.tunnels.values()) {
      bytesIn += tunnel.bytesIn;
      bytesOut += tunnel.bytesOut;
    }
    return { in: bytesIn, out: bytesOut };
  }

  /** The largest per-tunnel buffers now, to check the memory bound from outside. */
  maxBuffered(): { in: number; out: number } {
    let maxIn = 0;
    let maxOut = 0;
    for (const tunnel of this.tunnels.values()) {
      maxIn = Math.max(maxIn, tunnel.bufferedIn);
      maxOut = Math.max(maxOut, tunnel.bufferedOut);
    }
    return { in: maxIn, out: maxOut };
  }

  /** Creates and registers a tunnel end; frames for it are routed from now on. */
  create(id: string, localSubject: string, logger: Logger): Tunnel {
    if (this.stopped) throw new KnatsError(ErrorCode.ShuttingDown, 'process is shutting down');
    const tunnel = new Tunnel({
      id,
      localSubject,
      credit: this.options.credit,
      budget: this.budget,
      publisher: this,
      logger,
      hooks: this,
      lingerMs: this.options.timing.lingerMs,
    });
    this.tunnels.set(id, tunnel);
    return tunnel;
  }

  /** Records who the peer is, so its disappearance closes the tunnel. */
  bindPeer(tunnel: Tunnel, expectConfirm: boolean): void {
    let set = this.byPeer.get(tunnel.peerId);
    if (!set) {
      set = new Set();
      this.byPeer.set(tunnel.peerId, set);
    }
    set.add(tunnel);
    if (expectConfirm && !tunnel.confirmed) this.unconfirmed.add(tunnel);
  }

  /**
   * Frontend: the agent needs a frame to keep the tunnel; the client's first
   * bytes usually are one. Tunnels that sent nothing for a tick get a WINDOW
   * (the agent waits confirmTimeoutMs, far longer).
   */
  confirmLater(tunnel: Tunnel): void {
    this.toConfirm.add(tunnel);
  }

  get(id: string): Tunnel | undefined {
    return this.tunnels.get(id);
  }

  /** Open tunnels with one peer. */
  peerTunnels(peerId: string): number {
    return this.byPeer.get(peerId)?.size ?? 0;
  }

  /** A peer process stopped heartbeating or said goodbye: its tunnels cannot continue. */
  closePeer(peerId: string, reason: string): void {
    const set = this.byPeer.get(peerId);
    if (!set) return;
    for (const tunnel of [...set])
      this.work(tunnel, () => tunnel.end(new KnatsError(ErrorCode.PeerGone, reason)));
  }

  /** Closes every tunnel (shutdown or a bus lost for too long). */
  closeAll(err: KnatsError): void {
    for (const tunnel of [...this.tunnels.values()]) tunnel.fail(err);
  }

  /**
   * Never throws: tunnels publish from socket and stream callbacks where a
   * throw would exit the process. A refused publish (connection closed, a
   * subject nats.js rejects) cannot be byte-exact any more, so it fails the
   * tunnel the subject belongs to, after the current call returns.
   */
  publish(subject: string, frame: Uint8Array, reply?: string): void {
    this.framesOut++;
    try {
      this.nc.publish(subject, frame, reply ? { reply } : undefined);
    } catch (err) {
      const error = new KnatsError(ErrorCode.BusLost, `publish refused: ${(err as Error).message}`);
      const tunnel = this.tunnels.get(tunnelIdOf(subject));
      this.options.logger.debug(
        { code: error.code, reason: error.message, tunnelId: tunnel?.id },
        'frame not sent',
      );
      if (tunnel)
        queueMicrotask(() => guarded(this.options.logger, 'failing a tunnel', () => tunnel.fail(error)));
    }
  }

  // ---- TunnelHostHooks ---------------------------------------------------

  ended(tunnel: Tunnel, err: KnatsError | undefined): void {
    this.tunnels.delete(tunnel.id);
    this.closedBytesIn += tunnel.bytesIn;
    this.closedBytesOut += tunnel.bytesOut;
    this.blocked.delete(tunnel);
    this.unconfirmed.delete(tunnel);
    this.toConfirm.delete(tunnel);
    const set = this.byPeer.get(tunnel.peerId);
    if (set) {
      set.delete(tunnel);
      if (set.size === 0) this.byPeer.delete(tunnel.peerId);
    }
    this.options.onTunnelEnded?.(tunnel, err);
  }

  blockedChanged(tunnel: Tunnel, blocked: boolean): void {
    if (blocked) this.blocked.add(tunnel);
    else this.blocked.delete(tunnel);
  }

  // ---- NATS link events, fed by the connection monitor ---------------------

  onDisconnect(): void {
    if (!this.disconnectedSince) this.disconnectedSince = Date.now();
  }

  /** Frames may have been lost while we were away: every tunnel checks sequences with its peer. */
  onReconnect(): void {
    this.disconnectedSince = 0;
    for (const tunnel of [...this.tunnels.values()]) this.work(tunnel, () => tunnel.probe());
  }

  // ---- internals -------------------------------------------------------

  private onMessage(msg: Msg): void {
    this.framesIn++;
    const tunnelId = tunnelIdOf(msg.subject);
    const tunnel = this.tunnels.get(tunnelId);
    const data = msg.data;
    // The server's "no responders" status for a probe's reply subject (the peer's end is not subscribed,
    // for now or for good) is not a frame: the probe's own timeouts decide.
    if (data.byteLength === 0 && msg.headers?.code === 503) return;
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (tunnel) {
      tunnel.handleFrame(bytes);
      if (tunnel.confirmed) this.unconfirmed.delete(tunnel);
      return;
    }
    // A frame for a tunnel we do not know (closed, or never ours). Probes carry
    // a reply subject: answer them so the peer closes its end instead of leaking it.
    // Only on the peer's end of the same tunnel, so nobody can aim our CLOSE at
    // another tunnel (the id is a 128-bit secret of the tunnel's two ends).
    this.unknownTunnelFrames++;
    if (
      msg.reply &&
      bytes[0] !== FrameType.Close &&
      msg.reply.startsWith(this.options.peerFramePrefix) &&
      tunnelIdOf(msg.reply) === tunnelId
    ) {
      this.publish(msg.reply, encodeClose(0, ErrorCode.PeerGone, 'unknown tunnel'));
    }
  }

  private tick(): void {
    const now = Date.now();
    const timing = this.options.timing;
    if (this.disconnectedSince && now - this.disconnectedSince > timing.busLostMs && this.tunnels.size > 0) {
      this.options.logger.warn(
        { downMs: now - this.disconnectedSince },
        'NATS link lost too long; closing tunnels',
      );
      this.closeAll(new KnatsError(ErrorCode.BusLost, `NATS link down for over ${timing.busLostMs} ms`));
    }
    if (now - this.lastBlockedProbe >= timing.blockedProbeMs) {
      this.lastBlockedProbe = now;
      for (const tunnel of [...this.blocked]) {
        this.work(tunnel, () => {
          if (tunnel.finishOverdue) {
            tunnel.fail(new KnatsError(ErrorCode.PeerGone, 'peer granted no credit to flush the last bytes'));
          } else {
            tunnel.probeBlocked();
          }
        });
      }
    }
    for (const tunnel of this.toConfirm) {
      if (now - tunnel.openedAt < TICK_MS) continue;
      this.toConfirm.delete(tunnel);
      this.work(tunnel, () => tunnel.confirm());
    }
    for (const tunnel of [...this.unconfirmed]) {
      if (now - tunnel.openedAt > timing.confirmTimeoutMs) {
        this.work(tunnel, () =>
          tunnel.end(new KnatsError(ErrorCode.ConfirmTimeout, 'frontend never confirmed the dial')),
        );
      }
    }
    const stalledMs = timing.stalledTimeoutMs;
    if (stalledMs > 0 && now - this.lastStalledSweep >= Math.min(1000, Math.max(TICK_MS, stalledMs / 4))) {
      this.lastStalledSweep = now;
      for (const tunnel of [...this.tunnels.values()]) {
        if (!tunnel.isOpen || !tunnel.hasBytesWaiting || now - tunnel.lastMovedAt < stalledMs) continue;
        this.work(tunnel, () => this.abortStalled(tunnel, now - tunnel.lastMovedAt));
      }
    }
    if (now - this.lastIdleSweep >= timing.idleProbeMs / 2) {
      this.lastIdleSweep = now;
      for (const tunnel of [...this.tunnels.values()]) {
        if (now - tunnel.lastPeerFrameAt > timing.idleProbeMs) this.work(tunnel, () => tunnel.probe());
      }
    }
  }

  /**
   * Bytes wait and none moved for the stalled timeout: a side that stopped
   * reading, or a client that left behind unread bytes (its FIN or reset sits
   * behind them, so nothing else would ever tell). Both ends are aborted: the
   * peer gets CLOSE with the code, the local side a reset (or the code).
   */
  private abortStalled(tunnel: Tunnel, stalledMs: number): void {
    this.stalledTunnels++;
    tunnel.logger.warn(
      {
        code: ErrorCode.TunnelStalled,
        stalledMs,
        bufferedIn: tunnel.bufferedIn,
        bufferedOut: tunnel.bufferedOut,
      },
      'tunnel stalled: bytes wait and none moved; aborting it',
    );
    tunnel.fail(
      new KnatsError(
        ErrorCode.TunnelStalled,
        `no byte moved for ${stalledMs} ms while ${tunnel.bufferedOut} bytes waited to be sent and ${tunnel.bufferedIn} to be written (--stalled-tunnel-timeout ${this.options.timing.stalledTimeoutMs} ms)`,
      ),
    );
  }

  /** One tunnel's timer work: a throw fails that tunnel, the others carry on. */
  private work(tunnel: Tunnel, job: () => void): void {
    guarded(tunnel.logger, 'tunnel timer work', job, (error) => tunnel.fail(error));
  }

  /** Stops routing frames; tunnels should have been closed first. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.ticker);
    this.subscription.unsubscribe();
  }
}
