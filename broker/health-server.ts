/**
 * The health port both components serve: /healthz (the process runs),
 * /readyz (it can do its job now), /metrics (Prometheus) and /debug/state
 * (live counts of tunnels, timers and sockets, for operators and leak tests).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from './logging.js';

export interface HealthServerOptions {
  /** Empty: all interfaces. */
  readonly host: string;
  /** 0 picks a free port; the chosen one is logged and returned. */
  readonly port: number;
  readonly registry: Registry;
  readonly logger: Logger;
  /** undefined when ready, else the reason it is not. */
  readonly notReadyReason: () => string | undefined;
  readonly debugState: () => Record<string, unknown>;
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
        send(200, `${JSON.stringify(options.debugState())}\n`, 'application/json');
        return;
      default:
        send(404, 'not found\n');
    }
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host || undefined, () => {
      server.off('error', reject);
      resolve();
    });
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
