/**
 * NATS connection options and link status, shared by every component.
 */
import { readFileSync, statSync } from 'node:fs';
import {
  type Authenticator,
  connect,
  credsAuthenticator,
  errors,
  type NatsConnection,
  type NodeConnectionOptions,
  nkeyAuthenticator,
} from '@nats-io/transport-node';
import { ErrorCode, KnatsError } from '../errors.js';
import type { Logger } from '../logging.js';
import { assertReadableFile } from '../readable-file.js';
import { redactUserinfo } from '../redact.js';
import { installVectoredFlush } from './nats-internals.js';

export interface NatsSettings {
  readonly servers: readonly string[];
  readonly user?: string;
  readonly password?: string;
  /** A file holding the password (--nats-password-file): kept out of argv and the environment. */
  readonly passwordFile?: string;
  readonly token?: string;
  /** A file holding the token (--nats-token-file). */
  readonly tokenFile?: string;
  /** A .creds file (JWT + nkey seed). */
  readonly credsFile?: string;
  /** A file holding an nkey seed (SU...). */
  readonly nkeyFile?: string;
  readonly tlsCaFile?: string;
  readonly tlsCertFile?: string;
  readonly tlsKeyFile?: string;
  /** Where request replies arrive (nats.js `inboxPrefix`); set by the bus node, not a flag. */
  readonly inboxPrefix?: string;
  /** How often the NATS connection is pinged; default DEFAULT_PING_INTERVAL_MS. */
  readonly pingIntervalMs?: number;
}

/** Fail over fast: with two pings outstanding allowed, a dead server is noticed within ~2 intervals. */
export const DEFAULT_PING_INTERVAL_MS = 5000;

export interface LinkEvents {
  /** The first connection is up (the link then reports reconnects). */
  connected?(): void;
  disconnected?(): void;
  reconnected?(): void;
  /** Every connection failure and every error the server sends (a permission violation, for one), by kind. */
  error?(kind: BusErrorKind, err: unknown): void;
}

/** Why a connection attempt failed or what the server complained about; the label of knats_bus_errors_total. */
export type BusErrorKind =
  | 'dns'
  | 'refused'
  | 'unreachable'
  | 'timeout'
  | 'tls'
  | 'authentication'
  | 'authorization'
  | 'slow_consumer'
  | 'other';

export function busErrorKind(err: unknown): BusErrorKind {
  if (err instanceof errors.PermissionViolationError) return 'authorization';
  if (err instanceof errors.AuthorizationError || err instanceof errors.UserAuthenticationExpiredError) {
    return 'authentication';
  }
  if (err instanceof errors.TimeoutError) return 'timeout';
  const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
  const code = e?.code ?? e?.cause?.code ?? '';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_NONAME') return 'dns';
  if (code === 'ECONNREFUSED' || code === 'ECONNRESET') return 'refused';
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return 'unreachable';
  if (code === 'ETIMEDOUT') return 'timeout';
  const message = `${e?.message ?? ''} ${e?.cause?.message ?? ''}`;
  if (/tls|certificate|self[- ]signed|SSL/i.test(message) || /^(ERR_TLS|ERR_SSL|CERT_)/.test(code))
    return 'tls';
  if (/timeout/i.test(message)) return 'timeout';
  return 'other';
}

/** One line about an error, with the cause's text (nats.js wraps socket errors) and no secrets. */
function describe(err: unknown): string {
  const e = err as Error & { cause?: Error };
  const text =
    e?.cause?.message && e.cause.message !== e.message ? `${e.message} (${e.cause.message})` : e?.message;
  return redactUserinfo(text ?? String(err));
}

/**
 * The link as /readyz and the front doors see it: up, or down with a one-line
 * reason. It turns down the moment nats.js reports a disconnect, so readiness
 * and dials follow the server within a second, not after missed heartbeats.
 * Readiness also needs the role's permissions (see bus-permissions.ts).
 */
