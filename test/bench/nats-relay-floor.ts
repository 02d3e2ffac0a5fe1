/**
 * The data path's floor per process: one direction of a tunnel built from
 * nats.js and a TCP socket alone, with nothing of ours in between.
 *
 *   bulk destination --TCP--> sender (load worker 1) --NATS--> receiver (load worker 2) --TCP--> bulk destination
 *
 * The sender reads the destination's socket and publishes each read in
 * frames of this project's size, pausing the socket when the receiver's
 * credit runs out; the receiver writes every message to its socket by
 * reference and grants credit as the tunnel does (absolute offsets, a new
 * grant once a quarter of the window was written). Each worker's CPU per
 * MiB is what that end of a tunnel costs at the least in this design: the
 * sender is the agent of a download (the frontend of an upload), the
 * receiver the frontend of a download (the agent of an upload).
 */
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { type NatsConnection, connect as natsConnect } from '@nats-io/transport-node';
import { bulkHeader, type ThroughputResult } from './common.js';

/** Payload bytes per message: the tunnel's DATA frame payload. */
const FRAME_PAYLOAD = 32 * 1024 - 128;

function offsetBytes(limit: number): Buffer {
  const b = Buffer.allocUnsafe(6);
  b.writeUIntBE(limit, 0, 6);
  return b;
}

async function bulkSocket(port: number): Promise<Socket> {
  const socket = netConnect(port, '127.0.0.1');
  await once(socket, 'connect');
  return socket;
}

/**
 * Sender: `streams` connections to the bulk destination, each asked for
 * `bytes`, published on `subject`.K (K = 0..streams-1) within the credit
 * granted on `creditSubject`.K. `ready()` once it listens for credit.
 */
export async function floorSend(
  url: string,
  subject: string,
  creditSubject: string,
  bulkPort: number,
  bytes: number,
  streams: number,
  ready: () => void,
): Promise<{ sent: number }> {
  const nc: NatsConnection = await natsConnect({ servers: url, name: 'bench-floor-send' });
  const sockets = await Promise.all(Array.from({ length: streams }, () => bulkSocket(bulkPort)));
  try {
    const limits = new Array<number>(streams).fill(0);
    const sent = new Array<number>(streams).fill(0);
    let finished = 0;
    const done = new Promise<void>((resolve, reject) => {
      sockets.forEach((socket, k) => {
        const frames = `${subject}.${k}`;
        socket.pause();
        socket.on('error', reject);
        socket.on('data', (chunk: Buffer) => {
          for (let off = 0; off < chunk.length; off += FRAME_PAYLOAD) {
            nc.publish(frames, chunk.subarray(off, off + FRAME_PAYLOAD));
          }
          sent[k]! += chunk.length;
          if (sent[k]! >= bytes) {
            if (++finished === streams) resolve();
          } else if (sent[k]! >= limits[k]!) socket.pause();
        });
      });
      nc.subscribe(`${creditSubject}.*`, {
        callback: (err, msg) => {
          if (err) return reject(err);
          const k = Number(msg.subject.slice(creditSubject.length + 1));
          limits[k] = Math.max(limits[k]!, Buffer.from(msg.data).readUIntBE(0, 6));
          if (sent[k]! < limits[k]! && sent[k]! < bytes) sockets[k]!.resume();
        },
      });
    });
    await nc.flush();
    for (const socket of sockets) socket.write(bulkHeader('D', bytes));
    ready();
    await done;
    await nc.flush();
    return { sent: sent.reduce((a, b) => a + b, 0) };
  } finally {
    for (const socket of sockets) socket.destroy();
    await nc.close();
  }
}

/**
 * Receiver: uploads what arrives on `subject`.K to its own connection to
 * the bulk destination and grants credit as it is written; times from the
 * first grants to the destination's acknowledgement of every stream's
 * `bytes`.
 */
export async function floorReceive(
  url: string,
  subject: string,
  creditSubject: string,
  bulkPort: number,
  window: number,
  bytes: number,
  streams: number,
): Promise<ThroughputResult> {
  const nc: NatsConnection = await natsConnect({ servers: url, name: 'bench-floor-receive' });
  const sockets = await Promise.all(Array.from({ length: streams }, () => bulkSocket(bulkPort)));
  try {
    const acknowledged = Promise.all(
      sockets.map(
        (socket) =>
          new Promise<void>((resolve, reject) => {
            socket.on('error', reject);
            socket.on('data', () => resolve()); // the destination's 6-byte answer once all bytes arrived
          }),
      ),
    );
    for (const socket of sockets) socket.write(bulkHeader('U', bytes));
    const written = new Array<number>(streams).fill(0);
    const limits = new Array<number>(streams).fill(window);
    nc.subscribe(`${subject}.*`, {
      callback: (err, msg) => {
        if (err) return;
        const k = Number(msg.subject.slice(subject.length + 1));
        const n = msg.data.length;
        sockets[k]!.write(msg.data, () => {
          written[k]! += n;
          if (written[k]! + window - limits[k]! >= window / 4) {
            limits[k] = written[k]! + window;
            nc.publish(`${creditSubject}.${k}`, offsetBytes(limits[k]!));
          }
        });
      },
    });
    await nc.flush();
    const started = performance.now();
    for (let k = 0; k < streams; k++) nc.publish(`${creditSubject}.${k}`, offsetBytes(window));
    await acknowledged;
    return { seconds: (performance.now() - started) / 1000, bytes: bytes * streams };
  } finally {
    for (const socket of sockets) socket.destroy();
    await nc.close();
  }
}
