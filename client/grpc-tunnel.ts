/**
 * A konnectivity gRPC client for `knats dial` and the benchmark: one Proxy
 * stream, one dial, exposed as a Node Duplex. (Tests use their own client
 * built straight from proto/client.proto, so they do not test this code
 * against itself.)
 */
import { Duplex } from 'node:stream';
import {
  type ChannelCredentials,
  credentials as grpcCredentials,
  makeGenericClientConstructor,
} from '@grpc/grpc-js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import {
  type ClientPacket,
  decodePacket,
  encodeDataPacket,
  encodePacket,
  PacketType,
  toNumber,
} from '../frontend/client-packets.js';
import { proxyServiceDefinition } from '../frontend/grpc-door.js';

const ProxyClient = makeGenericClientConstructor(proxyServiceDefinition, 'ProxyService');

export interface GrpcTunnelOptions {
  /** `unix:/path/to.sock` or `host:port`. */
  readonly target: string;
  readonly address: string;
  readonly credentials?: ChannelCredentials;
  readonly timeoutMs?: number;
}

/** grpc-js says `14 UNAVAILABLE: No connection established. Last error: ...`: keep the readable part. */
function grpcReason(err: Error & { code?: number; details?: string }): string {
  return (err.details || err.message).replace(/\.?\s*Resolution note:\s*$/, '');
}

export async function openGrpcTunnel(options: GrpcTunnelOptions): Promise<Duplex> {
  const client = new ProxyClient(options.target, options.credentials ?? grpcCredentials.createInsecure(), {
    // Large HTTP/2 windows, as the Go client has: the tunnel, not HTTP/2, should set the pace.
    'grpc-node.flow_control_window': 8 * 1024 * 1024,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
  });
  const call = (
    client as unknown as { Proxy(): import('@grpc/grpc-js').ClientDuplexStream<Buffer, Buffer> }
  ).Proxy();
  const random = Math.floor(Math.random() * 2 ** 52) + 1;
  call.write(
    encodePacket({
      type: PacketType.DIAL_REQ,
      dialRequest: { protocol: 'tcp', address: options.address, random },
    }),
  );
  let connectID = 0;
  const tunnel = new Duplex({
    write(chunk: Buffer, _encoding, callback) {
      if (!call.write(encodeDataPacket(connectID, chunk))) call.once('drain', () => callback());
      else callback();
    },
    final(callback) {
      // Konnectivity has no half-close: keep reading until the far end closes.
      callback();
    },
    read() {
      call.resume();
    },
    destroy(err, callback) {
      if (connectID) call.write(encodePacket({ type: PacketType.CLOSE_REQ, closeRequest: { connectID } }));
      call.cancel();
      client.close();
      callback(err);
    },
  });
  let opened = false;
  await new Promise<void>((resolve, reject) => {
    const fail = (err: KnatsError) => {
      clearTimeout(timer);
      reject(err);
      call.cancel();
      client.close();
    };
    const timer = setTimeout(
      () =>
        fail(new KnatsError(ErrorCode.DialTimeout, `no DIAL_RSP within ${options.timeoutMs ?? 10000} ms`)),
      options.timeoutMs ?? 10000,
    );
    call.on('data', (bytes: Buffer) => {
      const packet: ClientPacket = decodePacket(bytes);
      if (packet.type === PacketType.DIAL_RSP) {
        clearTimeout(timer);
        if (packet.dialResponse?.error) {
          fail(new KnatsError(ErrorCode.DialFailed, packet.dialResponse.error));
          return;
        }
        connectID = toNumber(packet.dialResponse?.connectID);
        opened = true;
        resolve();
      } else if (packet.type === PacketType.DATA && packet.data?.data) {
        const data = packet.data.data;
        // Paused only once the dial is answered: a paused call would hold back the DIAL_RSP itself.
        if (!tunnel.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength)) && opened) call.pause();
      } else if (packet.type === PacketType.CLOSE_RSP) {
        const error = packet.closeResponse?.error;
        connectID = 0;
        if (error) tunnel.destroy(new Error(error));
        else tunnel.push(null);
        call.end();
        client.close();
      }
    });
    call.on('error', (err: Error & { code?: number; details?: string }) => {
      // Before the dial is answered, the caller has only the promise: the tunnel has no listener yet.
      if (!opened) {
        fail(
          new KnatsError(
            ErrorCode.DialFailed,
            `cannot use the frontend at ${options.target}: ${grpcReason(err)}`,
          ),
        );
        return;
      }
      tunnel.destroy(new Error(`the frontend at ${options.target} ended the stream: ${grpcReason(err)}`));
    });
  });
  return tunnel;
}
