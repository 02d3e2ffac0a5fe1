/**
 * The HTTP endpoints both components serve: /healthz (the process runs),
 * /readyz (it can do its job now), /metrics (Prometheus) and, on the admin
 * port only, /debug/state (live counts of tunnels, timers and sockets, for
 * operators and leak tests).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { ErrorCode, KnatsError } from './errors.js';
import type { Logger } from './logging.js';

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
}

export interface HealthServer {
  readonly port: number;
  close(): Promise<void>;
}

export async function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
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
      case '/readyz': {
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
