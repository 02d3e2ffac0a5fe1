/**
 * What every process on the bus is made of, built once for the frontend and
 * the agent alike: the NATS connection and its link events, the permission
 * check, the tunnel host, presence, the bus metrics, and the health and
 * admin HTTP endpoints.
 */
import { randomBytes } from 'node:crypto';
import { type NatsConnection, PermissionViolationError } from '@nats-io/transport-node';
import { type BusNeeds, describeRefusals, refusedPermissions } from '../bus/bus-permissions.js';
import { type BusLink, connectBus, type NatsSettings } from '../bus/connection.js';
import { Presence, type PresenceSettings } from '../bus/presence.js';
import { ErrorCode, KnatsError } from '../errors.js';
import type { Logger } from '../logging.js';
import { startHealthServer } from '../telemetry/health-server.js';
import type { BusMetrics } from '../telemetry/metrics.js';
import type { Tracing } from '../telemetry/tracing.js';
import type { CreditSettings } from '../tunnel/credit.js';
import { TunnelHost, type TunnelHostTiming } from '../tunnel/tunnel-host.js';
import { VERSION } from '../version.js';
import type { PresenceInfo } from '../wire/bus-messages.js';
import { frontendInboxPrefix, type Subjects } from '../wire/subjects.js';

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
  /**
   * False while the process cannot take dials yet (an agent before it reads its dial subject): its
   * heartbeats then say draining, so no frontend chooses it. Default: always true.
   */
  readonly takesDials?: () => boolean;
  /** Created before joining, so /metrics and /readyz answer while the bus is still out of reach. */
  readonly metrics: BusMetrics;
  readonly link: BusLink;
  /** What this role must be allowed to subscribe and publish (bus-permissions.ts). */
  readonly needs: (nc: NatsConnection) => BusNeeds;
  /** Stops the retries when the process stops before it joined. */
  readonly signal?: AbortSignal;
  /** Ends each tunnel's life span with its bytes and close reason. */
  readonly tracing?: Tracing;
}

export interface BusNode {
  readonly nc: NatsConnection;
  readonly host: TunnelHost;
  readonly presence: Presence;
  readonly metrics: BusMetrics;
}

/**
 * Connects (retrying until the server answers), waits until the server grants
 * what the role needs, then starts the tunnel host and presence. Until then
 * `options.link` says why the process is not ready.
 */
export async function joinBus(options: BusNodeOptions): Promise<BusNode> {
  const { role, id, subjects, logger, metrics, link, signal } = options;
  const startedAt = Date.now();
  /** Who this process is across restarts under the same id (PresenceInfo.incarnation). */
  const incarnation = randomBytes(9).toString('base64url');
  let host: TunnelHost | undefined;
  let presenceOf: Presence | undefined;
  let permissionsChecked = false;
  // A frontend's dial replies arrive under its own inbox prefix, which only its user may read.
  const nats = role === 'frontend' ? { ...options.nats, inboxPrefix: frontendInboxPrefix(id) } : options.nats;
  const nc = await connectBus(
    nats,
    `knats-${role}-${id}`,
    logger,
    {
      connected: () => metrics.busConnected.set(1),
      disconnected: () => {
        metrics.busConnected.set(0);
        host?.onDisconnect();
      },
      reconnected: () => {
        metrics.busConnected.set(1);
        metrics.reconnects.inc();
        host?.onReconnect();
      },
      error: (kind, err) => {
        metrics.busError(kind);
        if (err instanceof PermissionViolationError && err.operation === 'publish') {
          presenceOf?.onPublishRefused(err.subject);
        }
        // A permission taken away while serving (a server reload): not ready until the check passes again.
        if (kind === 'authorization' && permissionsChecked && link.permitted()) {
          link.markRefused(`NATS permission denied while serving: ${(err as Error).message}`);
          void awaitPermissions(nc, options.needs(nc), link, logger, signal).catch(() => {});
        }
      },
    },
    true,
    { link, signal },
  );
  try {
    await awaitPermissions(nc, options.needs(nc), link, logger, signal);
  } catch (err) {
    await nc.close();
    throw err;
  }
  permissionsChecked = true;
  const tunnelHost = new TunnelHost({
    nc,
    subscribeSubject: role === 'agent' ? subjects.agentTunnels(id) : subjects.frontendTunnels(id),
    peerFramePrefix: role === 'agent' ? subjects.frontendFramePrefix() : subjects.agentFramePrefix(),
    credit: options.credit,
    timing: options.timing,
    logger,
    onTunnelEnded: (tunnel, err) => {
      // A failed dial attempt's tunnel never opened: it is a dial failure, counted as one, not a closed tunnel.
      if (tunnel.wasOpened) metrics.tunnelEnded(tunnel.bytesIn, tunnel.bytesOut, err);
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
      options.tracing?.tunnelEnded(tunnel, err);
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
        draining: options.isDraining() || options.takesDials?.() === false,
        uptimeMs: Date.now() - startedAt,
        bytesIn: bytes.in,
        bytesOut: bytes.out,
        proxyStrategies: options.proxyStrategies,
        incarnation,
      };
    },
    onPeerGone: (peer, why) => tunnelHost.closePeer(peer.info.id, `${peerRole} ${peer.info.id} ${why}`),
  });
  presenceOf = presence;
  return { nc, host: tunnelHost, presence, metrics };
}

