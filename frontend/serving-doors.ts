/**
 * A frontend's front door as the frontend wires it: the gRPC door or the
 * HTTP CONNECT door behind one ServingDoor interface (listeners, open
 * clients, stop), each with its TLS handshake guard and server limits.
 */
import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { Logger } from '../broker/logging.js';
import type { BusDialer } from './bus-dialer.js';
import { ConnectDoor } from './connect-door.js';
import type { FrontendConfig } from './frontend.js';
import {
  addProxyService,
  GrpcReceiveBudget,
  guardGrpcHandshakes,
  HTTP2_RECEIVE_WINDOW,
  type ProxyStream,
  widenHttp2Windows,
} from './grpc-door.js';
import type { FrontendMetrics } from './metrics.js';
import { HandshakeGuard, ServerTls } from './tls.js';

export interface DoorDeps {
  readonly dialer: BusDialer;
  readonly metrics: FrontendMetrics;
  readonly logger: Logger;
  readonly config: FrontendConfig;
  readonly accepting: () => boolean;
}

/** A front door's listeners, whatever its protocol: the frontend wires and stops them alike. */
export interface ServingDoor {
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

export function grpcDoor({ dialer, metrics, logger, config, accepting }: DoorDeps): ServingDoor {
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

export function connectDoor({ dialer, metrics, logger, config, accepting }: DoorDeps): ServingDoor {
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

export function listen(
  server: NetServer,
  options: { path?: string; host?: string; port?: number },
  what: string,
) {
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

export function loadServerTls(config: FrontendConfig, logger: Logger): ServerTls {
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
