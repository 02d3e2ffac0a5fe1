/**
 * Benchmark clients: one small connection interface (`Conn`) over every way
 * the benchmark reaches a destination (direct TCP, a TCP relay, a gRPC
 * tunnel, an HTTP CONNECT tunnel), so each scenario is written once and run
 * against the tunnel and its baselines alike.
 *
 * The konnectivity packets are encoded and decoded here by hand, straight
 * from proto/client.proto, not with the frontend's own code: the benchmark is
 * also a wire-compatibility check, and a lean client keeps the load
 * generator's CPU use (which competes with the measured processes on this
 * 2-core machine) low.
 */
import http2 from 'node:http2';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
// Only the generic varint helpers are shared; every packet layout below is written from client.proto.
import { varintLength, writeVarint } from '../../frontend/client-packets.js';

export const PROXY_METHOD = '/ProxyService/Proxy';

export const PacketType = {
  DIAL_REQ: 0,
  DIAL_RSP: 1,
  CLOSE_REQ: 2,
  CLOSE_RSP: 3,
  DATA: 4,
  DIAL_CLS: 5,
  DRAIN: 6,
} as const;

// ---- protobuf by hand ------------------------------------------------------

/** Packet{type, <field>: <inner>} where inner is already encoded. */
function wrap(type: number, field: number, inner: Buffer): Buffer {
  const out = Buffer.allocUnsafe(2 + 1 + varintLength(inner.length) + inner.length);
  out[0] = 0x08;
  out[1] = type;
  out[2] = (field << 3) | 2;
  const offset = writeVarint(out, 3, inner.length);
  inner.copy(out, offset);
  return out;
}

export function encodeDialRequest(address: string, random: number): Buffer {
  const protocol = Buffer.from('tcp');
  const addr = Buffer.from(address);
  const inner = Buffer.allocUnsafe(2 + protocol.length + 1 + varintLength(addr.length) + addr.length + 11);
  let o = 0;
  inner[o++] = 0x0a;
  inner[o++] = protocol.length;
  o += protocol.copy(inner, o);
  inner[o++] = 0x12;
  o = writeVarint(inner, o, addr.length);
  o += addr.copy(inner, o);
  inner[o++] = 0x18;
  o = writeVarint(inner, o, random);
  return wrap(PacketType.DIAL_REQ, 2, inner.subarray(0, o));
}

export function encodeCloseRequest(connectID: number): Buffer {
  const inner = Buffer.allocUnsafe(11);
  inner[0] = 0x08;
  const o = writeVarint(inner, 1, connectID);
  return wrap(PacketType.CLOSE_REQ, 5, inner.subarray(0, o));
}

/** Packet{type: DATA, data: {connectID, data}}: one allocation, one copy of the payload. */
export function encodeData(connectID: number, payload: Uint8Array): Buffer {
  const inner = 1 + varintLength(connectID) + 1 + varintLength(payload.length) + payload.length;
  const buf = Buffer.allocUnsafe(3 + varintLength(inner) + inner);
  buf[0] = 0x08;
  buf[1] = PacketType.DATA;
  buf[2] = 0x22;
  let o = writeVarint(buf, 3, inner);
  buf[o++] = 0x08;
  o = writeVarint(buf, o, connectID);
  buf[o++] = 0x1a;
  o = writeVarint(buf, o, payload.length);
  buf.set(payload, o);
  return buf;
}

export interface DecodedPacket {
  type: number;
  /** DIAL_RSP/CLOSE_RSP error text. */
  error: string;
  connectID: number;
  random: number;
  /** DATA payload: a view into the received buffer. */
  data: Buffer | undefined;
}

class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }
  varint(): number {
    let result = 0;
    let mul = 1;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++]!;
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
  }
  skip(wireType: number): void {
    if (wireType === 0) this.varint();
    else if (wireType === 2) {
      const n = this.varint(); // read before `pos` is used: `pos += varint()` would add to the old pos
      this.pos += n;
    } else if (wireType === 1) this.pos += 8;
    else if (wireType === 5) this.pos += 4;
    else throw new Error(`wire type ${wireType}`);
  }
}

