/**
 * mTLS for the TCP front doors (gRPC and HTTP CONNECT): upstream's flag
 * values (Go names) mapped to Node/OpenSSL options, and the server
 * certificate, key and client CA reloaded from disk when they change, without
 * touching live connections (a new secure context applies to new handshakes
 * only).
 */
import { createHash, X509Certificate } from 'node:crypto';
import { type FSWatcher, readFileSync, watch } from 'node:fs';
import type { Socket } from 'node:net';
import { basename, dirname } from 'node:path';
import {
  createSecureContext,
  DEFAULT_CIPHERS,
  getCiphers,
  type SecureContextOptions,
  type TLSSocket,
  type Server as TlsServer,
} from 'node:tls';
import { ServerCredentials } from '@grpc/grpc-js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { LogThrottle } from '../broker/log-throttle.js';
import type { Logger } from '../broker/logging.js';

export type TlsMinVersion = 'TLSv1.2' | 'TLSv1.3';

/** Upstream's --tls-min-version values (Go constant names). Below TLS 1.2 is refused. */
const MIN_VERSIONS: Readonly<Record<string, TlsMinVersion>> = {
  VersionTLS12: 'TLSv1.2',
  VersionTLS13: 'TLSv1.3',
};

/** Parses an upstream-style --tls-min-version value; throws Error naming the accepted values. */
export function parseTlsMinVersion(value: string): TlsMinVersion {
  const version = MIN_VERSIONS[value];
  if (version) return version;
  if (value === 'VersionTLS10' || value === 'VersionTLS11') {
    throw new Error(`${value} is below the TLS 1.2 minimum; use VersionTLS12 or VersionTLS13`);
  }
  throw new Error(`unknown TLS version ${JSON.stringify(value)}; use VersionTLS12 or VersionTLS13`);
}

/**
 * Go/IANA cipher-suite names (what upstream's --cipher-suites takes, from Go's
 * tls.CipherSuites() and tls.InsecureCipherSuites()) -> OpenSSL names.
 */
const GO_TO_OPENSSL: Readonly<Record<string, string>> = {
  TLS_RSA_WITH_AES_128_CBC_SHA: 'AES128-SHA',
  TLS_RSA_WITH_AES_256_CBC_SHA: 'AES256-SHA',
  TLS_RSA_WITH_AES_128_CBC_SHA256: 'AES128-SHA256',
  TLS_RSA_WITH_AES_128_GCM_SHA256: 'AES128-GCM-SHA256',
  TLS_RSA_WITH_AES_256_GCM_SHA384: 'AES256-GCM-SHA384',
  TLS_RSA_WITH_3DES_EDE_CBC_SHA: 'DES-CBC3-SHA',
  TLS_RSA_WITH_RC4_128_SHA: 'RC4-SHA',
  TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA: 'ECDHE-ECDSA-AES128-SHA',
  TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA: 'ECDHE-ECDSA-AES256-SHA',
  TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256: 'ECDHE-ECDSA-AES128-SHA256',
  TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: 'ECDHE-ECDSA-AES128-GCM-SHA256',
  TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: 'ECDHE-ECDSA-AES256-GCM-SHA384',
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: 'ECDHE-ECDSA-CHACHA20-POLY1305',
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305: 'ECDHE-ECDSA-CHACHA20-POLY1305',
  TLS_ECDHE_ECDSA_WITH_RC4_128_SHA: 'ECDHE-ECDSA-RC4-SHA',
  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA: 'ECDHE-RSA-AES128-SHA',
  TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA: 'ECDHE-RSA-AES256-SHA',
  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256: 'ECDHE-RSA-AES128-SHA256',
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: 'ECDHE-RSA-AES128-GCM-SHA256',
  TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: 'ECDHE-RSA-AES256-GCM-SHA384',
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: 'ECDHE-RSA-CHACHA20-POLY1305',
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305: 'ECDHE-RSA-CHACHA20-POLY1305',
  TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA: 'ECDHE-RSA-DES-CBC3-SHA',
  TLS_ECDHE_RSA_WITH_RC4_128_SHA: 'ECDHE-RSA-RC4-SHA',
};

/** TLS 1.3 suites: accepted in the list, but (as in Go and upstream) not configurable. */
const TLS13_SUITES = new Set([
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
]);

