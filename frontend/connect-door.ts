/**
 * The HTTP CONNECT front door, as upstream's proxy-server serves it to
 * kube-apiserver (over a Unix socket or mTLS TCP):
 *
 *   CONNECT host:port HTTP/1.1        ->  the agent dials host:port
 *   HTTP/1.1 200 Connection Established  only once that dial succeeded,
 *   then raw bytes both ways through one Tunnel.
 *
 * The request is parsed here on the raw socket (not node:http) so that the
 * bytes a client sends right after its header are neither lost nor buffered:
 * they are the tunnel's first bytes. Failures answer with upstream's status
 * (httpStatusFor), a short text body naming the reason, and Connection: close.
 * Hostile clients are bounded: a header read timeout (slowloris), a header
 * size limit, and nothing but HTTP/1.x.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { ErrorCode, httpStatusFor, KnatsError } from '../broker/errors.js';
import type { Logger } from '../broker/logging.js';
import { DialTimeline } from '../broker/telemetry/dial-stages.js';
import { BurstWriter } from '../broker/tunnel/burst-writer.js';
import { endAfterFlush, endedByReset, resetSocket } from '../broker/tunnel/socket-reset.js';
import type { Tunnel, TunnelLocalSide } from '../broker/tunnel/tunnel.js';
import type { BusDialer } from './bus-dialer.js';
import { BudgetShare, BufferBudget, mib } from './door-budget.js';
import { dialForClient, tunnelEstablished, tunnelFinished } from './door-dial.js';
import type { FrontendMetrics } from './metrics.js';

export interface ConnectDoorOptions {
  readonly dialer: BusDialer;
  readonly metrics: FrontendMetrics;
  readonly logger: Logger;
  /** False while draining: new CONNECTs get 503. */
  readonly accepting: () => boolean;
  /** The whole request header must arrive within this (slowloris). */
  readonly headerTimeoutMs?: number;
  /** Largest request header accepted; beyond it: 431. */
  readonly maxHeaderBytes?: number;
  /** Bytes of incomplete request headers all connections together may make the door hold; beyond it: 503. */
  readonly headerBudgetBytes?: number;
}

export const DEFAULT_HEADER_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_HEADER_BYTES = 16 * 1024;
/** Incomplete request headers the door (this process) holds at most, all connections together. */
export const DEFAULT_HEADER_BUDGET_BYTES = 4 * 1024 * 1024;
/**
 * A connection holding at most this much of its header is never refused by
 * the budget (a real CONNECT header is a few hundred bytes and arrives whole):
 * the budget refuses the connections whose headers grow while it is spent.
 */
const HEADER_FLOOR_BYTES = 4096;
/** After an error response, how long the client gets to read it before the socket is destroyed. */
const ERROR_LINGER_MS = 2000;

const STATUS_TEXT: Readonly<Record<number, string>> = {
  200: 'Connection Established',
  400: 'Bad Request',
  403: 'Forbidden',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  505: 'HTTP Version Not Supported',
};

const ESTABLISHED = Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n', 'latin1');
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\s]+) HTTP\/([0-9])\.([0-9])$/;
const HEADER_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*$/;

/** An HTTP-level refusal before any dial (bad request line, wrong method, ...). */
interface Refusal {
  readonly status: number;
  /** knats_client_errors_total{segment="from_client",reason} label. */
  readonly reason: string;
  readonly message: string;
  readonly headers?: Record<string, string>;
}

export type ConnectRequest = { readonly address: string } | { readonly refusal: Refusal };

/**
 * Index just past the blank line ending the header (CRLF or bare LF line
 * ends, as Go's reader accepts), or -1 while it is incomplete.
 */
export function findHeaderEnd(buf: Buffer, from = 0): number {
  const start = Math.max(0, from - 3);
  const crlf = buf.indexOf('\n\r\n', start, 'latin1');
  const lf = buf.indexOf('\n\n', start, 'latin1');
  if (crlf < 0) return lf < 0 ? -1 : lf + 2;
  if (lf < 0 || crlf < lf) return crlf + 3;
  return lf + 2;
}

