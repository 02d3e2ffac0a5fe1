/**
 * The one place that reaches past nats.js's public API. Everything here
 * reads or replaces fields nats.js does not document; nothing else in the
 * project does.
 *
 * What it touches, on a NatsConnection (nats-core's NatsConnectionImpl):
 * - `nc.protocol` (ProtocolHandler): `outbound` (DataBuffer: `buffers`
 *   array, `byteLength` number, `size()`), `transport` (the Node transport:
 *   `socket`, `isClosed`), `infoReceived`, `connected`, and it replaces
 *   `flushPending()` and `sendCommand()` on that one instance;
 * - `nc.options.inboxPrefix`, read only.
 *
 * Checked against @nats-io/nats-core and @nats-io/transport-node in
 * NATS_CHECKED_VERSIONS; test/integration/nats-internals.test.ts fails on an
 * installed version outside it, on a field that moved, and on a flush that
 * is not byte for byte nats.js's own.
 *
 * When the flush internals are missing, installVectoredFlush changes nothing
 * and the connection keeps nats.js's own flush (the caller logs
 * KNATS_NATS_CLIENT_INTERNALS). What that fallback costs, as measured when
 * the vectored flush came in together with pooled frames (commit 7fdef5a,
 * quick bench, 3 runs each): agent CPU for a CONNECT download 2.4-2.9 ms/MiB
 * with nats.js's flush against 1.05-1.09 with this one, frontend upload
 * 2.5-3.4 against 2.0; and 0.8 against 0.1 us per protocol line encoded
 * (commit 920d399). docs/performance.md has the later full
 * run: the publishing tunnel ends at 0.96 and 1.51 ms/MiB against 2.13 for
 * the floor relay's sender, which publishes with nats.js's own flush.
 */
import type { Socket } from 'node:net';
import type { NatsConnection } from '@nats-io/transport-node';
import { writePieces } from './vectored-flush.js';

/** The nats.js versions the internals below were checked against: `from` included, `below` not. */
export const NATS_CHECKED_VERSIONS = {
  packages: ['@nats-io/nats-core', '@nats-io/transport-node'],
  from: '3.4.0',
  below: '3.5.0',
} as const;

interface OutboundInternals {
  buffers: Uint8Array[];
  byteLength: number;
  size(): number;
}
interface TransportInternals {
  socket?: Socket;
  isClosed?: boolean;
}
export interface ProtocolInternals {
  outbound: OutboundInternals;
  transport: TransportInternals;
  infoReceived: boolean;
  connected: boolean;
  flushPending(): void;
  sendCommand(cmd: string | Uint8Array, ...payloads: Uint8Array[]): void;
}

/** The connection's protocol handler when it has every field the vectored flush relies on, else undefined. */
export function protocolOf(nc: NatsConnection): ProtocolInternals | undefined {
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

/** The prefix nats.js's request/reply subscription lives under (`_INBOX` unless the connection sets another). */
export function inboxPrefixOf(nc: NatsConnection): string | undefined {
  return (nc as unknown as { options?: { inboxPrefix?: string } }).options?.inboxPrefix;
}

let vectoredFlushes = 0;

/** How many flushes, process-wide, went out through writePieces: the marker that the patched path runs. */
export function vectoredFlushCount(): number {
  return vectoredFlushes;
}

/**
 * Makes `nc` flush its queued publishes with writePieces and encode each
 * protocol line (PUB subject size) with Buffer.from, into Node's shared
 * pool, where nats.js's TextEncoder makes a new ArrayBuffer per publish.
 * Returns false (and changes nothing) when this nats.js does not have the
 * internals it relies on.
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
    vectoredFlushes++;
  };
  return true;
}
