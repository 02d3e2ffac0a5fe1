/**
 * Presence: every process heartbeats on P.presence, answers P.presence.query
 * at once, and keeps a view of the fleet in which a peer that missed
 * `missedBeats` heartbeats is gone.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, type PresenceInfo, presenceCodec } from './bus-messages.js';
import type { Logger } from './logging.js';
import type { Subjects } from './subjects.js';

export interface PresenceSettings {
  readonly heartbeatMs: number;
  /** A peer is dropped after this many intervals without a heartbeat. */
  readonly missedBeats: number;
}

export const defaultPresenceSettings: PresenceSettings = { heartbeatMs: 2000, missedBeats: 3 };

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

export class Presence {
  private readonly peers = new Map<string, Peer>();
  private readonly incompatible = new Set<string>();
  private readonly options: PresenceOptions;
  private readonly subscriptions: Subscription[] = [];
  private readonly timer: NodeJS.Timeout;

  constructor(options: PresenceOptions) {
    this.options = options;
    const { nc, subjects } = options;
    this.subscriptions.push(
      nc.subscribe(subjects.presence(), {
        callback: (err, msg) => {
          if (!err) this.onHeartbeat(msg.data);
        },
      }),
      nc.subscribe(subjects.presenceQuery(), {
        callback: (err) => {
          if (!err) this.beat();
        },
      }),
    );
    // Expiry is checked four times per interval so a dead peer goes within
    // missedBeats intervals, not missedBeats + 1.
    let tick = 0;
    this.timer = setInterval(() => {
      if (++tick % 4 === 0) this.beat();
      this.expire();
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
   */
  touch(id: string, role: PresenceInfo['role']): void {
    if (this.peers.has(id)) return;
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
      this.options.nc.publish(this.options.subjects.presence(), presenceCodec.encode(info));
    } catch (err) {
      this.options.logger.debug({ err }, 'heartbeat not sent');
    }
  }

  private onHeartbeat(data: Uint8Array): void {
    let info: PresenceInfo;
    try {
      info = presenceCodec.decode(data);
    } catch (err) {
      this.options.logger.warn({ err }, 'malformed heartbeat ignored');
      return;
    }
    if (!info.id || info.id === this.options.selfId) return;
    if (info.protocolVersion < MIN_PROTOCOL_VERSION) {
      // Not routable: a dial to it would fail anyway. Said once per peer, not per beat.
      if (!this.incompatible.has(info.id)) {
        this.incompatible.add(info.id);
        this.options.logger.warn(
          { peerId: info.id, role: info.role, protocolVersion: info.protocolVersion, version: info.version },
          `peer speaks bus protocol ${info.protocolVersion}, this build needs >= ${MIN_PROTOCOL_VERSION}; ignored`,
        );
      }
      return;
    }
    if (!info.alive) {
      const peer = this.peers.get(info.id);
      if (peer) this.drop(peer, 'said goodbye');
      return;
    }
    const known = this.peers.get(info.id);
    const peer: Peer = { info, lastSeen: Date.now(), provisional: false };
    this.peers.set(info.id, peer);
    if (!known || known.provisional) this.options.onPeerSeen?.(peer);
  }

  private expire(): void {
    const now = Date.now();
    for (const peer of this.peers.values()) {
      const interval = peer.info.heartbeatIntervalMs || this.options.settings.heartbeatMs;
      if (now - peer.lastSeen > interval * this.options.settings.missedBeats) {
        this.drop(peer, `missed ${this.options.settings.missedBeats} heartbeats`);
      }
    }
  }

  private drop(peer: Peer, why: string): void {
    this.peers.delete(peer.info.id);
    this.options.logger.info({ peerId: peer.info.id, role: peer.info.role, why }, 'peer gone');
    this.options.onPeerGone?.(peer, why);
  }

  /** Says goodbye (so peers drop us at once) and stops. */
  stop(): void {
    clearInterval(this.timer);
    this.beat(false);
    for (const sub of this.subscriptions) sub.unsubscribe();
    this.peers.clear();
  }
}
