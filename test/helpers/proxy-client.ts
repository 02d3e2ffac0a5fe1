/**
 * A konnectivity client for tests, built straight from proto/client.proto with
 * @grpc/proto-loader and @grpc/grpc-js (not through the frontend's own packet
 * code), behaving as kube-apiserver's konnectivity-client does.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { randomBytesSeeded, sha256 } from './destinations.js';

const protoPath = fileURLToPath(new URL('../../../proto/client.proto', import.meta.url));
const definition = protoLoader.loadSync(protoPath, {
  keepCase: true,
  longs: String,
  enums: Number,
  defaults: true,
  oneofs: true,
});
// biome-ignore lint/suspicious/noExplicitAny: generic gRPC constructor from a runtime-loaded proto
const ProxyService = (grpc.loadPackageDefinition(definition) as any)
  .ProxyService as grpc.ServiceClientConstructor;

export const T = {
  DIAL_REQ: 0,
  DIAL_RSP: 1,
  CLOSE_REQ: 2,
  CLOSE_RSP: 3,
  DATA: 4,
  DIAL_CLS: 5,
  DRAIN: 6,
} as const;

export interface Packet {
  type: number;
  dialRequest?: { protocol: string; address: string; random: string | number };
  dialResponse?: { error: string; connectID: string; random: string };
  data?: { connectID: string | number; error?: string; data: Buffer };
  closeRequest?: { connectID: string | number };
  closeResponse?: { error: string; connectID: string };
  closeDial?: { random: string | number };
}

export interface DialResult {
  connectID: number;
  error: string;
  /** ms from DIAL_REQ to DIAL_RSP */
  ms: number;
}

/** One Proxy stream; several dials may share it. */
export class ProxyStreamClient extends EventEmitter {
  readonly client: grpc.Client;
  readonly call: grpc.ClientDuplexStream<Packet, Packet>;
  readonly packets: Packet[] = [];
  private readonly waiters = new Map<string, (r: DialResult) => void>();
  private readonly sentAt = new Map<string, number>();
  private readonly received = new Map<number, Buffer[]>();
  private readonly closed = new Map<number, string>();
  ended = false;
  streamError: Error | undefined;

  constructor(
    target: string,
    credentials = grpc.credentials.createInsecure(),
    options: grpc.ClientOptions = {},
  ) {
    super();
    this.client = new ProxyService(target, credentials, {
      // One HTTP/2 connection per client, as kube-apiserver's konnectivity-client opens one per tunnel.
      // grpc-js otherwise shares a connection among clients of one target, and tears it down under
      // the calls still running once clients to that target stop being created (a rolling-update
      // run lost every in-flight call on a frontend taken out of rotation; the frontend logged them
      // as cancelled by the client).
      'grpc.use_local_subchannel_pool': 1,
      'grpc-node.flow_control_window': 8 * 1024 * 1024,
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
      ...options,
    });
    // biome-ignore lint/suspicious/noExplicitAny: method from a runtime-loaded service
    this.call = (this.client as any).Proxy();
    this.call.on('data', (packet: Packet) => this.onPacket(packet));
    this.call.on('end', () => this.onStreamEnd());
    this.call.on('error', (err) => {
      this.streamError = err;
      this.onStreamEnd();
    });
  }

  /** The stream is over: dials still waiting for their DIAL_RSP fail instead of waiting forever. */
  private onStreamEnd(): void {
    this.ended = true;
    const error = `stream ended${this.streamError ? `: ${this.streamError.message}` : ''}`;
    for (const [key, waiter] of this.waiters) {
      waiter({ connectID: 0, error, ms: Date.now() - (this.sentAt.get(key) ?? Date.now()) });
    }
    this.waiters.clear();
    this.emit('end');
  }

  private onPacket(packet: Packet): void {
    this.packets.push(packet);
    if (packet.type === T.DIAL_RSP) {
      const r = packet.dialResponse!;
      const key = String(r.random);
      const waiter = this.waiters.get(key);
      this.waiters.delete(key);
      waiter?.({
        connectID: Number(r.connectID),
        error: r.error,
        ms: Date.now() - (this.sentAt.get(key) ?? Date.now()),
      });
    } else if (packet.type === T.DATA) {
      const id = Number(packet.data!.connectID);
      let list = this.received.get(id);
      if (!list) {
        list = [];
        this.received.set(id, list);
      }
      list.push(packet.data!.data);
      this.emit('data', id, packet.data!.data);
    } else if (packet.type === T.CLOSE_RSP) {
      const id = Number(packet.closeResponse!.connectID);
      this.closed.set(id, packet.closeResponse!.error);
      this.emit('closed', id, packet.closeResponse!.error);
    }
  }

