/**
 * Frame buffers that are reused once the bus socket has written them.
 *
 * Every DATA frame needs a buffer of about 32 KiB. Allocated fresh, each is
 * a new ArrayBuffer outside V8's heap, and V8 starts a full (mark-compact)
 * collection for about every 64 MiB of such memory allocated: at tunnel
 * speed that was a collection every fraction of a second and about a
 * quarter of a frontend's or an agent's CPU. A pooled buffer goes back to
 * the pool when the socket reports the write of its frame done (see
 * vectored-flush.ts), so a steady stream reuses the same few buffers.
 *
 * Only a frame that is the sole user of its buffer may be marked
 * recyclable: a buffer back in the pool is overwritten by the next frame.
 * A frame that is never written (the bus went down and nats.js dropped its
 * queue) is simply left to the garbage collector.
 */
import {
  DATA_HEADER_BYTES,
  encodeData,
  encodeDataInPlace,
  FrameType,
  MAX_DATA_PAYLOAD,
  SMALL_READ_BYTES,
} from '../wire/codec.js';

export const FRAME_BUFFER_BYTES = DATA_HEADER_BYTES + MAX_DATA_PAYLOAD;
/** Free buffers kept for reuse (4 MiB); more are left to the garbage collector. */
const MAX_FREE_BUFFERS = 128;

const free: ArrayBuffer[] = [];
/** Buffers of frames queued for writing whose memory nothing else uses. */
const recyclable = new WeakSet<ArrayBufferLike>();

/** A whole FRAME_BUFFER_BYTES buffer: from the pool, or new. */
export function takeFrameBuffer(): Buffer {
  const reused = free.pop();
  // Its own ArrayBuffer: Node 24 serves allocUnsafe of this size from a shared pool, where one frame
  // kept by nats.js (the bus is down) would keep its neighbours' memory alive too.
  return reused ? Buffer.from(reused) : Buffer.allocUnsafeSlow(FRAME_BUFFER_BYTES);
}

/**
 * `frame` (a view of a takeFrameBuffer buffer) is handed to the bus and
 * nothing else reads or keeps its buffer: the buffer may be reused once
 * the frame is written.
 */
export function markRecyclable(frame: Uint8Array): void {
  if (frame.buffer.byteLength === FRAME_BUFFER_BYTES) recyclable.add(frame.buffer);
}

/**
 * For a piece about to be written to the bus socket: a callback that puts
 * its buffer back in the pool once written, or undefined when the piece's
 * buffer is not recyclable.
 */
export function recyclerFor(piece: Uint8Array): (() => void) | undefined {
  const buffer = piece.buffer;
  if (!recyclable.has(buffer)) return undefined;
  recyclable.delete(buffer);
  return () => {
    if (free.length < MAX_FREE_BUFFERS) free.push(buffer as ArrayBuffer);
  };
}

/**
 * encodeData into a pooled buffer, marked recyclable. A small payload gets
 * a buffer of its own size instead: while the bus is down nats.js keeps
 * queued frames, and a small one must not hold a whole frame buffer.
 */
export function encodePooledData(seq: number, payload: Uint8Array): Buffer {
  if (payload.length < SMALL_READ_BYTES || payload.length > MAX_DATA_PAYLOAD) return encodeData(seq, payload);
  const frame = takeFrameBuffer().subarray(0, DATA_HEADER_BYTES + payload.length);
  frame[0] = FrameType.Data;
  frame.writeUInt32BE(seq >>> 0, 1);
  frame.set(payload, DATA_HEADER_BYTES);
  markRecyclable(frame);
  return frame;
}

/**
 * A read buffer (from readFrameBuffer) that became one whole frame: the
 * header goes in front of it, and its buffer may be reused once written.
 */
export function encodeWholeReadInPlace(seq: number, read: Buffer): Buffer {
  const frame = encodeDataInPlace(seq, read);
  markRecyclable(frame);
  return frame;
}

/** A buffer for one socket read that may become a frame in place: room for a header in front. */
export function readFrameBuffer(): Buffer {
  return takeFrameBuffer().subarray(DATA_HEADER_BYTES);
}

/** Free buffers in the pool (for tests). */
export function freeFrameBuffers(): number {
  return free.length;
}
