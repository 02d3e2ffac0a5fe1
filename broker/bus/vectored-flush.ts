/**
 * One socket writev per nats.js flush instead of a packed copy.
 *
 * nats.js queues every publish as three pieces (protocol line, payload,
 * CRLF) and, on each flush, packs all queued pieces into one new zero-filled
 * buffer before writing it: every payload is copied once more, and each
 * flush allocates a buffer as large as the burst, which the garbage
 * collector then has to reclaim. At tunnel speed that pack, its allocation
 * and the collections they cause are a large share of a process's CPU.
 *
 * installVectoredFlush replaces the flush of one connection: small pieces
 * (protocol lines, CRLFs, control frames) are still packed together, into
 * a small buffer, and large payloads go to the socket by reference, all in
 * one corked write (one writev system call); a pooled frame buffer goes
 * back to its pool once written (frame-pool.ts). What reaches the socket is
 * byte for byte what nats.js would have written, in the same order.
 *
 * It also encodes each protocol line (PUB subject size) with Buffer.from,
 * into Node's shared pool, where nats.js's TextEncoder makes a new
 * ArrayBuffer per publish (measured: 0.1 against 0.8 us per line).
 *
 * It relies on internals of nats.js (the connection's protocol handler,
 * its sendCommand, its outbound piece list and its transport's socket), checked
 * when it is installed: when they are not there (another nats.js version),
 * nothing is replaced and the connection keeps nats.js's own flush.
 */
import type { Socket } from 'node:net';
import type { NatsConnection } from '@nats-io/transport-node';
import { recyclerFor } from '../tunnel/frame-pool.js';

/** Pieces up to this size are packed together; larger ones are written by reference. */
const PACK_BELOW_BYTES = 4096;

interface OutboundInternals {
  buffers: Uint8Array[];
  byteLength: number;
  size(): number;
}
interface TransportInternals {
  socket?: Socket;
  isClosed?: boolean;
}
interface ProtocolInternals {
  outbound: OutboundInternals;
  transport: TransportInternals;
  infoReceived: boolean;
  connected: boolean;
  flushPending(): void;
  sendCommand(cmd: string | Uint8Array, ...payloads: Uint8Array[]): void;
}

function protocolOf(nc: NatsConnection): ProtocolInternals | undefined {
  const protocol = (nc as unknown as { protocol?: Partial<ProtocolInternals> }).protocol;
  const outbound = protocol?.outbound;
  if (
    !protocol ||
    typeof protocol.flushPending !== 'function' ||
    typeof protocol.sendCommand !== 'function' ||
    !outbound ||
    !Array.isArray(outbound.buffers) ||
    typeof outbound.byteLength !== 'number' ||
    typeof outbound.size !== 'function' ||
    typeof protocol.transport !== 'object'
  ) {
    return undefined;
  }
  return protocol as ProtocolInternals;
}

/**
 * Writes `pieces` to `socket` in one corked write: runs of small pieces
 * become one buffer each, large pieces are passed as they are.
 */
export function writePieces(socket: Socket, pieces: readonly Uint8Array[]): void {
  socket.cork();
  let run: Uint8Array[] = [];
  let runBytes = 0;
  const flushRun = () => {
    if (run.length === 1) socket.write(run[0]!);
    else if (run.length > 1) socket.write(Buffer.concat(run, runBytes));
    run = [];
    runBytes = 0;
  };
  for (const piece of pieces) {
    if (piece.length < PACK_BELOW_BYTES) {
      run.push(piece);
      runBytes += piece.length;
      continue;
    }
    flushRun();
    socket.write(piece, recyclerFor(piece));
  }
  flushRun();
  socket.uncork();
}

/**
 * Makes `nc` flush its queued publishes with writePieces. Returns false
 * (and changes nothing) when this nats.js does not have the internals it
 * relies on.
 */
export function installVectoredFlush(nc: NatsConnection): boolean {
  const protocol = protocolOf(nc);
  if (!protocol) return false;
  const packedFlush = protocol.flushPending.bind(protocol);
  const sendCommand = protocol.sendCommand.bind(protocol);
  protocol.sendCommand = (cmd, ...payloads) =>
    sendCommand(typeof cmd === 'string' ? Buffer.from(cmd) : cmd, ...payloads);
  protocol.flushPending = () => {
    if (!protocol.infoReceived || !protocol.connected) return;
    const outbound = protocol.outbound;
    if (outbound.size() === 0) return;
    const socket = protocol.transport.socket;
    if (!socket || protocol.transport.isClosed || typeof socket.cork !== 'function') {
      packedFlush();
      return;
    }
    // Taken as nats.js's drain() would: the queue is empty afterwards, whatever the socket does.
    const pieces = outbound.buffers;
    outbound.buffers = [];
    outbound.byteLength = 0;
    writePieces(socket, pieces);
  };
  return true;
}
