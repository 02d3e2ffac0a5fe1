/**
 * Binds a destination socket to the agent's end of a tunnel: socket reads
 * become DATA frames (paused when credit runs out), frames become socket
 * writes whose completion returns credit.
 */
import type { Socket } from 'node:net';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { Tunnel } from '../broker/tunnel.js';

/** After the tunnel ends cleanly, how long the destination gets to take our last bytes. */
const END_GRACE_MS = 5000;

export function bridgeSocket(tunnel: Tunnel, socket: Socket, onClosed: () => void): void {
  let finished = false;
  socket.on('data', (chunk: Buffer) => tunnel.write(chunk));
  socket.on('end', () => {
    tunnel.logger.debug('destination closed its side');
    tunnel.close();
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    if (!finished) {
      tunnel.fail(
        new KnatsError(ErrorCode.DialFailed, `destination socket error: ${err.code ?? err.message}`),
      );
    }
  });
  socket.on('close', () => {
    if (!finished) tunnel.fail(new KnatsError(ErrorCode.DialFailed, 'destination socket closed'));
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
    finish(err) {
      finished = true;
      if (err) {
        socket.destroy();
        return;
      }
      // Clean close: let the destination take what was written, then close.
      socket.end();
      const grace = setTimeout(() => socket.destroy(), END_GRACE_MS);
      socket.once('close', () => clearTimeout(grace));
    },
  });
}