/** Parses a complete request header (pure; exported for unit tests). */
export function parseConnectRequest(header: Buffer): ConnectRequest {
  const lines = header.toString('latin1').split(/\r?\n/);
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const requestLine = lines[0] ?? '';
  const match = REQUEST_LINE.exec(requestLine);
  if (!match) {
    return {
      refusal: {
        status: 400,
        reason: 'malformed_request',
        message: `malformed request line ${JSON.stringify(requestLine.slice(0, 100))}`,
      },
    };
  }
  const [, method, target, major] = match;
  if (major !== '1') {
    return {
      refusal: {
        status: 505,
        reason: 'http_version',
        message: `HTTP/${match[3]}.${match[4]} is not supported: this proxy speaks HTTP/1.1 CONNECT only`,
      },
    };
  }
  for (const line of lines.slice(1)) {
    if (!HEADER_LINE.test(line)) {
      return {
        refusal: {
          status: 400,
          reason: 'malformed_header',
          message: `malformed header line ${JSON.stringify(line.slice(0, 100))}`,
        },
      };
    }
  }
  if (method !== 'CONNECT') {
    // Upstream's text, verbatim.
    return {
      refusal: {
        status: 405,
        reason: 'method_not_allowed',
        message: 'this proxy only supports CONNECT passthrough',
        headers: { Allow: 'CONNECT' },
      },
    };
  }
  // The address itself is checked by the dialer, for every door alike.
  return { address: target! };
}

function response(status: number, body: string, headers: Record<string, string> = {}): Buffer {
  const text = body.endsWith('\n') ? body : `${body}\n`;
  let head = `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\n`;
  for (const [name, value] of Object.entries({
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': String(Buffer.byteLength(text)),
    Connection: 'close',
    ...headers,
  })) {
    head += `${name}: ${value}\r\n`;
  }
  return Buffer.from(`${head}\r\n${text}`, 'utf8');
}

/** The body of a failed dial's response: upstream's wording for "no agent", the reason otherwise. */
export function dialErrorBody(address: string, err: KnatsError): string {
  if (err.code === ErrorCode.NoAgent) return `currently no tunnels available: ${err.message} (${err.code})`;
  return `dial ${address} failed: ${err.code}: ${err.message}`;
}

export class ConnectDoor {
  readonly options: ConnectDoorOptions;
  readonly logger: Logger;
  readonly headerTimeoutMs: number;
  readonly maxHeaderBytes: number;
  /** Incomplete request headers held, all connections together (knats_door_buffered_bytes{door="connect"}). */
  readonly headerBudget: BufferBudget;
  private readonly connections = new Set<ConnectConnection>();
  private idleWaiters: (() => void)[] = [];

  constructor(options: ConnectDoorOptions) {
    this.options = options;
    this.logger = options.logger.child({ door: 'http-connect' });
    this.headerTimeoutMs = options.headerTimeoutMs ?? DEFAULT_HEADER_TIMEOUT_MS;
    this.maxHeaderBytes = options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
    const buffered = options.metrics.doorBufferedBytes.labels('connect');
    this.headerBudget = new BufferBudget(options.headerBudgetBytes ?? DEFAULT_HEADER_BUDGET_BYTES, (used) =>
      buffered.set(used),
    );
    options.metrics.doorBufferLimitBytes.labels('connect').set(this.headerBudget.limit);
  }

  /** A client socket that finished its TLS handshake on the TCP listener. */
  acceptTls(socket: TLSSocket): void {
    // Renegotiation is refused (as on the gRPC door, where Node's HTTP/2 refuses it): a client asking is cut off.
    socket.disableRenegotiation();
    // The listener does not allow half-open sockets, so a client that leaves mid-handshake is closed at once;
    // once the client is in, its FIN ends only its own direction of the tunnel.
    socket.allowHalfOpen = true;
    this.accept(socket);
  }

  /** Client connections open now (reading a header, dialing, or tunnelling). */
  get size(): number {
    return this.connections.size;
  }