const PERMISSION_RECHECK_MS = 5000;

/**
 * Returns once the server grants every need. While it refuses some, the
 * refusal is logged (once per distinct set) and is the /readyz reason, and the
 * check repeats: a server configuration reload fixes it without a restart.
 */
async function awaitPermissions(
  nc: NatsConnection,
  needs: BusNeeds,
  link: BusLink,
  logger: Logger,
  signal: AbortSignal | undefined,
): Promise<void> {
  let logged = '';
  for (;;) {
    if (signal?.aborted)
      throw new KnatsError(ErrorCode.ShuttingDown, 'stopped before NATS permissions were granted');
    let refused: string | undefined;
    try {
      const refusals = await refusedPermissions(nc, needs);
      if (refusals.length === 0) {
        link.markPermitted();
        if (logged) logger.info('NATS permissions granted');
        return;
      }
      refused = describeRefusals(refusals);
    } catch {
      // disconnected meanwhile: the link reports it; check again
    }
    if (refused !== undefined && refused !== logged) {
      logger.error(
        { code: ErrorCode.BusPermission, refused },
        `NATS refuses what this process needs: ${refused}; not ready (check its credentials and the server's permissions)`,
      );
      logged = refused;
      link.markRefused(`NATS permission denied: ${refused}`);
    }
    await new Promise((r) => setTimeout(r, PERMISSION_RECHECK_MS).unref());
  }
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
  /** Serve CPU profiles and heap snapshots on the admin port. */
  readonly enableProfiling?: boolean;
}

export interface EndpointOptions {
  readonly metrics: Pick<BusMetrics, 'registry'>;
  readonly logger: Logger;
  readonly notReadyReason: () => string | undefined;
  readonly debugState: () => Record<string, unknown>;
  /** The component's flag names of the two ports, for start-up errors. */
  readonly portFlags: { readonly health: string; readonly admin: string };
}

export interface Endpoints {
  readonly healthPort: number;
  readonly adminPort: number;
  close(): Promise<void>;
}

/**
 * The health port (/healthz, /readyz, /metrics) and the admin port (the same
 * plus /debug/state, which tells tunnel counts and socket ports: loopback by
 * default, never on the health port that a Service may expose).
 */
export async function startEndpoints(config: EndpointConfig, options: EndpointOptions): Promise<Endpoints> {
  const common = { registry: options.metrics.registry, notReadyReason: options.notReadyReason };
  const health = await startHealthServer({
    ...common,
    host: config.healthBindAddress,
    port: config.healthPort,
    flag: options.portFlags.health,
    logger: options.logger,
  });
  try {
    const admin = await startHealthServer({
      ...common,
      host: config.adminBindAddress,
      port: config.adminPort,
      flag: options.portFlags.admin,
      debugState: options.debugState,
      profiling: config.enableProfiling === true,
      logger: options.logger.child({ server: 'admin' }),
    });
    return {
      healthPort: health.port,
      adminPort: admin.port,
      close: () => Promise.all([health.close(), admin.close()]).then(() => undefined),
    };
  } catch (err) {
    await health.close();
    throw err;
  }
}

export interface NodeEndpoints {
  readonly portFlags: EndpointOptions['portFlags'];
  /** false: no health or admin port (a cluster worker; its primary serves them). Default true. */
  readonly serve?: boolean;
  readonly debugState: () => Record<string, unknown>;
  /** The role's own reason, asked once the process is not draining and the bus is up and permitted. */
  readonly roleNotReady: () => string | undefined;
}

/**
 * Opens the health and admin ports, then joins the bus: from the first
 * second /readyz says why the process is not ready (draining, the bus, its
 * permissions, a refused heartbeat, then the role's own reason).
 */
export async function startBusNode(
  options: BusNodeOptions,
  config: EndpointConfig,
  endpoints: NodeEndpoints,
): Promise<{ node: BusNode; endpoints: Endpoints; notReadyReason: () => string | undefined }> {
  let node: BusNode | undefined;
  const notReadyReason = () =>
    (options.isDraining() ? 'draining' : undefined) ??
    options.link.notReadyReason() ??
    // The server refused our heartbeat: our user was not granted this id or these identifiers.
    node?.presence.heartbeatRefused ??
    node?.host.lostSubscription ??
    endpoints.roleNotReady();
  const started =
    endpoints.serve === false
      ? { healthPort: 0, adminPort: 0, close: async () => {} }
      : await startEndpoints(config, {
          metrics: options.metrics,
          logger: options.logger,
          notReadyReason,
          debugState: endpoints.debugState,
          portFlags: endpoints.portFlags,
        });
  try {
    node = await joinBus(options);
    return { node, endpoints: started, notReadyReason };
  } catch (err) {
    await started.close();
    throw err;
  }
}
