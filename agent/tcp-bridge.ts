/**
 * Binds a destination socket to the agent's end of a tunnel: socket reads
 * become DATA frames (paused when credit runs out), frames become socket
 * writes whose completion returns credit. The destination's FIN becomes the
 * tunnel's FIN and the frontend's FIN ends our writing (half-close both
 * ways); a reset or socket error aborts the tunnel, and an aborted tunnel
 * resets the destination.
 */
import type { Socket } from 'node:net';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { endAfterFlush, endedByReset, resetSocket } from '../broker/socket-reset.js';
import type { Tunnel } from '../broker/tunnel.js';

/** `socket` must allow half-open connections (each direction ends on its own). */
export function bridgeSocket(tunnel: Tunnel, socket: Socket, onClosed: () => void): void {
  let finished = false;
  let readEnded = false;
  let writeEnded = false;
  socket.on('data', (chunk: Buffer) => tunnel.write(chunk));
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
  tunnel.attach({
    deliver(chunk, done) {
      if (socket.destroyed) {
        done();
        return;
      }
      socket.write(chunk, () => done());
    },
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    shutdownWrite() {
      writeEnded = true;
      socket.end();
    },
    finish(err) {
      finished = true;
      if (err) {
        resetSocket(socket);
        return;
      }
      // Clean close: the destination gets everything written, then FIN (or a reset if it stops taking bytes).
      endAfterFlush(socket, tunnel.lingerMs);
    },
  });
}
