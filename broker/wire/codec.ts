/**
 * Pure encode/decode of tunnel frames, no I/O.
 *
 * Frames are the hot path, so they use a compact binary header rather than
 * protobuf: one byte of type, then fixed big-endian fields, then the payload.
 * A DATA frame costs 5 bytes of header and exactly one copy (the payload into
 * the frame buffer the NATS client then writes out).
 *
 *   DATA     0x01 | seq u32 | payload...
 *   CLOSE    0x02 | lastSeq u32 | codeLen u8 | code ascii | message utf8
 *   WINDOW   0x03 | limit u48          absolute: "you may send up to byte offset limit"
 *   BLOCKED  0x04 | sent u48           sender has no credit; receiver answers with WINDOW
 *   PING     0x05 | lastSeq u32        sender's last DATA seq; peer checks it and answers PONG
 *   PONG     0x06 | lastSeq u32
 *   ACCEPTED 0x07                     agent -> frontend: "I got your dial and am working on it"
 *   FIN      0x08 | seq u32           half-close: the sender's last byte was sent; sequenced like DATA
 *                                     (it takes the next seq), so a lost FIN shows up as a gap
 *
 * Unknown frame types decode to `undefined` and are ignored by the receiver
 * (skew tolerance: a newer peer may add types).
 */
import { ErrorCode, KnatsError } from '../errors.js';

export const FrameType = {
  Data: 0x01,
  Close: 0x02,
  Window: 0x03,
  Blocked: 0x04,
  Ping: 0x05,
  Pong: 0x06,
  Accepted: 0x07,
  Fin: 0x08,
} as const;

export const DATA_HEADER_BYTES = 5;
/**
 * Largest payload in one DATA frame (also kept below the server's
 * max_payload by the sender). Just under 32 KiB so that a frame with its
 * NATS protocol line fits twice in a 64 KiB socket read: with 64 KiB frames
 * every message straddles reads, and nats.js and nats-server copy and regrow
 * buffers for each one (measured: nats-server CPU per MiB -25..35%, tunnel
 * throughput +20..35%).
 */
export const MAX_DATA_PAYLOAD = 32 * 1024 - 128;
const MAX_CLOSE_MESSAGE_BYTES = 1024;

export type Frame =
  | { type: typeof FrameType.Data; seq: number; payload: Buffer }
  | { type: typeof FrameType.Close; lastSeq: number; code: string; message: string }
  | { type: typeof FrameType.Window; limit: number }
  | { type: typeof FrameType.Blocked; sent: number }
  | { type: typeof FrameType.Ping; lastSeq: number }
  | { type: typeof FrameType.Pong; lastSeq: number }
  | { type: typeof FrameType.Accepted }
  | { type: typeof FrameType.Fin; seq: number };

/** Copies `payload` behind a DATA header into one new buffer. */
export function encodeData(seq: number, payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(DATA_HEADER_BYTES + payload.length);
  frame[0] = FrameType.Data;
  frame.writeUInt32BE(seq >>> 0, 1);
  frame.set(payload, DATA_HEADER_BYTES);
  return frame;
}

/**
 * Reads smaller than this are copied out of their read buffer (into one of
 * their own size, with the header's room): a published frame stays alive
 * in nats.js until it flushes, for as long as the bus is down, and a small
 * read must not keep a whole read buffer alive with it (a chatty
 * destination's frames would then pin many times the bytes they carry).
 * At or above it, a frame pins at most four times its bytes.
 */
export const SMALL_READ_BYTES = MAX_DATA_PAYLOAD >>> 2;

/** A copy of a small read, with a DATA header's room in front (as readFrameBuffer's). */
export function copyWithHeaderRoom(read: Uint8Array): Buffer {
  const buffer = Buffer.allocUnsafe(DATA_HEADER_BYTES + read.length);
  buffer.set(read, DATA_HEADER_BYTES);
  return buffer.subarray(DATA_HEADER_BYTES);
}

/**
 * A DATA frame around `payload` without copying it: the header is written
 * into the DATA_HEADER_BYTES in front of it, which must be free (a view
 * from readFrameBuffer whose front was not used yet).
 */
export function encodeDataInPlace(seq: number, payload: Buffer): Buffer {
  const frame = Buffer.from(
    payload.buffer,
    payload.byteOffset - DATA_HEADER_BYTES,
    payload.length + DATA_HEADER_BYTES,
  );
  frame[0] = FrameType.Data;
  frame.writeUInt32BE(seq >>> 0, 1);
  return frame;
}

