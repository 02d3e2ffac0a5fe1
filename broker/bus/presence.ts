/**
 * Presence: every process heartbeats on its own subject
 * P.presence.<role>.<id>.<claims>, answers P.presence.query soon, and keeps a
 * view of the fleet in which a peer that missed `missedBeats` heartbeats is
 * gone.
 *
 * Heartbeats come from peers and are not trusted:
 * - who sent one is read from its subject, which only that peer's NATS user
 *   may publish on (broker/nats-auth.ts); a body that names another id or
 *   role, or identifiers that do not hash to the subject's claims token, is
 *   dropped;
 * - the table is bounded: at most `maxPeers` peers, strings of bounded length,
 *   the peer's own heartbeat interval clamped, the `incompatible` set bounded
 *   and expiring like the peers.
 */
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { ErrorCode } from '../errors.js';
import { guarded } from '../guard.js';
import type { Logger } from '../logging.js';
import {
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  type PresenceInfo,
  presenceCodec,
} from '../wire/bus-messages.js';
import { claimsToken, MAX_IDENTIFIERS_LENGTH } from '../wire/identifiers.js';
import type { PresenceSender, Subjects } from '../wire/subjects.js';

export interface PresenceSettings {
  readonly heartbeatMs: number;
  /** A peer is dropped after this many intervals without a heartbeat. */
  readonly missedBeats: number;
}

export const defaultPresenceSettings: PresenceSettings = { heartbeatMs: 2000, missedBeats: 3 };

/** Bounds on what peers can make a process hold or do. */
export const presenceLimits = {
  /** Peers in the table; heartbeats of further new peers are dropped. */
  maxPeers: 4096,
  /** Incompatible peers remembered (to warn once each). */
  maxIncompatible: 256,
  /** A peer's announced heartbeat interval is clamped to this range. */
  minIntervalMs: 100,
  maxIntervalMs: 60_000,
  maxVersionLength: 64,
  maxStrategiesLength: 256,
  maxIncarnationLength: 64,
  /** A heartbeat is a few hundred bytes; identifiers are bounded separately. */
  maxHeartbeatBytes: MAX_IDENTIFIERS_LENGTH + 1024,
  /** Answers to P.presence.query are coalesced to at most one per this long. */
  queryAnswerMs: 100,
  /**
   * Heartbeats one sender may have read per second, with this burst: a beat
   * every interval plus an answer per query fit far below it, and a sender
   * that floods its own subject costs a map lookup per message instead of a
   * decode and a hash, so it cannot starve everyone's liveness.
   */
  beatsPerSecond: 20,
  beatBurst: 20,
} as const;

