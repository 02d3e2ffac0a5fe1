/**
 * The benchmark's destinations, run as their own process (as in production,
 * where destinations are other hosts): prints one JSON line with its ports on
 * stdout, then serves until stdin closes or a signal arrives.
 *
 *   bulk       a 7-byte request header, op u8 | length u48 (big-endian):
 *                'U' n  the client uploads n bytes; answered with 6 bytes (n) once all arrived
 *                'D' n  the server sends n bytes
 *              several requests may follow one another on one connection.
 *   echo       every byte back.
 *   blackhole  accepts and never reads (a stuck destination).
 */
import net from 'node:net';
import { BULK_HEADER_BYTES, type DestinationPorts, stopWithParent } from './common.js';

/** What the source sends: a fixed pattern, so no time goes into making bytes. */
const SOURCE_CHUNK = Buffer.alloc(256 * 1024, 0x5a);

function serveBulk(socket: net.Socket): void {
  let header: Buffer = Buffer.alloc(0);
  let uploadLeft = 0;
  let uploadTotal = 0;
  const onData = (chunk: Buffer): void => {
    while (chunk.length > 0) {
      if (uploadLeft > 0) {
        const n = Math.min(uploadLeft, chunk.length);
        uploadLeft -= n;
        chunk = chunk.subarray(n);
        if (uploadLeft === 0) {
          const ack = Buffer.allocUnsafe(6);
          ack.writeUIntBE(uploadTotal, 0, 6);
          socket.write(ack);
        }
        continue;
      }
      const need = BULK_HEADER_BYTES - header.length;
      header = Buffer.concat([header, chunk.subarray(0, need)]);
      chunk = chunk.subarray(need);
      if (header.length < BULK_HEADER_BYTES) return;
      const op = String.fromCharCode(header[0]!);
      const length = header.readUIntBE(1, 6);
      header = Buffer.alloc(0);
      if (op === 'U') {
        uploadLeft = length;
        uploadTotal = length;
        if (length === 0) socket.write(Buffer.alloc(6));
      } else if (op === 'D') {
        // Pause our reads while sending, so the pipeline stays simple.
        if (chunk.length > 0) socket.unshift(chunk);
        socket.pause();
        sendDownload(socket, length, () => socket.resume());
        return;
      } else {
        socket.destroy();
        return;
      }
    }
  };
  socket.on('data', onData);
}

function sendDownload(socket: net.Socket, length: number, done: () => void): void {
  let left = length;
  const pump = (): void => {
    while (left > 0) {
      const n = Math.min(left, SOURCE_CHUNK.length);
      left -= n;
      const more = socket.write(n === SOURCE_CHUNK.length ? SOURCE_CHUNK : SOURCE_CHUNK.subarray(0, n));
      if (!more && left > 0) {
        socket.once('drain', pump);
        return;
      }
    }
    done();
  };
  pump();
}

function listen(handler: (socket: net.Socket) => void, sockets: Set<net.Socket>): Promise<number> {
  const server = net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    handler(socket);
  });
  server.maxConnections = 100_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () => {
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

async function main(): Promise<void> {
  const sockets = new Set<net.Socket>();
  const ports: DestinationPorts = {
    bulk: await listen(serveBulk, sockets),
    echo: await listen((s) => s.pipe(s), sockets),
    blackhole: await listen((s) => s.pause(), sockets),
  };
  process.stdout.write(`${JSON.stringify(ports)}\n`);
  const stop = () => {
    for (const s of sockets) s.destroy();
    process.exit(0);
  };
  stopWithParent(stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`destinations: ${String(err)}\n`);
  process.exit(1);
});
