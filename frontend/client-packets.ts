/**
 * The konnectivity client protocol (proto/client.proto) as typed packets.
 *
 * Control packets go through protobufjs. DATA, the hot path, is encoded and
 * decoded by hand: the layout is fixed (type=4, data{connectID, data}), and
 * doing it directly costs one copy of the payload on encode and none on
 * decode, without protobufjs objects or a Long per packet. The decoder takes
 * only the canonical layout (fields in order, nothing else) and leaves any
 * other packet to protobufjs, whose `bytes` fields are views, not copies.
 */
import Long from 'long';
import protobuf from 'protobufjs';
import { protoDir } from '../broker/wire/bus-messages.js';

export const PacketType = {
  DIAL_REQ: 0,
  DIAL_RSP: 1,
  CLOSE_REQ: 2,
  CLOSE_RSP: 3,
  DATA: 4,
  DIAL_CLS: 5,
  DRAIN: 6,
} as const;
export type PacketType = (typeof PacketType)[keyof typeof PacketType];

/** int64 fields: Long when decoded; a number or Long when encoded. */
export type Int64 = Long | number;

export interface ClientPacket {
  type: number;
  dialRequest?: { protocol: string; address: string; random: Int64 };
  dialResponse?: { error: string; connectID: Int64; random: Int64 };
  data?: { connectID: Int64; error: string; data: Uint8Array };
  closeRequest?: { connectID: Int64 };
  closeResponse?: { error: string; connectID: Int64 };
  closeDial?: { random: Int64 };
  drain?: Record<string, never>;
}

protobuf.util.Long = Long;
protobuf.configure();

const root = protobuf.loadSync(`${protoDir}client.proto`);
const packetType = root.lookupType('Packet');

/** The gRPC method path: the upstream proto has no package, so no prefix. */
export const PROXY_METHOD_PATH = '/ProxyService/Proxy';

export function encodePacket(packet: ClientPacket): Buffer {
  if (packet.type === PacketType.DATA && packet.data && !packet.data.error) {
    return encodeDataPacket(toNumber(packet.data.connectID), packet.data.data);
  }
  const bytes = packetType.encode(packet as unknown as protobuf.Message).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Throws on bytes that are not a Packet. */
export function decodePacket(bytes: Uint8Array): ClientPacket {
  return packetType.decode(bytes) as unknown as ClientPacket;
}

export function varintLength(value: number): number {
  let n = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    n++;
  }
  return n;
}

export function writeVarint(buf: Buffer, offset: number, value: number): number {
  while (value >= 0x80) {
    buf[offset++] = (value & 0x7f) | 0x80;
    value = Math.floor(value / 128);
  }
  buf[offset++] = value;
  return offset;
}

/** Bytes of Packet{type: DATA, data: {connectID, data}} with `payloadLength` bytes of data. */
function dataPacketLength(connectID: number, payloadLength: number): number {
  const innerLength = dataInnerLength(connectID, payloadLength);
  return 2 + 1 + varintLength(innerLength) + innerLength;
}

function dataInnerLength(connectID: number, payloadLength: number): number {
  return (
    1 + varintLength(connectID) + (payloadLength > 0 ? 1 + varintLength(payloadLength) + payloadLength : 0)
  );
}

/** Packet{type: DATA, data: {connectID, data}} written at the start of `buf` (dataPacketLength bytes). */
function writeDataPacket(buf: Buffer, connectID: number, payload: Uint8Array): Buffer {
  buf[0] = 0x08; // field 1 (type), varint
  buf[1] = PacketType.DATA;
  buf[2] = 0x22; // field 4 (data), length-delimited
  let offset = writeVarint(buf, 3, dataInnerLength(connectID, payload.length));
  buf[offset++] = 0x08; // Data.connectID
  offset = writeVarint(buf, offset, connectID);
  if (payload.length > 0) {
    buf[offset++] = 0x1a; // Data.data
    offset = writeVarint(buf, offset, payload.length);
    buf.set(payload, offset);
    offset += payload.length;
  }
  return buf.subarray(0, offset);
}

