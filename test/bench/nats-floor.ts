/**
 * The floor of this design (issue 13): what nats.js alone costs between two
 * Node processes through the bench's nats-server, with nothing of ours on top.
 *
 *   dial floor        a request the other worker answers once a loopback TCP
 *                     connect to the destination succeeded
 *   round-trip floor  a publish/subscribe ping-pong the other worker echoes
 *
 * One load worker serves (serveFloor), the other opens kind 'nats'
 * connections (openNatsFloor): the dial is the request, the connection's
 * data is the ping-pong, so the benchmark times it like any other kind.
 */
import net from 'node:net';
import { type NatsConnection, connect as natsConnect } from '@nats-io/transport-node';
import type { Conn } from './wire.js';

const DIAL_SUBJECT = 'bench.floor.dial';
const PING_SUBJECT = 'bench.floor.ping';
const PONG_PREFIX = 'bench.floor.pong';
const DIALED = new TextEncoder().encode('ok');

/** Answers dials and echoes pings until the process exits. */
export async function serveFloor(url: string): Promise<void> {
  const nc = await natsConnect({ servers: url, name: 'bench-floor-server' });
  nc.subscribe(DIAL_SUBJECT, {
    callback: (err, msg) => {
      if (err) return;
      const port = Number(new TextDecoder().decode(msg.data));
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        msg.respond(DIALED);
        socket.destroy();
      });
      socket.once('error', (e) => msg.respond(new TextEncoder().encode(e.message)));
    },
  });
  nc.subscribe(PING_SUBJECT, {
    callback: (err, msg) => {
      if (!err) msg.respond(msg.data);
    },
  });
  await nc.flush();
}

interface FloorClient {
  nc: NatsConnection;
  /** Pong handlers by connection number: one subscription for all, so a dial subscribes to nothing. */
  pongs: Map<number, (data: Uint8Array) => void>;
  nextId: number;
}

let client: Promise<FloorClient> | undefined;

/** This worker's one connection for the floor, made once (at init, so no dial pays for it). */
export function floorClient(url: string): Promise<FloorClient> {
  client ??= (async () => {
    const nc = await natsConnect({ servers: url, name: 'bench-floor-client' });
    const pongs = new Map<number, (data: Uint8Array) => void>();
    nc.subscribe(`${PONG_PREFIX}.*`, {
      callback: (err, msg) => {
        if (err) return;
        pongs.get(Number(msg.subject.slice(PONG_PREFIX.length + 1)))?.(msg.data);
      },
    });
    await nc.flush();
    return { nc, pongs, nextId: 1 };
  })();
  return client;
}

/** A floor "tunnel": dialled by a request, its writes echoed by the serving worker. */
export async function openNatsFloor(url: string, port: number, timeoutMs = 15_000): Promise<Conn> {
  const c = await floorClient(url);
  const answer = await c.nc.request(DIAL_SUBJECT, String(port), { timeout: timeoutMs });
  const text = new TextDecoder().decode(answer.data);
  if (text !== 'ok') throw new Error(`floor dial to port ${port} failed: ${text}`);
  const id = c.nextId++;
  const reply = `${PONG_PREFIX}.${id}`;
  let dataCb: (chunk: Buffer) => void = () => {};
  c.pongs.set(id, (data) => dataCb(Buffer.from(data.buffer, data.byteOffset, data.byteLength)));
  return {
    write: (chunk) => {
      c.nc.publish(PING_SUBJECT, chunk, { reply });
      return true;
    },
    onDrain: () => {},
    onData: (cb) => {
      dataCb = cb;
    },
    onClose: () => {},
    pause: () => {},
    resume: () => {},
    close: () => {
      c.pongs.delete(id);
    },
  };
}