/** Decodes the fields of the packet types a client receives; unknown fields are skipped. */
export function decodePacket(buf: Buffer): DecodedPacket {
  const packet: DecodedPacket = { type: 0, error: '', connectID: 0, random: 0, data: undefined };
  const r = new Reader(buf, 0, buf.length);
  while (r.pos < r.end) {
    const key = r.varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 1 && wire === 0) {
      packet.type = r.varint();
    } else if ((field === 3 || field === 4 || field === 6) && wire === 2) {
      const len = r.varint();
      const inner = new Reader(buf, r.pos, r.pos + len);
      r.pos += len;
      while (inner.pos < inner.end) {
        const k = inner.varint();
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (field === 3) {
          // DialResponse{error=1, connectID=2, random=3}
          if (f === 1 && w === 2) packet.error = readString(inner);
          else if (f === 2 && w === 0) packet.connectID = inner.varint();
          else if (f === 3 && w === 0) packet.random = inner.varint();
          else inner.skip(w);
        } else if (field === 4) {
          // Data{connectID=1, error=2, data=3}
          if (f === 1 && w === 0) packet.connectID = inner.varint();
          else if (f === 2 && w === 2) packet.error = readString(inner);
          else if (f === 3 && w === 2) {
            const n = inner.varint();
            packet.data = buf.subarray(inner.pos, inner.pos + n);
            inner.pos += n;
          } else inner.skip(w);
        } else {
          // CloseResponse{error=1, connectID=2}
          if (f === 1 && w === 2) packet.error = readString(inner);
          else if (f === 2 && w === 0) packet.connectID = inner.varint();
          else inner.skip(w);
        }
      }
    } else {
      r.skip(wire);
    }
  }
  return packet;
}

function readString(r: Reader): string {
  const n = r.varint();
  const s = r.buf.toString('utf8', r.pos, r.pos + n);
  r.pos += n;
  return s;
}

// ---- the connection interface ------------------------------------------------

export interface Conn {
  /** false: wait for onDrain before writing more. */
  write(chunk: Buffer): boolean;
  onDrain(cb: () => void): void;
  /** Replaces the data handler. */
  onData(cb: (chunk: Buffer) => void): void;
  /** Called once when the far end closes or the connection fails. */
  onClose(cb: (err?: Error) => void): void;
  pause(): void;
  resume(): void;
  close(): void;
}

export function socketConn(socket: net.Socket): Conn {
  let dataCb: (chunk: Buffer) => void = () => {};
  socket.on('data', (chunk: Buffer) => dataCb(chunk));
  let closeCb: ((err?: Error) => void) | undefined;
  let closed = false;
  let closeErr: Error | undefined;
  socket.on('error', (err) => {
    closeErr ??= err;
  });
  socket.on('close', () => {
    closed = true;
    closeCb?.(closeErr);
  });
  return {
    write: (chunk) => socket.write(chunk),
    onDrain: (cb) => socket.once('drain', cb),
    onData: (cb) => {
      dataCb = cb;
    },
    onClose: (cb) => {
      closeCb = cb;
      if (closed) cb(closeErr);
    },
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    close: () => socket.destroy(),
  };
}