export class BusLink {
  private down: string | undefined = 'connecting to NATS';
  private refused: string | undefined = 'NATS permissions not checked yet';

  /** undefined while connected; else why not, in one line. Dials fail with this. */
  unavailableReason(): string | undefined {
    return this.down;
  }

  /** undefined when connected and permitted; else the /readyz reason. */
  notReadyReason(): string | undefined {
    return this.down ?? this.refused;
  }

  markUp(): void {
    this.down = undefined;
  }

  markDown(reason: string): void {
    this.down = reason;
  }

  markRefused(reason: string): void {
    this.refused = reason;
  }

  markPermitted(): void {
    this.refused = undefined;
  }

  /** False until the start-up check passed (which logs its refusals in one line). */
  permitted(): boolean {
    return this.refused === undefined;
  }
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

/** A secret file's content without the trailing newline editors add. */
function readSecret(file: string): string {
  return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
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
    // Credentials may be fixed on the server (reload) while we retry: keep trying.
    ignoreAuthErrorAbort: true,
    pingInterval: settings.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
    maxPingOut: 2,
    waitOnFirstConnect: waitForFirstConnect,
    // A stack trace captured for every request (every dial) is measurable on the dial path.
    noAsyncTraces: true,
    timeout: 5000,
  };
  if (settings.user !== undefined) options.user = settings.user;
  if (settings.password !== undefined) options.pass = settings.password;
  if (settings.passwordFile !== undefined) options.pass = readSecret(settings.passwordFile);
  if (settings.token !== undefined) options.token = settings.token;
  if (settings.tokenFile !== undefined) options.token = readSecret(settings.tokenFile);
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
 * Checks the files the settings name before anything connects: each must be
 * readable (else a BadConfig error naming the flag and the path), and a
 * secret (seed, creds, password, token) that group or others may read is
 * warned about in one line (code KNATS_SECRET_FILE_MODE): a seed is a password.
 * Done when connecting rather than when parsing flags, so configurations can
 * be validated on machines without the mounted files.
 */
export function checkSettingsFiles(settings: NatsSettings, logger: Logger): void {
  const secrets: [string, string | undefined][] = [
    ['--nats-creds', settings.credsFile],
    ['--nats-nkey', settings.nkeyFile],
    ['--nats-password-file', settings.passwordFile],
    ['--nats-token-file', settings.tokenFile],
  ];
  const others: [string, string | undefined][] = [
    ['--nats-tls-ca', settings.tlsCaFile],
    ['--nats-tls-cert', settings.tlsCertFile],
    ['--nats-tls-key', settings.tlsKeyFile],
  ];
  for (const [flag, file] of [...secrets, ...others]) if (file !== undefined) assertReadableFile(flag, file);
  for (const [flag, file] of secrets) {
    if (file === undefined) continue;
    const mode = statSync(file).mode & 0o777;
    if (mode & 0o077) {
      logger.warn(
        { code: ErrorCode.SecretFileMode, flag, file, mode: mode.toString(8).padStart(4, '0') },
        `${flag} ${file} is readable by group or others; chmod 600 it`,
      );
    }
  }
}

/** Logs a reason once, and again only after `windowMs` (a flapping link or a repeating error says it once a minute). */
class OncePerReason {
  private readonly seen = new Map<string, number>();
  constructor(private readonly windowMs: number) {}
  first(reason: string): boolean {
    const now = Date.now();
    const last = this.seen.get(reason);
    if (last !== undefined && now - last < this.windowMs) return false;
    if (this.seen.size > 1000) this.seen.clear();
    this.seen.set(reason, now);
    return true;
  }
}

export interface LinkWatch {
  /** Kept up to date from the first attempt on. */
  readonly link?: BusLink;
  /** Stops retrying the first connection (the process is stopping). */
  readonly signal?: AbortSignal;
}

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 2000;
const LOG_REPEAT_MS = 60_000;

/**
 * Connects and watches the link. Until the first connection, each attempt's
 * failure is logged once per distinct reason (DNS, refused, TLS,
 * authentication, ...) with the servers tried; afterwards disconnects and
 * reconnects are logged and reported, because each one may have cost frames
 * (see TunnelHost.onReconnect). No line carries a stack trace or a password.
 * `waitForFirstConnect`: daemons retry until NATS is up (pods start in any
 * order); one-shot commands fail at once.
 */
export async function connectBus(
  settings: NatsSettings,
  name: string,
  logger: Logger,
  events: LinkEvents = {},
  waitForFirstConnect = true,
  { link = new BusLink(), signal }: LinkWatch = {},
): Promise<NatsConnection> {
  checkSettingsFiles(settings, logger);
  const servers = settings.servers.map(redactUserinfo).join(',');
  const once = new OncePerReason(LOG_REPEAT_MS);
  let nc: NatsConnection | undefined;
  for (let delay = RETRY_MIN_MS; !nc; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
    try {
      // One pass over the servers per attempt, so each failure is seen (and logged) here.
      nc = await connect(connectionOptions(settings, name, false));
    } catch (err) {
      const kind = busErrorKind(err);
      const reason = `${kind}: ${describe(err)}`;
      events.error?.(kind, err);
      link.markDown(`cannot connect to NATS at ${servers} (${reason})`);
      if (!waitForFirstConnect) {
        throw new KnatsError(ErrorCode.BusUnavailable, `cannot connect to NATS at ${servers}: ${reason}`, {
          cause: err,
        });
      }
      if (once.first(reason)) {
        logger.error(
          { code: ErrorCode.BusUnavailable, kind, servers, reason: describe(err) },
          'cannot connect to NATS; retrying',
        );
      }
      await new Promise((r) => setTimeout(r, delay + Math.random() * 100));
      if (signal?.aborted) throw new KnatsError(ErrorCode.ShuttingDown, 'stopped before NATS connected');
    }
  }
  const connection = nc;
  if (!installVectoredFlush(connection)) {
    logger.warn(
      { code: ErrorCode.NatsClientInternals },
      'this nats.js version lacks what the vectored flush relies on: publishing with its own, slower flush',
    );
  }
  link.markUp();
  events.connected?.();
  logger.info({ server: redactUserinfo(connection.getServer()) }, 'connected to NATS');
  void (async () => {
    for await (const status of connection.status()) {
      switch (status.type) {
        case 'disconnect':
          link.markDown(`NATS connection to ${redactUserinfo(status.server)} lost; reconnecting`);
          logger.warn(
            { code: ErrorCode.BusUnavailable, server: redactUserinfo(status.server) },
            'NATS disconnected',
          );
          events.disconnected?.();
          break;
        case 'reconnect':
          link.markUp();
          logger.info({ server: redactUserinfo(status.server) }, 'NATS reconnected');
          events.reconnected?.();
          break;
        case 'error': {
          const kind = busErrorKind(status.error);
          events.error?.(kind, status.error);
          const reason = describe(status.error);
          // The start-up permission check reports its own refusals, all in one line.
          const checking = kind === 'authorization' && !link.permitted();
          if (!checking && once.first(reason)) {
            const code = kind === 'authorization' ? ErrorCode.BusPermission : ErrorCode.BusUnavailable;
            logger.error({ code, kind, reason }, 'NATS error');
          }
          break;
        }
        case 'slowConsumer':
          events.error?.('slow_consumer', status);
          if (once.first(`slow consumer ${status.sub.getSubject()}`)) {
            logger.error(
              { code: ErrorCode.BusUnavailable, subject: status.sub.getSubject(), pending: status.pending },
              'NATS slow consumer',
            );
          }
          break;
        case 'ldm':
          logger.warn({ server: redactUserinfo(status.server) }, 'NATS server entering lame duck mode');
          break;
        case 'close':
          link.markDown('NATS connection closed');
          break;
        default:
          break;
      }
    }
  })();
  return connection;
}
