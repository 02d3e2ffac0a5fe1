/**
 * NATS connection options and link status, shared by every component.
 */
import { readFileSync } from 'node:fs';
import {
  type Authenticator,
  connect,
  credsAuthenticator,
  type NatsConnection,
  type NodeConnectionOptions,
  nkeyAuthenticator,
} from '@nats-io/transport-node';
import { ErrorCode, KnatsError } from './errors.js';
import type { Logger } from './logging.js';

export interface NatsSettings {
  readonly servers: readonly string[];
  readonly user?: string;
  readonly password?: string;
  readonly token?: string;
  /** A .creds file (JWT + nkey seed). */
  readonly credsFile?: string;
  /** A file holding an nkey seed (SU...). */
  readonly nkeyFile?: string;
  readonly tlsCaFile?: string;
  readonly tlsCertFile?: string;
  readonly tlsKeyFile?: string;
  /** Where request replies arrive (nats.js `inboxPrefix`); set by the bus node, not a flag. */
  readonly inboxPrefix?: string;
}

export interface LinkEvents {
  disconnected?(): void;
  reconnected?(): void;
  /** An asynchronous error from the server (a permission violation, for one). */
  error?(err: Error): void;
}

function authenticatorsFor(settings: NatsSettings): Authenticator[] {
  const auth: Authenticator[] = [];
  if (settings.credsFile) auth.push(credsAuthenticator(readFileSync(settings.credsFile)));
  if (settings.nkeyFile) {
    // The authenticator wants the seed's bytes (SU...), not a string.
    auth.push(nkeyAuthenticator(new TextEncoder().encode(readFileSync(settings.nkeyFile, 'utf8').trim())));
  }
  return auth;
}

/**
 * `waitForFirstConnect`: daemons keep trying until NATS is up (pods start in
 * any order); one-shot commands fail fast instead.
 */
export function connectionOptions(
  settings: NatsSettings,
  name: string,
  waitForFirstConnect = true,
): NodeConnectionOptions {
  const options: NodeConnectionOptions = {
    servers: [...settings.servers],
    name,
    // A broker outage is something to ride out, not a reason to exit.
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    reconnectJitter: 100,
    // Fail over fast: a dead server is noticed within ~2 pings.
    pingInterval: 5000,
    maxPingOut: 2,
    waitOnFirstConnect: waitForFirstConnect,
    // A stack trace captured for every request (every dial) is measurable on the dial path.
    noAsyncTraces: true,
    timeout: 5000,
  };
  if (settings.user !== undefined) options.user = settings.user;
  if (settings.password !== undefined) options.pass = settings.password;
  if (settings.token !== undefined) options.token = settings.token;
  if (settings.inboxPrefix !== undefined) options.inboxPrefix = settings.inboxPrefix;
  const authenticators = authenticatorsFor(settings);
  if (authenticators.length) options.authenticator = authenticators;
  if (settings.tlsCaFile || settings.tlsCertFile) {
    options.tls = {};
    if (settings.tlsCaFile) options.tls.caFile = settings.tlsCaFile;
    if (settings.tlsCertFile) options.tls.certFile = settings.tlsCertFile;
    if (settings.tlsKeyFile) options.tls.keyFile = settings.tlsKeyFile;
  }
  return options;
}

/**
 * Connects and watches the link: disconnects and reconnects are logged and
 * reported, because each one may have cost frames (see TunnelHost.onReconnect).
 */
export async function connectBus(
  settings: NatsSettings,
  name: string,
  logger: Logger,
  events: LinkEvents = {},
  waitForFirstConnect = true,
): Promise<NatsConnection> {
  let nc: NatsConnection;
  try {
    nc = await connect(connectionOptions(settings, name, waitForFirstConnect));
  } catch (err) {
    throw new KnatsError(
      ErrorCode.BusLost,
      `cannot connect to NATS at ${settings.servers.join(',')}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  logger.info({ server: nc.getServer() }, 'connected to NATS');
  void (async () => {
    for await (const status of nc.status()) {
      switch (status.type) {
        case 'disconnect':
          logger.warn({ server: status.server }, 'NATS disconnected');
          events.disconnected?.();
          break;
        case 'reconnect':
          logger.info({ server: status.server }, 'NATS reconnected');
          events.reconnected?.();
          break;
        case 'error':
          logger.error({ err: status.error }, 'NATS error');
          events.error?.(status.error);
          break;
        case 'slowConsumer':
          logger.error({ pending: status.pending }, 'NATS slow consumer');
          break;
        default:
          break;
      }
    }
  })();
  return nc;
}