  /** Sends DIAL_REQ and waits for the DIAL_RSP carrying the same random. */
  dial(address: string, random: number | string = randomId()): Promise<DialResult> {
    const key = String(random);
    const result = new Promise<DialResult>((resolve) => this.waiters.set(key, resolve));
    this.sentAt.set(key, Date.now());
    this.call.write({ type: T.DIAL_REQ, dialRequest: { protocol: 'tcp', address, random } });
    return result;
  }

  /** Sends DIAL_REQ without waiting (for DIAL_CLS tests). */
  sendDial(address: string, random: number | string): Promise<DialResult> {
    return this.dial(address, random);
  }

  dialClose(random: number | string): void {
    this.call.write({ type: T.DIAL_CLS, closeDial: { random } });
  }

  send(connectID: number, data: Buffer): boolean {
    return this.call.write({ type: T.DATA, data: { connectID, data } });
  }

  /** Writes respecting the stream's backpressure. */
  async sendAll(connectID: number, data: Buffer, chunk = 32 * 1024): Promise<void> {
    for (let off = 0; off < data.length; off += chunk) {
      if (!this.send(connectID, data.subarray(off, off + chunk))) {
        await new Promise((r) => this.call.once('drain', r));
      }
    }
  }

  closeRequest(connectID: number): void {
    this.call.write({ type: T.CLOSE_REQ, closeRequest: { connectID } });
  }

  dataOf(connectID: number): Buffer {
    return Buffer.concat(this.received.get(connectID) ?? []);
  }

  bytesOf(connectID: number): number {
    return (this.received.get(connectID) ?? []).reduce((n, b) => n + b.length, 0);
  }

  closeError(connectID: number): string | undefined {
    return this.closed.get(connectID);
  }

  /** Resolves with the CLOSE_RSP error text ('' for a clean close), or 'stream ended'. */
  waitClosed(connectID: number, timeoutMs = 15_000): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.closed.has(connectID)) return resolve(this.closed.get(connectID)!);
      if (this.ended) return resolve('stream ended');
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no CLOSE_RSP for ${connectID} within ${timeoutMs} ms`));
      }, timeoutMs);
      const onClosed = (id: number, error: string) => {
        if (id !== connectID) return;
        cleanup();
        resolve(error);
      };
      const onEnd = () => {
        cleanup();
        resolve('stream ended');
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.off('closed', onClosed);
        this.off('end', onEnd);
      };
      this.on('closed', onClosed);
      this.on('end', onEnd);
    });
  }

  /** Waits until `n` bytes arrived on connectID. */
  waitBytes(connectID: number, n: number, timeoutMs = 60_000): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.bytesOf(connectID) >= n) return resolve();
      const timer = setTimeout(() => {
        this.off('data', onData);
        reject(
          new Error(`only ${this.bytesOf(connectID)} of ${n} bytes on ${connectID} after ${timeoutMs} ms`),
        );
      }, timeoutMs);
      const onData = (id: number) => {
        if (id === connectID && this.bytesOf(connectID) >= n) {
          clearTimeout(timer);
          this.off('data', onData);
          resolve();
        }
      };
      this.on('data', onData);
    });
  }

  /** What the real client does to end a tunnel: close the whole connection. */
  close(): void {
    this.call.cancel();
    this.client.close();
  }
}

let counter = 0;
export function randomId(): string {
  // int64 values above 2^53, as Go's rand.Int63 makes them: they must come back exactly.
  counter++;
  return (BigInt(Date.now()) * 1_000_003n + BigInt(counter) * 7_919n + 2n ** 60n).toString();
}

/**
 * Runs `attack` while a healthy tunnel through `target` (a gRPC door) echoes
 * `bytes` through `echoAddress` beside it; the transfer must be byte-exact.
 */
export async function besideHealthyTunnel(
  target: string,
  echoAddress: string,
  attack: () => Promise<void>,
  bytes = 8 * 1024 * 1024,
): Promise<void> {
  const client = new ProxyStreamClient(target);
  const dial = await client.dial(echoAddress);
  assert.equal(dial.error, '');
  const payload = randomBytesSeeded(bytes, 42);
  const transfer = (async () => {
    await client.sendAll(dial.connectID, payload);
    await client.waitBytes(dial.connectID, payload.length, 60_000);
  })();
  await attack();
  await transfer;
  assert.equal(sha256(client.dataOf(dial.connectID)), sha256(payload), 'the healthy tunnel moved every byte');
  client.close();
}
