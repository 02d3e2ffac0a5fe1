/**
 * A frontend replica: accepts kube-apiserver's dials on its front door and
 * turns each into a tunnel over the bus. Stateless: it holds only the tunnels
 * it serves now and learns the fleet from presence heartbeats.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { Registry } from 'prom-client';
import { frontendNeeds } from '../broker/bus/bus-permissions.js';
import { BusLink, type NatsSettings } from '../broker/bus/connection.js';
import type { PresenceSettings } from '../broker/bus/presence.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { Logger } from '../broker/logging.js';
import { type BusNode, type Endpoints, leaveBus, startBusNode } from '../broker/node/bus-node.js';
import { createBusMetrics } from '../broker/telemetry/metrics.js';
import { startTracing, type TracingSettings } from '../broker/telemetry/tracing.js';
import type { CreditSettings } from '../broker/tunnel/credit.js';
import type { TunnelHostTiming } from '../broker/tunnel/tunnel-host.js';
import { VERSION } from '../broker/version.js';
import { Subjects } from '../broker/wire/subjects.js';
import { BusDialer } from './bus-dialer.js';
import { createFrontendMetrics } from './metrics.js';
import { FleetRoutes, type ProxyStrategy } from './router.js';
import { connectDoor, type DoorDeps, grpcDoor, loadServerTls, type ServingDoor } from './serving-doors.js';
import type { ServerTls, TlsMinVersion } from './tls.js';
import { listenUds, prepareSocketPath, type UdsListener } from './unix-socket.js';

export interface FrontendConfig {
  readonly id: string;
  readonly nats: NatsSettings;
  readonly subjectPrefix: string;
  readonly mode: 'grpc' | 'http-connect';
  readonly udsName?: string;
  /** Upstream's flag, accepted: a stale socket is always replaced, a live one never (prepareSocketPath). */
  readonly deleteExistingUdsFile: boolean;
  readonly udsMode: number;
  /** 0 with udsName: no TCP listener. */
  readonly serverPort: number;
  readonly serverBindAddress: string;
  readonly serverCert?: string;
  readonly serverKey?: string;
  readonly serverCaCert?: string;
  /** Lowest TLS version of the TCP listener (--tls-min-version); default TLS 1.2. */
  readonly tlsMinVersion?: TlsMinVersion;
  /** OpenSSL cipher string from --cipher-suites (see tls.ts parseCipherSuites); default Node's. */
  readonly cipherSuites?: string;
  /** Fallback poll for certificate changes (fs.watch reacts at once); default 10 s. */
  readonly certPollIntervalMs?: number;
  /** HTTP CONNECT: the request header must arrive within this (slowloris); default 10 s. */
  readonly headerTimeoutMs?: number;
  /** HTTP CONNECT: largest request header (431 beyond); default 16 KiB. */
  readonly maxHeaderBytes?: number;
  readonly proxyStrategies: readonly ProxyStrategy[];
  readonly backendDialTimeoutMs: number;
  /** An agent that does not acknowledge a dial within this is taken for dead; the dial moves on. */
  readonly dialAcceptTimeoutMs: number;
  /** gRPC door: how long a new connection's first DATA / CLOSE_RSP waits after its DIAL_RSP (--dial-response-settle). */
  readonly dialResponseSettleMs: number;
  readonly healthPort: number;
  readonly healthBindAddress: string;
  readonly adminPort: number;
  readonly adminBindAddress: string;
  /** --enable-profiling: CPU profiles and heap snapshots on the admin port. */
  readonly enableProfiling?: boolean;
  /** gRPC door: keepalive ping interval toward clients (--frontend-keepalive-time); default 30 s. */
  readonly grpcKeepaliveMs?: number;
  readonly gracefulShutdownTimeoutMs: number;
  readonly maxPendingDials: number;
  readonly maxPendingDialsPerStream: number;
  readonly credit: CreditSettings;
  readonly timing: TunnelHostTiming;
  readonly presence: PresenceSettings;
  /** OTLP trace export; undefined: no tracing, and OpenTelemetry is never loaded. */
  readonly tracing?: TracingSettings;
  /**
   * A worker of `--workers N` (workers.ts): its listeners are shared with its
   * siblings through the cluster primary, which prepares, sets the mode of and
   * removes the socket file and serves the health and admin ports.
   */
  readonly clusterWorker?: boolean;
  readonly logger: Logger;
}