/** Packet{type: DATA, data: {connectID, data}} in one allocation. */
export function encodeDataPacket(connectID: number, payload: Uint8Array): Buffer {
  return writeDataPacket(Buffer.allocUnsafe(dataPacketLength(connectID, payload.length)), connectID, payload);
}

/**
 * A DATA packet for the client, encoded only when grpc-js serializes it
 * (serializeToClient): grpc-js copies every serialized message into a
 * buffer of its own with the gRPC length prefix, at once, so the encoding
 * can go to one reused buffer instead of a new one per packet.
 */
export class DataToClient {
  constructor(
    readonly connectID: number,
    readonly payload: Uint8Array,
  ) {}
}

let serializeScratch = Buffer.allocUnsafeSlow(64 * 1024);

/**
 * The gRPC door's response serializer: an encoded packet as it is, a
 * DataToClient encoded into a scratch buffer that the next call reuses
 * (grpc-js's serializeMessage copies the result before it returns).
 */
export function serializeToClient(value: Buffer | DataToClient): Buffer {
  if (!(value instanceof DataToClient)) return value;
  const length = dataPacketLength(value.connectID, value.payload.length);
  if (serializeScratch.length < length) serializeScratch = Buffer.allocUnsafeSlow(length);
  return writeDataPacket(serializeScratch, value.connectID, value.payload);
}

/** A DATA packet without error, as decodeDataPacket reads it. */
export interface DataPacket {
  readonly connectID: number;
  /** A view into the received bytes. */
  readonly data: Buffer;
}

/** Largest varint read here: 7 bytes (49 bits) always fit a double exactly. */
const MAX_FAST_VARINT_BYTES = 7;

/**
 * Reads a varint at `offset`: [value, next offset], or undefined when it
 * runs past `end` or is longer than MAX_FAST_VARINT_BYTES (a large or
 * negative int64: protobufjs decodes those).
 */
function readVarint(buf: Buffer, offset: number, end: number): [number, number] | undefined {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < MAX_FAST_VARINT_BYTES && offset < end; i++) {
    const byte = buf[offset++]!;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, offset];
    scale *= 128;
  }
  return undefined;
}

/**
 * Packet{type: DATA, data: {connectID, data}} in the layout encoders write
 * (fields in number order, default values left out), or undefined for any
 * other packet, which the caller decodes with protobufjs.
 */
export function decodeDataPacket(bytes: Buffer): DataPacket | undefined {
  const end = bytes.length;
  if (end < 4 || bytes[0] !== 0x08 || bytes[1] !== PacketType.DATA || bytes[2] !== 0x22) return undefined;
  const inner = readVarint(bytes, 3, end);
  if (!inner || inner[1] + inner[0] !== end) return undefined;
  let offset = inner[1];
  let connectID = 0;
  if (offset < end && bytes[offset] === 0x08) {
    const id = readVarint(bytes, offset + 1, end);
    if (!id) return undefined;
    [connectID, offset] = id;
  }
  let data = bytes.subarray(end, end);
  if (offset < end && bytes[offset] === 0x1a) {
    const length = readVarint(bytes, offset + 1, end);
    if (!length || length[1] + length[0] !== end) return undefined;
    data = bytes.subarray(length[1], end);
    offset = end;
  }
  return offset === end ? { connectID, data } : undefined;
}

export function toNumber(value: Int64 | undefined | null): number {
  if (value === undefined || value === null) return 0;
  return typeof value === 'number' ? value : value.toNumber();
}

/** A stable map key for int64 values that may exceed 2^53 (the client's `random`). */
export function int64Key(value: Int64 | undefined | null): string {
  if (value === undefined || value === null) return '0';
  return value.toString();
}
