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
 * writePieces is what a connection's flush does instead (nats-internals.ts
 * puts it in place): small pieces (protocol lines, CRLFs, control frames)
 * are still packed together, into a small buffer, and large payloads go to
 * the socket by reference, all in one corked write (one writev system call);
 * a pooled frame buffer goes back to its pool once written (frame-pool.ts).
 * What reaches the socket is byte for byte what nats.js would have written,
 * in the same order.
 */
import type { Socket } from 'node:net';
import { recyclerFor } from '../tunnel/frame-pool.js';

/** Pieces up to this size are packed together; larger ones are written by reference. */
const PACK_BELOW_BYTES = 4096;

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
