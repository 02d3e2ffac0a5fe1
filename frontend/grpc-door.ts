/**
 * The gRPC front door: upstream's ProxyService.Proxy, a bidi stream of
 * Packets. One ProxyStream per gRPC call; each successful dial on it becomes
 * a connectID bound to one Tunnel.
 */

import {
  type Http2Server,
  type Http2Session,
  constants as http2Constants,
  type ServerHttp2Stream,
} from 'node:http2';
import { Server as TlsServer } from 'node:tls';
import {
  type Server,
  type ServerDuplexStream,
  type ServiceDefinition,
  status,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { dialResponseText, ErrorCode, KnatsError } from '../broker/errors.js';
import type { Logger } from '../broker/logging.js';
import { DialTimeline } from '../broker/telemetry/dial-stages.js';
import type { Tunnel, TunnelLocalSide } from '../broker/tunnel/tunnel.js';
import type { BusDialer } from './bus-dialer.js';
import {
  type ClientPacket,
  DataToClient,
  decodeDataPacket,
  decodePacket,
  encodePacket,
  type Int64,
  int64Key,
  PacketType,
  PROXY_METHOD_PATH,
  serializeToClient,
  toNumber,
} from './client-packets.js';
import { BudgetShare, BufferBudget, GrpcFrameTracker, mib } from './door-budget.js';
import { countDialFailure, dialForClient, tunnelEstablished, tunnelFinished } from './door-dial.js';
import type { FrontendMetrics } from './metrics.js';
import type { HandshakeGuard } from './tls.js';

const PACKET_NAMES = ['DIAL_REQ', 'DIAL_RSP', 'CLOSE_REQ', 'CLOSE_RSP', 'DATA', 'DIAL_CLS', 'DRAIN'];

export interface GrpcDoorOptions {
  readonly dialer: BusDialer;
  readonly metrics: FrontendMetrics;
  readonly logger: Logger;
  /** Dials one stream may have pending at once; more are answered with an error. */
  readonly maxPendingDialsPerStream: number;
  /** How long a new connection's first DATA or CLOSE_RSP waits after its DIAL_RSP was written (see HeldConnection). */
  readonly dialResponseSettleMs: number;
  /** False while draining: new dials are refused. */
  readonly accepting: () => boolean;
  /** What the door may hold of partially received messages, per connection and per process. */
  readonly budget?: GrpcReceiveBudget;
}

/** Partially received messages one HTTP/2 connection may make the door hold (4 whole messages of the largest size). */
export const GRPC_CONNECTION_BUFFER_BYTES = 16 * 1024 * 1024;
/** Partially received messages the whole gRPC door (this process) may hold. */
export const GRPC_PROCESS_BUFFER_BYTES = 64 * 1024 * 1024;
/**
 * A stream whose message under way keeps at most this much allocated is never
 * refused (kube-apiserver sends at most 32 KiB per message, over one or two of
 * Node's HTTP/2 read buffers): the budget refuses the
 * streams that grow large while it is spent, not their small neighbours.
 */
export const GRPC_STREAM_FLOOR_BYTES = 256 * 1024;
/** A refused stream's trailers go first; then the stream is reset, so the client stops sending on it. */
const REFUSED_STREAM_RESET_MS = 500;

/**
 * The gRPC door's budget for bytes of messages received but not yet whole
 * (what grpc-js's decoder holds per stream): per HTTP/2 connection and per
 * process. A stream whose message under way makes either go over is ended
 * with RESOURCE_EXHAUSTED (KNATS_DOOR_BUDGET_EXHAUSTED).
 */
export class GrpcReceiveBudget {
  readonly process: BufferBudget;
  readonly connectionLimit: number;
  readonly floorBytes: number;
  private readonly connections = new WeakMap<Http2Session, BufferBudget>();

  constructor(
    options: {
      processBytes?: number;
      connectionBytes?: number;
      floorBytes?: number;
      onChange?: (used: number) => void;
    } = {},
  ) {
    this.process = new BufferBudget(options.processBytes ?? GRPC_PROCESS_BUFFER_BYTES, options.onChange);
    this.connectionLimit = options.connectionBytes ?? GRPC_CONNECTION_BUFFER_BYTES;
    this.floorBytes = options.floorBytes ?? GRPC_STREAM_FLOOR_BYTES;
  }

  /** A share for one stream of `session`. */
  share(session: Http2Session): BudgetShare {
    let connection = this.connections.get(session);
    if (!connection) {
      connection = new BufferBudget(this.connectionLimit);
      this.connections.set(session, connection);
    }
    return new BudgetShare([connection, this.process], this.floorBytes);
  }
}

/**
 * The HTTP/2 stream under a grpc-js server call (grpc-js keeps it on its
 * base intercepting call; the door installs no interceptors), or undefined
 * if a grpc-js upgrade moved it.
 */
function http2StreamOf(call: unknown): ServerHttp2Stream | undefined {
  const stream = (call as { call?: { stream?: unknown } }).call?.stream as ServerHttp2Stream | undefined;
  if (!stream || typeof stream.on !== 'function' || typeof stream.close !== 'function' || !stream.session) {
    return undefined;
  }
  return stream;
}

let warnedNoHttp2Stream = false;

/** A service definition with our own (de)serializers: raw Buffers in, Packets handled by ProxyStream. */
export const proxyServiceDefinition: ServiceDefinition = {
  Proxy: {
    path: PROXY_METHOD_PATH,
    requestStream: true,
    responseStream: true,
    requestSerialize: (value: Buffer) => value,
    requestDeserialize: (bytes: Buffer) => bytes,
    responseSerialize: serializeToClient,
    responseDeserialize: (bytes: Buffer) => bytes,
    originalName: 'proxy',
  },
};

export function addProxyService(server: Server, options: GrpcDoorOptions, streams: Set<ProxyStream>): void {
  const implementation: UntypedServiceImplementation = {
    Proxy: (call: ServerDuplexStream<Buffer, Buffer | DataToClient>) => {
      const stream = new ProxyStream(call, options, () => streams.delete(stream));
      streams.add(stream);
    },
  };
  server.addService(proxyServiceDefinition, implementation);
}

/**
 * What waits for a connection's DIAL_RSP to settle, in order.
 *
 * The Go konnectivity-client (v0.36, kube-apiserver's) drops DATA that
 * follows DIAL_RSP too closely: its receive loop hands DIAL_RSP to the
 * dialing goroutine and reads the next packet at once, while the dialing
 * goroutine registers the connection only when it gets to run; DATA read
 * before that is dropped as "Connection not recognized" (and a CLOSE_RSP is
 * ignored, leaving the connection open forever). So what the door sends for
 * a new connectID after its DIAL_RSP (DATA, CLOSE_RSP) waits until the
 * DIAL_RSP has been written to the HTTP/2 stream and the settle time
 * (--dial-response-settle) has passed, in order, holding its credit. A
 * client that sends DATA or CLOSE_REQ on the connection has registered it:
 * the hold ends at once, so a client that speaks first (TLS, HTTP) never
 * waits. See the README's end-of-stream section for the measurement behind
 * the default.
 */
interface HeldConnection {
  readonly queue: (() => void)[];
  timer: NodeJS.Timeout | undefined;
}

interface PendingDial {
  readonly controller: AbortController;
  readonly random: Int64;
}

/** One gRPC Proxy call and the tunnels it carries. */
export class ProxyStream {
  private readonly call: ServerDuplexStream<Buffer, Buffer | DataToClient>;
  private readonly options: GrpcDoorOptions;
  private readonly logger: Logger;
  private readonly tunnels = new Map<number, Tunnel>();
  private readonly pendingDials = new Map<string, PendingDial>();
  /** connectIDs whose tunnel asked to pause the client stream (credit exhausted). */
  private readonly pausedBy = new Set<number>();
  /** connectIDs whose DIAL_RSP has not settled yet (see HeldConnection). */
  private readonly held = new Map<number, HeldConnection>();
  private nextConnectID = 1;
  private ended = false;
  private readonly onDone: () => void;
  /** stream_packets_total children of the per-read path, looked up once per stream. */
  private readonly dataFromClient: { inc(): void };
  private readonly dataToClient: { inc(): void };
  /** This stream's message under way, charged to its connection's and the process's budget. */
  private share: BudgetShare | undefined;

  constructor(
    call: ServerDuplexStream<Buffer, Buffer | DataToClient>,
    options: GrpcDoorOptions,
    onDone: () => void,
  ) {
    this.call = call;
    this.options = options;
    this.onDone = onDone;
    this.logger = options.logger.child({ door: 'grpc' });
    this.dataFromClient = options.metrics.streamPackets.labels('from_client', 'DATA');
    this.dataToClient = options.metrics.streamPackets.labels('to_client', 'DATA');
    options.metrics.grpcConnections.labels('Proxy').inc();
    call.on('data', (bytes: Buffer) => this.onPacketBytes(bytes));
    // The real client ends a tunnel by closing its whole connection: a
    // cancelled stream closes its tunnels exactly like CLOSE_REQ.
    call.on('end', () => this.shutdown('client ended the stream'));
    call.on('cancelled', () => this.shutdown('client cancelled the stream'));
    call.on('error', (err) => {
      options.metrics.streamErrors.labels('from_client', 'stream_error').inc();
      this.shutdown(`stream error: ${err.message}`);
    });
    call.on('close', () => this.shutdown('stream closed'));
    if (options.budget) this.trackPartialMessages(options.budget);
  }

  /**
   * Counts the bytes of the message under way as they arrive on the HTTP/2
   * stream (the same chunks grpc-js's decoder buffers until the message is
   * whole), and refuses this stream when it holds more than the floor while
   * its connection's or the process's budget is spent.
   */
  private trackPartialMessages(budget: GrpcReceiveBudget): void {
    const h2 = http2StreamOf(this.call);
    if (!h2) {
      if (!warnedNoHttp2Stream) {
        warnedNoHttp2Stream = true;
        this.logger.warn(
          'cannot reach the HTTP/2 stream under grpc-js calls; partial messages are not budgeted',
        );
      }
      return;
    }
    const share = budget.share(h2.session!);
    this.share = share;
    const tracker = new GrpcFrameTracker();
    // grpc-js paused the stream before this listener: adding it does not change the flow.
    h2.on('data', (chunk: Buffer) => {
      if (this.ended) return;
      const over = share.set(tracker.push(chunk));
      if (over) this.refuseOverBudget(h2, over, share.held, budget);
    });
  }

  private refuseOverBudget(
    h2: ServerHttp2Stream,
    over: BufferBudget,
    held: number,
    budget: GrpcReceiveBudget,
  ): void {
    const which = over === budget.process ? 'process' : 'connection';
    const details =
      `${ErrorCode.DoorBudgetExhausted}: ${mib(held)} of a message under way on this stream, ` +
      `while the door's ${which} buffer budget (${mib(over.limit)}) is spent`;
    // Released at once: once grpc-js has sent the status it drops what still arrives on the stream
    // (pausing the stream instead would make Node buffer it, against the session's memory cap).
    this.share?.release();
    this.options.metrics.streamErrors.labels('from_client', 'door_budget_exhausted').inc();
    this.logger.warn(
      { held, budget: which, limit: over.limit },
      'stream over the door buffer budget; refused',
    );
    this.shutdown('door buffer budget exhausted', { code: status.RESOURCE_EXHAUSTED, details });
    // Then reset it (RST_STREAM NO_ERROR, as after any complete response): the client stops sending and the decoder's bytes go.
    const timer = setTimeout(() => {
      if (!h2.closed && !h2.destroyed) h2.close(http2Constants.NGHTTP2_NO_ERROR);
    }, REFUSED_STREAM_RESET_MS);
    timer.unref();
  }

  get openTunnels(): number {
    return this.tunnels.size;
  }

  private onPacketBytes(bytes: Buffer): void {
    const data = decodeDataPacket(bytes);
    if (data) {
      this.dataFromClient.inc();
      this.onData(data.connectID, data.data);
      return;
    }
    let packet: ClientPacket;
    try {
      packet = decodePacket(bytes);
    } catch (err) {
      // Garbage on the stream: the client is broken, not one of its tunnels.
      this.options.metrics.streamErrors.labels('from_client', 'malformed_packet').inc();
      this.logger.warn({ err: (err as Error).message }, 'malformed packet from client; ending stream');
      this.shutdown('malformed packet', {
        code: status.INVALID_ARGUMENT,
        details: `malformed packet: ${(err as Error).message}`,
      });
      return;
    }
    this.options.metrics.countPacket('from_client', PACKET_NAMES[packet.type] ?? 'UNKNOWN');
    switch (packet.type) {
      case PacketType.DIAL_REQ:
        this.onDialRequest(packet);
        return;
      case PacketType.DATA:
        // A DATA packet the fast path does not take (an error field, another field order): same handling.
        this.onData(toNumber(packet.data?.connectID), packet.data?.data);
        return;
      case PacketType.CLOSE_REQ:
        this.onCloseRequest(toNumber(packet.closeRequest?.connectID));
        return;
      case PacketType.DIAL_CLS:
        this.onDialClose(packet.closeDial?.random);
        return;
      default:
        // DRAIN and responses are agent->server packets upstream; unknown types come from newer clients.
        this.logger.debug({ type: packet.type }, 'ignored packet type from client');
    }
  }

  private onDialRequest(packet: ClientPacket): void {
    const timeline = new DialTimeline();
    const request = packet.dialRequest;
    const random = request?.random ?? 0;
    const key = int64Key(random);
    const address = request?.address ?? '';
    const protocol = request?.protocol || 'tcp';
    const fail = (err: KnatsError) => {
      countDialFailure(this.options, err);
      this.answerDialFailure(random, err);
    };
    if (this.pendingDials.has(key)) {
      fail(
        new KnatsError(ErrorCode.BadPacket, `a dial with random ${key} is already pending on this stream`),
      );
      return;
    }
    if (this.pendingDials.size >= this.options.maxPendingDialsPerStream) {
      fail(
        new KnatsError(
          ErrorCode.TooManyPendingDials,
          `${this.pendingDials.size} dials pending on this stream (limit ${this.options.maxPendingDialsPerStream})`,
        ),
      );
      return;
    }
    if (protocol !== 'tcp') {
      fail(new KnatsError(ErrorCode.BadAddress, `unsupported protocol ${JSON.stringify(protocol)}`));
      return;
    }
    const pending: PendingDial = { controller: new AbortController(), random };
    this.pendingDials.set(key, pending);
    const log = { logger: this.logger, fields: { random: key } };
    dialForClient(this.options, address, log, timeline, pending.controller.signal).then(
      (outcome) => {
        // A DIAL_CLS or the stream's end aborts the signal, so dialForClient has already failed those.
        this.pendingDials.delete(key);
        const { tunnel } = outcome;
        const connectID = this.nextConnectID++;
        tunnel.logger = this.logger.child({ ...outcome.logFields, connectID });
        this.tunnels.set(connectID, tunnel);
        // DIAL_RSP first: attach hands over bytes the destination sent before the answer,
        // which wait in `held` until the DIAL_RSP has settled at the client.
        const held: HeldConnection = { queue: [], timer: undefined };
        this.held.set(connectID, held);
        this.write({ type: PacketType.DIAL_RSP, dialResponse: { error: '', connectID, random } }, () => {
          if (this.held.get(connectID) !== held) return;
          const settleMs = this.options.dialResponseSettleMs;
          if (settleMs > 0) held.timer = setTimeout(() => this.release(connectID), settleMs);
          else setImmediate(() => this.release(connectID));
        });
        tunnel.attach(this.localSide(connectID, tunnel));
        tunnelEstablished(this.options, 'grpc', outcome, timeline, { connectID });
      },
      (err: KnatsError) => {
        const wasPending = this.pendingDials.get(key) === pending;
        this.pendingDials.delete(key);
        // Counted and logged by dialForClient; a cancelled dial gets no answer (the client asked to forget it).
        if (wasPending && !this.ended) this.answerDialFailure(random, err);
      },
    );
  }

  private answerDialFailure(random: Int64, err: KnatsError): void {
    this.write({
      type: PacketType.DIAL_RSP,
      dialResponse: { error: dialResponseText(err), connectID: 0, random },
    });
  }

  private onDialClose(random: Int64 | undefined): void {
    const key = int64Key(random);
    const pending = this.pendingDials.get(key);
    if (!pending) return;
    this.pendingDials.delete(key);
    pending.controller.abort();
    this.logger.info({ random: key }, 'dial cancelled by client (DIAL_CLS)');
  }

  private onData(connectID: number, data: Uint8Array | undefined): void {
    const tunnel = this.tunnels.get(connectID);
    if (!tunnel) {
      // Data still in flight for a tunnel that just closed: its CLOSE_RSP went out already, drop quietly.
      if (connectID > 0 && connectID < this.nextConnectID) {
        this.options.metrics.streamErrors.labels('from_client', 'data_after_close').inc();
        return;
      }
      this.options.metrics.streamErrors.labels('from_client', 'unknown_connect_id').inc();
      this.write({
        type: PacketType.CLOSE_RSP,
        closeResponse: { error: `unknown connectID ${connectID}`, connectID },
      });
      return;
    }
    // The client writes on a connection only once it has registered it.
    this.release(connectID);
    if (data && data.length > 0) tunnel.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }

  private onCloseRequest(connectID: number): void {
    const tunnel = this.tunnels.get(connectID);
    if (!tunnel) {
      this.write({
        type: PacketType.CLOSE_RSP,
        closeResponse: { error: `unknown connectID ${connectID}`, connectID },
      });
      return;
    }
    this.release(connectID);
    tunnel.logger.info('client sent CLOSE_REQ');
    // finish() below answers CLOSE_RSP once the tunnel is closed.
    tunnel.close();
  }

  private localSide(connectID: number, tunnel: Tunnel): TunnelLocalSide {
    return {
      deliver: (chunk, done) => {
        const held = this.held.get(connectID);
        if (held) held.queue.push(() => this.deliverNow(connectID, chunk, done));
        else this.deliverNow(connectID, chunk, done);
      },
      pause: () => {
        this.pausedBy.add(connectID);
        this.call.pause();
      },
      resume: () => {
        this.pausedBy.delete(connectID);
        if (this.pausedBy.size === 0 && !this.ended) this.call.resume();
      },
      finish: (err) => {
        this.tunnels.delete(connectID);
        if (this.pausedBy.delete(connectID) && this.pausedBy.size === 0 && !this.ended) this.call.resume();
        tunnelFinished(this.options, tunnel);
        const closeResponse = () =>
          this.write({
            type: PacketType.CLOSE_RSP,
            closeResponse: { error: err ? `${err.code}: ${err.message}` : '', connectID },
          });
        // Behind the DATA still held for it: the client must have registered the connection.
        const held = this.held.get(connectID);
        if (held) held.queue.push(closeResponse);
        else closeResponse();
      },
    };
  }

  private deliverNow(connectID: number, chunk: Buffer, done: (bytes: number) => void): void {
    if (this.ended) {
      done(chunk.length);
      return;
    }
    this.dataToClient.inc();
    this.call.write(new DataToClient(connectID, chunk), () => done(chunk.length));
  }

  /** The connection's DIAL_RSP has settled: what waited for it goes out, in order. */
  private release(connectID: number): void {
    const held = this.held.get(connectID);
    if (!held) return;
    this.held.delete(connectID);
    clearTimeout(held.timer);
    for (const send of held.queue) send();
  }

  private write(packet: ClientPacket, written?: () => void): void {
    if (this.ended) return;
    this.options.metrics.countPacket('to_client', PACKET_NAMES[packet.type] ?? 'UNKNOWN');
    this.call.write(encodePacket(packet), written);
  }

  /**
   * The client stream is over: every tunnel and pending dial on it goes.
   * With `error`, the client gets that gRPC status instead of OK.
   */
  shutdown(why: string, error?: { code: status; details: string }): void {
    if (this.ended) return;
    this.ended = true;
    this.share?.release();
    this.options.metrics.grpcConnections.labels('Proxy').dec();
    for (const pending of this.pendingDials.values()) pending.controller.abort();
    this.pendingDials.clear();
    // Held DATA gives its credit back unsent (deliverNow), as any DATA after the end.
    for (const connectID of [...this.held.keys()]) this.release(connectID);
    const tunnels = [...this.tunnels.values()];
    this.tunnels.clear();
    for (const tunnel of tunnels) {
      tunnel.logger.info({ why }, 'client stream ended; closing tunnel');
      tunnel.close(new KnatsError(ErrorCode.PeerGone, `client stream ended: ${why}`));
    }
    try {
      // grpc-js turns an 'error' emitted on the server stream into the call's status.
      if (error) this.call.emit('error', Object.assign(new Error(error.details), error));
      else this.call.end();
    } catch {
      // already destroyed
    }
    this.onDone();
  }
}

/**
 * HTTP/2 receive window of the gRPC door, per stream.
 * Node's default (64 KiB) caps uploads at 64 KiB per round trip; 1 MiB lets
 * the tunnel's own credit set the pace. It also bounds what one client
 * connection can make us buffer while its tunnel waits for credit
 * (kube-apiserver opens one connection per tunnel).
 */
export const HTTP2_RECEIVE_WINDOW = 1024 * 1024;

/**
 * grpc-js has no server option for HTTP/2 windows, so they are set on the
 * HTTP/2 servers it created (an internal field; if a grpc-js upgrade renames
 * it, the door keeps working with Node's default windows and says so).
 */
export function widenHttp2Windows(server: Server, bytes: number, logger: Logger): void {
  const http2Servers = (server as unknown as { http2Servers?: Map<Http2Server, unknown> }).http2Servers;
  if (!(http2Servers instanceof Map)) {
    logger.warn('cannot reach grpc-js HTTP/2 servers; uploads keep the default 64 KiB HTTP/2 window');
    return;
  }
  for (const http2Server of http2Servers.keys()) {
    if (widened.has(http2Server)) continue;
    widened.add(http2Server);
    // Stream-level window only: Http2Session.setLocalWindowSize on these sessions stalled
    // server-to-client DATA under load in tests (Node 20), so the connection window is left alone.
    http2Server.updateSettings({ initialWindowSize: bytes });
  }
}

const widened = new WeakSet<Http2Server>();

/**
 * Puts the TLS listeners grpc-js created (HTTP/2 secure servers) under
 * `guard`: a handshake timeout (Node's is 120 s there, and grpc-js sets
 * none) and a bound on handshakes under way. Like widenHttp2Windows, it
 * reaches grpc-js's servers through an internal field and says so if it
 * cannot.
 */
export function guardGrpcHandshakes(server: Server, guard: HandshakeGuard, logger: Logger): void {
  const http2Servers = (server as unknown as { http2Servers?: Map<Http2Server, unknown> }).http2Servers;
  if (!(http2Servers instanceof Map)) {
    logger.warn("cannot reach grpc-js HTTP/2 servers; TLS handshakes keep Node's 120 s timeout and no bound");
    return;
  }
  for (const http2Server of http2Servers.keys()) {
    if (http2Server instanceof TlsServer) guard.attach(http2Server);
  }
}
