/**
 * Telling a TCP reset from a FIN when a socket's readable side ends.
 *
 * libuv reports a reset that arrives right behind data as a plain EOF: after
 * a partial read, POLLHUP is taken for end-of-stream without reading again,
 * so the ECONNRESET is never seen and Node emits 'end' as for a FIN. An
 * abort would then pass on as a clean end after a short stream. The kernel
 * still knows: a reset socket is in TCP_CLOSE, where getpeername fails
 * (ENOTCONN), while after a FIN it sits in CLOSE_WAIT with its peer intact.
 * That holds only while our own writing side is still open (after both FINs
 * the socket is closed too), so callers ask only then.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

interface PeerNameHandle {
  getpeername?(out: object): number;
}

/** True when the socket whose 'end' just fired was in fact reset by its peer. */
export function endedByReset(socket: Socket): boolean {
  // Under TLS the TCP socket beneath (Node's internal `_parent`) holds the state.
  const tcp = socket instanceof TLSSocket ? ((socket as { _parent?: Socket })._parent ?? socket) : socket;
  const handle = (tcp as unknown as { _handle?: PeerNameHandle })._handle;
  // Unix sockets (Pipe handles) have no reset and no getpeername.
  if (!handle?.getpeername) return false;
  return handle.getpeername({}) !== 0;
}
