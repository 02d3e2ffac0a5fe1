/**
 * What every process on the bus is made of, built once for the frontend and
 * the agent alike: the NATS connection and its link events, the tunnel host,
 * presence, the bus metrics, and the health and admin HTTP endpoints.
 */
import { type NatsConnection, PermissionViolationError } from '@nats-io/transport-node';
import type { PresenceInfo } from './bus-messages.js';
import { connectBus, type NatsSettings } from './connection.js';
import type { CreditSettings } from './credit.js';
import { ErrorCode, KnatsError } from './errors.js';
import { startHealthServer } from './health-server.js';
import type { Logger } from './logging.js';
import { type BusMetrics, createBusMetrics } from './metrics.js';
import { Presence, type PresenceSettings } from './presence.js';
import { frontendInboxPrefix, type Subjects } from './subjects.js';
import { TunnelHost, type TunnelHostTiming } from './tunnel-host.js';
import { VERSION } from './version.js';

export interface BusNodeOptions {
  readonly role: PresenceInfo['role'];
  readonly id: string;
  readonly nats: NatsSettings;
  readonly subjects: Subjects;
  readonly credit: CreditSettings;
  readonly timing: TunnelHostTiming;
  readonly presence: PresenceSettings;
  readonly logger: Logger;
  /** What the heartbeat says beyond the counters. */
  readonly identifiers: string;
  readonly proxyStrategies: string;
  readonly isDraining: () => boolean;
}

export interface BusNode {
  readonly nc: NatsConnection;
  readonly host: TunnelHost;
  readonly presence: Presence;
  readonly metrics: BusMetrics;
}

export async function joinBus(options: BusNodeOptions): Promise<BusNode> {
  const { role, id, subjects, logger } = options;
  const startedAt = Date.now();
  const metrics = createBusMetrics(role);
  let host: TunnelHost | undefined;
  let presenceOf: Presence | undefined;
  // A frontend's dial replies arrive under its own inbox prefix, which only its user may read.
  const nats = role === 'frontend' ? { ...options.nats, inboxPrefix: frontendInboxPrefix(id) } : options.nats;
  const nc = await connectBus(nats, `knats-${role}-${id}`, logger, {
    disconnected: () => host?.onDisconnect(),
    reconnected: () => {
      metrics.reconnects.inc();
      host?.onReconnect();
    },
    error: (err) => {
      if (err instanceof PermissionViolationError && err.operation === 'publish') {
        presenceOf?.onPublishRefused(err.subject);
      }
    },
  });
  const tunnelHost = new TunnelHost({
    nc,
    subscribeSubject: role === 'agent' ? subjects.agentTunnels(id) : subjects.frontendTunnels(id),
    peerFramePrefix: role === 'agent' ? subjects.frontendFramePrefix() : subjects.agentFramePrefix(),
    credit: options.credit,
    timing: options.timing,
    logger,
    onTunnelEnded: (tunnel, err) => {
      metrics.tunnelEnded(tunnel.bytesIn, tunnel.bytesOut, err);
      tunnel.logger.info(
        {
          bytesIn: tunnel.bytesIn,
          bytesOut: tunnel.bytesOut,
          durationMs: Date.now() - tunnel.openedAt,
          reason: err?.code ?? 'ok',
          message: err?.message,
        },
        'tunnel closed',
      );
    },
  });
  host = tunnelHost;
  metrics.watchHost(() => host);
  const peerRole = role === 'agent' ? 'frontend' : 'agent';
  const presence = new Presence({
    nc,
    subjects,
    settings: options.presence,
    logger,
    selfId: id,
    self: () => {
      const bytes = tunnelHost.totalBytes();
      return {
        id,
        role,
        identifiers: options.identifiers,
        version: VERSION,
        openTunnels: tunnelHost.size,
        draining: options.isDraining(),
        uptimeMs: Date.now() - startedAt,
        bytesIn: bytes.in,
        bytesOut: bytes.out,
        proxyStrategies: options.proxyStrategies,
      };
    },
    onPeerGone: (peer, why) => tunnelHost.closePeer(peer.info.id, `${peerRole} ${peer.info.id} ${why}`),
  });
  presenceOf = presence;
  return { nc, host: tunnelHost, presence, metrics };
}

/**
 * Waits until the process's tunnels have ended or the deadline passed, then
 * closes what is left and leaves the bus (goodbye heartbeat, NATS drained).
 */
export async function leaveBus(node: BusNode, deadline: number, why: string): Promise<void> {
  while (node.host.size > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  node.host.closeAll(new KnatsError(ErrorCode.ShuttingDown, why));
  node.presence.stop();
  await node.host.stop();
  await node.nc.drain().catch(() => node.nc.close());
}

/** Where the health and admin ports listen; both components' configs have these fields. */
export interface EndpointConfig {
  readonly healthBindAddress: string;
  readonly healthPort: number;
  readonly adminBindAddress: string;
  readonly adminPort: number;
}

export interface EndpointOptions {
  readonly metrics: BusMetrics;
  readonly logger: Logger;
  readonly notReadyReason: () => string | undefined;
  readonly debugState: () => Record<string, unknown>;
}

/** The health port (/healthz, /readyz, /metrics) and the admin port (the same plus /debug/state). */
export async function startEndpoints(config: EndpointConfig, options: EndpointOptions) {
  const common = {
    registry: options.metrics.registry,
    notReadyReason: options.notReadyReason,
    debugState: options.debugState,
  };
  const health = await startHealthServer({
    ...common,
    host: config.healthBindAddress,
    port: config.healthPort,
    logger: options.logger,
  });
  const admin = await startHealthServer({
    ...common,
    host: config.adminBindAddress,
    port: config.adminPort,
    logger: options.logger.child({ server: 'admin' }),
  });
  return {
    healthPort: health.port,
    adminPort: admin.port,
    close: () => Promise.all([health.close(), admin.close()]).then(() => undefined),
  };
}