  /** Serves one accepted client socket: plain (Unix socket) or already TLS-authenticated (TCP). */
  accept(socket: Socket): void {
    const connection = new ConnectConnection(this, socket);
    this.connections.add(connection);
  }

  /** Resolves once no client connection is left. */
  idle(): Promise<void> {
    if (this.connections.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Ends every connection at once: pending dials cancelled, tunnels closed with `why`. */
  shutdown(why: string): void {
    for (const connection of [...this.connections]) connection.abort(why);
  }

  /** @internal */
  removed(connection: ConnectConnection): void {
    this.connections.delete(connection);
    if (this.connections.size === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }
}

type Phase = 'header' | 'dialing' | 'open' | 'done';

/** One client connection: header, then dial, then a tunnel (or an error response). */
class ConnectConnection {
  private readonly door: ConnectDoor;
  private readonly socket: Socket;
  private logger: Logger;
  private phase: Phase = 'header';
  /** The header bytes so far: the first chunk itself, or a view of `headStorage`. */
  private head: Buffer = Buffer.alloc(0);
  private headStorage: Buffer | undefined;
  /** What the incomplete header holds, charged to the door's header budget. */
  private readonly headShare: BudgetShare;
  private headerTimer: NodeJS.Timeout | undefined;
  private closeTimer: NodeJS.Timeout | undefined;
  private dial: AbortController | undefined;
  private tunnel: Tunnel | undefined;
  private pausedByTunnel = false;
  /** The client's FIN was read: its sending is over (half-close), it may still read. */
  private clientEnded = false;
  /** We ended our writing to the client (the destination's FIN). */
  private writeEnded = false;
  private tunnelFinished = false;

  constructor(door: ConnectDoor, socket: Socket) {
    this.door = door;
    this.socket = socket;
    this.logger = door.logger;
    this.headShare = new BudgetShare([door.headerBudget], HEADER_FLOOR_BYTES);
    const { metrics } = door.options;
    metrics.httpConnections.inc();
    socket.setNoDelay(true);
    socket.on('data', this.onHeaderData);
    socket.on('end', () => this.onClientEnd());
    socket.on('error', (err: NodeJS.ErrnoException) => this.onClientError(err));
    socket.once('close', () => this.onClientClose());
    this.headerTimer = setTimeout(() => this.onHeaderTimeout(), door.headerTimeoutMs);
  }

  // ---- header ------------------------------------------------------------

  private readonly onHeaderData = (chunk: Buffer): void => {
    if (this.phase !== 'header') return;
    const scanned = this.head.length;
    this.appendHead(chunk);
    const end = findHeaderEnd(this.head, scanned);
    const limit = this.door.maxHeaderBytes;
    if (end < 0) {
      if (this.head.length > limit) {
        this.refuseHeaderTooLarge();
        return;
      }
      const over = this.headShare.set(this.headStorage?.length ?? this.head.length);
      if (over) this.refuseOverBudget(over);
      return;
    }
    this.headShare.release();
    if (end > limit) {
      this.refuseHeaderTooLarge();
      return;
    }
    const timeline = new DialTimeline();
    clearTimeout(this.headerTimer);
    this.headerTimer = undefined;
    const header = this.head.subarray(0, end);
    // Whatever followed the header is the tunnel's first bytes: kept (at most one read) and sent first.
    const rest = this.head.subarray(end);
    this.head = Buffer.alloc(0);
    this.headStorage = undefined;
    this.socket.off('data', this.onHeaderData);
    this.socket.pause();
    const request = parseConnectRequest(header);
    if ('refusal' in request) {
      this.refuse(request.refusal);
      return;
    }
    this.startDial(request.address, rest, timeline);
  };

  /** Appends without re-copying everything per chunk (a slowloris client sends one byte at a time). */
  private appendHead(chunk: Buffer): void {
    if (this.head.length === 0) {
      this.head = chunk;
      return;
    }
    const length = this.head.length + chunk.length;
    let storage = this.headStorage;
    const inStorage =
      storage !== undefined &&
      this.head.buffer === storage.buffer &&
      this.head.byteOffset === storage.byteOffset;
    if (!storage || storage.length < length) {
      storage = Buffer.allocUnsafe(Math.max(length, 2 * (storage?.length ?? 0), 4096));
      this.head.copy(storage, 0);
      this.headStorage = storage;
    } else if (!inStorage) {
      this.head.copy(storage, 0);
    }
    chunk.copy(storage, this.head.length);
    this.head = storage.subarray(0, length);
  }

  private refuseHeaderTooLarge(): void {
    this.refuse({
      status: 431,
      reason: 'header_too_large',
      message: `request header larger than ${this.door.maxHeaderBytes} bytes`,
    });
  }

  private refuseOverBudget(over: BufferBudget): void {
    const held = this.headShare.held;
    this.headShare.release();
    const message =
      `${ErrorCode.DoorBudgetExhausted}: ${mib(held)} of a request header under way, ` +
      `while the door's header buffer budget (${mib(over.limit)}) is spent`;
    this.door.options.metrics.streamErrors.labels('from_client', 'door_budget_exhausted').inc();
    this.logger.warn({ held, limit: over.limit }, 'CONNECT refused: door header buffer budget exhausted');
    this.respondAndClose(
      response(httpStatusFor(ErrorCode.DoorBudgetExhausted), message, {
        'X-Knats-Error': ErrorCode.DoorBudgetExhausted,
      }),
    );
  }

  private onHeaderTimeout(): void {
    this.headerTimer = undefined;
    if (this.phase !== 'header') return;
    this.refuse({
      status: 408,
      reason: 'header_timeout',
      message: `request header not received within ${this.door.headerTimeoutMs} ms`,
    });
  }

  private refuse(refusal: Refusal): void {
    this.door.options.metrics.streamErrors.labels('from_client', refusal.reason).inc();
    this.logger.info(
      { status: refusal.status, reason: refusal.reason, message: refusal.message },
      'CONNECT refused',
    );
    this.respondAndClose(response(refusal.status, refusal.message, refusal.headers));
  }

  // ---- dial --------------------------------------------------------------

  private startDial(address: string, rest: Buffer, timeline: DialTimeline): void {
    const { options } = this.door;
    this.phase = 'dialing';
    this.dial = new AbortController();
    const log = { logger: this.logger, fields: { destination: address } };
    dialForClient(options, address, log, timeline, this.dial.signal).then(
      (outcome) => {
        const { tunnel } = outcome;
        if (this.phase !== 'dialing') {
          // The client went away meanwhile (dialForClient closes it when the signal fired first).
          tunnel.close(new KnatsError(ErrorCode.DialCancelled, 'client went away before the dial completed'));
          return;
        }
        this.phase = 'open';
        this.dial = undefined;
        this.tunnel = tunnel;
        this.logger = tunnel.logger;
        // 200 first, then the agent's early bytes (attach), then the client's bytes and its FIN.
        this.socket.write(ESTABLISHED);
        tunnel.attach(this.localSide(tunnel));
        tunnelEstablished(options, 'connect', outcome, timeline, { door: 'http-connect' });
        this.socket.on('data', (chunk: Buffer) => tunnel.write(chunk));
        if (rest.length > 0) tunnel.write(rest);
        if (this.clientEnded) tunnel.finishSending();
        if (!this.pausedByTunnel && this.phase === 'open') this.socket.resume();
      },
      (err: KnatsError) => {
        if (this.phase !== 'dialing') return;
        this.dial = undefined;
        this.answerDialError(address, err);
      },
    );
  }

  private answerDialError(address: string, err: KnatsError): void {
    const status = httpStatusFor(err.code);
    this.respondAndClose(response(status, dialErrorBody(address, err), { 'X-Knats-Error': err.code }));
  }

  private localSide(tunnel: Tunnel): TunnelLocalSide {
    const socket = this.socket;
    let writer: BurstWriter | undefined;
    return {
      deliver: (chunk, done) => {
        if (socket.destroyed || !socket.writable) {
          done(chunk.length);
          return;
        }
        writer ??= new BurstWriter(socket, done);
        writer.write(chunk);
      },
      pause: () => {
        this.pausedByTunnel = true;
        socket.pause();
      },
      resume: () => {
        this.pausedByTunnel = false;
        if (this.phase === 'open') socket.resume();
      },
      shutdownWrite: () => {
        this.writeEnded = true;
        writer?.flush();
        if (!socket.destroyed) socket.end();
      },
      finish: (err) => {
        writer?.flush();
        this.phase = 'done';
        this.tunnelFinished = true;
        tunnelFinished(this.door.options, tunnel);
        if (socket.destroyed) return;
        if (err) {
          // An abort must look like one to the client: a reset, never a clean end after a short body.
          resetSocket(socket);
          return;
        }
        // Clean close: the client gets everything written, then EOF (or a reset if it stops taking bytes).
        endAfterFlush(socket, tunnel.lingerMs);
      },
    };
  }

  // ---- client socket events ----------------------------------------------

  private onClientEnd(): void {
    this.clientEnded = true;
    if (!this.writeEnded && this.phase !== 'header' && endedByReset(this.socket)) {
      this.clientAborted('client reset the connection');
      return;
    }
    if (this.phase === 'open') {
      this.logger.debug('client closed its side');
      this.tunnel?.finishSending();
    } else if (this.phase === 'header') {
      this.phase = 'done';
      this.socket.destroy();
    }
    // While dialing, the FIN is passed on once the tunnel is open (after the bytes before it).
  }

  private onClientError(err: NodeJS.ErrnoException): void {
    this.logger.debug({ err: err.code ?? err.message, phase: this.phase }, 'client socket error');
    if (err.code === 'ERR_TLS_RENEGOTIATION_DISABLED') {
      this.door.options.metrics.streamErrors.labels('from_client', 'tls_renegotiation').inc();
      this.logger.info({ phase: this.phase }, 'client asked for TLS renegotiation; connection closed');
    }
    this.clientAborted(`client connection error: ${err.code ?? err.message}`);
    // An error the socket reports without closing (a TLS renegotiation attempt): no tunnel left to close it.
    if (this.phase === 'header' || this.phase === 'done') this.socket.destroy();
  }

  /** The client reset or broke its connection: a pending dial is cancelled, an open tunnel aborted. */
  private clientAborted(reason: string): void {
    if (this.phase === 'dialing') this.dial?.abort();
    else if (this.phase === 'open') this.tunnel?.fail(new KnatsError(ErrorCode.ConnectionReset, reason));
  }

  private onClientClose(): void {
    this.headShare.release();
    clearTimeout(this.headerTimer);
    clearTimeout(this.closeTimer);
    if (this.phase === 'dialing') this.dial?.abort();
    else if (this.phase === 'open' && !this.tunnelFinished && !(this.clientEnded && this.writeEnded)) {
      // Closed without both directions ending: the client is gone mid-stream.
      this.tunnel?.fail(new KnatsError(ErrorCode.ConnectionReset, 'client connection closed'));
    }
    this.phase = 'done';
    this.door.options.metrics.httpConnections.dec();
    this.door.removed(this);
  }

  /** Sends an error response, then closes (after the client read it, or a short linger). */
  private respondAndClose(bytes: Buffer): void {
    this.phase = 'done';
    this.headShare.release();
    clearTimeout(this.headerTimer);
    this.headerTimer = undefined;
    this.socket.off('data', this.onHeaderData);
    if (this.socket.destroyed) return;
    this.socket.end(bytes);
    // Discard what the client still sends, so its close is seen and the kernel does not reset the response away.
    this.socket.resume();
    this.closeTimer = setTimeout(() => this.socket.destroy(), ERROR_LINGER_MS);
  }

  /** Frontend shutdown. */
  abort(why: string): void {
    if (this.phase === 'open' && this.tunnel) {
      this.tunnel.close(new KnatsError(ErrorCode.ShuttingDown, why));
      if (!this.socket.destroyed) this.socket.destroy();
      return;
    }
    if (this.phase === 'dialing') this.dial?.abort();
    this.phase = 'done';
    this.socket.destroy();
  }
}