/** Per-sender token buckets for heartbeats, keyed by the subject's role and id (bounded). */
export class BeatRateLimit {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  /** True if a heartbeat from `sender` may be read now. */
  take(sender: string, now = Date.now()): boolean {
    const { beatsPerSecond, beatBurst, maxPeers } = presenceLimits;
    let bucket = this.buckets.get(sender);
    if (!bucket) {
      if (this.buckets.size >= 2 * maxPeers) this.forgetFull(now);
      bucket = { tokens: beatBurst, at: now };
      this.buckets.set(sender, bucket);
    }
    bucket.tokens = Math.min(beatBurst, bucket.tokens + ((now - bucket.at) / 1000) * beatsPerSecond);
    bucket.at = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /** A full bucket is the same as none: forgetting those keeps the map bounded. */
  private forgetFull(now: number): void {
    const refillMs = (presenceLimits.beatBurst / presenceLimits.beatsPerSecond) * 1000;
    for (const [sender, bucket] of this.buckets) {
      if (now - bucket.at >= refillMs) this.buckets.delete(sender);
    }
  }

  get size(): number {
    return this.buckets.size;
  }
}

export interface Peer {
  readonly info: PresenceInfo;
  lastSeen: number;
  /** Known only from a dial, not yet from a heartbeat. */
  provisional: boolean;
}

export interface PresenceOptions {
  readonly nc: NatsConnection;
  readonly subjects: Subjects;
  readonly settings: PresenceSettings;
  readonly logger: Logger;
  readonly selfId: string;
  /** Our own presence, read at each beat (open tunnels, draining, bytes change). */
  readonly self: () => Omit<PresenceInfo, 'protocolVersion' | 'heartbeatIntervalMs' | 'alive'>;
  readonly onPeerGone?: (peer: Peer, why: string) => void;
  readonly onPeerSeen?: (peer: Peer) => void;
}

/**
 * How long a peer may stay silent before it is taken for gone: the interval
 * it announced (ours when it announced none), clamped to sane bounds, times
 * missedBeats. Unclamped, `0xffffffff` kept a fake peer for ~149 days.
 */
export function silenceAllowedMs(announcedMs: number, settings: PresenceSettings): number {
  const interval = Math.min(
    presenceLimits.maxIntervalMs,
    Math.max(presenceLimits.minIntervalMs, announcedMs || settings.heartbeatMs),
  );
  return interval * settings.missedBeats;
}

/**
 * A heartbeat's body, if it agrees with its subject (identity comes from the
 * sender's credentials, never from the body) and every field is bounded;
 * otherwise why it is dropped.
 */
export function readHeartbeat(sender: PresenceSender, data: Uint8Array): PresenceInfo | string {
  if (data.length > presenceLimits.maxHeartbeatBytes) return 'too large';
  let info: PresenceInfo;
  try {
    info = presenceCodec.decode(data);
  } catch {
    return 'malformed';
  }
  if (info.id !== sender.id || info.role !== sender.role)
    return 'body names another id or role than the subject';
  if (
    info.version.length > presenceLimits.maxVersionLength ||
    info.proxyStrategies.length > presenceLimits.maxStrategiesLength ||
    info.identifiers.length > MAX_IDENTIFIERS_LENGTH ||
    info.incarnation.length > presenceLimits.maxIncarnationLength
  ) {
    return 'oversized field';
  }
  if (claimsToken(info.identifiers) !== sender.claims) {
    return 'identifiers do not match the claims token of the subject';
  }
  return info;
}

export class Presence {
  private readonly peers = new Map<string, Peer>();
  private readonly beatRate = new BeatRateLimit();
  /** The incarnation each peer id had before it was seen restarted (see retire). */
  private readonly retired = new Map<string, string>();
  /** Incompatible peers, by id, with when they were last heard. */
  private readonly incompatible = new Map<string, number>();
  private readonly options: PresenceOptions;
  private readonly subscriptions: Subscription[] = [];
  private readonly timer: NodeJS.Timeout;
  private readonly beatSubject: string;
  private queryAnswer: NodeJS.Timeout | undefined;
  private lastQueryAnswer = 0;
  private tableFullWarned = false;
  /** Heartbeats dropped as malformed, forged, oversized or beyond the peer cap. */
  rejectedHeartbeats = 0;
  /** When expiry last ran (see expire: a late run is this process's stall, not its peers' silence). */
  private lastExpiry = Date.now();
  /** Bumped on every change to the peer table, so views built from it (routing) know when to rebuild. */
  version = 0;
  /** Set when the server refused our own heartbeat (our identity or claims are not what our user was granted). */
  heartbeatRefused: string | undefined;

  constructor(options: PresenceOptions) {
    this.options = options;
    const { nc, subjects, logger } = options;
    const me = options.self();
    this.beatSubject = subjects.presence(me.role, options.selfId, claimsToken(me.identifiers));
    this.subscriptions.push(
      nc.subscribe(subjects.presenceAll(), {
        callback: (err, msg) => {
          if (!err) guarded(logger, 'heartbeat', () => this.onHeartbeat(msg));
        },
      }),
      nc.subscribe(subjects.presenceQuery(), {
        callback: (err) => {
          if (!err) this.answerQuery();
        },
      }),
    );
    // Expiry is checked four times per interval so a dead peer goes within
    // missedBeats intervals, not missedBeats + 1.
    let tick = 0;
    this.timer = setInterval(() => {
      guarded(logger, 'presence tick', () => {
        if (++tick % 4 === 0) this.beat();
        this.expire();
      });
    }, options.settings.heartbeatMs / 4);
    this.timer.unref();
    this.beat();
    // Ask everyone to announce themselves, so the fleet is known after one round trip.
    nc.publish(subjects.presenceQuery());
  }

