/**
 * A frontend replica: accepts kube-apiserver's dials on its front door and
 * turns each into a tunnel over the bus. Stateless: it holds only the tunnels
 * it serves now and learns the fleet from presence heartbeats.
 */
import { chmodSync, existsSync, lstatSync, readFileSync, unlinkSync } from 'node:fs';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectBus, type NatsSettings } from '../broker/connection.js';
import type { CreditSettings } from '../broker/credit.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { startHealthServer } from '../broker/health-server.js';
import type { Logger } from '../broker/logging.js';
import { createBusMetrics } from '../broker/metrics.js';
import { Presence, type PresenceSettings } from '../broker/presence.js';
import { Subjects } from '../broker/subjects.js';
import { TunnelHost, type TunnelHostTiming } from '../broker/tunnel-host.js';
import { VERSION } from '../broker/version.js';
import { BusDialer } from './bus-dialer.js';
import { addProxyService, type ProxyStream } from './grpc-door.js';
import { createFrontendMetrics } from './metrics.js';
import type { ProxyStrategy } from './router.js';

export interface FrontendConfig {
  readonly id: string;
  readonly nats: NatsSettings;
  readonly subjectPrefix: string;
  readonly mode: 'grpc' | 'http-connect';
  readonly udsName?: string;
  readonly deleteExistingUdsFile: boolean;
  readonly udsMode: number;
  /** 0 with udsName: no TCP listener. */
  readonly serverPort: number;
  readonly serverBindAddress: string;
  readonly serverCert?: string;
  readonly serverKey?: string;
  readonly serverCaCert?: string;
  readonly proxyStrategies: readonly ProxyStrategy[];
  readonly backendDialTimeoutMs: number;
  readonly healthPort: number;
  readonly healthBindAddress: string;
  readonly adminPort: number;
  readonly adminBindAddress: string;
  readonly gracefulShutdownTimeoutMs: number;
  readonly maxPendingDials: number;
  readonly maxPendingDialsPerStream: number;
  readonly credit: CreditSettings;
  readonly timing: TunnelHostTiming;
  readonly presence: PresenceSettings;
  readonly logger: Logger;
}

export interface RunningFrontend {
  readonly id: string;
  readonly tcpPort: number | undefined;
  readonly healthPort: number;
  readonly adminPort: number;
  readonly nc: NatsConnection;
  debugState(): Record<string, unknown>;
  /** Graceful: readiness off, listeners closed, tunnels drain up to the timeout. */
  stop(options?: { immediate?: boolean }): Promise<void>;
}

