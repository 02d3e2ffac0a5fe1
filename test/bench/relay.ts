/**
 * Baseline hops for the benchmark, each its own process:
 *
 *   node relay.js tcp '{"bulk":P,"echo":P,"blackhole":P}'
 *       one plain Node TCP relay per destination (client.pipe(upstream),
 *       upstream.pipe(client)); prints the relay ports as JSON.
 *   node relay.js grpc /path/to.sock
 *       a plain Node konnectivity ProxyService on a Unix socket that dials the
 *       destination itself and relays DATA (one gRPC hop, no bus); prints
 *       {"uds": path} once listening.
 *
 * Both serve until stdin closes or a signal arrives.
 */
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { type DestinationPorts, stopWithParent } from './common.js';
import { decodePacket, encodeData, PacketType, PROXY_METHOD } from './wire.js';

function tcpRelay(destPort: number): Promise<number> {
  const server = net.createServer({ noDelay: true }, (client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: destPort, noDelay: true });
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.maxConnections = 100_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () =>
      resolve((server.address() as net.AddressInfo).port),
    );
  });
}

// ---- the plain gRPC hop ---------------------------------------------------------

function encodeDialResponse(error: string, connectID: number, random: number): Buffer {
  const err = Buffer.from(error.slice(0, 100));
  const inner: number[] = [];
  const varint = (v: number) => {
    while (v >= 0x80) {
      inner.push((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    inner.push(v);
  };
  if (err.length > 0) {
    inner.push(0x0a);
    varint(err.length);
    inner.push(...err);
  }
  inner.push(0x10);
  varint(connectID);
  inner.push(0x18);
  varint(random);
  return Buffer.from([0x08, PacketType.DIAL_RSP, 0x1a, inner.length, ...inner]);
}

function encodeCloseResponse(connectID: number): Buffer {
  return Buffer.from([0x08, PacketType.CLOSE_RSP, 0x32, 2, 0x10, connectID & 0x7f]);
}

/** Reads the DialRequest's address and random (fields 2 and 3 of field 2). */
function dialRequestOf(bytes: Buffer): { address: string; random: number } {
  let address = '';
  let random = 0;
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let mul = 1;
    for (;;) {
      const b = bytes[pos++]!;
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
  };
  while (pos < bytes.length) {
    const key = varint();
    if (key === 0x12) {
      const end = varint() + pos;
      while (pos < end) {
        const k = varint();
        if (k === 0x12) {
          const n = varint();
          address = bytes.toString('utf8', pos, pos + n);
          pos += n;
        } else if (k === 0x18) random = varint();
        else if ((k & 7) === 2) {
          const n = varint();
          pos += n;
        } else varint();
      }
    } else if ((key & 7) === 2) {
      const n = varint();
      pos += n;
    } else varint();
  }
  return { address, random };
}

function serveProxy(call: grpc.ServerDuplexStream<Buffer, Buffer>): void {
  let socket: net.Socket | undefined;
  const connectID = 1;
  let ended = false;
  let paused = false;
  const end = () => {
    if (ended) return;
    ended = true;
    socket?.destroy();
    try {
      call.end();
    } catch {
      // gone
    }
  };
  call.on('data', (bytes: Buffer) => {
    const packet = decodePacket(bytes);
    if (packet.type === PacketType.DIAL_REQ) {
      const { address, random } = dialRequestOf(bytes);
      const colon = address.lastIndexOf(':');
      const s = net.connect({
        host: address.slice(0, colon),
        port: Number(address.slice(colon + 1)),
        noDelay: true,
      });
      s.once('connect', () => {
        socket = s;
        call.write(encodeDialResponse('', connectID, random));
        s.on('data', (chunk: Buffer) => {
          if (!call.write(encodeData(connectID, chunk)) && !s.isPaused()) {
            s.pause();
            call.once('drain', () => s.resume());
          }
        });
        s.on('close', () => {
          if (!ended) call.write(encodeCloseResponse(connectID));
          end();
        });
      });
      s.once('error', (err) => {
        if (!socket) call.write(encodeDialResponse(err.message, 0, random));
        end();
      });
      return;
    }
    if (packet.type === PacketType.DATA && packet.data && socket) {
      if (!socket.write(packet.data) && !paused) {
        paused = true;
        call.pause();
        socket.once('drain', () => {
          paused = false;
          call.resume();
        });
      }
    } else if (packet.type === PacketType.CLOSE_REQ) {
      end();
    }
  });
  call.on('end', end);
  call.on('cancelled', end);
  call.on('error', end);
  call.on('close', end);
}

async function grpcRelay(uds: string): Promise<void> {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    'grpc.max_send_message_length': 16 * 1024 * 1024,
  });
  const identity = (b: Buffer) => b;
  server.addService(
    {
      Proxy: {
        path: PROXY_METHOD,
        requestStream: true,
        responseStream: true,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
      },
    },
    { Proxy: serveProxy as grpc.handleBidiStreamingCall<Buffer, Buffer> },
  );
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${uds}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
}

async function main(): Promise<void> {
  const [mode, arg] = process.argv.slice(2);
  if (mode === 'tcp') {
    const dest = JSON.parse(arg ?? '{}') as DestinationPorts;
    const ports: DestinationPorts = {
      bulk: await tcpRelay(dest.bulk),
      echo: await tcpRelay(dest.echo),
      blackhole: await tcpRelay(dest.blackhole),
    };
    process.stdout.write(`${JSON.stringify(ports)}\n`);
  } else if (mode === 'grpc' && arg) {
    await grpcRelay(arg);
    process.stdout.write(`${JSON.stringify({ uds: arg })}\n`);
  } else {
    throw new Error('usage: relay.js tcp PORTS_JSON | relay.js grpc UDS_PATH');
  }
  const stop = () => process.exit(0);
  stopWithParent(stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`relay: ${String(err)}\n`);
  process.exit(1);
});
