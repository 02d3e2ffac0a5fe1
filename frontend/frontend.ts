/**
 * A frontend replica: accepts kube-apiserver's dials on its front door and
 * turns each into a tunnel over the bus. Stateless: it holds only the tunnels
 * it serves now and learns the fleet from presence heartbeats.
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { createServer as createNetServer, type Server as NetServer, connect as netConnect } from 'node:net';
import { dirname } from 'node:path';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { Server, ServerCredentials } from '@grpc/grpc-js';
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
import { ConnectDoor } from './connect-door.js';
import {
  addProxyService,
  GrpcReceiveBudget,
  guardGrpcHandshakes,
  HTTP2_RECEIVE_WINDOW,
  type ProxyStream,
  widenHttp2Windows,
} from './grpc-door.js';
import { createFrontendMetrics, type FrontendMetrics } from './metrics.js';
import { FleetRoutes, type ProxyStrategy } from './router.js';
import { HandshakeGuard, ServerTls, type TlsMinVersion } from './tls.js';

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

// ---- front doors ------------------------------------------------------------

interface DoorDeps {
  readonly dialer: BusDialer;
  readonly metrics: FrontendMetrics;
  readonly logger: Logger;
  readonly config: FrontendConfig;
  readonly accepting: () => boolean;
}

/**
 * How long a starting frontend waits for its first agent before it opens its
 * doors: agents answer the presence query at once, so a fleet with agents is
 * known in a few milliseconds; a fleet without any costs this much start time.
 */
const FIRST_PRESENCE_WAIT_MS = 500;

/** A front door's listeners, whatever its protocol: the frontend wires and stops them alike. */
interface ServingDoor {
  /** Open client streams (gRPC) or connections (HTTP CONNECT). */
  clients(): number;
  /** Binds a Unix socket at `path` (the path was prepared; the caller sets its mode). */
  listenUds(path: string): Promise<void>;
  /** Binds the mTLS TCP listener; resolves with the port. */
  listenTcp(host: string, port: number, tls: ServerTls): Promise<number>;
  /** Stops accepting; resolves once every client is gone. */
  drain(): Promise<void>;
  /** Ends every client now and closes the listeners. */
  forceClose(why: string): Promise<void>;
}

/**
 * Largest Packet the gRPC door takes or sends: grpc-go's default, so upstream's
 * proxy-server's limit too. grpc-js buffers a message until it is complete,
 * so this bounds each stream's memory; a larger length prefix ends the
 * stream (RESOURCE_EXHAUSTED) before a byte of it is buffered. kube-apiserver
 * sends one DATA per write of its connection: TLS records (16 KiB) or copy
 * buffers (32 KiB), far below it.
 */
const GRPC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
/**
 * Streams per HTTP/2 connection (upstream: unlimited). kube-apiserver opens
 * one connection per tunnel, konnectivity-client's reusable tunnel one stream
 * per tunnel on a shared connection; a client beyond the limit waits for a
 * stream to end.
 */
const GRPC_MAX_CONCURRENT_STREAMS = 1000;
/**
 * Node's per-connection HTTP/2 memory cap in MB (stream state, header tables,
 * queued output), which grpc-js turns off by default; beyond it new streams
 * are refused. Output toward a slow client is already bounded by the receive
 * budget and each tunnel's minimum window, so legitimate connections stay well below it.
 */
const GRPC_MAX_SESSION_MEMORY_MB = 256;

/** A door's TLS handshake guard, reporting to the frontend's metrics and log. */
function handshakeGuard(
  door: 'grpc' | 'connect',
  metrics: FrontendMetrics,
  logger: Logger,
  timeoutMs?: number,
) {
  return new HandshakeGuard({
    door,
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    logger: logger.child({ door: door === 'connect' ? 'http-connect' : 'grpc' }),
    pendingGauge: metrics.tlsHandshakesPending.labels(door),
    refused: (reason) => metrics.streamErrors.labels('from_client', reason).inc(),
  });
}

