/**
 * Binds a destination socket to the agent's end of a tunnel: socket reads
 * become DATA frames (paused when credit runs out), frames become socket
 * writes whose completion returns credit. The destination's FIN becomes the
 * tunnel's FIN and the frontend's FIN ends our writing (half-close both
 * ways); a reset or socket error aborts the tunnel, and an aborted tunnel
 * resets the destination.
 */
import { connect, type Socket, type TcpNetConnectOpts } from 'node:net';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { BurstWriter } from '../broker/tunnel/burst-writer.js';
import { readFrameBuffer } from '../broker/tunnel/frame-pool.js';
import { endAfterFlush, endedByReset, resetSocket } from '../broker/tunnel/socket-reset.js';
import type { Tunnel } from '../broker/tunnel/tunnel.js';
import { copyWithHeaderRoom, SMALL_READ_BYTES } from '../broker/wire/codec.js';

/**
 * A destination socket's reads, straight into DATA frames: each read lands
 * in a buffer of one frame's size with room for the header (readFrameBuffer),
 * so a read is one frame, built without a copy; a small read is copied out
 * instead and its buffer serves the next read (SMALL_READ_BYTES). Until the socket is bridged
 * the first read is held and the socket paused (what the destination sends
 * before the dial is answered waits in the kernel, as it would in Node's buffer).
 */
class FrameReads {
  private tunnel: Tunnel | undefined;
  private early: Buffer | undefined;
  /** The last read buffer when its read was copied out of it: free for the next read. */
  private spare: Buffer | undefined;
  readonly onread = {
    buffer: (): Buffer => {
      const buffer = this.spare ?? readFrameBuffer();
      this.spare = undefined;
      return buffer;
    },
    callback: (bytes: number, buffer: Buffer): boolean => {
      let chunk = buffer.subarray(0, bytes);
      if (bytes < SMALL_READ_BYTES) {
        chunk = copyWithHeaderRoom(chunk);
        this.spare = buffer;
      }
      if (!this.tunnel) {
        this.early = chunk;
        return false;
      }
      this.tunnel.write(chunk, true);
      return true;
    },
  };

  bind(tunnel: Tunnel, socket: Socket): void {
    this.tunnel = tunnel;
    const early = this.early;
    this.early = undefined;
    if (early) tunnel.write(early, true);
    // The tunnel paused the socket itself if it has no credit for more.
    if (!tunnel.isLocalPaused) socket.resume();
  }
}

const frameReads = new WeakMap<Socket, FrameReads>();

/** `net.connect` for a destination whose socket bridgeSocket will carry. */
export function connectDestination(options: TcpNetConnectOpts): Socket {
  const reads = new FrameReads();
  const socket = connect({ ...options, onread: reads.onread });
  frameReads.set(socket, reads);
  return socket;
}

/**
 * `socket` comes from connectDestination and must allow half-open
 * connections (each direction ends on its own).
 */
export function bridgeSocket(tunnel: Tunnel, socket: Socket, onClosed: () => void): void {
  let finished = false;
  let readEnded = false;
  let writeEnded = false;
  const reads = frameReads.get(socket);
  if (!reads) throw new Error('bridgeSocket needs a socket from connectDestination');
  socket.on('end', () => {
    readEnded = true;
    if (!writeEnded && endedByReset(socket)) {
      tunnel.fail(new KnatsError(ErrorCode.ConnectionReset, 'destination reset the connection'));
      return;
    }
    tunnel.logger.debug('destination closed its side');
    tunnel.finishSending();
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    if (!finished) {
      tunnel.fail(
        new KnatsError(ErrorCode.ConnectionReset, `destination socket error: ${err.code ?? err.message}`),
      );
    }
  });
  socket.on('close', () => {
    // Both directions ended cleanly is a normal close: the tunnel finishes on its own (bytes may still wait for credit).
    if (!finished && !(readEnded && writeEnded)) {
      tunnel.fail(new KnatsError(ErrorCode.ConnectionReset, 'destination socket closed'));
    }
    onClosed();
  });
  let writer: BurstWriter | undefined;
  tunnel.attach({
    deliver(chunk, done) {
      if (socket.destroyed) {
        done(chunk.length);
        return;
      }
      writer ??= new BurstWriter(socket, done);
      writer.write(chunk);
    },
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    shutdownWrite() {
      writeEnded = true;
      writer?.flush();
      socket.end();
    },
    finish(err) {
      finished = true;
      writer?.flush();
      if (err) {
        resetSocket(socket);
        return;
      }
      // Clean close: the destination gets everything written, then FIN (or a reset if it stops taking bytes).
      endAfterFlush(socket, tunnel.lingerMs);
    },
  });
  reads.bind(tunnel, socket);
}
