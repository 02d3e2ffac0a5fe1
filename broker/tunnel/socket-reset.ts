/**
 * TCP resets at the socket level, where Node's own view is not enough.
 *
 * Seeing one: libuv reports a reset that arrives right behind data as a
 * plain EOF (after a partial read, POLLHUP is taken for end-of-stream
 * without reading again), so the ECONNRESET is never seen and Node emits
 * 'end' as for a FIN; an abort would then pass on as a clean end after a
 * short stream. The kernel still knows: a reset socket is in TCP_CLOSE,
 * where getpeername fails (ENOTCONN), while after a FIN it sits in
 * CLOSE_WAIT with its peer intact. That holds only while our own writing
 * side is still open (after both FINs the socket is closed too), so callers
 * ask only then.
 *
 * Sending one: `resetAndDestroy()` is only possible on a TCP handle whose
 * writing side was not shut down: libuv refuses a reset after a shutdown,
 * and Node then never emits 'close' for that socket.
 *
 * Ending cleanly: `destroy()` drops what still waits in Node's buffer and the
 * kernel then sends a plain FIN, a short stream with a clean end; a clean
 * end waits for the buffer instead (endAfterFlush).
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

interface TcpHandle {
  getpeername?(out: object): number;
}

/** The TCP socket beneath a TLS socket (Node's internal `_parent`), or the socket itself. */
function tcpOf(socket: Socket): Socket {
  return socket instanceof TLSSocket ? ((socket as { _parent?: Socket })._parent ?? socket) : socket;
}

/** Unix sockets (Pipe handles) have no getpeername, and no reset. */
function tcpHandleOf(socket: Socket): TcpHandle | undefined {
  const handle = (socket as unknown as { _handle?: TcpHandle })._handle;
  return typeof handle?.getpeername === 'function' ? handle : undefined;
}

/** True when the socket whose 'end' just fired was in fact reset by its peer. */
export function endedByReset(socket: Socket): boolean {
  const handle = tcpHandleOf(tcpOf(socket));
  return handle !== undefined && handle.getpeername!({}) !== 0;
}

/** Node shuts a socket's writing down once end() was called and its buffer is empty. */
function shutDown(socket: Socket): boolean {
  return socket.writableEnded && socket.writableLength === 0;
}

/**
 * Aborts a connection so that its peer sees an abort: a TCP reset where one
 * can be sent. A Unix socket, or a TCP socket whose writing side was already
 * shut down, is destroyed plainly (the peer sees a close).
 */
export function resetSocket(socket: Socket): void {
  const tcp = tcpOf(socket);
  if (tcpHandleOf(tcp) && !tcp.destroyed && !shutDown(socket) && !(tcp !== socket && tcp.writableEnded)) {
    tcp.resetAndDestroy();
    if (tcp !== socket) socket.destroy();
    return;
  }
  socket.destroy();
}

/** Once our last byte and FIN left Node, how long the peer gets to close its side before we close ours. */
const CLOSE_GRACE_MS = 5000;

/**
 * Ends our side cleanly: the peer gets every byte still queued in Node, then
 * our FIN, however slowly it reads, as long as it keeps reading. A peer that
 * takes nothing for `stallMs` is reset (an abort, never a short stream with a
 * clean end). Once everything is handed to the kernel, whose FIN follows the
 * bytes, the peer has a few seconds to close its side before the socket is
 * closed.
 */
export function endAfterFlush(socket: Socket, stallMs: number): void {
  socket.end();
  // Keep reading (the caller discards it) so the peer's own FIN or reset is seen even if we had paused it.
  socket.resume();
  let grace: NodeJS.Timeout | undefined;
  let queued = socket.writableLength;
  const stall = setInterval(() => {
    const now = socket.writableLength;
    if (now > 0 && now >= queued) {
      clearInterval(stall);
      resetSocket(socket);
    }
    queued = now;
  }, stallMs);
  stall.unref();
  const closeSoon = () => {
    clearInterval(stall);
    grace = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
    grace.unref();
  };
  if (socket.writableFinished) closeSoon();
  else socket.once('finish', closeSoon);
  socket.once('close', () => {
    clearInterval(stall);
    clearTimeout(grace);
  });
}