  /** Peers currently alive, by id. */
  snapshot(): Peer[] {
    return [...this.peers.values()];
  }

  /**
   * Resolves once a peer of `role` that takes dials is known, or after
   * `timeoutMs`: the answers to our query at start take a round trip, and a
   * process that routes by presence should not serve before they arrive.
   */
  async untilKnown(role: PresenceInfo['role'], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.count(role, { excludeDraining: true }) === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Counts live peers of a role (optionally only those taking new dials). */
  count(role: PresenceInfo['role'], { excludeDraining = false } = {}): number {
    let n = 0;
    for (const peer of this.peers.values()) {
      if (peer.info.role === role && !(excludeDraining && peer.info.draining)) n++;
    }
    return n;
  }

  /**
   * A tunnel names a peer we may not have heard from yet (it started a
   * moment ago): track it anyway, so its death still closes the tunnel.
   * `id` has been validated as a subject token by the caller.
   */
  touch(id: string, role: PresenceInfo['role']): void {
    if (this.peers.has(id) || this.peers.size >= presenceLimits.maxPeers) return;
    this.version++;
    this.peers.set(id, {
      info: {
        protocolVersion: PROTOCOL_VERSION,
        id,
        role,
        identifiers: '',
        version: '',
        openTunnels: 0,
        draining: false,
        uptimeMs: 0,
        heartbeatIntervalMs: this.options.settings.heartbeatMs,
        bytesIn: 0,
        bytesOut: 0,
        alive: true,
        proxyStrategies: '',
        incarnation: '',
      },
      lastSeen: Date.now(),
      provisional: true,
    });
  }

  /** Publishes our heartbeat now. */
  beat(alive = true): void {
    const info: PresenceInfo = {
      ...this.options.self(),
      protocolVersion: PROTOCOL_VERSION,
      heartbeatIntervalMs: this.options.settings.heartbeatMs,
      alive,
    };
    try {
      this.options.nc.publish(this.beatSubject, presenceCodec.encode(info));
    } catch (err) {
      this.options.logger.debug({ reason: (err as Error).message }, 'heartbeat not sent');
    }
  }

  /**
   * The server refused a publish: if it was our heartbeat, peers cannot see
   * us, which the operator must learn (the readiness probe says it).
   */
  onPublishRefused(subject: string): void {
    if (subject !== this.beatSubject || this.heartbeatRefused) return;
    this.heartbeatRefused =
      "NATS permissions refuse our heartbeat: this process's id (or an agent's --agent-identifiers) is not what its NATS user was granted";
    this.options.logger.error(
      { code: ErrorCode.BadConfig, subject, reason: this.heartbeatRefused },
      'heartbeat refused',
    );
  }

  /** Anyone may ask: answers are coalesced, so a flood of queries costs a few beats per second. */
  private answerQuery(): void {
    if (this.queryAnswer) return;
    const wait = Math.max(0, this.lastQueryAnswer + presenceLimits.queryAnswerMs - Date.now());
    this.queryAnswer = setTimeout(() => {
      this.queryAnswer = undefined;
      this.lastQueryAnswer = Date.now();
      this.beat();
    }, wait);
    this.queryAnswer.unref();
  }

  private reject(why: string, subject: string): void {
    this.rejectedHeartbeats++;
    this.options.logger.debug({ subject: subject.slice(0, 200), why }, 'heartbeat dropped');
  }

  private onHeartbeat(msg: Msg): void {
    const sender = this.options.subjects.presenceSender(msg.subject);
    if (sender?.id === this.options.selfId) return;
    if (sender && !this.beatRate.take(`${sender.role}.${sender.id}`)) {
      this.rejectedHeartbeats++;
      return;
    }
    const info = sender ? readHeartbeat(sender, msg.data) : 'subject is not a heartbeat subject';
    if (typeof info === 'string') {
      this.reject(info, msg.subject);
      return;
    }
    if (info.protocolVersion < MIN_PROTOCOL_VERSION) {
      this.onIncompatible(info);
      return;
    }
    if (info.incarnation && this.retired.get(info.id) === info.incarnation) return; // a late beat of a restarted peer
    let known = this.peers.get(info.id);
    if (!info.alive) {
      if (known) this.drop(known, 'said goodbye');
      return;
    }
    if (known?.info.incarnation && info.incarnation && known.info.incarnation !== info.incarnation) {
      // The same id, started anew: the old process is gone, and with it every tunnel it served.
      this.retire(known);
      known = undefined;
    }
    if (!known && this.peers.size >= presenceLimits.maxPeers) {
      if (!this.tableFullWarned) {
        this.tableFullWarned = true;
        this.options.logger.warn(
          { maxPeers: presenceLimits.maxPeers },
          'presence table full; heartbeats of new peers are dropped',
        );
      }
      this.reject('presence table full', msg.subject);
      return;
    }
    const peer: Peer = { info, lastSeen: Date.now(), provisional: false };
    this.version++;
    this.peers.set(info.id, peer);
    if (!known || known.provisional) this.options.onPeerSeen?.(peer);
  }

  /**
   * Drops a peer that came back as a new incarnation, and remembers the old
   * one so that a beat of it still in flight (routes of a NATS cluster) does
   * not bring it back. Bounded like the peer table.
   */
  private retire(peer: Peer): void {
    if (this.retired.size >= presenceLimits.maxPeers) this.retired.clear();
    this.retired.set(peer.info.id, peer.info.incarnation);
    this.drop(peer, 'restarted (a new incarnation heartbeats under its id)');
  }

  private onIncompatible(info: PresenceInfo): void {
    // Not routable: a dial to it would fail anyway. Said once per peer, not per beat.
    const known = this.incompatible.has(info.id);
    if (!known && this.incompatible.size >= presenceLimits.maxIncompatible) return;
    this.incompatible.set(info.id, Date.now());
    if (known) return;
    this.options.logger.warn(
      { peerId: info.id, role: info.role, protocolVersion: info.protocolVersion, version: info.version },
      `peer speaks bus protocol ${info.protocolVersion}, this build needs >= ${MIN_PROTOCOL_VERSION}; ignored`,
    );
  }

  private expire(): void {
    const now = Date.now();
    // A tick that comes late found this process stalled (a long synchronous task, a GC pause, a stopped VM):
    // the heartbeats of that time are still unread in the socket, and timers run before sockets are read.
    // The stall is not the peers' silence: it moves their deadline, so a busy process does not drop live
    // peers (and close their tunnels) just before it reads their beats.
    const stalledMs = now - this.lastExpiry - this.options.settings.heartbeatMs / 4;
    this.lastExpiry = now;
    if (stalledMs > this.options.settings.heartbeatMs / 4) {
      for (const peer of this.peers.values()) peer.lastSeen += stalledMs;
    }
    for (const peer of this.peers.values()) {
      if (now - peer.lastSeen > silenceAllowedMs(peer.info.heartbeatIntervalMs, this.options.settings)) {
        this.drop(peer, `missed ${this.options.settings.missedBeats} heartbeats`);
      }
    }
    const forgetBefore = now - presenceLimits.maxIntervalMs * this.options.settings.missedBeats;
    for (const [id, lastSeen] of this.incompatible) if (lastSeen < forgetBefore) this.incompatible.delete(id);
    if (this.peers.size < presenceLimits.maxPeers) this.tableFullWarned = false;
  }

  private drop(peer: Peer, why: string): void {
    this.version++;
    this.peers.delete(peer.info.id);
    this.options.logger.info({ peerId: peer.info.id, role: peer.info.role, why }, 'peer gone');
    this.options.onPeerGone?.(peer, why);
  }

  /** How many incompatible peers are remembered (bounded by presenceLimits.maxIncompatible). */
  get incompatibleCount(): number {
    return this.incompatible.size;
  }

  /** Says goodbye (so peers drop us at once) and stops. */
  stop(): void {
    clearInterval(this.timer);
    clearTimeout(this.queryAnswer);
    this.beat(false);
    for (const sub of this.subscriptions) sub.unsubscribe();
    this.version++;
    this.peers.clear();
  }
}