/**
 * Parses a comma-separated --cipher-suites list of Go/IANA names into a Node
 * `ciphers` string (OpenSSL syntax). As in Go, the list restricts TLS 1.2
 * only; every TLS 1.3 suite stays enabled. Throws Error naming the first
 * unknown or unsupported name. An empty list means the defaults (undefined).
 */
export function parseCipherSuites(list: string): string | undefined {
  const names = list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.length === 0) return undefined;
  const available = new Set(getCiphers().map((c) => c.toUpperCase()));
  const tls12: string[] = [];
  for (const name of names) {
    if (TLS13_SUITES.has(name)) continue;
    const openssl = GO_TO_OPENSSL[name];
    if (!openssl) {
      throw new Error(
        `unknown cipher suite ${JSON.stringify(name)}; use Go/IANA names such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`,
      );
    }
    if (!available.has(openssl)) {
      throw new Error(`cipher suite ${name} (${openssl}) is not supported by this build's OpenSSL`);
    }
    if (!tls12.includes(openssl)) tls12.push(openssl);
  }
  const tls13 = DEFAULT_CIPHERS.split(':').filter((c) => c.startsWith('TLS_'));
  return [...tls13, ...tls12].join(':');
}

export interface ServerTlsSettings {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string;
  readonly minVersion: TlsMinVersion;
  /** OpenSSL cipher string (parseCipherSuites), or undefined for Node's defaults. */
  readonly ciphers: string | undefined;
  /** Fallback poll for file changes that fs.watch misses (network filesystems, some symlink swaps). */
  readonly pollIntervalMs?: number;
}

type ContextListener = (options: SecureContextOptions) => void;

const DEFAULT_POLL_MS = 10_000;
/** Files are often written one after the other: wait for the burst to settle. */
const DEBOUNCE_MS = 100;

/**
 * The TCP listeners' server certificate, key and client CA, reloaded from
 * disk on change. A reload that does not parse (a half-written file, a key
 * that does not match the certificate) keeps the previous context and is
 * retried at the next change or poll.
 */
export class ServerTls {
  private readonly settings: ServerTlsSettings;
  private readonly logger: Logger;
  private current: SecureContextOptions;
  private digest: string;
  private failedDigest = '';
  private readonly listeners = new Set<ContextListener>();
  private readonly watchers: FSWatcher[] = [];
  private poller: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  /** Successful reloads since start (for tests and the debug surface). */
  reloads = 0;

  /** Loads and validates the files; throws KnatsError(BadConfig) naming the flag at fault. */
  constructor(settings: ServerTlsSettings, logger: Logger) {
    this.settings = settings;
    this.logger = logger.child({ tls: 'server' });
    const loaded = this.load();
    if (loaded instanceof Error) throw new KnatsError(ErrorCode.BadConfig, loaded.message);
    this.current = loaded.options;
    this.digest = loaded.digest;
  }

  /** The options a secure context is built from, TLS policy included (setSecureContext resets what it is not given). */
  contextOptions(): SecureContextOptions {
    return this.current;
  }

  /** Options for tls.createServer: client certificates required, plus the current context. */
  serverOptions(): SecureContextOptions & { requestCert: true; rejectUnauthorized: true } {
    return { ...this.current, requestCert: true, rejectUnauthorized: true };
  }

  onChange(listener: ContextListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * gRPC server credentials that follow reloads. grpc-js calls
   * setSecureContext() on its HTTP/2 server for every update pushed through
   * ServerCredentials' watcher mechanism (the one its experimental
   * certificate-provider credentials use), so new handshakes get the new
   * certificate and live streams are untouched.
   */
  grpcCredentials(): ServerCredentials {
    return new ReloadingGrpcCredentials(this);
  }

  /** Starts watching the files' directories (and polling as a fallback). */
  watch(): void {
    const dirs = new Map<string, Set<string>>();
    for (const file of [this.settings.certFile, this.settings.keyFile, this.settings.caFile]) {
      const dir = dirname(file);
      if (!dirs.has(dir)) dirs.set(dir, new Set());
      dirs.get(dir)!.add(basename(file));
    }
    for (const dir of dirs.keys()) {
      try {
        // The directory, not the files: certificate rotation usually replaces a file
        // (rename, or Kubernetes' ..data symlink swap), which a file watch would miss.
        const watcher = watch(dir, { persistent: false }, () => this.scheduleCheck());
        watcher.on('error', (err) => this.logger.warn({ dir, err: err.message }, 'certificate watch failed'));
        this.watchers.push(watcher);
      } catch (err) {
        this.logger.warn(
          { dir, err: (err as Error).message },
          'cannot watch certificate directory; polling only',
        );
      }
    }
    this.poller = setInterval(() => this.check(), this.settings.pollIntervalMs ?? DEFAULT_POLL_MS);
    this.poller.unref();
  }