function grpcDoor({ dialer, metrics, logger, config, accepting }: DoorDeps): ServingDoor {
  const streams = new Set<ProxyStream>();
  const guard = handshakeGuard('grpc', metrics, logger);
  const buffered = metrics.doorBufferedBytes.labels('grpc');
  const budget = new GrpcReceiveBudget({ onChange: (used) => buffered.set(used) });
  metrics.doorBufferLimitBytes.labels('grpc').set(budget.process.limit);
  const server = new Server({
    'grpc.max_receive_message_length': GRPC_MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': GRPC_MAX_MESSAGE_BYTES,
    'grpc.max_concurrent_streams': GRPC_MAX_CONCURRENT_STREAMS,
    'grpc-node.max_session_memory': GRPC_MAX_SESSION_MEMORY_MB,
    'grpc.keepalive_time_ms': config.grpcKeepaliveMs ?? 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
  });
  addProxyService(
    server,
    {
      dialer,
      metrics,
      logger,
      maxPendingDialsPerStream: config.maxPendingDialsPerStream,
      dialResponseSettleMs: config.dialResponseSettleMs,
      accepting,
      budget,
    },
    streams,
  );
  const bind = (address: string, credentials: ServerCredentials) =>
    new Promise<number>((resolve, reject) => {
      server.bindAsync(address, credentials, (err, port) => {
        // grpc-js says `No address added out of total 1 resolved errors: [listen EADDRINUSE: ...]`: keep the cause.
        if (err) reject(new Error(/errors: \[(.*)\]$/.exec(err.message)?.[1] ?? err.message));
        else {
          widenHttp2Windows(server, HTTP2_RECEIVE_WINDOW, logger);
          guardGrpcHandshakes(server, guard, logger);
          resolve(port);
        }
      });
    });
  return {
    clients: () => streams.size,
    listenUds: async (path) => {
      await bind(`unix:${path}`, ServerCredentials.createInsecure());
    },
    listenTcp: (host, port, tls) =>
      bind(host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, tls.grpcCredentials()),
    // tryShutdown closes the listeners at once and completes when the open calls have ended.
    drain: () => {
      guard.closeAll();
      return new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    },
    forceClose: async (why) => {
      for (const stream of [...streams]) stream.shutdown(why);
      guard.closeAll();
      server.forceShutdown();
    },
  };
}

function connectDoor({ dialer, metrics, logger, config, accepting }: DoorDeps): ServingDoor {
  const door = new ConnectDoor({
    dialer,
    metrics,
    logger,
    accepting,
    headerTimeoutMs: config.headerTimeoutMs,
    maxHeaderBytes: config.maxHeaderBytes,
  });
  const guard = handshakeGuard('connect', metrics, logger, door.headerTimeoutMs);
  const servers: (NetServer | TlsServer)[] = [];
  const closeServers = () =>
    Promise.all(
      servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            if (!server.listening) resolve();
            else server.close(() => resolve());
          }),
      ),
    );
  return {
    clients: () => door.size,
    listenUds: async (path) => {
      const server = createNetServer({ allowHalfOpen: true }, (socket) => door.accept(socket));
      servers.push(server);
      await listen(server, { path }, path);
    },
    listenTcp: async (host, port, tls) => {
      const server = createTlsServer(
        {
          ...tls.serverOptions(),
          // HTTP/1.1 only: a client that insists on h2 is refused in the handshake.
          ALPNProtocols: ['http/1.1'],
          handshakeTimeout: door.headerTimeoutMs,
          // Not until the handshake is done (acceptTls allows it then): a client leaving mid-handshake is closed.
          allowHalfOpen: false,
        },
        (socket) => door.acceptTls(socket),
      );
      servers.push(server);
      tls.onChange((options) => server.setSecureContext(options));
      // Failed, timed-out and excess handshakes close their sockets (Node leaves that to us).
      guard.attach(server);
      await listen(server, { host, port }, `${host}:${port}`);
      const address = server.address();
      return typeof address === 'object' && address ? address.port : port;
    },
    drain: async () => {
      const closed = closeServers();
      // Connections still in their TLS handshake would hold the listener open until they time out.
      guard.closeAll();
      await door.idle();
      await closed;
    },
    forceClose: async (why) => {
      const closed = closeServers();
      guard.closeAll();
      door.shutdown(why);
      await closed;
    },
  };
}

function listen(server: NetServer, options: { path?: string; host?: string; port?: number }, what: string) {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) =>
      reject(new Error(`listen ${err.code ?? err.message} ${what}`));
    server.once('error', onError);
    server.listen(options, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function loadServerTls(config: FrontendConfig, logger: Logger): ServerTls {
  if (!config.serverCert || !config.serverKey || !config.serverCaCert) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      '--server-port needs --server-cert, --server-key and --server-ca-cert: TCP frontends require client certificates',
    );
  }
  return new ServerTls(
    {
      certFile: config.serverCert,
      keyFile: config.serverKey,
      caFile: config.serverCaCert,
      minVersion: config.tlsMinVersion ?? 'TLSv1.2',
      ciphers: config.cipherSuites,
      pollIntervalMs: config.certPollIntervalMs,
    },
    logger,
  );
}

// ---- Unix socket hygiene ----------------------------------------------------

export interface UdsListener {
  /** Removes the socket file, unless another process has replaced it meanwhile. */
  remove(): void;
}

