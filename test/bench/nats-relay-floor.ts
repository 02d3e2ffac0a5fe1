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
 * Sender: asks the bulk destination for `bytes` and publishes them on
 * `subject` within the credit granted on `creditSubject`. `ready()` once it
 * listens for credit.
 */
export async function floorSend(
  url: string,
  subject: string,
  creditSubject: string,
  bulkPort: number,
  bytes: number,
  ready: () => void,
): Promise<{ sent: number }> {
  const nc: NatsConnection = await natsConnect({ servers: url, name: 'bench-floor-send' });
  const socket = await bulkSocket(bulkPort);
  try {
    let limit = 0;
    let sent = 0;
    socket.pause();
    const done = new Promise<void>((resolve, reject) => {
      socket.on('error', reject);
      socket.on('data', (chunk: Buffer) => {
        for (let off = 0; off < chunk.length; off += FRAME_PAYLOAD) {
          nc.publish(subject, chunk.subarray(off, off + FRAME_PAYLOAD));
        }
        sent += chunk.length;
        if (sent >= bytes) resolve();
        else if (sent >= limit) socket.pause();
      });
      nc.subscribe(creditSubject, {
        callback: (err, msg) => {
          if (err) return reject(err);
          limit = Math.max(limit, Buffer.from(msg.data).readUIntBE(0, 6));
          if (sent < limit) socket.resume();
        },
      });
    });
    await nc.flush();
    socket.write(bulkHeader('D', bytes));
    ready();
    await done;
    await nc.flush();
    return { sent };
  } finally {
    socket.destroy();
    await nc.close();
  }
}

/**
 * Receiver: uploads what arrives on `subject` to the bulk destination and
 * grants credit as it is written; times from the first grant to the
 * destination's acknowledgement of all `bytes`.
 */
export async function floorReceive(
  url: string,
  subject: string,
  creditSubject: string,
  bulkPort: number,
  window: number,
  bytes: number,
): Promise<ThroughputResult> {
  const nc: NatsConnection = await natsConnect({ servers: url, name: 'bench-floor-receive' });
  const socket = await bulkSocket(bulkPort);
  try {
    const acknowledged = new Promise<void>((resolve, reject) => {
      socket.on('error', reject);
      socket.on('data', () => resolve()); // the destination's 6-byte answer once all bytes arrived
    });
    socket.write(bulkHeader('U', bytes));
    let written = 0;
    let limit = window;
    nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const n = msg.data.length;
        socket.write(msg.data, () => {
          written += n;
          if (written + window - limit >= window / 4) {
            limit = written + window;
            nc.publish(creditSubject, offsetBytes(limit));
          }
        });
      },
    });
    await nc.flush();
    const started = performance.now();
    nc.publish(creditSubject, offsetBytes(limit));
    await acknowledged;
    return { seconds: (performance.now() - started) / 1000, bytes };
  } finally {
    socket.destroy();
    await nc.close();
  }
}