function connectSocket(options: net.NetConnectOpts, timeoutMs = 15_000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(options);
    socket.setNoDelay(true);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connect timeout ${JSON.stringify(options)}`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', reject);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** A TCP connection on loopback (direct, or to a relay that forwards it). */
export async function openTcp(port: number): Promise<Conn> {
  return socketConn(await connectSocket({ host: '127.0.0.1', port }));
}

/**
 * An HTTP CONNECT tunnel through a frontend on a Unix socket: the socket is
 * the tunnel once the 200 line and the empty line arrived.
 */
export async function openConnect(uds: string, address: string, timeoutMs = 15_000): Promise<Conn> {
  const socket = await connectSocket({ path: uds }, timeoutMs);
  socket.write(`CONNECT ${address} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
  const rest = await new Promise<Buffer>((resolve, reject) => {
    let head: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error(`no CONNECT answer within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 16 * 1024) done(new Error('CONNECT answer header too long'));
        return;
      }
      const status = head.toString('latin1', 0, end).split('\r\n')[0] ?? '';
      if (!/^HTTP\/1\.[01] 200/.test(status)) done(new Error(`CONNECT refused: ${status}`));
      else done(undefined, head.subarray(end + 4));
    };
    const onError = (err: Error) => done(err);
    const onClose = () => done(new Error('connection closed before the CONNECT answer'));
    const done = (err?: Error, extra?: Buffer) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      if (err) {
        socket.destroy();
        reject(err);
      } else resolve(extra!);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
  if (rest.length > 0) socket.unshift(rest);
  return socketConn(socket);
}

const identity = (b: Buffer) => b;

/** Go-like channel options: large HTTP/2 windows, one connection per client, no retry buffering. */
export function grpcChannelOptions(ownConnection: boolean): grpc.ChannelOptions {
  return {
    'grpc-node.flow_control_window': 8 * 1024 * 1024,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    'grpc.max_send_message_length': 16 * 1024 * 1024,
    'grpc.enable_retries': 0,
    ...(ownConnection ? { 'grpc.use_local_subchannel_pool': 1 } : {}),
  };
}

let nextRandom = 1;

export interface GrpcTunnel extends Conn {
  readonly connectID: number;
}

/**
 * What both gRPC clients share: one dial's state, the packets that drive it,
 * and the Conn built on top. The clients only differ in how bytes move.
 */
class ProxyTunnelState {
  readonly random = nextRandom++ + Math.floor(Math.random() * 2 ** 40) * 1024;
  connectID = 0;
  private dataCb: (chunk: Buffer) => void = () => {};
  private closeCb: ((err?: Error) => void) | undefined;
  private closed = false;
  private closeErr: Error | undefined;
  private dialed: ((err?: Error) => void) | undefined;

  finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closeErr = err;
    if (this.dialed) this.dialed(err ?? new Error('stream ended before DIAL_RSP'));
    this.closeCb?.(err);
  }

  /** Handles one packet from the frontend; CLOSE_RSP also calls `closeStream`. */
  onPacket(packet: DecodedPacket, closeStream: () => void): void {
    switch (packet.type) {
      case PacketType.DATA:
        if (packet.data && packet.data.length > 0) this.dataCb(packet.data);
        return;
      case PacketType.DIAL_RSP:
        if (packet.random !== this.random) return;
        if (packet.error) this.dialed?.(new Error(`dial failed: ${packet.error}`));
        else {
          this.connectID = packet.connectID;
          this.dialed?.();
        }
        return;
      case PacketType.CLOSE_RSP:
        this.finish(packet.error ? new Error(`CLOSE_RSP: ${packet.error}`) : undefined);
        closeStream();
        return;
      default:
        return;
    }
  }

  /** Sends the DIAL_REQ and waits for its DIAL_RSP; closes the stream on failure. */
  async dial(send: (dialRequest: Buffer) => void, address: string, timeoutMs: number, close: () => void) {
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.dialed = undefined;
          reject(new Error(`no DIAL_RSP within ${timeoutMs} ms`));
        }, timeoutMs);
        this.dialed = (err) => {
          this.dialed = undefined;
          clearTimeout(timer);
          if (err) reject(err);
          else resolve();
        };
        send(encodeDialRequest(address, this.random));
      });
    } catch (err) {
      close();
      throw err;
    }
  }

  conn(io: Pick<Conn, 'write' | 'onDrain' | 'pause' | 'resume' | 'close'>): GrpcTunnel {
    return {
      ...io,
      connectID: this.connectID,
      onData: (cb) => {
        this.dataCb = cb;
      },
      onClose: (cb) => {
        this.closeCb = cb;
        if (this.closed) cb(this.closeErr);
      },
    };
  }
}

/**
 * One konnectivity tunnel as kube-apiserver makes it: a new gRPC client (its
 * own HTTP/2 connection), one Proxy stream, DIAL_REQ, wait for DIAL_RSP. Closing
 * closes the whole connection, as the real client does.
 */
export async function openGrpcJs(target: string, address: string, timeoutMs = 15_000): Promise<GrpcTunnel> {
  const client = new grpc.Client(target, grpc.credentials.createInsecure(), grpcChannelOptions(true));
  const call = client.makeBidiStreamRequest<Buffer, Buffer>(PROXY_METHOD, identity, identity);
  const state = new ProxyTunnelState();
  const close = () => {
    state.finish();
    call.cancel();
    client.close();
  };
  call.on('data', (bytes: Buffer) => state.onPacket(decodePacket(bytes), close));
  call.on('error', (err: grpc.ServiceError) =>
    state.finish(err.code === grpc.status.CANCELLED ? undefined : err),
  );
  call.on('end', () => state.finish());
  await state.dial((request) => call.write(request), address, timeoutMs, close);
  return state.conn({
    write: (chunk) => call.write(encodeData(state.connectID, chunk)),
    onDrain: (cb) => call.once('drain', cb),
    pause: () => call.pause(),
    resume: () => call.resume(),
    close,
  });
}

// ---- a lean gRPC client on node:http2 -------------------------------------------------

const GRPC_WINDOW = 8 * 1024 * 1024;
const { NGHTTP2_CANCEL } = http2.constants;

/**
 * One HTTP/2 connection to a gRPC server on a Unix socket, as grpc-go makes
 * it: an 8 MiB stream and connection window, requests pipelined behind the
 * connection preface (no wait for the server's SETTINGS).
 */
export function h2Session(uds: string): http2.ClientHttp2Session {
  const session = http2.connect('http://localhost', {
    createConnection: () => net.connect({ path: uds }),
    settings: { initialWindowSize: GRPC_WINDOW, enablePush: false },
    maxSessionMemory: 1024,
  });
  session.once('connect', () => {
    try {
      session.setLocalWindowSize(GRPC_WINDOW);
    } catch {
      // closed meanwhile
    }
  });
  session.on('error', () => {});
  return session;
}

const shared = new Map<string, { session: http2.ClientHttp2Session; streams: number }>();

/**
 * Node's HTTP/2 server (nghttp2's rapid-reset mitigation) sends GOAWAY after
 * about 1000 streams reset by the client in a burst, so a warm connection is
 * replaced after this many cancelled streams.
 */
const STREAMS_PER_SHARED_SESSION = 500;

/** A connection kept open for dials on a warm connection (new stream per dial). */
function sharedSession(uds: string): http2.ClientHttp2Session {
  let entry = shared.get(uds);
  if (
    entry &&
    (entry.session.closed || entry.session.destroyed || entry.streams >= STREAMS_PER_SHARED_SESSION)
  ) {
    entry.session.close();
    entry = undefined;
  }
  if (!entry) {
    const session = h2Session(uds);
    session.unref();
    entry = { session, streams: 0 };
    shared.set(uds, entry);
  }
  entry.streams++;
  return entry.session;
}

/** gRPC length-prefixed messages out of a stream of chunks. */
class Deframer {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  constructor(private readonly onMessage: (message: Buffer) => void) {}

  push(chunk: Buffer): void {
    if (this.pendingBytes > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.pendingBytes < 5) return;
      chunk = Buffer.concat(this.pending, this.pendingBytes);
      this.pending = [];
      this.pendingBytes = 0;
    }
    let offset = 0;
    while (chunk.length - offset >= 5) {
      const length = chunk.readUInt32BE(offset + 1);
      if (chunk.length - offset - 5 < length) break;
      this.onMessage(chunk.subarray(offset + 5, offset + 5 + length));
      offset += 5 + length;
    }
    if (offset < chunk.length) {
      const rest = chunk.subarray(offset);
      this.pending.push(rest);
      this.pendingBytes += rest.length;
    }
  }
}

function grpcFrame(message: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(5 + message.length);
  frame[0] = 0;
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  return frame;
}

/** gRPC prefix and DATA packet header for `payloadLength` bytes of payload. */
function dataHeader(connectID: number, payloadLength: number): Buffer {
  const inner = 1 + varintLength(connectID) + 1 + varintLength(payloadLength) + payloadLength;
  const packetLength = 3 + varintLength(inner) + inner;
  const header = Buffer.allocUnsafe(5 + packetLength - payloadLength);
  header[0] = 0;
  header.writeUInt32BE(packetLength, 1);
  header[5] = 0x08;
  header[6] = PacketType.DATA;
  header[7] = 0x22;
  let o = writeVarint(header, 8, inner);
  header[o++] = 0x08;
  o = writeVarint(header, o, connectID);
  header[o++] = 0x1a;
  writeVarint(header, o, payloadLength);
  return header;
}

/**
 * A konnectivity tunnel on the lean client. `ownConnection`: a new HTTP/2
 * connection, closed with the tunnel (what kube-apiserver does); otherwise a
 * new stream on a warm shared connection, cancelled with the tunnel.
 */
export async function openH2Grpc(
  uds: string,
  address: string,
  ownConnection = true,
  timeoutMs = 15_000,
): Promise<GrpcTunnel> {
  const session = ownConnection ? h2Session(uds) : sharedSession(uds);
  const stream = session.request(
    {
      ':method': 'POST',
      ':path': PROXY_METHOD,
      'content-type': 'application/grpc',
      te: 'trailers',
    },
    { endStream: false },
  );
  const state = new ProxyTunnelState();
  const close = () => {
    state.finish();
    if (ownConnection) session.destroy();
    else if (!stream.closed) stream.close(NGHTTP2_CANCEL);
  };
  const deframer = new Deframer((message) => state.onPacket(decodePacket(message), close));
  stream.on('data', (chunk: Buffer) => deframer.push(chunk));
  stream.on('trailers', (trailers) => {
    const status = trailers['grpc-status'];
    if (status !== undefined && status !== '0') {
      state.finish(new Error(`grpc-status ${status}: ${trailers['grpc-message'] ?? ''}`));
    }
  });
  stream.on('error', (err) => state.finish(err));
  stream.on('close', () => state.finish());
  await state.dial((request) => stream.write(grpcFrame(request)), address, timeoutMs, close);
  return state.conn({
    write: (chunk) => {
      stream.write(dataHeader(state.connectID, chunk.length));
      return stream.write(chunk);
    },
    onDrain: (cb) => stream.once('drain', cb),
    pause: () => stream.pause(),
    resume: () => stream.resume(),
    close,
  });
}

/** The benchmark's gRPC client: the lean one, or grpc-js with BENCH_GRPC_CLIENT=grpc-js. */
export function openGrpc(uds: string, address: string, ownConnection = true): Promise<GrpcTunnel> {
  if (process.env.BENCH_GRPC_CLIENT === 'grpc-js') return openGrpcJs(`unix:${uds}`, address);
  return openH2Grpc(uds, address, ownConnection);
}