/**
 * Binds the door on --uds-name (prepareSocketPath cleared the way), the
 * socket is created with no more than --uds-mode (umask during bind) and then
 * set to exactly that mode, and only our own socket file is removed at stop.
 */
async function listenUds(door: ServingDoor, config: FrontendConfig, logger: Logger): Promise<UdsListener> {
  const path = config.udsName!;
  if (config.clusterWorker) {
    await door.listenUds(path);
    return { remove() {} };
  }
  await withUmask(0o777 & ~config.udsMode, () => door.listenUds(path));
  const listener = ownSocketFile(path, config.udsMode);
  logger.info({ uds: path, mode: config.udsMode.toString(8), door: config.mode }, 'listening on unix socket');
  return listener;
}

/** Sets the bound socket file's mode; `remove` deletes that file only, not a successor at the same path. */
export function ownSocketFile(path: string, mode: number): UdsListener {
  chmodSync(path, mode);
  const inode = lstatSync(path).ino;
  return {
    remove() {
      try {
        const stat = lstatSync(path);
        if (stat.isSocket() && stat.ino === inode) unlinkSync(path);
      } catch {
        // gone already
      }
    },
  };
}

/** sun_path holds 108 bytes on Linux (104 on macOS), one of them the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 107 : 103;

/**
 * Makes `path` free for a new socket. A non-socket file is never deleted, and
 * neither is a socket something still answers on (another frontend would lose
 * its clients while still reporting ready): the start fails, naming what
 * answered. A dead socket (left by a crash) is always replaced, whatever
 * --delete-existing-uds-file says (accepted for upstream compatibility).
 */
export async function prepareSocketPath(path: string, logger: Logger): Promise<void> {
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--uds-name ${path}: ${bytes} bytes, over the ${MAX_SOCKET_PATH_BYTES}-byte limit of a Unix socket path; use a shorter path`,
    );
  }
  let stat: ReturnType<typeof lstatSync>;
  try {
    stat = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      try {
        lstatSync(dirname(path));
      } catch {
        throw new KnatsError(
          ErrorCode.BadConfig,
          `--uds-name ${path}: directory ${dirname(path)} does not exist`,
        );
      }
      return;
    }
    throw new KnatsError(ErrorCode.BadConfig, `--uds-name ${path}: ${(err as Error).message}`);
  }
  if (!stat.isSocket()) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--uds-name ${path} exists and is not a socket; refusing to delete it`,
    );
  }
  const state = await probeSocket(path);
  if (state !== 'stale') {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--uds-name ${path}: another process listens on it (${state}); refusing to take over a live socket (stop that process or choose another path)`,
    );
  }
  unlinkSync(path);
  logger.info({ uds: path }, 'removed a stale socket file');
}

/**
 * Whether a process still accepts connections on a socket file, and if so
 * what it seems to be: an HTTP/2 server (a gRPC frontend) sends its SETTINGS
 * frame at once, an HTTP/1.1 server (a CONNECT frontend) answers a request
 * line. A socket that accepts is live even if it says nothing.
 */
function probeSocket(path: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = netConnect({ path });
    let received = Buffer.alloc(0);
    let connected = false;
    const done = (state: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(state);
    };
    const describe = () => {
      // An HTTP/2 frame header: 3 bytes length, type 4 (SETTINGS) or 7 (GOAWAY).
      if (received.length >= 4 && (received[3] === 4 || received[3] === 7))
        return 'an HTTP/2 server (a gRPC frontend?)';
      if (received.subarray(0, 5).toString('latin1') === 'HTTP/')
        return 'an HTTP/1.1 server (an HTTP CONNECT frontend?)';
      return 'a process that accepts connections';
    };
    const timer = setTimeout(() => done(connected ? describe() : 'a process (connect did not finish)'), 500);
    socket.once('connect', () => {
      connected = true;
      socket.write('OPTIONS * HTTP/1.1\r\nHost: probe\r\n\r\n');
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 5) done(describe());
    });
    socket.once('close', () => {
      if (connected) done(describe());
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (connected) done(describe());
      else if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') done('stale');
      else done(`a process (connect failed: ${err.code})`);
    });
  });
}

/** Runs `bind` with a restrictive umask so the socket is never created wider than wanted. */
async function withUmask<T>(mask: number, bind: () => Promise<T>): Promise<T> {
  let previous: number | undefined;
  try {
    previous = process.umask(mask);
  } catch {
    // worker threads cannot change the umask: chmod afterwards still applies
  }
  try {
    return await bind();
  } finally {
    if (previous !== undefined) process.umask(previous);
  }
}