  stop(): void {
    for (const watcher of this.watchers) watcher.close();
    this.watchers.length = 0;
    clearInterval(this.poller);
    clearTimeout(this.debounce);
    this.listeners.clear();
  }

  private scheduleCheck(): void {
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.check(), DEBOUNCE_MS);
    this.debounce.unref();
  }

  /** Re-reads the files; applies them if they changed and form a valid context. */
  check(): boolean {
    const loaded = this.load();
    if (loaded instanceof Error) {
      if (loaded.message !== this.failedDigest) {
        this.failedDigest = loaded.message;
        this.logger.warn(
          { err: loaded.message },
          'certificate reload failed; keeping the previous certificate',
        );
      }
      return false;
    }
    if (loaded.digest === this.digest) return false;
    this.failedDigest = '';
    this.digest = loaded.digest;
    this.current = loaded.options;
    this.reloads++;
    this.logger.info(describeCert(loaded.options.cert as Buffer), 'server certificate reloaded from disk');
    for (const listener of this.listeners) listener(this.current);
    return true;
  }

  private load(): { options: SecureContextOptions; digest: string } | Error {
    const { certFile, keyFile, caFile } = this.settings;
    const read = (file: string, flag: string): Buffer | Error => {
      try {
        return readFileSync(file);
      } catch (err) {
        return new Error(
          `--${flag} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        );
      }
    };
    const cert = read(certFile, 'server-cert');
    if (cert instanceof Error) return cert;
    const key = read(keyFile, 'server-key');
    if (key instanceof Error) return key;
    const ca = read(caFile, 'server-ca-cert');
    if (ca instanceof Error) return ca;
    const options: SecureContextOptions = {
      cert,
      key,
      ca,
      minVersion: this.settings.minVersion,
      ...(this.settings.ciphers ? { ciphers: this.settings.ciphers } : {}),
    };
    try {
      createSecureContext(options);
    } catch (err) {
      return new Error(`--server-cert/--server-key/--server-ca-cert: ${(err as Error).message}`);
    }
    try {
      new X509Certificate(ca);
    } catch (err) {
      return new Error(`--server-ca-cert ${caFile}: not a PEM certificate (${(err as Error).message})`);
    }
    const digest = createHash('sha256')
      .update(cert)
      .update('\0')
      .update(key)
      .update('\0')
      .update(ca)
      .digest('hex');
    return { options, digest };
  }
}

function describeCert(pem: Buffer): Record<string, unknown> {
  try {
    const cert = new X509Certificate(pem);
    return { subject: cert.subject, serialNumber: cert.serialNumber, validTo: cert.validTo };
  } catch {
    return {};
  }
}

/**
 * grpc-js ServerCredentials whose secure context follows a ServerTls.
 * Constructor options (client certificate required) are fixed; context
 * options (certificate, key, CA, minimum version, ciphers) are pushed to
 * grpc-js's watchers on every reload.
 */
class ReloadingGrpcCredentials extends ServerCredentials {
  constructor(tls: ServerTls) {
    super({ requestCert: true, rejectUnauthorized: true }, tls.contextOptions());
    tls.onChange((options) => this.updateSecureContextOptions(options));
  }

  override _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

// ---- handshakes ----------------------------------------------------------------

/** How long a TLS client gets to finish its handshake on a door that sets no shorter limit. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * TCP connections one door holds that have not finished their TLS handshake;
 * beyond it a new connection is closed at once (a handshake takes
 * milliseconds, so legitimate clients rarely have more than a few pending).
 */
export const DEFAULT_MAX_PENDING_HANDSHAKES = 1024;

export interface HandshakeGuardOptions {
  /** Door label of the metrics and logs. */
  readonly door: 'grpc' | 'connect';
  readonly timeoutMs?: number;
  readonly maxPending?: number;
  readonly logger: Logger;
  /** knats_door_handshakes_pending{door}. */
  readonly pendingGauge: { set(value: number): void };
  /** A refused connection or failed handshake: knats_client_errors_total{reason}. */
  readonly refused: (reason: 'tls_handshake' | 'tls_handshake_timeout' | 'tls_handshakes_pending') => void;
}

/**
 * Keeps one door's TLS listener from holding connections that never become
 * clients: every connection that has not finished its handshake within
 * `timeoutMs` is destroyed (Node only reports its own handshake timeout, it
 * leaves the socket open), so is every connection whose handshake failed,
 * and at most `maxPending` handshakes run at once. Works on any tls.Server,
 * the CONNECT door's and the HTTP/2 servers grpc-js creates.
 */
export class HandshakeGuard {
  readonly timeoutMs: number;
  readonly maxPending: number;
  private readonly options: HandshakeGuardOptions;
  /** Raw sockets whose handshake is under way, by remote address:port (what a TLS socket reports too). */
  private readonly pending = new Map<string, { socket: Socket; timer: NodeJS.Timeout }>();
  private readonly guarded = new WeakSet<TlsServer>();
  /** Anyone who reaches the port can cause these: one line per reason per second (the metric counts all). */
  private readonly log = new LogThrottle(1000);

  constructor(options: HandshakeGuardOptions) {
    this.options = options;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.maxPending = options.maxPending ?? DEFAULT_MAX_PENDING_HANDSHAKES;
  }

  /** Handshakes under way now. */
  get size(): number {
    return this.pending.size;
  }

  /** Guards `server` (once; later calls for the same server do nothing). */
  attach(server: TlsServer): void {
    if (this.guarded.has(server)) return;
    this.guarded.add(server);
    // First, before the TLS layer wraps the socket (grpc-js adds its own 'connection' listener too).
    server.prependListener('connection', (socket: Socket) => this.onConnection(socket));
    server.prependListener('secureConnection', (socket: TLSSocket) => this.settled(keyOf(socket)));
    server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
      const code = err.code ?? err.message;
      this.options.refused(code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'tls_handshake_timeout' : 'tls_handshake');
      const skipped = this.log.take(`refused ${code}`);
      if (skipped !== undefined) {
        this.options.logger.info(
          { remote: `${socket.remoteAddress}:${socket.remotePort}`, err: code, skipped },
          'TLS handshake refused',
        );
      }
      // Node reports the failure and leaves the socket to its listener: close it, or its descriptor stays.
      this.settled(keyOf(socket));
      socket.destroy();
    });
  }

  private onConnection(socket: Socket): void {
    if (socket.remoteAddress === undefined) {
      // Already gone (reset before we saw it).
      socket.destroy();
      return;
    }
    const key = keyOf(socket);
    this.settled(key);
    if (this.pending.size >= this.maxPending) {
      this.options.refused('tls_handshakes_pending');
      const skipped = this.log.take('pending');
      if (skipped !== undefined) {
        this.options.logger.warn(
          { remote: key, pending: this.pending.size, limit: this.maxPending, skipped },
          'too many TLS handshakes pending; connection closed',
        );
      }
      socket.destroy();
      return;
    }
    const timer = setTimeout(() => {
      if (!this.pending.has(key)) return;
      this.settled(key);
      this.options.refused('tls_handshake_timeout');
      const skipped = this.log.take('timeout');
      if (skipped !== undefined) {
        this.options.logger.info(
          { remote: key, timeoutMs: this.timeoutMs, skipped },
          'TLS handshake not finished in time; connection closed',
        );
      }
      socket.destroy();
    }, this.timeoutMs);
    timer.unref();
    this.pending.set(key, { socket, timer });
    this.options.pendingGauge.set(this.pending.size);
    socket.once('close', () => {
      if (this.pending.get(key)?.socket === socket) this.settled(key);
    });
  }

  private settled(key: string): void {
    const entry = this.pending.get(key);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.pending.delete(key);
    this.options.pendingGauge.set(this.pending.size);
  }

  /** Closes every connection still in its handshake (frontend shutdown). */
  closeAll(): void {
    for (const [key, { socket }] of [...this.pending]) {
      this.settled(key);
      socket.destroy();
    }
  }
}

function keyOf(socket: Socket): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}
