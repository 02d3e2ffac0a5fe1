/**
 * An HTTP CONNECT tunnel client for `knats dial --mode http-connect`: the
 * frontend's socket after a `200 Connection Established`, as a Node socket.
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { ErrorCode, KnatsError } from '../broker/errors.js';

export type ConnectTarget =
  | { readonly path: string }
  | {
      readonly host: string;
      readonly port: number;
      readonly ca: string;
      readonly cert: string;
      readonly key: string;
    };

const MAX_RESPONSE_HEAD = 16 * 1024;

export async function openConnectTunnel(
  target: ConnectTarget,
  address: string,
  timeoutMs: number,
): Promise<Socket> {
  const socket =
    'path' in target
      ? netConnect(target.path)
      : tlsConnect({
          host: target.host,
          port: target.port,
          ca: readFileSync(target.ca),
          cert: readFileSync(target.cert),
          key: readFileSync(target.key),
          ALPNProtocols: ['http/1.1'],
        });
  socket.write(`CONNECT ${address} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
  return new Promise<Socket>((resolve, reject) => {
    let head = Buffer.alloc(0);
    const fail = (message: string) => {
      cleanup();
      socket.destroy();
      reject(new KnatsError(ErrorCode.DialFailed, message));
    };
    const timer = setTimeout(() => fail(`no answer to CONNECT within ${timeoutMs} ms`), timeoutMs);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > MAX_RESPONSE_HEAD) fail('response header too large');
        return;
      }
      const statusLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      const rest = head.subarray(end + 4);
      if (!/^HTTP\/1\.[01] 200 /.test(statusLine)) {
        fail(`${statusLine}: ${rest.toString('utf8').trim()}`);
        return;
      }
      cleanup();
      // Bytes behind the header already belong to the tunnel.
      if (rest.length > 0) socket.unshift(rest);
      resolve(socket);
    };
    const onError = (err: NodeJS.ErrnoException) =>
      fail(
        `cannot use the frontend at ${'path' in target ? target.path : `${target.host}:${target.port}`}: ${err.message}`,
      );
    const onEnd = () => fail('frontend closed the connection before answering');
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('end', onEnd);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('end', onEnd);
  });
}