/** `code` is empty for a clean close. */
export function encodeClose(lastSeq: number, code: string, message: string): Buffer {
  const codeBytes = Buffer.from(code, 'latin1');
  let messageBytes = Buffer.from(message, 'utf8');
  if (messageBytes.length > MAX_CLOSE_MESSAGE_BYTES)
    messageBytes = messageBytes.subarray(0, MAX_CLOSE_MESSAGE_BYTES);
  const frame = Buffer.allocUnsafe(6 + codeBytes.length + messageBytes.length);
  frame[0] = FrameType.Close;
  frame.writeUInt32BE(lastSeq >>> 0, 1);
  frame[5] = codeBytes.length;
  codeBytes.copy(frame, 6);
  messageBytes.copy(frame, 6 + codeBytes.length);
  return frame;
}

function encodeOffset(type: number, offset: number): Buffer {
  const frame = Buffer.allocUnsafe(7);
  frame[0] = type;
  frame.writeUIntBE(offset, 1, 6);
  return frame;
}

export function encodeWindow(limit: number): Buffer {
  return encodeOffset(FrameType.Window, limit);
}

export function encodeBlocked(sent: number): Buffer {
  return encodeOffset(FrameType.Blocked, sent);
}

function encodeSeq(type: number, lastSeq: number): Buffer {
  const frame = Buffer.allocUnsafe(5);
  frame[0] = type;
  frame.writeUInt32BE(lastSeq >>> 0, 1);
  return frame;
}

export function encodePing(lastSeq: number): Buffer {
  return encodeSeq(FrameType.Ping, lastSeq);
}

export function encodePong(lastSeq: number): Buffer {
  return encodeSeq(FrameType.Pong, lastSeq);
}

/** Half-close; only sent to peers whose bus protocol knows it (see bus-messages.ts). */
export function encodeFin(seq: number): Buffer {
  return encodeSeq(FrameType.Fin, seq);
}

export function encodeAccepted(): Buffer {
  return Buffer.from([FrameType.Accepted]);
}

function malformed(what: string): KnatsError {
  return new KnatsError(ErrorCode.MalformedFrame, what);
}

function need(frame: Buffer, bytes: number, what: string): void {
  if (frame.length < bytes) throw malformed(`${what} frame too short (${frame.length} bytes)`);
}

/**
 * Decodes one frame. The DATA payload is a view into `frame` (no copy).
 * Throws KnatsError(MalformedFrame) on a truncated frame; returns undefined
 * for a frame type this version does not know.
 */
export function decodeFrame(frame: Buffer): Frame | undefined {
  if (frame.length === 0) throw malformed('empty frame');
  switch (frame[0]) {
    case FrameType.Data:
      need(frame, DATA_HEADER_BYTES, 'DATA');
      return { type: FrameType.Data, seq: frame.readUInt32BE(1), payload: frame.subarray(DATA_HEADER_BYTES) };
    case FrameType.Close: {
      need(frame, 6, 'CLOSE');
      const codeEnd = 6 + frame[5]!;
      need(frame, codeEnd, 'CLOSE');
      return {
        type: FrameType.Close,
        lastSeq: frame.readUInt32BE(1),
        code: frame.toString('latin1', 6, codeEnd),
        // The encoder caps messages; a peer that does not is cut to the same size.
        message: frame.toString('utf8', codeEnd, Math.min(frame.length, codeEnd + MAX_CLOSE_MESSAGE_BYTES)),
      };
    }
    case FrameType.Window:
      need(frame, 7, 'WINDOW');
      return { type: FrameType.Window, limit: frame.readUIntBE(1, 6) };
    case FrameType.Blocked:
      need(frame, 7, 'BLOCKED');
      return { type: FrameType.Blocked, sent: frame.readUIntBE(1, 6) };
    case FrameType.Ping:
      need(frame, 5, 'PING');
      return { type: FrameType.Ping, lastSeq: frame.readUInt32BE(1) };
    case FrameType.Pong:
      need(frame, 5, 'PONG');
      return { type: FrameType.Pong, lastSeq: frame.readUInt32BE(1) };
    case FrameType.Accepted:
      return { type: FrameType.Accepted };
    case FrameType.Fin:
      need(frame, 5, 'FIN');
      return { type: FrameType.Fin, seq: frame.readUInt32BE(1) };
    default:
      return undefined;
  }
}
