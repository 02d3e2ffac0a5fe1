/**
 * The HTTP endpoints both components serve: /healthz (the process runs),
 * /readyz and /ready (it can do its job now), /metrics (Prometheus) and, on the admin
 * port only, /debug/state (live counts of tunnels, timers and sockets, for
 * operators and leak tests) and, with --enable-profiling, /debug/pprof/profile
 * and /debug/pprof/heap (upstream's pprof paths; Node's profile formats).
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { ErrorCode, KnatsError } from '../errors.js';
import type { Logger } from '../logging.js';
import { cpuProfileRunning, heapSnapshot, takeCpuProfile } from './profiler.js';

/** pprof's default CPU profile length, and our cap (a request holds its connection that long). */
const DEFAULT_PROFILE_SECONDS = 30;
const MAX_PROFILE_SECONDS = 300;

export interface HealthServerOptions {
  /** Empty: all interfaces. */
  readonly host: string;
  /** 0 picks a free port; the chosen one is logged and returned. */
  readonly port: number;
  /** The flag that set host and port, named in a start-up error. */
  readonly flag: string;
  readonly registry: Registry;
  readonly logger: Logger;
  /** undefined when ready, else the reason it is not. */
  readonly notReadyReason: () => string | undefined;
  /** Served as /debug/state when given (the admin port). */
  readonly debugState?: () => Record<string, unknown>;
  /** Serve /debug/pprof/profile and /debug/pprof/heap (--enable-profiling, admin port). */
  readonly profiling?: boolean;
}

type Send = (status: number, body: string, type?: string) => void;

function serveCpuProfile(query: URLSearchParams, send: Send, logger: Logger): void {
  const seconds = Number(query.get('seconds') ?? DEFAULT_PROFILE_SECONDS);
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > MAX_PROFILE_SECONDS) {
    send(400, `seconds: a number in (0, ${MAX_PROFILE_SECONDS}]\n`);
    return;
  }
  if (cpuProfileRunning()) {
    send(409, 'a CPU profile is already being taken\n');
    return;
  }
  logger.info({ seconds }, 'CPU profile started');
  takeCpuProfile(seconds * 1000).then(
    (profile) => send(200, profile, 'application/json'),
    (err: Error) => send(500, `CPU profile failed: ${err.message}\n`),
  );
}

function serveHeapSnapshot(res: ServerResponse, logger: Logger): void {
  logger.info('heap snapshot taken');
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-disposition': 'attachment; filename="knats.heapsnapshot"',
    'cache-control': 'no-store',
  });
  heapSnapshot().pipe(res);
}

export interface HealthServer {
  readonly port: number;
  close(): Promise<void>;
}

export async function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    const send = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      send(405, 'method not allowed\n');
      return;
    }
    switch (path) {
      case '/healthz':
        send(200, 'ok\n');
        return;
      case '/readyz':
      case '/ready': {
        // /ready: upstream's proxy-server and proxy-agent serve readiness under both names.
        const reason = options.notReadyReason();
        if (reason) send(503, `not ready: ${reason}\n`);
        else send(200, 'ok\n');
        return;
      }
      case '/metrics':
        options.registry.metrics().then(
          (text) => send(200, text, options.registry.contentType),
          (err: Error) => send(500, `metrics failed: ${err.message}\n`),
        );
        return;
      case '/debug/state':
        if (options.debugState) send(200, `${JSON.stringify(options.debugState())}\n`, 'application/json');
        else send(404, 'not found (served on the admin port)\n');
        return;
      case '/debug/pprof/profile':
      case '/debug/pprof/heap':
        if (!options.profiling) send(404, 'not found (--enable-profiling serves it on the admin port)\n');
        else if (path === '/debug/pprof/heap') serveHeapSnapshot(res, options.logger);
        else serveCpuProfile(url.searchParams, send, options.logger);
        return;
      default:
        send(404, 'not found\n');
    }
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const where = options.host
        ? `${options.host}:${options.port}`
        : `port ${options.port} on all interfaces`;
      const why = err.code === 'EADDRINUSE' ? 'address already in use' : (err.code ?? err.message);
      reject(
        new KnatsError(
          ErrorCode.BadConfig,
          `--${options.flag} ${options.port}: cannot listen on ${where}: ${why}`,
        ),
      );
    });
    server.listen(options.port, options.host || undefined, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  options.logger.info({ host: options.host, port }, 'health server listening');
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
