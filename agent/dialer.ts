/**
 * TCP dials to destinations, with a timeout and the socket errors mapped to
 * the stable error codes (and so to upstream's DIAL_RSP/HTTP statuses).
 */
import type { Socket } from 'node:net';
import type { DialAddress } from '../broker/address.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { connectDestination } from './tcp-bridge.js';

export function dialTcp(address: DialAddress, timeoutMs: number, signal?: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connectDestination({
      host: address.host,
      port: address.port,
      noDelay: true,
      allowHalfOpen: true,
    });
    const target = `${address.host}:${address.port}`;
    const done = (err?: KnatsError) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off('error', onError);
      if (err) {
        socket.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const onConnect = () => done();
    const onError = (err: NodeJS.ErrnoException) => done(mapSocketError(err, target));
    const onAbort = () => done(new KnatsError(ErrorCode.DialCancelled, `dial to ${target} cancelled`));
    const timer = setTimeout(
      () =>
        done(new KnatsError(ErrorCode.DialTimeout, `dial tcp ${target}: i/o timeout after ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.once('connect', onConnect);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export function mapSocketError(err: NodeJS.ErrnoException, target: string): KnatsError {
  const text = `dial tcp ${target}: ${err.code ?? ''} ${err.message}`.trim();
  switch (err.code) {
    case 'ECONNREFUSED':
      return new KnatsError(ErrorCode.DialRefused, `${text} (connection refused)`);
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return new KnatsError(ErrorCode.DialUnreachable, `${text} (unreachable)`);
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NONAME':
      return new KnatsError(ErrorCode.DialDns, `${text} (name not resolved)`);
    case 'ETIMEDOUT':
      return new KnatsError(ErrorCode.DialTimeout, `${text} (timeout)`);
    case 'EMFILE':
    case 'ENFILE':
      return new KnatsError(ErrorCode.AgentOutOfFds, `${text} (agent out of file descriptors)`);
    default:
      return new KnatsError(ErrorCode.DialFailed, text);
  }
}