export async function startFrontend(config: FrontendConfig): Promise<RunningFrontend> {
  const logger = config.logger.child({ frontendId: config.id });
  if (config.mode !== 'grpc') {
    throw new KnatsError(ErrorCode.BadConfig, `--mode ${config.mode}: this build serves only --mode grpc`);
  }
  const subjects = new Subjects(config.subjectPrefix);
  const startedAt = Date.now();
  const bus = createBusMetrics('frontend');
  const metrics = createFrontendMetrics(bus.registry);
  let host: TunnelHost | undefined;
  let draining = false;
  let stopped = false;

  const nc = await connectBus(config.nats, `knats-frontend-${config.id}`, logger, {
    disconnected: () => host?.onDisconnect(),
    reconnected: () => {
      bus.reconnects.inc();
      host?.onReconnect();
    },
  });
  const tunnelHost = new TunnelHost({
    nc,
    subscribeSubject: subjects.frontendTunnels(config.id),
    credit: config.credit,
    timing: config.timing,
    logger,
    onTunnelEnded: (tunnel, err) => {
      bus.tunnelEnded(tunnel.bytesIn, tunnel.bytesOut, err);
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
  bus.watchHost(() => host);

  const presence = new Presence({
    nc,
    subjects,
    settings: config.presence,
    logger,
    selfId: config.id,
    self: () => ({
      id: config.id,
      role: 'frontend',
      identifiers: '',
      version: VERSION,
      openTunnels: tunnelHost.size,
      draining,
      uptimeMs: Date.now() - startedAt,
      bytesIn: 0,
      bytesOut: 0,
    }),
    onPeerGone: (peer, why) => tunnelHost.closePeer(peer.info.id, `agent ${peer.info.id} ${why}`),
  });
  const liveAgents = () => presence.count('agent', { excludeDraining: true });
  metrics.watchReadyBackends(() => {
    const agents = presence.snapshot().filter((p) => p.info.role === 'agent' && !p.info.draining);
    return {
      default: agents.length,
      defaultRoute: agents.filter((p) => /(^|&)default-route=true(&|$)/.test(p.info.identifiers)).length,
      destHost: agents.filter((p) => p.info.identifiers !== '').length,
    };
  });

  const dialer = new BusDialer({
    nc,
    host: tunnelHost,
    subjects,
    frontendId: config.id,
    strategies: config.proxyStrategies,
    agentsForHost: () => [],
    dialTimeoutMs: config.backendDialTimeoutMs,
    maxPendingDials: config.maxPendingDials,
    logger,
    onAgentUsed: (agentId) => presence.touch(agentId, 'agent'),
  });

  const streams = new Set<ProxyStream>();
  const grpcServer = new Server({
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    'grpc.max_send_message_length': 16 * 1024 * 1024,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
  });
  addProxyService(
    grpcServer,
    {
      dialer,
      metrics,
      logger,
      maxPendingDialsPerStream: config.maxPendingDialsPerStream,
      accepting: () => !draining,
      onTunnelOpened: () => {},
    },
    streams,
  );

  if (config.udsName) await bindUds(grpcServer, config, logger);
  let tcpPort: number | undefined;
  if (config.serverPort > 0 || !config.udsName) {
    tcpPort = await bindTcp(grpcServer, config, logger);
  }

  const debugState = () => ({
    id: config.id,
    role: 'frontend',
    tunnels: tunnelHost.size,
    blockedTunnels: tunnelHost.blockedCount,
    grpcStreams: streams.size,
    pendingDials: dialer.pendingDials,
    maxBuffered: tunnelHost.maxBuffered(),
    receiveBudgetInUse: tunnelHost.budget.inUse,
    agents: presence.count('agent'),
    draining,
    activeHandles: activeResources(),
  });
  const notReadyReason = () => {
    if (draining) return 'draining';
    if (nc.isClosed()) return 'NATS connection closed';
    if (liveAgents() === 0) return 'no agent known on the bus';
    return undefined;
  };
  const health = await startHealthServer({
    host: config.healthBindAddress,
    port: config.healthPort,
    registry: bus.registry,
    logger,
    notReadyReason,
    debugState,
  });
  const admin = await startHealthServer({
    host: config.adminBindAddress,
    port: config.adminPort,
    registry: bus.registry,
    logger: logger.child({ server: 'admin' }),
    notReadyReason,
    debugState,
  });
  logger.info({ uds: config.udsName, tcpPort, mode: config.mode, version: VERSION }, 'frontend ready');

  return {
    id: config.id,
    tcpPort,
    healthPort: health.port,
    adminPort: admin.port,
    nc,
    debugState,
    async stop({ immediate = false } = {}) {
      if (stopped) return;
      stopped = true;
      draining = true;
      presence.beat();
      logger.info({ tunnels: tunnelHost.size, immediate }, 'frontend stopping');
      const deadline = Date.now() + (immediate ? 0 : config.gracefulShutdownTimeoutMs);
      // tryShutdown closes the listeners at once and completes when the open calls have ended.
      const callsDone = new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve()));
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        callsDone,
        new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now())))),
      ]);
      clearTimeout(timer);
      for (const stream of [...streams]) stream.shutdown('frontend stopping');
      tunnelHost.closeAll(new KnatsError(ErrorCode.ShuttingDown, 'frontend stopping'));
      grpcServer.forceShutdown();
      presence.stop();
      await tunnelHost.stop();
      await Promise.all([health.close(), admin.close()]);
      await nc.drain().catch(() => nc.close());
      if (config.udsName) removeSocketFile(config.udsName);
      logger.info('frontend stopped');
    },
  };
}

function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}

function removeSocketFile(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // gone already
  }
}

async function bindUds(server: Server, config: FrontendConfig, logger: Logger): Promise<void> {
  const path = config.udsName!;
  if (existsSync(path)) {
    if (!config.deleteExistingUdsFile) {
      throw new KnatsError(
        ErrorCode.BadConfig,
        `--uds-name ${path} exists and --delete-existing-uds-file=false`,
      );
    }
    if (!lstatSync(path).isSocket()) {
      throw new KnatsError(
        ErrorCode.BadConfig,
        `--uds-name ${path} exists and is not a socket; refusing to delete it`,
      );
    }
    unlinkSync(path);
  }
  await bind(server, `unix:${path}`, ServerCredentials.createInsecure());
  chmodSync(path, config.udsMode);
  logger.info({ uds: path, mode: config.udsMode.toString(8) }, 'listening on unix socket');
}

async function bindTcp(server: Server, config: FrontendConfig, logger: Logger): Promise<number> {
  if (!config.serverCert || !config.serverKey || !config.serverCaCert) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      '--server-port needs --server-cert, --server-key and --server-ca-cert: TCP frontends require client certificates',
    );
  }
  const credentials = ServerCredentials.createSsl(
    readFileSync(config.serverCaCert),
    [{ cert_chain: readFileSync(config.serverCert), private_key: readFileSync(config.serverKey) }],
    true,
  );
  const address = config.serverBindAddress.includes(':')
    ? `[${config.serverBindAddress}]:${config.serverPort}`
    : `${config.serverBindAddress}:${config.serverPort}`;
  const port = await bind(server, address, credentials);
  logger.info({ address: config.serverBindAddress, port }, 'listening on TCP with mTLS');
  return port;
}

function bind(server: Server, address: string, credentials: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => {
      if (err) reject(new KnatsError(ErrorCode.BadConfig, `cannot listen on ${address}: ${err.message}`));
      else resolve(port);
    });
  });
}