export interface RunningFrontend {
  readonly id: string;
  readonly tcpPort: number | undefined;
  readonly healthPort: number;
  readonly adminPort: number;
  readonly nc: NatsConnection;
  /** The TCP listener's certificates (reloaded from disk on change); undefined without TCP. */
  readonly tls: ServerTls | undefined;
  /** This process's metrics (a cluster primary aggregates its workers'). */
  readonly registry: Registry;
  /** What /readyz says: undefined when ready. */
  notReadyReason(): string | undefined;
  debugState(): Record<string, unknown>;
  /** Graceful: readiness off, listeners closed, tunnels drain up to the timeout. */
  stop(options?: { immediate?: boolean }): Promise<void>;
}

export async function startFrontend(config: FrontendConfig): Promise<RunningFrontend> {
  const logger = config.logger.child({ frontendId: config.id });
  const wantTcp = config.serverPort > 0 || !config.udsName;
  // Configuration is checked before anything connects, so a bad file or a taken socket fails startup at once.
  const serverTls = wantTcp ? loadServerTls(config, logger) : undefined;
  if (config.udsName && !config.clusterWorker) await prepareSocketPath(config.udsName, logger);
  const subjects = new Subjects(config.subjectPrefix);
  let draining = false;
  let stopped = false;
  const busMetrics = createBusMetrics();
  const metrics = createFrontendMetrics(busMetrics.registry);
  const link = new BusLink();
  const tracing = await startTracing(config.tracing, { role: 'frontend', id: config.id }, logger);
  let node: BusNode | undefined;
  let dialer: BusDialer | undefined;
  let door: ServingDoor | undefined;
  const liveAgents = () => node?.presence.count('agent', { excludeDraining: true }) ?? 0;
  metrics.watchReadyBackends(() => {
    const agents = (node?.presence.snapshot() ?? []).filter(
      (p) => p.info.role === 'agent' && !p.info.draining,
    );
    return {
      default: agents.length,
      defaultRoute: agents.filter((p) => /(^|&)default-route=true(&|$)/.test(p.info.identifiers)).length,
      destHost: agents.filter((p) => p.info.identifiers !== '').length,
    };
  });
  const debugState = () => ({
    id: config.id,
    role: 'frontend',
    bus: link.notReadyReason() ?? 'ok',
    tunnels: node?.host.size ?? 0,
    blockedTunnels: node?.host.blockedCount ?? 0,
    grpcStreams: config.mode === 'grpc' ? (door?.clients() ?? 0) : 0,
    httpConnections: config.mode === 'http-connect' ? (door?.clients() ?? 0) : 0,
    tlsReloads: serverTls?.reloads ?? 0,
    pendingDials: dialer?.pendingDials ?? 0,
    maxBuffered: node?.host.maxBuffered() ?? 0,
    receiveBudgetInUse: node?.host.budget.inUse ?? 0,
    agents: node?.presence.count('agent') ?? 0,
    /** Agents routing may choose: not draining (an agent says so until it reads its dial subject). */
    agentsTakingDials: liveAgents(),
    incompatiblePeers: node?.presence.incompatibleCount ?? 0,
    rejectedHeartbeats: node?.presence.rejectedHeartbeats ?? 0,
    draining,
    activeHandles: activeResources(),
  });
  let uds: UdsListener | undefined;
  let tcpPort: number | undefined;
  let endpoints: Endpoints;
  let notReadyReason: () => string | undefined;
  try {
    ({ node, endpoints, notReadyReason } = await startBusNode(
      {
        role: 'frontend',
        id: config.id,
        nats: config.nats,
        subjects,
        credit: config.credit,
        timing: config.timing,
        presence: config.presence,
        logger,
        identifiers: '',
        proxyStrategies: config.proxyStrategies.join(','),
        isDraining: () => draining,
        metrics: busMetrics,
        link,
        needs: (nc) => frontendNeeds(nc, subjects, config.id),
        tracing,
      },
      config,
      {
        portFlags: { health: 'health-port', admin: 'admin-port' },
        serve: !config.clusterWorker,
        debugState,
        roleNotReady: () => {
          if (!door) return 'starting';
          if (liveAgents() === 0) return 'no agent known on the bus';
          return undefined;
        },
      },
    ));
  } catch (err) {
    serverTls?.stop();
    throw err;
  }
  const { nc, host: tunnelHost, presence } = node;
  const busNode = node;

  const routes = new FleetRoutes(
    presence,
    Math.random,
    (agentId) => tunnelHost.peerTunnels(agentId) + (dialer?.pendingWith(agentId) ?? 0),
  );
  dialer = new BusDialer({
    nc,
    host: tunnelHost,
    subjects,
    frontendId: config.id,
    strategies: config.proxyStrategies,
    agentsFor: (strategy, host) => routes.agentsFor(strategy, host),
    dialTimeoutMs: config.backendDialTimeoutMs,
    acceptTimeoutMs: config.dialAcceptTimeoutMs,
    maxPendingDials: config.maxPendingDials,
    busUnavailable: () => link.unavailableReason(),
    logger,
    onAgentUsed: (agentId) => presence.touch(agentId, 'agent'),
    onBadReply: () => metrics.refusedDialAnswers.inc(),
    onAgentOutcome: (agentId, outcome) => routes.record(agentId, outcome),
    tracing,
  });

  // The fleet answers our presence query within a round trip: dials that came before would find no agent.
  await presence.untilKnown('agent', FIRST_PRESENCE_WAIT_MS);
  const doorDeps: DoorDeps = { dialer, metrics, logger, config, accepting: () => !draining };
  const servingDoor = config.mode === 'grpc' ? grpcDoor(doorDeps) : connectDoor(doorDeps);
  try {
    if (config.udsName) {
      uds = await listenUds(servingDoor, config, logger).catch((err: Error) => {
        throw new KnatsError(
          ErrorCode.BadConfig,
          `--uds-name ${config.udsName}: cannot listen: ${err.message}`,
        );
      });
    }
    if (wantTcp) {
      tcpPort = await servingDoor
        .listenTcp(config.serverBindAddress, config.serverPort, serverTls!)
        .catch((err: Error) => {
          throw new KnatsError(
            ErrorCode.BadConfig,
            `--server-port ${config.serverPort} (--server-bind-address ${config.serverBindAddress}): cannot listen: ${err.message}`,
          );
        });
      serverTls!.watch();
      logger.info(
        {
          address: config.serverBindAddress,
          port: tcpPort,
          mode: config.mode,
          tlsMinVersion: config.tlsMinVersion,
        },
        'listening on TCP with mTLS',
      );
    }
  } catch (err) {
    await servingDoor.forceClose('frontend failed to start');
    serverTls?.stop();
    uds?.remove();
    await leaveBus(busNode, Date.now(), 'frontend failed to start');
    await endpoints.close();
    throw err;
  }
  door = servingDoor;
  logger.info({ uds: config.udsName, tcpPort, mode: config.mode, version: VERSION }, 'frontend ready');

  return {
    id: config.id,
    tcpPort,
    healthPort: endpoints.healthPort,
    adminPort: endpoints.adminPort,
    nc,
    tls: serverTls,
    registry: busMetrics.registry,
    notReadyReason,
    debugState,
    async stop({ immediate = false } = {}) {
      if (stopped) return;
      stopped = true;
      draining = true;
      presence.beat();
      logger.info({ tunnels: tunnelHost.size, immediate }, 'frontend stopping');
      const deadline = Date.now() + (immediate ? 0 : config.gracefulShutdownTimeoutMs);
      // Listeners close at once; open clients get until the deadline to finish.
      const clientsDone = servingDoor.drain();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        clientsDone,
        new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now())))),
      ]);
      clearTimeout(timer);
      await servingDoor.forceClose('frontend stopping');
      await leaveBus(busNode, Date.now(), 'frontend stopping');
      serverTls?.stop();
      await endpoints.close();
      uds?.remove();
      await tracing.shutdown();
      logger.info('frontend stopped');
    },
  };
}

function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}

/**
 * How long a starting frontend waits for its first agent before it opens its
 * doors: agents answer the presence query at once, so a fleet with agents is
 * known in a few milliseconds; a fleet without any costs this much start time.
 */
const FIRST_PRESENCE_WAIT_MS = 500;
